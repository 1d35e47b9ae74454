"""HTTP helpers of adapters/common: JSON bodies, languages, uploads."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.datastructures import Headers, UploadFile

from adapters.common.http import (
    BadRequest,
    UploadTooLarge,
    accept_languages,
    install_error_handlers,
    parse_json_object,
    preferred_language,
    read_json_object,
    save_upload,
    text_field,
)


@pytest.mark.parametrize(("body", "says"), [
    (b"", "empty"), (b"  ", "empty"), (b"\xff\xfe", "UTF-8"), (b"[" * 5000, "nested"), (b"{", "not valid JSON"),
    (b"[]", "JSON object, not list"), (b'"x"', "not str"), (b"null", "not NoneType"), (b"42", "not int"),
])
def test_malformed_bodies_say_what_is_wrong(body: bytes, says: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_json_object(body)
    assert says in err.value.detail and err.value.status_code == 400


def test_well_formed_bodies_and_fields() -> None:
    data = parse_json_object('{"text": "olá", "n": 1, "deep": [[[1]]]}'.encode())
    assert text_field(data, "text") == "olá"
    with pytest.raises(BadRequest, match="'n' must be a string"):
        text_field(data, "n")
    with pytest.raises(BadRequest, match="'who' is required"):
        text_field(data, "who")
    assert text_field(data, "who", required=False) == ""


def test_accept_language_honours_q_values() -> None:
    assert accept_languages("de;q=0.5, pt-BR, en;q=0.8, fr;q=0") == ["pt", "en", "de"]
    assert accept_languages("") == []
    assert accept_languages("*, es;q=bad") == []
    assert preferred_language("ko, ja;q=0.9, en;q=0.8", ("en", "ja"), "en") == "ja"
    assert preferred_language("ko", ("en", "ja"), "en") == "en"


async def test_uploads_are_capped_and_the_real_size_is_reported(tmp_path: Path) -> None:
    small = UploadFile(io.BytesIO(b"x" * 100), filename="../../a.jpg", headers=Headers({"content-type": "image/jpeg"}))
    saved = await save_upload(small, tmp_path, limit=1000)
    assert (saved.filename, saved.size, saved.mime) == ("a.jpg", 100, "image/jpeg")
    assert saved.path.parent == tmp_path and saved.path.read_bytes() == b"x" * 100
    big = UploadFile(io.BytesIO(b"y" * 25_000_000), filename="big.mov")
    with pytest.raises(UploadTooLarge) as err:
        await save_upload(big, tmp_path, limit=20_000_000)
    assert err.value.size == 25_000_000
    assert [p.name for p in tmp_path.iterdir()] == [saved.ref]


def test_the_depth_limit_is_exact_and_counts_containers_only() -> None:
    from adapters.common.http import MAX_JSON_DEPTH

    def nested(depth: int) -> bytes:
        half = depth // 2
        opener, closer = '{"a":' * half + "[" * (depth - half), "]" * (depth - half) + "}" * half
        return f'{{"x": {opener}1{closer}}}'.encode()

    assert parse_json_object(nested(MAX_JSON_DEPTH - 1))["x"]
    with pytest.raises(BadRequest, match="nested more than 64"):
        parse_json_object(nested(MAX_JSON_DEPTH))
    # brackets inside strings and many siblings are not depth
    wide = {"s": "[{" * 5000, "many": [[1, {"a": []}]] * 5000}
    assert parse_json_object(json.dumps(wide).encode()) == wide


async def test_a_body_too_deep_for_the_parser_is_a_400_not_a_500() -> None:
    """Nesting deep enough to overflow the standard parser's recursion guard answers 400 like any bad body."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/json")
    async def route(request: Request) -> dict[str, int]:
        return {"keys": len(await read_json_object(request, max_bytes=5_000_000))}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        for body in (b"[" * 200_000 + b"]" * 200_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
                     b'{"a": ' + b"[" * 65 + b"]" * 65 + b"}"):
            response = await client.post("/json", content=body)
            assert response.status_code == 400 and "nested" in response.json()["error"], body[:20]
        assert (await client.post("/json", content=b'{"a": [[1]]}')).json() == {"keys": 1}
