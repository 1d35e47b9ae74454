"""HTTP helpers of adapters/common: JSON bodies, languages, uploads."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from starlette.datastructures import Headers, UploadFile

from adapters.common.http import (
    BadRequest,
    UploadTooLarge,
    accept_languages,
    parse_json_object,
    preferred_language,
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
