"""Several replicas on one PostgreSQL database: events between them, and (multi-process) the whole service."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from adapters.common.bus import Bus

pytestmark = pytest.mark.timeout(300)


async def test_events_reach_every_replica_in_order_whatever_their_size(postgres: Any) -> None:
    from bot.store.postgres.store import PostgresStore

    url = postgres.database()
    stores = [PostgresStore(url), PostgresStore(url)]
    for store in stores:
        await store.open()
    try:
        seen: list[list[dict[str, Any]]] = [[], []]
        got_all = asyncio.Event()

        def receiver(i: int) -> Any:
            def deliver(event: dict[str, Any]) -> None:
                seen[i].append(event)
                if all(len(s) == 4 for s in seen):
                    got_all.set()
            return deliver

        buses = [Bus(store, "test_bus", receiver(i)) for i, store in enumerate(stores)]
        for bus in buses:
            assert bus.shared
            await bus.start()
        big = "déjà vu 日本語 " * 3000  # ~50 kB of UTF-8: many parts, each under NOTIFY's 8,000 bytes
        sent = [{"n": 1, "text": "short"}, {"n": 2, "text": big}, {"n": 3, "text": ""}, {"n": 4, "text": big[:7999]}]
        await buses[0].publish(sent[0])
        await buses[0].publish(sent[1])
        await buses[1].publish(sent[2])
        await buses[1].publish(sent[3])
        # a stranger's notification on the channel is ignored, not fatal
        await stores[0].notify("test_bus", ["not the bus format", "x:9:2:out of range"])
        await asyncio.wait_for(got_all.wait(), 30)
        assert seen[0] == seen[1]
        assert sorted(seen[0], key=lambda e: e["n"]) == sent
        # a replica's own events keep their order
        mine = [e["n"] for e in seen[1] if e["n"] in (1, 2)]
        assert mine == [1, 2]
    finally:
        for store in stores:
            await store.close()


async def test_without_a_shared_store_events_are_handed_over_directly() -> None:
    got: list[dict[str, Any]] = []
    bus = Bus(object(), "local", got.append)
    await bus.start()
    await bus.publish({"a": 1})
    assert not bus.shared and got == [{"a": 1}]


async def test_one_replica_leads_at_a_time_and_another_takes_over(postgres: Any) -> None:
    from bot.store.postgres.store import PostgresStore

    url = postgres.database()
    stores = [PostgresStore(url), PostgresStore(url)]
    for store in stores:
        await store.open()
    leading: list[int] = []
    overlaps: list[list[int]] = []
    changed = asyncio.Event()

    def lead(i: int) -> Any:
        async def run() -> None:
            if leading:
                overlaps.append([*leading, i])
            leading.append(i)
            changed.set()
            try:
                await asyncio.Event().wait()
            finally:
                leading.remove(i)
                changed.set()
        return run

    async def until(condition: Any) -> None:
        async with asyncio.timeout(15):
            while not condition():
                changed.clear()
                await changed.wait()

    tasks = {0: stores[0].elect("test leader", lead(0), retry=0.2)}
    try:
        await until(lambda: leading == [0])
        tasks[1] = stores[1].elect("test leader", lead(1), retry=0.2)
        await asyncio.sleep(1)  # several tries of the second replica: the lock is held
        assert leading == [0]
        # the leader's database connection dies: it notices and stops leading; someone leads again
        postgres.psql("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                      " AND granted", url.rsplit("/", 1)[1])
        await until(lambda: leading == [1])
        # the leader stops (a replica shut down, or killed: its connection closes): the other takes over
        tasks.pop(1).cancel()
        await until(lambda: leading == [0])
        assert overlaps == []
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for store in stores:
            await store.close()
    assert leading == []


async def test_migrate_copies_a_sqlite_store_into_postgresql_idempotently(
        tmp_path: Any, postgres: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from adapters.cli import main
    from bot.store import NewMessage, SQLiteStore
    from bot.store.postgres.store import PostgresStore
    from bot.types import Attachment, ConversationKey

    data = tmp_path / "data"
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {data}\n")
    lite = SQLiteStore(data / "internvl-bot.sqlite3", data / "attachments")
    await lite.open()
    ana, rui = ConversationKey("telegram", "111"), ConversationKey("web", "s" * 32)
    await lite.update_conversation(ana, persona="tutor", language="pt", name="Ana Lima (@ana)", operator="Marta",
                                   operator_at=5.0)
    question = await lite.add_incoming(ana, NewMessage(
        role="user", text="o que é isto?", sender_id="111", event_id="update-7",
        attachments=[Attachment("file-1", "foto.jpg", "image/jpeg")], route={"reply": "1"}))
    assert question is not None
    photo = await lite.save_attachment(question, 0, b"\xff\xd8 a photo", "image/jpeg")
    await lite.finish(question, "answered", reply="uma chaleira", reply_platform_ids=["901", "902"])
    waiting = await lite.add_incoming(rui, NewMessage(role="user", text="still pending", event_id="req-1"))
    await lite.record_usage("111", "messages", 1, 1000.0)
    await lite.stash("album:1", "001", "{}")
    await lite.close()

    url = postgres.database()
    monkeypatch.setenv("INTERNVL_BOT_DATABASE_URL", url)
    assert await asyncio.to_thread(main, ["--config", str(config), "migrate", "--to", "postgres"]) == 0
    assert "messages 3 new, 0 already there" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["--config", str(config), "migrate", "--to", "postgres"]) == 0  # again: nothing doubled
    assert "messages 0 new, 3 already there" in capsys.readouterr().out

    pg = PostgresStore(url)
    await pg.open()
    try:
        copied = await pg.conversation(ana)
        assert (copied.persona, copied.name, copied.number, copied.operator) == ("tutor", "Ana Lima (@ana)", 1, "Marta")
        # conversation numbers continue after the copied ones
        assert (await pg.conversation(ConversationKey("telegram", "222"))).number == 2
        rows = await pg.transcript(ana)
        assert [(m.role, m.text) for m in rows] == [("user", "o que é isto?"), ("assistant", "uma chaleira")]
        assert rows[0].attachments[0].sha256 == photo and await pg.attachment_data(photo) == b"\xff\xd8 a photo"
        assert (await pg.find_by_platform_id("telegram", "111", "902")).id == rows[1].id  # type: ignore[union-attr]
        # the platform's redelivery after the move is still recognised; the pending message is still pending
        assert await pg.add_incoming(ana, NewMessage(role="user", text="again", event_id="update-7")) is None
        assert [m.id for m in await pg.pending()] == [waiting]
        assert (await pg.usage("111", "messages", 0))[0] == 1
        assert await pg.stashed("album:") == {"album:1": [("001", "{}")]}
        # new messages continue after the copied ids
        assert await pg.add_message(rui, NewMessage(role="user", text="new")) > rows[1].id
    finally:
        await pg.close()

    # a database already used by another store is not mixed with this one
    other = postgres.database()
    pg = PostgresStore(other)
    await pg.open()
    for n in range(3):
        await pg.add_message(ConversationKey("web", "x"), NewMessage(role="user", text=f"someone else's {n}"))
    await pg.close()
    monkeypatch.setenv("INTERNVL_BOT_DATABASE_URL", other)
    assert await asyncio.to_thread(main, ["--config", str(config), "migrate", "--to", "postgres"]) == 2
    assert "already holds other messages" in capsys.readouterr().err


def test_replicas_need_one_web_session_secret(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key generated per replica would make every replica refuse the others' cookies."""
    from adapters.web import WebSettings, session_secret
    from bot.errors import StartupError
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, store={"backend": "postgres"})
    monkeypatch.delenv("INTERNVL_BOT_WEB_SESSION_SECRET", raising=False)
    with pytest.raises(StartupError, match="INTERNVL_BOT_WEB_SESSION_SECRET"):
        session_secret(settings, WebSettings())
    monkeypatch.setenv("INTERNVL_BOT_WEB_SESSION_SECRET", "shared-secret-of-the-replicas")
    assert session_secret(settings, WebSettings()) == b"shared-secret-of-the-replicas"


async def test_three_replicas_behind_nginx_answer_everything_once_in_order_through_a_kill_9(
        tmp_path: Any, postgres: Any) -> None:
    """The issue's test: 3 ``serve`` processes (own data dirs, one database) behind a real nginx; 300 messages
    over 50 conversations (40 web chats, 10 Chatwoot conversations); one replica SIGKILLed while it
    answers. Every message answered exactly once, in order per conversation; the web pages' streams, held
    on a surviving replica, saw every answer wherever it was made; nothing left pending."""
    import random

    from tests.fakes.chatwoot_api import FakeChatwoot
    from tests.replica_cluster import (
        NGINX,
        Cluster,
        Killed,
        WebUser,
        answered,
        browsers,
        kill_one_answering,
        taken_over_after,
        verdict,
    )

    if NGINX is None:
        if os.environ.get("INTERNVL_BOT_REQUIRE_NGINX"):
            raise RuntimeError("nginx is not installed")
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does)")
    url = postgres.database()
    rng = random.Random(15)
    words = "the kettle clicks and switches off before the water boils"
    async with FakeChatwoot(secret="cw-replica-secret") as cw:
        cluster = Cluster(tmp_path, url, 3, delay_ms=20, lease=3, chatwoot=cw)
        users: list[WebUser] = []
        try:
            await cluster.start()
            cw.webhook_url = f"{cluster.url}/chatwoot/webhook"
            survivor = cluster.replicas[0]
            async with browsers(timeout=30) as http:
                users = [WebUser(cluster, survivor.url) for _ in range(40)]
                await asyncio.gather(*(u.open(http) for u in users))
                conversations = [cw.conversation() for _ in range(10)]
                asked: dict[int, list[str]] = {c: [] for c in conversations}

                async def web(user: WebUser, i: int) -> None:
                    for n in range(6):
                        await user.say(http, f"web {i} message {n}: {words}")
                        await asyncio.sleep(rng.uniform(0, 0.6))

                async def chatwoot(conv: int) -> None:
                    for n in range(6):
                        text = f"chatwoot {conv} message {n}: {words}"
                        asked[conv].append(text)
                        await cw.customer_message(conv, text)
                        await asyncio.sleep(rng.uniform(0, 0.6))

                async def kill_mid_answer() -> Killed:
                    async with asyncio.timeout(60):
                        while await answered(url) < 60:
                            await asyncio.sleep(0.05)
                    return await kill_one_answering(cluster, url, spare=survivor)

                *_, killed = await asyncio.gather(*(web(u, i) for i, u in enumerate(users)),
                                                  *(chatwoot(c) for c in conversations), kill_mid_answer())
                assert not killed.replica.alive
                # everything answered (the killed replica's conversations once its lease ran out)
                async with asyncio.timeout(90):
                    while await answered(url) < 300:
                        await asyncio.sleep(0.2)
                failover = await taken_over_after(url, killed)
                await asyncio.sleep(1)  # the last answers' events reach the pages
        finally:
            for user in users:
                await user.close()
            cluster.stop()

        # exactly one answer per question, in order, per conversation; nothing pending
        found = await verdict(url)
        assert (found.questions, found.lost, found.duplicates, found.order_violations, found.wrong, found.pending) \
            == (300, 0, 0, 0, 0, 0), "\n".join(r.log()[-3000:] for r in cluster.replicas)
        # the pages' streams on the surviving replica saw each answer wherever it was made (twice when the
        # killed replica sent it just before dying: the page shows one answer per question, the last)
        for user in users:
            seen = user.answers()
            for message_id, text in user.posted:
                assert seen.get(message_id) and set(seen[message_id]) == {f"echo: {text}"}, (message_id, seen)
        # the Chatwoot customers see each answer once, in order
        for conv, texts in asked.items():
            assert cw.public_replies(conv) == [f"echo: {t}" for t in texts]
        # the killed replica's conversations were taken over within its lease (3 s) and a little
        assert failover is not None and failover < 3 + 5


async def test_readiness_fails_while_the_database_is_unreachable(
        tmp_path: Any, postgres: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica that cannot reach PostgreSQL says so on /readyz (the balancer stops sending it work), and is
    ready again when the database is back."""
    from bot.engines import EchoEngine
    from tests.conftest import make_settings
    from tests.live_server import live_server

    url = postgres.database()
    name = url.rsplit("/", 1)[1]
    monkeypatch.setenv("INTERNVL_BOT_DATABASE_URL", url)
    monkeypatch.setenv("INTERNVL_BOT_WEB_SESSION_SECRET", "one-secret-for-all-replicas")
    settings = make_settings(tmp_path, store={"backend": "postgres"})
    async with live_server(settings, EchoEngine()) as live, live.client() as client:
        assert (await client.get("/readyz")).json() == {"ready": True}
        postgres.psql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        postgres.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        try:
            async with asyncio.timeout(30):
                while (response := await client.get("/readyz")).status_code != 503:
                    await asyncio.sleep(0.2)
            assert "store" in response.json()["problems"]
        finally:
            postgres.psql(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        async with asyncio.timeout(30):
            while (await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.2)


async def test_the_web_chat_on_postgresql_answers_resets_and_exports(
        tmp_path: Any, postgres: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """One replica on PostgreSQL through the real entry point: answers stream, /reset starts afresh (the
    command itself is not swept away with what it resets), an exported file downloads."""
    from bot.engines import EchoEngine
    from bot.l10n.i18n import text as t
    from tests.conftest import make_settings
    from tests.live_server import exchange, live_server, open_session

    monkeypatch.setenv("INTERNVL_BOT_DATABASE_URL", postgres.database())
    monkeypatch.setenv("INTERNVL_BOT_WEB_SESSION_SECRET", "one-secret-for-all-replicas")
    settings = make_settings(tmp_path, store={"backend": "postgres"})
    async with live_server(settings, EchoEngine(delay=0.01)) as live, live.client() as client:
        await open_session(client)
        response, events = await exchange(live, client, "my kettle clicks")
        assert response.status_code == 202 and events[-1]["text"] == "echo: my kettle clicks"
        response, events = await exchange(live, client, "/reset", until="notice")
        assert response.status_code == 202
        assert [e["text"] for e in events if e["type"] == "notice"] == [t("reset_done", "en")]
        await exchange(live, client, "| item | total |\n|---|---|\n| pump | 12.50 |")
        _, events = await exchange(live, client, "/export csv", until="notice")
        (file,) = [e for e in events if e["type"] == "file"]
        download = await client.get(file["url"])  # kept in the database: any replica serves it
        assert download.status_code == 200 and b"pump,12.50" in download.content


def test_serve_check_on_postgresql_names_the_database_and_what_is_missing(
        tmp_path: Any, postgres: Any) -> None:
    """``serve --check`` with replicas: the database it reached (never its password), the missing shared web
    secret in one line; an unreachable database is one line too, not a traceback."""
    import subprocess
    import sys

    from bot.errors import StartupError
    from bot.store.postgres.store import PostgresStore
    from tests.replica_cluster import ROOT

    url = postgres.database()
    (tmp_path / "config.yaml").write_text(f"data_dir: {tmp_path / 'data'}\nengine:\n  kind: echo\n"
                                          "store:\n  backend: postgres\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "INTERNVL_BOT_DATABASE_URL": url,
           "INTERNVL_BOT_WEB_SESSION_SECRET": "shared-by-the-replicas"}
    env.pop("INTERNVL_BOT_CONFIG", None)

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "adapters.cli", "serve", "--check"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    ok = check()
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert f"✓ store: PostgreSQL 127.0.0.1:{postgres.port}/{url.rsplit('/', 1)[1]} is writable" in ok.stdout
    assert "bot-test-password" not in ok.stdout + ok.stderr
    del env["INTERNVL_BOT_WEB_SESSION_SECRET"]
    missing = check()
    # a ✗ line of its own (the other parts are still checked), and a failing status
    assert missing.returncode == 1
    assert [line for line in missing.stdout.splitlines() if line.startswith("✗ web:")
            and "set INTERNVL_BOT_WEB_SESSION_SECRET" in line], missing.stdout

    async def unreachable() -> None:
        await PostgresStore(url.replace(f":{postgres.port}/", ":1/"), open_timeout=1).open()

    with pytest.raises(StartupError, match=r"cannot reach PostgreSQL at 127.0.0.1:1/"):
        asyncio.run(unreachable())
