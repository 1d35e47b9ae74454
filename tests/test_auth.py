"""The auth dependencies of adapters' routes, through a real FastAPI app."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi import Depends, FastAPI

from adapters.common.auth import BearerAuth, SharedSecret, SignedBody
from adapters.common.http import install_error_handlers
from bot.handoff import sign


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/bearer", dependencies=[Depends(BearerAuth("T_BEARER", what="test API"))])
    async def bearer() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/header", dependencies=[Depends(SharedSecret("T_SECRET", header="X-Secret", status_code=403))])
    async def header() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/query", dependencies=[Depends(SharedSecret("T_SECRET", query="token"))])
    async def query() -> dict[str, bool]:
        return {"ok": True}

    signed = SignedBody("T_HMAC", signature_header="X-Sig", timestamp_header="X-Ts")

    @app.post("/signed")
    async def signed_route(body: bytes = Depends(signed)) -> dict[str, int]:
        return {"bytes": len(body)}

    optional = SignedBody("T_HMAC_UNSET", signature_header="X-Sig", timestamp_header="X-Ts", optional=True)

    @app.post("/optional")
    async def optional_route(body: bytes = Depends(optional)) -> dict[str, int]:
        return {"bytes": len(body)}

    return app


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("T_BEARER", "bearer-token")
    monkeypatch.setenv("T_SECRET", "shared-secret")
    monkeypatch.setenv("T_HMAC", "hmac-key")
    monkeypatch.delenv("T_HMAC_UNSET", raising=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://t") as c:
        yield c


async def test_bearer(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (await client.post("/bearer")).status_code == 401
    assert (await client.post("/bearer", headers={"Authorization": "Bearer nope"})).status_code == 401
    assert (await client.post("/bearer", headers={"Authorization": "Bearer bearer-token"})).json() == {"ok": True}
    monkeypatch.delenv("T_BEARER")
    off = await client.post("/bearer", headers={"Authorization": "Bearer bearer-token"})
    assert off.status_code == 404 and "T_BEARER" in off.json()["error"]


async def test_shared_secret_in_a_header_or_the_query(client: httpx.AsyncClient) -> None:
    assert (await client.post("/header")).status_code == 403
    assert (await client.post("/header", headers={"X-Secret": "shared-secret"})).status_code == 200
    assert (await client.post("/query", params={"token": "wrong"})).status_code == 401
    assert (await client.post("/query", params={"token": "shared-secret"})).status_code == 200


async def test_hmac_signed_bodies(client: httpx.AsyncClient) -> None:
    body = b'{"hello": "world"}'
    now = str(int(time.time()))
    good = {"X-Ts": now, "X-Sig": sign(b"hmac-key", now, body)}
    assert (await client.post("/signed", content=body, headers=good)).json() == {"bytes": len(body)}
    assert (await client.post("/signed", content=body)).status_code == 401
    assert (await client.post("/signed", content=body + b" ", headers=good)).status_code == 401
    wrong = {"X-Ts": now, "X-Sig": sign(b"other-key", now, body)}
    assert (await client.post("/signed", content=body, headers=wrong)).status_code == 401
    old = str(int(time.time()) - 600)
    stale = {"X-Ts": old, "X-Sig": sign(b"hmac-key", old, body)}
    assert (await client.post("/signed", content=body, headers=stale)).status_code == 401
    assert (await client.post("/signed", content=body, headers={"X-Ts": "soon", "X-Sig": "x"})).status_code == 401
    # a platform whose older versions do not sign: accepted when no secret is configured
    assert (await client.post("/optional", content=body)).json() == {"bytes": len(body)}
