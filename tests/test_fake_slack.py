"""The fake Slack (tests/fakes/slack_api.py) driven by the real slack_sdk and slack_bolt clients."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.fakes.serving import serve_asgi
from tests.fakes.slack_api import PAYLOAD_DIR, FakeSlack, Rate, SlackLimits, load_payload

CH = "C0GENERAL"
USER = "U0USER1"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        fake.add_user(USER, name="ana", locale="pt-PT", tz="Europe/Lisbon")
        yield fake


def web(fake: FakeSlack, **kwargs: Any) -> AsyncWebClient:
    return AsyncWebClient(token=fake.bot_token, base_url=fake.api_url, **kwargs)


async def api_error(coro: Any) -> SlackApiError:
    with pytest.raises(SlackApiError) as info:
        await coro
    return info.value


# ------------------------------------------------------------------------------------------------ Web API


async def test_post_update_delete_with_realistic_responses(slack: FakeSlack) -> None:
    client = web(slack)
    auth = await client.auth_test()
    assert (auth["user_id"], auth["bot_id"], auth["team_id"], auth["is_enterprise_install"]) == (
        "U0BOT", "B0BOT", "T0001", False)
    assert auth["url"].startswith("https://")

    first = await client.chat_postMessage(channel=CH, text="hello", unfurl_links=False,
                                          metadata={"event_type": "answer", "event_payload": {"n": 1}})
    assert re.fullmatch(r"\d{10}\.\d{6}", first["ts"]) and first["channel"] == CH
    assert first["message"]["bot_id"] == "B0BOT" and first["message"]["text"] == "hello"
    assert slack.calls_to("chat.postMessage")[0].body_kind == "json"  # slack_sdk posts chat.* as JSON
    reply = await client.chat_postMessage(channel=CH, text="in the thread", thread_ts=first["ts"])
    assert float(reply["ts"]) > float(first["ts"]) and reply["message"]["thread_ts"] == first["ts"]

    updated = await client.chat_update(channel=CH, ts=first["ts"], text="hello again")
    assert updated["text"] == "hello again" and updated["message"]["edited"]["user"] == "U0BOT"
    top, threaded = slack.messages(CH)
    assert (top.text, top.updates, top.history) == ("hello again", 1, ["hello", "hello again"])
    assert top.unfurl_links is False and top.metadata == {"event_type": "answer", "event_payload": {"n": 1}}
    assert [m.ts for m in slack.messages(CH, first["ts"])] == [first["ts"], reply["ts"]]

    await client.chat_delete(channel=CH, ts=reply["ts"])
    assert threaded.deleted
    assert slack.calls_to("chat.delete")[0].body_kind == "query"  # chat_delete uses params=: the query string
    replies = await client.conversations_replies(channel=CH, ts=first["ts"])
    assert [m["ts"] for m in replies["messages"]] == [first["ts"]]
    await client.reactions_add(channel=CH, name="eyes", timestamp=first["ts"])
    assert (await api_error(client.reactions_add(channel=CH, name="eyes", timestamp=first["ts"]))
            ).response["error"] == "already_reacted"
    # posting to a user ID lands in the DM with that user
    dm = await client.chat_postMessage(channel=USER, text="psst")
    assert dm["channel"] == slack.dm_channel(USER)


async def test_logical_errors_are_http_200_with_ok_false(slack: FakeSlack) -> None:
    client = web(slack)
    error = await api_error(AsyncWebClient(token="xoxb-wrong", base_url=slack.api_url).auth_test())
    assert (error.response.status_code, error.response["error"]) == (200, "invalid_auth")
    assert (await api_error(AsyncWebClient(base_url=slack.api_url).auth_test())).response["error"] == "not_authed"
    app_token_client = AsyncWebClient(token=slack.app_token, base_url=slack.api_url)
    assert (await api_error(app_token_client.chat_postMessage(channel=CH, text="x"))
            ).response["error"] == "not_allowed_token_type"
    assert (await api_error(client.chat_postMessage(channel="general", text="x"))).response["error"] == "channel_not_found"
    with pytest.warns(UserWarning, match="`text` argument is missing"):
        assert (await api_error(client.chat_postMessage(channel=CH))).response["error"] == "no_text"
    assert (await api_error(client.chat_update(channel=CH, ts="1.000001", text="x"))
            ).response["error"] == "message_not_found"
    assert (await api_error(client.chat_postMessage(channel=CH, text="a", markdown_text="**a**"))
            ).response["error"] == "markdown_text_conflict"
    too_long = await api_error(client.chat_postMessage(
        channel=CH, text="fallback", blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]))
    assert too_long.response["error"] == "invalid_blocks"
    assert "3001" in too_long.response["response_metadata"]["messages"][0]
    assert (await api_error(client.api_call("chat.frobnicate"))).response["error"] == "unknown_method"

    # chat.postMessage truncates past 40,000 characters; chat.update refuses
    long = await client.chat_postMessage(channel=CH, text="y" * 40_050)
    assert len(slack.messages(CH)[-1].text) == 40_000 and slack.messages(CH)[-1].truncated
    assert (await api_error(client.chat_update(channel=CH, ts=long["ts"], text="z" * 40_001))
            ).response["error"] == "msg_too_long"

    # a form-encoded call with the token as an argument and blocks as a JSON string (what other clients send)
    async with httpx.AsyncClient() as http:
        answer = (await http.post(f"{slack.api_url}chat.postMessage", data={
            "token": slack.bot_token, "channel": CH, "text": "form",
            "blocks": json.dumps([{"type": "section", "text": {"type": "mrkdwn", "text": "*form*"}}])})).json()
    assert answer["ok"] and slack.messages(CH)[-1].blocks[0]["text"]["text"] == "*form*"
    assert slack.calls_to("chat.postMessage")[-1].body_kind == "form"


async def test_rate_limits_answer_429_with_retry_after() -> None:
    limits = SlackLimits().with_rate("chat.update", Rate(per_minute=6, burst=2))
    async with FakeSlack(rate_limits=True, limits=limits) as slack:
        client = web(slack)
        outcomes: list[tuple[int, str, str | None]] = []
        for i in range(5):  # 1 message a second per channel, a burst of 3
            try:
                await client.chat_postMessage(channel=CH, text=f"m{i}")
                outcomes.append((200, "", None))
            except SlackApiError as exc:
                outcomes.append((exc.response.status_code, exc.response["error"],
                                 exc.response.headers.get("Retry-After")))
        assert outcomes[:3] == [(200, "", None)] * 3 and (429, "ratelimited", "1") in outcomes[3:]
        assert slack.served_429 == sum(o[0] == 429 for o in outcomes)
        served = slack.served_429
        ts = (await client.chat_postMessage(channel="C0OTHER", text="another channel"))["ts"]

        await client.chat_update(channel="C0OTHER", ts=ts, text="1")
        await client.chat_update(channel="C0OTHER", ts=ts, text="2")
        error = await api_error(client.chat_update(channel="C0OTHER", ts=ts, text="3"))
        assert error.response.status_code == 429 and error.response.headers["Retry-After"] == "10"
        assert slack.served_429 == served + 1


async def test_the_sdk_retry_handler_waits_out_a_429(slack: FakeSlack) -> None:
    slack.fail("chat.postMessage", retry_after=1)
    client = web(slack, retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)])
    start = time.monotonic()
    answer = await client.chat_postMessage(channel=CH, text="eventually")
    assert answer["ok"] and time.monotonic() - start >= 1
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [429, 200] and slack.served_429 == 1


async def test_injected_faults_and_delays(slack: FakeSlack) -> None:
    client = web(slack)
    slack.fail("chat.postMessage", status=500, error="internal_error")
    assert (await api_error(client.chat_postMessage(channel=CH, text="x"))).response.status_code == 500
    slack.fail("chat.postMessage", status=503, error="service_unavailable")
    retrying = web(slack, retry_handlers=[AsyncServerErrorRetryHandler(max_retry_count=1)])
    assert (await retrying.chat_postMessage(channel=CH, text="x"))["ok"]
    slack.fail("chat.postMessage", status=200, error="fatal_error", times=2)
    for _ in range(2):
        assert (await api_error(client.chat_postMessage(channel=CH, text="x"))).response["error"] == "fatal_error"
    assert (await client.chat_postMessage(channel=CH, text="x"))["ok"]
    slack.delay("users.info", 0.3)
    start = time.monotonic()
    await client.users_info(user=USER)
    assert time.monotonic() - start >= 0.3


async def test_users_and_conversations(slack: FakeSlack) -> None:
    client = web(slack)
    with_locale = (await client.users_info(user=USER, include_locale=True))["user"]
    assert (with_locale["locale"], with_locale["tz"], with_locale["name"]) == ("pt-PT", "Europe/Lisbon", "ana")
    assert "locale" not in (await client.users_info(user=USER))["user"]
    assert slack.calls_to("users.info")[0].params["include_locale"] == "1"  # bools go as 1/0
    assert (await api_error(client.users_info(user="U0NOBODY"))).response["error"] == "user_not_found"
    channel = (await client.conversations_info(channel=CH))["channel"]
    assert channel["is_channel"] and not channel["is_im"]
    dm = (await client.conversations_info(channel=slack.dm_channel(USER)))["channel"]
    assert dm["is_im"] and dm["user"] == USER


async def test_assistant_threads(slack: FakeSlack) -> None:
    client = web(slack)
    dm, thread_ts = slack.dm_channel(USER), slack.new_ts()
    await client.assistant_threads_setStatus(channel_id=dm, thread_ts=thread_ts, status="is looking…",
                                             loading_messages=["Reading the image…"])
    assert slack.statuses == [{"channel_id": dm, "thread_ts": thread_ts, "status": "is looking…",
                               "loading_messages": ["Reading the image…"]}]
    assert slack.status_of(dm, thread_ts) == "is looking…"
    await client.chat_postMessage(channel=dm, thread_ts=thread_ts, text="done")
    assert slack.status_of(dm, thread_ts) == ""  # Slack clears the status when the app replies
    await client.assistant_threads_setSuggestedPrompts(channel_id=dm, thread_ts=thread_ts, title="Try",
                                                       prompts=[{"title": "Describe", "message": "Describe it"}])
    await client.assistant_threads_setTitle(channel_id=dm, thread_ts=thread_ts, title="A broken pump")
    assert slack.suggested_prompts[0]["prompts"][0]["title"] == "Describe"
    assert slack.titles == [{"channel_id": dm, "thread_ts": thread_ts, "title": "A broken pump"}]


# ------------------------------------------------------------------------------------------------ streaming


async def test_chat_stream_end_to_end(slack: FakeSlack) -> None:
    client = web(slack)
    thread_ts = slack.new_ts()
    streamer = await client.chat_stream(channel=CH, thread_ts=thread_ts, recipient_team_id="T0001",
                                        recipient_user_id=USER, buffer_size=16)
    assert await streamer.append(markdown_text="Hello") is None  # buffered in the SDK: nothing sent
    assert not slack.calls
    await streamer.append(markdown_text=", wonderful world")  # the buffer passes 16: chat.startStream
    start = slack.calls_to("chat.startStream")[0]
    assert start.body_kind == "json" and "markdown_text" not in start.params
    assert start.params["chunks"] == [{"type": "markdown_text", "text": "Hello, wonderful world"}]
    assert (start.params["thread_ts"], start.params["recipient_user_id"]) == (thread_ts, USER)
    msg = slack.messages(CH)[-1]
    assert msg.streaming and msg.ts == streamer.ts and msg.text == "Hello, wonderful world"
    assert (await api_error(client.chat_update(channel=CH, ts=msg.ts, text="no"))
            ).response["error"] == "streaming_state_conflict"

    await streamer.append(markdown_text=" and a bit more.")
    assert slack.calls_to("chat.appendStream")[0].params == {
        "channel": CH, "ts": msg.ts, "chunks": [{"type": "markdown_text", "text": " and a bit more."}]}
    await streamer.append(chunks=[{"type": "task_update", "id": "t1", "title": "Looked", "status": "complete"}])
    await streamer.append(markdown_text=" Tail")  # buffered
    stop = await streamer.stop(markdown_text="!", blocks=[{"type": "context", "elements": [
        {"type": "mrkdwn", "text": "AI-generated"}]}])
    assert slack.calls_to("chat.stopStream")[0].params["chunks"] == [{"type": "markdown_text", "text": " Tail!"}]
    assert msg.text == stop["message"]["text"] == "Hello, wonderful world and a bit more. Tail!"
    assert (msg.streaming, msg.stream_state, msg.stream_appends) == (False, "stopped", 2)
    assert msg.blocks[0]["type"] == "context" and msg.chunks[2]["type"] == "task_update"
    with pytest.raises(SlackRequestError):
        await streamer.append(markdown_text="late")
    await client.chat_update(channel=CH, ts=msg.ts, text="edited afterwards")

    # a short answer: stop() with everything still buffered starts an empty stream, then stops it
    dm = slack.dm_channel(USER)
    short = await client.chat_stream(channel=dm, thread_ts=slack.new_ts())  # DMs need no recipient
    await short.append(markdown_text="hi")
    await short.stop()
    assert "chunks" not in slack.calls_to("chat.startStream")[-1].params
    assert slack.messages(dm)[-1].text == "hi" and slack.messages(dm)[-1].stream_state == "stopped"


async def test_streams_expire_and_then_refuse_appends() -> None:
    async with FakeSlack(stream_idle_expiry=0.3) as slack:
        slack.add_user(USER)
        client = web(slack)
        streamer = await client.chat_stream(channel=CH, thread_ts=slack.new_ts(), recipient_team_id="T0001",
                                            recipient_user_id=USER, buffer_size=4)
        await streamer.append(markdown_text="thinking")
        msg = slack.messages(CH)[-1]
        await slack.wait_for(lambda: not msg.streaming, timeout=5)  # woken by the expiry timer
        assert msg.stream_state == "expired"
        error = await api_error(streamer.append(markdown_text=" more text"))
        assert error.response["error"] == "message_not_in_streaming_state"
        assert (await api_error(streamer.stop())).response["error"] == "message_not_in_streaming_state"
        await client.chat_update(channel=CH, ts=streamer.ts, text="thinking, then the answer")
        assert msg.text == "thinking, then the answer"
        slack.stream_idle_expiry = 300  # the rest expires by hand

        second = await client.chat_stream(channel=CH, thread_ts=slack.new_ts(), recipient_team_id="T0001",
                                          recipient_user_id=USER, buffer_size=1)
        await second.append(markdown_text="a")
        slack.expire_streams()
        assert (await api_error(second.append(markdown_text="b"))).response["error"] == "message_not_in_streaming_state"
        third = await client.chat_stream(channel=CH, thread_ts=slack.new_ts(), recipient_team_id="T0001",
                                         recipient_user_id=USER, buffer_size=1)
        await third.append(markdown_text="a")
        slack.stop_stream_by_user(CH, third.ts)
        assert (await api_error(third.append(markdown_text="b"))).response["error"] == "stopped_by_user"


async def test_stream_arguments_are_checked(slack: FakeSlack) -> None:
    client = web(slack)
    ts = slack.new_ts()
    assert (await api_error(client.chat_startStream(channel=CH, thread_ts=ts))
            ).response["error"] == "missing_recipient_user_id"
    assert (await api_error(client.chat_startStream(channel=CH, thread_ts=ts, recipient_user_id=USER))
            ).response["error"] == "missing_recipient_team_id"
    async with httpx.AsyncClient() as http:
        no_thread = (await http.post(f"{slack.api_url}chat.startStream", json={"channel": slack.dm_channel(USER)},
                                     headers={"Authorization": f"Bearer {slack.bot_token}"})).json()
    assert no_thread["error"] == "invalid_arguments" and "thread_ts" in no_thread["response_metadata"]["messages"][0]
    started = await client.chat_startStream(channel=CH, thread_ts=ts, recipient_user_id=USER,
                                            recipient_team_id="T0001", markdown_text="a")
    assert (await api_error(client.chat_appendStream(channel=CH, ts=started["ts"], chunks=[{"type": "nope"}]))
            ).response["error"] == "invalid_chunks"
    assert (await api_error(client.chat_appendStream(channel=CH, ts=started["ts"], markdown_text="x" * 12_001))
            ).response["error"] == "msg_too_long"
    assert (await api_error(client.chat_appendStream(channel=CH, ts="1.000002", markdown_text="x"))
            ).response["error"] == "message_not_found"
    plain = await client.chat_postMessage(channel=CH, text="not a stream")
    assert (await api_error(client.chat_appendStream(channel=CH, ts=plain["ts"], markdown_text="x"))
            ).response["error"] == "message_not_in_streaming_state"


# ------------------------------------------------------------------------------------------------ files


async def test_files_upload_v2_end_to_end(slack: FakeSlack) -> None:
    client = web(slack)
    thread_ts = slack.new_ts()
    answer = await client.files_upload_v2(content=b"%PDF-1.4 answer", filename="answer.pdf", title="Answer",
                                          channel=CH, thread_ts=thread_ts, initial_comment="Here it is")
    assert answer["file"]["name"] == "answer.pdf" and answer["file"]["mimetype"] == "application/pdf"
    assert [c.method for c in slack.calls] == ["files.getUploadURLExternal", "upload", "files.completeUploadExternal"]
    assert slack.calls[0].params["length"] == str(len(b"%PDF-1.4 answer"))
    (upload,) = slack.uploads
    assert (upload["bytes"], upload["title"], upload["channel_id"], upload["thread_ts"], upload["initial_comment"]) == (
        b"%PDF-1.4 answer", "Answer", CH, thread_ts, "Here it is")
    shared = slack.messages(CH, thread_ts)[-1]
    assert shared.files[0]["id"] == answer["file"]["id"] and shared.text == "Here it is"
    async with httpx.AsyncClient() as http:
        got = await http.get(answer["file"]["url_private_download"],
                             headers={"Authorization": f"Bearer {slack.bot_token}"})
    assert got.content == b"%PDF-1.4 answer"


async def test_url_private_needs_the_bot_token(slack: FakeSlack) -> None:
    hosted = slack.add_file(PNG, name="cat.png", mimetype="image/png")
    assert hosted["url_private"].startswith(f"{slack.url}/files-pri/T0001-{hosted['id']}/")
    async with httpx.AsyncClient() as http:
        ok = await http.get(hosted["url_private_download"], headers={"Authorization": f"Bearer {slack.bot_token}"})
        assert (ok.status_code, ok.content, ok.headers["content-type"]) == (200, PNG, "image/png")
        assert "attachment" in ok.headers["content-disposition"]
        for headers in ({}, {"Authorization": "Bearer xoxb-wrong"}):
            refused = await http.get(hosted["url_private"], headers=headers)
            assert refused.status_code == 302 and refused.headers["location"].startswith(f"{slack.url}/?redir=")
        followed = await http.get(hosted["url_private"], follow_redirects=True)
        assert followed.status_code == 200 and followed.headers["content-type"].startswith("text/html")
    async with aiohttp.ClientSession() as session, session.get(hosted["url_private"]) as response:
        assert response.status == 200 and response.content_type == "text/html"  # aiohttp follows redirects
    assert [d["authorized"] for d in slack.downloads] == [True, False, False, False, False]
    forged = slack.add_file(PNG, name="x.png", mimetype="image/png", host="https://evil.example")
    assert forged["url_private"].startswith("https://evil.example/files-pri/")
    info = await web(slack).files_info(file=hosted["id"])
    assert info["file"]["size"] == len(PNG)


# ------------------------------------------------------------------------------------------------ Socket Mode


async def test_socket_mode_with_the_sdk_client() -> None:
    async with FakeSlack(socket_ack_timeout=0.5) as slack:
        client = SocketModeClient(app_token=slack.app_token, web_client=AsyncWebClient(base_url=slack.api_url),
                                  ping_interval=30)
        hello = asyncio.Event()
        hellos: list[dict[str, Any]] = []
        requests: asyncio.Queue[SocketModeRequest] = asyncio.Queue()
        ack_on_first_delivery = True

        async def on_message(_: Any, message: dict[str, Any], raw: str | None) -> None:
            if message.get("type") == "hello":
                hellos.append(message)
                hello.set()

        async def on_request(sm: Any, req: SocketModeRequest) -> None:
            await requests.put(req)
            if req.type == "slash_commands":
                await sm.send_socket_mode_response(SocketModeResponse(req.envelope_id, {"text": "working on it"}))
            elif ack_on_first_delivery or req.retry_attempt:
                await sm.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))

        async def next_request(envelope_ids: set[str] | None = None, event_id: str | None = None) -> SocketModeRequest:
            while True:  # skips redeliveries a slow machine may cause
                req = await asyncio.wait_for(requests.get(), 5)
                if envelope_ids is not None and req.envelope_id in envelope_ids:
                    return req
                if event_id is not None and req.payload.get("event_id") == event_id:
                    return req

        client.message_listeners.append(on_message)
        client.socket_mode_request_listeners.append(on_request)
        try:
            await client.connect()
            await asyncio.wait_for(hello.wait(), 5)
            assert hellos[0]["num_connections"] == 1 and hellos[0]["connection_info"] == {"app_id": "A0APP"}
            assert slack.hello_sent == 1 and slack.socket_connections == 1
            assert slack.calls_to("apps.connections.open")[0].token == slack.app_token

            envelope_id = await slack.send_socket_event(slack.app_mention(CH, USER, "<@U0BOT> hi"))
            req = await next_request({envelope_id})
            assert (req.envelope_id, req.type, req.retry_attempt, req.accepts_response_payload) == (
                envelope_id, "events_api", 0, False)
            assert req.payload["type"] == "event_callback" and req.payload["event"]["type"] == "app_mention"
            await slack.wait_for(lambda: slack.acked(envelope_id))
            assert slack.acks[envelope_id] == {"envelope_id": envelope_id}

            ack_on_first_delivery = False
            unacked = await slack.send_socket_event(slack.app_mention(CH, USER, "<@U0BOT> again"))
            first = await next_request({unacked})
            again = await next_request(event_id=first.payload["event_id"])
            assert (again.retry_attempt, again.retry_reason) == (1, "timeout")
            assert again.payload["event_id"] == first.payload["event_id"] and again.envelope_id != first.envelope_id
            await slack.wait_for(lambda: slack.acked(unacked))
            assert [e["retry_attempt"] for e in slack.deliveries(unacked)][:2] == [0, 1]

            command = await slack.send_slash_command("/ask", "what is this?", CH, USER)
            slash = await next_request({command})
            assert slash.accepts_response_payload and slash.payload["command"] == "/ask"
            async with httpx.AsyncClient() as http:
                await http.post(slash.payload["response_url"], json={"text": "done", "response_type": "in_channel"})
            assert slack.command_responses[-1]["body"]["text"] == "done"
            await slack.wait_for(lambda: slack.acked(command))
            assert slack.acks[command]["payload"] == {"text": "working on it"}

            await slack.disconnect("refresh_requested")  # the client reconnects through apps.connections.open
            await slack.wait_for(lambda: slack.connections_opened == 2 and slack.socket_connections == 1)
            assert slack.hello_sent == 2 and len(slack.calls_to("apps.connections.open")) == 2
        finally:
            await client.close()


async def test_envelopes_spread_over_connections() -> None:
    async with FakeSlack() as slack:
        clients = [SocketModeClient(app_token=slack.app_token, web_client=AsyncWebClient(base_url=slack.api_url),
                                    ping_interval=30) for _ in range(2)]

        async def ack(sm: Any, req: SocketModeRequest) -> None:
            await sm.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))

        try:
            for client in clients:
                client.socket_mode_request_listeners.append(ack)
                await client.connect()
            await slack.wait_for(lambda: slack.hello_sent == 2)
            ids = [await slack.send_socket_event(slack.message_event(CH, USER, f"m{i}")) for i in range(2)]
            await slack.wait_for(lambda: all(slack.acked(i) for i in ids))
            assert {slack.deliveries(i)[0]["connection"] for i in ids} == {1, 2}
            await slack.drop_sockets()  # a network blip: both clients reconnect by themselves
            await slack.wait_for(lambda: slack.connections_opened == 4 and slack.socket_connections == 2)
        finally:
            for client in clients:
                await client.close()


async def test_bolt_app_over_socket_mode(slack: FakeSlack) -> None:
    slack.echo_bot_messages = True  # the bot's own replies come back as message events; bolt drops them
    app = AsyncApp(client=web(slack))
    seen_messages: list[dict[str, Any]] = []
    user_message_seen = asyncio.Event()

    @app.event("message")
    async def on_message(event: dict[str, Any]) -> None:
        seen_messages.append(event)
        if not event.get("bot_id"):
            user_message_seen.set()

    @app.event("app_mention")
    async def on_mention(event: dict[str, Any], say: Any) -> None:
        await say(text=f"echo: {event['text']}", thread_ts=event["ts"])

    handler = AsyncSocketModeHandler(app, slack.app_token)
    try:
        await handler.connect_async()
        event = slack.app_mention(CH, USER, "<@U0BOT> ping")
        envelope_id = await slack.send_socket_event(event)
        await slack.wait_for(lambda: slack.acked(envelope_id) and bool(slack.messages(CH, event["ts"])))
        (reply,) = slack.messages(CH, event["ts"])
        assert reply.text == "echo: <@U0BOT> ping" and reply.thread_ts == event["ts"]
        assert slack.calls_to("auth.test")  # bolt's authorization middleware
        echo = next(e for e in slack.envelopes if e["payload"]["event"].get("bot_id"))
        await slack.wait_for(lambda: slack.acked(echo["envelope_id"]))
        assert echo["payload"]["event"]["ts"] == reply.ts
        await slack.send_socket_event(slack.message_event(CH, USER, "a plain message"))
        await asyncio.wait_for(user_message_seen.wait(), 5)
        assert [e["text"] for e in seen_messages] == ["a plain message"]
    finally:
        await handler.close_async()


# ------------------------------------------------------------------------------------------------ Events API


async def test_events_api_over_http_is_signed_and_retried(slack: FakeSlack) -> None:
    verifier = SignatureVerifier(slack.signing_secret)
    received: list[tuple[dict[str, Any], dict[str, str]]] = []
    plan: list[str] = []
    release = asyncio.Event()

    async def events(request: Request) -> Response:
        body = await request.body()
        if not verifier.is_valid_request(body, dict(request.headers)):
            return PlainTextResponse("invalid signature", status_code=401)
        payload = json.loads(body)
        received.append((payload, dict(request.headers)))
        if payload["type"] == "url_verification":
            return JSONResponse({"challenge": payload["challenge"]})
        step = plan.pop(0) if plan else "ok"
        if step == "slow":
            await release.wait()
        if step == "fail":
            return PlainTextResponse("boom", status_code=500)
        if step == "fail-no-retry":
            return PlainTextResponse("boom", status_code=500, headers={"X-Slack-No-Retry": "1"})
        return PlainTextResponse("")

    try:
        async with serve_asgi(Starlette(routes=[Route("/slack/events", events, methods=["POST"])])) as base:
            url = f"{base}/slack/events"
            mention = slack.load_payload("mention_with_image", {"F0IMAGE01": PNG})
            assert (await slack.post_event(url, mention)).status_code == 200
            assert received[-1][0] == mention
            assert (await slack.post_event(url, mention, signing_secret="not-the-secret")).status_code == 401
            assert (await slack.post_event(url, mention, timestamp=int(time.time()) - 600)).status_code == 401
            tampered = json.dumps({**mention, "event_id": "EvFORGED"}).encode()
            assert (await slack.post_event(url, mention, body=tampered)).status_code == 401
            assert (await slack.post_event(url, mention, sign=False)).status_code == 401

            retried = slack.load_payload("retried_delivery", {"F0IMAGE01": PNG})
            assert retried["event_id"] == mention["event_id"]
            assert (await slack.post_event(url, retried, retry_num=1, retry_reason="http_timeout")).status_code == 200
            headers = received[-1][1]
            assert (headers["x-slack-retry-num"], headers["x-slack-retry-reason"]) == ("1", "http_timeout")

            challenge = await slack.url_verification(url)
            assert challenge.json()["challenge"] == received[-1][0]["challenge"]

            plan[:] = ["fail", "slow", "ok"]
            delivery = await slack.deliver_event(url, slack.message_event(CH, USER, "hi"), timeout=0.3)
            assert delivery.delivered
            assert [(a.retry_num, a.status, a.reason) for a in delivery.attempts] == [
                (0, 500, "http_error"), (1, None, "http_timeout"), (2, 200, "")]
            assert [h.get("x-slack-retry-num") for _, h in received[-3:]] == [None, "1", "2"]
            assert received[-1][1]["x-slack-retry-reason"] == "http_timeout"

            plan[:] = ["fail-no-retry"]
            refused = await slack.deliver_event(url, slack.message_event(CH, USER, "hi"))
            assert not refused.delivered and len(refused.attempts) == 1
            release.set()
    finally:
        release.set()


# ------------------------------------------------------------------------------------------------ payloads


PAYLOADS = sorted(p.stem for p in PAYLOAD_DIR.glob("*.json"))


def test_every_recorded_payload_is_an_event_callback() -> None:
    assert set(PAYLOADS) >= {"mention_with_image", "dm_with_pdf", "thread_follow_up", "file_share_video",
                             "assistant_thread_started", "retried_delivery", "bot_message", "message_changed",
                             "message_deleted", "channel_mention_as_message"}
    for name in PAYLOADS:
        payload = load_payload(name)
        assert payload["type"] == "event_callback" and payload["event_id"].startswith("Ev"), name
        assert payload["authorizations"][0]["user_id"] == "U0BOT" and payload["api_app_id"] == "A0APP", name
        assert isinstance(payload["event_time"], int) and payload["event_context"].startswith("4-"), name
    mention, twin = load_payload("mention_with_image"), load_payload("channel_mention_as_message")
    assert mention["event"]["type"] == "app_mention" and mention["event"]["files"][0]["mimetype"].startswith("image/")
    assert twin["event"]["type"] == "message" and twin["event_id"] != mention["event_id"]
    assert (twin["event"]["channel"], twin["event"]["ts"]) == (mention["event"]["channel"], mention["event"]["ts"])
    assert load_payload("dm_with_pdf")["event"]["subtype"] == "file_share"
    assert load_payload("dm_with_pdf")["event"]["channel_type"] == "im"
    assert load_payload("thread_follow_up")["event"]["thread_ts"] == mention["event"]["ts"]
    assert load_payload("bot_message")["event"]["bot_id"]
    assert load_payload("message_changed", text="x")["event"]["text"] == "x"  # overrides reach the event


async def test_loaded_payloads_are_live_on_the_fake(slack: FakeSlack) -> None:
    mention = slack.load_payload("mention_with_image", {"F0IMAGE01": PNG})
    follow_up = slack.load_payload("thread_follow_up")
    assert mention["event_id"] != "Ev0MENTIONIMG" and follow_up["event"]["thread_ts"] == mention["event"]["ts"]
    assert float(follow_up["event"]["ts"]) > float(mention["event"]["ts"])
    retried = slack.load_payload("retried_delivery")  # the same file, already hosted here
    assert retried["event_id"] == mention["event_id"] and retried["event"] == mention["event"]
    (image,) = mention["event"]["files"]
    assert image["id"] != "F0IMAGE01" and image["url_private"].startswith(slack.url) and image["size"] == len(PNG)
    async with httpx.AsyncClient() as http:
        got = await http.get(image["url_private_download"], headers={"Authorization": f"Bearer {slack.bot_token}"})
    assert got.content == PNG
    dm = slack.load_payload("dm_with_pdf", {"F0PDF0001": b"%PDF-1.7"}, channel="D0OTHER")
    assert dm["event"]["channel"] == "D0OTHER" and dm["event"]["files"][0]["mimetype"] == "application/pdf"


async def test_wait_for_times_out_with_context(slack: FakeSlack) -> None:
    await web(slack).chat_postMessage(channel=CH, text="seen")
    with pytest.raises(TimeoutError, match=r"never.*chat\.postMessage"):
        await slack.wait_for(lambda: False, timeout=0.05, what="never")
