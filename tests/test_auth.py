"""The auth dependencies of adapters' routes, through a real FastAPI app."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx
import pytest
from fastapi import Depends, FastAPI, Request, Response

from adapters.common.auth import BearerAuth, ReplayMemory, SharedSecret, SignedBody
from adapters.common.http import install_error_handlers
from bot.handoff.notifiers import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign


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

    @app.post("/query-or-bearer", dependencies=[Depends(SharedSecret("T_SECRET", query="token", bearer=True))])
    async def query_or_bearer() -> dict[str, bool]:
        return {"ok": True}

    signed = SignedBody("T_HMAC", signature_header="X-Sig", timestamp_header="X-Ts")

    @app.post("/signed")
    async def signed_route(body: bytes = Depends(signed)) -> dict[str, int]:
        return {"bytes": len(body)}

    once = SignedBody("T_HMAC", signature_header="X-Sig", timestamp_header="X-Ts", delivery_header="X-Delivery")
    handled: list[bytes] = []
    app.state.handled = handled

    async def handle(body: bytes) -> Response:
        handled.append(body)
        return Response(status_code=500 if b"fail" in body else 204)

    @app.post("/once")
    async def once_route(request: Request) -> Response:
        return await once.once(request, handle)

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


async def test_a_query_token_may_come_in_a_bearer_header_instead(client: httpx.AsyncClient) -> None:
    """Proxies log query strings; the same secret as ``Authorization: Bearer`` stays out of their logs."""
    assert (await client.post("/query-or-bearer", headers={"Authorization": "Bearer shared-secret"})).json() == {
        "ok": True}
    assert (await client.post("/query-or-bearer", params={"token": "shared-secret"})).status_code == 200
    assert (await client.post("/query-or-bearer", headers={"Authorization": "Bearer wrong"})).status_code == 401
    assert (await client.post("/query-or-bearer", headers={"Authorization": "Basic shared-secret"})).status_code == 401
    assert (await client.post("/query", headers={"Authorization": "Bearer shared-secret"})).status_code == 401


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


def _signed(body: bytes, at: float | None = None, key: bytes = b"hmac-key", **extra: str) -> dict[str, str]:
    ts = str(int(at if at is not None else time.time()))
    return {"X-Ts": ts, "X-Sig": sign(key, ts, body), **extra}


async def test_a_signed_request_is_run_once_and_a_replay_gets_200_with_nothing_done(
        client: httpx.AsyncClient) -> None:
    handled = client._transport.app.state.handled  # type: ignore[attr-defined]
    body = b'{"mode": "human"}'
    headers = _signed(body)
    assert (await client.post("/once", content=body, headers=headers)).status_code == 204
    replay = await client.post("/once", content=body, headers=headers)
    assert replay.status_code == 200 and replay.json()["replayed"] is True
    assert handled == [body]
    # the same delivery id, signed anew (a platform's retry of a request already accepted): also done
    again = await client.post("/once", content=body, headers=_signed(body, time.time() + 1, **{"X-Delivery": "d1"}))
    assert again.status_code == 204
    retry = await client.post("/once", content=body, headers=_signed(body, time.time() + 2, **{"X-Delivery": "d1"}))
    assert retry.json()["replayed"] is True and len(handled) == 2
    # refused requests are not remembered: a bad signature then the right one
    fresh = b'{"mode": "bot"}'
    assert (await client.post("/once", content=fresh, headers=_signed(fresh, key=b"nope"))).status_code == 401
    assert (await client.post("/once", content=fresh, headers=_signed(fresh))).status_code == 204


async def test_a_request_answered_5xx_is_run_again_when_retried(client: httpx.AsyncClient) -> None:
    handled = client._transport.app.state.handled  # type: ignore[attr-defined]
    body = b'{"fail": true}'
    headers = _signed(body, **{"X-Delivery": "d2"})
    assert (await client.post("/once", content=body, headers=headers)).status_code == 500
    assert (await client.post("/once", content=body, headers=headers)).status_code == 500
    assert (await client.post("/once", content=body, headers=_signed(body, time.time() + 1,
                                                                     **{"X-Delivery": "d2"}))).status_code == 500
    assert len(handled) == 3


def test_the_replay_memory_is_bounded_and_forgets_after_the_window() -> None:
    memory = ReplayMemory(max_entries=3)
    assert memory.claim(("a",), expires=100.0, now=0.0)
    assert not memory.claim(("a",), expires=100.0, now=1.0)  # in flight or accepted: a repeat
    memory.settle(("a",), accepted=True)
    assert not memory.claim(("a", "b"), expires=100.0, now=2.0)
    assert memory.claim(("b",), expires=100.0, now=2.0)
    memory.settle(("b",), accepted=False)  # failed: forgotten
    assert memory.claim(("b",), expires=100.0, now=3.0)
    memory.settle(("b",), accepted=True)
    assert memory.claim(("a",), expires=300.0, now=101.0)  # the window is over: a stale signature is a 401 anyway
    for key in "cdef":
        assert memory.claim((key,), expires=300.0, now=102.0)
        memory.settle((key,), accepted=True)
    assert len(memory) == 3


SECRETS = {"TELEGRAM_BOT_TOKEN": "123456789:AAF-test-token_xyz-abcdefghijklmnopqrst", "TELEGRAM_WEBHOOK_SECRET": "tg-hook-Secret-1",
           "SLACK_BOT_TOKEN": "xoxb-test-bot-token", "SLACK_SIGNING_SECRET": "slack-Signing-Secret-1",
           "CHATWOOT_BOT_TOKEN": "cw-bot-token-1", "CHATWOOT_WEBHOOK_SECRET": "cw-hook-Secret-1",
           "HELPDESK_API_USER": "bot", "HELPDESK_API_PASSWORD": "dh-Password-1", "HELPDESK_WEBHOOK_TOKEN": "dh-hook-Token-1",
           "HELPDESK_API_SECRET": "api-hmac-Secret-1"}


async def test_every_refused_webhook_is_one_warning_a_minute_per_route_and_reason_and_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """After a secret rotation forgotten on one side, platforms' requests are refused: the log says so (route,
    remote address, which check), once a minute, and /metrics counts every one — nothing says the secret."""
    from adapters import registry
    from adapters.server import Service, build_app
    from bot.engines import EchoEngine
    from bot.runtime import Runtime
    from tests.conftest import make_settings
    from tests.fakes.serving import free_port, serve_asgi

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.INFO)
    settings = make_settings(tmp_path, server={"public_url": "https://bot.example.com"}, adapters={
        "telegram": {"enabled": True, "mode": "webhook"},
        "slack": {"enabled": True, "mode": "http"},
        "chatwoot": {"enabled": True, "base_url": "https://chatwoot.example.com"},
        "django_helpdesk": {"enabled": True, "base_url": "https://helpdesk.example.com"},
        "helpdesk_api": {"enabled": True}})
    port = free_port()
    async with Runtime(settings, engine=EchoEngine()) as runtime:
        adapters = registry.served(runtime)
        assert {a.name for a in adapters} >= {"telegram", "slack", "chatwoot", "django_helpdesk", "helpdesk_api"}
        async with serve_asgi(build_app(Service(runtime.settings, runtime, adapters)), port=port), \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            now = str(int(time.time()))
            tries = [
                ("/telegram/webhook", {"X-Telegram-Bot-Api-Secret-Token": "old-secret"}, "wrong secret"),
                ("/slack/events", {"X-Slack-Signature": "v0=" + "0" * 64, "X-Slack-Request-Timestamp": now},
                 "wrong signature"),
                ("/chatwoot/webhook", {}, "missing signature"),
                ("/chatwoot/webhook", {"X-Chatwoot-Signature": "sha256=" + "0" * 64, "X-Chatwoot-Timestamp": "1"},
                 "stale timestamp"),
                ("/django-helpdesk/webhook?token=old-token", {}, "wrong secret"),
                ("/api/helpdesk/v1/messages", {SIGNATURE_HEADER: "sha256=" + "0" * 64, TIMESTAMP_HEADER: now},
                 "wrong signature"),
            ]
            for path, headers, _ in tries:
                for _ in range(3):
                    answer = await http.post(path, content=b'{"event": "message_created"}', headers=headers)
                    assert answer.status_code == 401, (path, answer.status_code, answer.text)
            metrics = (await http.get("/metrics")).text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "refused a request" in r.getMessage()]
    for path, _, reason in tries:
        route = path.split("?")[0]
        said = [w for w in warnings if w.startswith(f"{route}: ") and f": {reason}" in w]
        assert len(said) == 1, (route, reason, warnings)  # three refusals, one line
        assert "127.0.0.1" in said[0]
        assert f'internvl_bot_webhook_rejected_total{{reason="{reason}",route="{route}"}} 3.0' in metrics, metrics
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name != "httpx")  # (httpx: this test's client)
    assert not any(secret in logged for secret in SECRETS.values() if len(secret) > 6)
    assert "old-secret" not in logged and "old-token" not in logged
