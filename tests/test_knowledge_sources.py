"""Knowledge from the platforms (adapters/kb_sources.py, bot/knowledge/remote.py) through the real ``internvl-bot kb``
command: Chatwoot Help Center articles and resolved conversations against the protocol-faithful fake
(tests/fakes/chatwoot_api.py), django-helpdesk's knowledge base and solved tickets against the real
django-helpdesk (tests/helpdesk_peer.py), and an answer on the web chat whose Sources footer links the
article's public page.

The command runs ``asyncio.run`` itself, so each call runs in a thread while the fakes serve on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from adapters.cli import main
from adapters.kb_sources import resolver
from bot.engines import EchoEngine
from bot.knowledge.remote import SourceUnavailable
from tests.conftest import ROOT, make_settings
from tests.fakes.chatwoot_api import FakeChatwoot
from tests.helpdesk_peer import CLOSED, RESOLVED, helpdesk_site
from tests.live_server import live_server, open_session
from tests.test_knowledge_answers import ask, footer_links

TOKEN = "cw-agent-token-secret-0042"


@pytest.fixture
async def cw(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeChatwoot]:
    monkeypatch.setenv("CHATWOOT_API_TOKEN", TOKEN)
    async with FakeChatwoot(agent_token=TOKEN) as fake:
        yield fake


def write_config(tmp_path: Path, **more: Any) -> Path:
    config = tmp_path / "config.yaml"
    data = {"data_dir": str(tmp_path / "data"), "logging": {"level": "WARNING"}, **more}
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    return config


def chatwoot_config(tmp_path: Path, cw: FakeChatwoot, **more: Any) -> Path:
    return write_config(tmp_path, adapters={"chatwoot": {"base_url": cw.url, "account_id": cw.account_id}}, **more)


async def kb(config: Path, *args: str) -> int:
    return await asyncio.to_thread(main, ["--config", str(config), "kb", *args])


async def search(config: Path, capsys: pytest.CaptureFixture[str], base: str, query: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert await kb(config, "search", base, query, "--json") == 0
    return json.loads(capsys.readouterr().out)


def lines_about(err: str, part: str) -> list[str]:
    return [line for line in err.splitlines() if part in line]


PUMP_ARTICLE = ("# Error E21\n\nError **E21** means the impeller is blocked: switch the pump off, open the front "
                "cover and remove the debris around the impeller.\n")


# -- failure paths first ---------------------------------------------------------------------------------------


async def test_a_portal_that_does_not_exist_is_one_line_and_nothing_is_written(
        tmp_path: Path, cw: FakeChatwoot, capsys: pytest.CaptureFixture[str]) -> None:
    config = chatwoot_config(tmp_path, cw)
    assert await kb(config, "add", "support", "--chatwoot-portal", "nohelp") == 1
    captured = capsys.readouterr()
    [line] = lines_about(captured.err, "chatwoot-portal:nohelp")
    assert "HTTP 404" in line and f"{cw.url}/api/v1/accounts/1/portals/nohelp" in line and "check the slug" in line
    assert await kb(config, "list") == 0
    assert "support" not in capsys.readouterr().out  # no source, no base
    assert TOKEN not in captured.err + captured.out


async def test_chatwoot_failing_mid_sync_leaves_the_previous_index_serving(
        tmp_path: Path, cw: FakeChatwoot, capsys: pytest.CaptureFixture[str]) -> None:
    cw.portal("help")
    ids = [cw.article("help", f"Spare part {n}", f"Spare part {n} fits the valve model V{n}.") for n in range(25)]
    cw.article("help", "Error E21", PUMP_ARTICLE)  # the newest: page 1; the oldest spare part is on page 2
    config = chatwoot_config(tmp_path, cw)
    assert await kb(config, "add", "support", "--chatwoot-portal", "help") == 0
    assert "26 added" in capsys.readouterr().out
    cw.delete_article(ids[0])
    cw.fail("articles.index", status=503, times=3, after=1)  # page 1 answers, page 2 does not
    assert await kb(config, "sync", "support") == 1
    captured = capsys.readouterr()
    [line] = lines_about(captured.err, "chatwoot-portal:help")
    assert "HTTP 503 (3 tries)" in line and f"{cw.url}/api/v1/accounts/1/portals/help/articles" in line
    assert line.endswith("the 26 document(s) indexed from it before keep serving; `internvl-bot kb sync support` "
                         "reads it again"), line
    assert "0 removed" in captured.out
    # the article deleted meanwhile is still served: nothing is removed after a partial read
    assert (await search(config, capsys, "support", "spare part valve V0"))[0]["title"] == "Spare part 0"
    cw.heal()
    assert await kb(config, "sync", "support") == 0
    assert "1 removed" in capsys.readouterr().out
    assert all(hit["title"] != "Spare part 0" for hit in await search(config, capsys, "support", "spare part V0"))


async def test_a_429_is_waited_out_as_retry_after_says(tmp_path: Path, cw: FakeChatwoot,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    cw.portal("help")
    cw.article("help", "Error E21", PUMP_ARTICLE)
    config = chatwoot_config(tmp_path, cw)
    cw.fail("articles.index", status=429, times=2, retry_after=0.4)
    started = time.monotonic()
    assert await kb(config, "add", "support", "--chatwoot-portal", "help") == 0
    assert time.monotonic() - started >= 0.8
    assert "1 added" in capsys.readouterr().out
    assert [c.status for c in cw.calls if c.name == "articles.index"][:3] == [429, 429, 200]


async def test_missing_credentials_are_one_line_naming_the_setting(tmp_path: Path, cw: FakeChatwoot,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cw.portal("help")
    monkeypatch.delenv("CHATWOOT_API_TOKEN")
    config = chatwoot_config(tmp_path, cw)
    assert await kb(config, "add", "support", "--chatwoot-portal", "help") == 1
    [line] = lines_about(capsys.readouterr().err, "chatwoot-portal:help")
    assert "set the environment variable CHATWOOT_API_TOKEN" in line
    monkeypatch.setenv("CHATWOOT_API_TOKEN", "not-the-token-9999")
    assert await kb(config, "add", "support", "--chatwoot-portal", "help") == 1
    captured = capsys.readouterr()
    [line] = lines_about(captured.err, "chatwoot-portal:help")
    assert "HTTP 401" in line and "CHATWOOT_API_TOKEN" in line and "not-the-token-9999" not in captured.err
    no_account = write_config(tmp_path, adapters={"chatwoot": {"base_url": cw.url}})
    monkeypatch.setenv("CHATWOOT_API_TOKEN", TOKEN)
    assert await kb(no_account, "add", "support", "--chatwoot-portal", "help") == 1
    assert "set adapters.chatwoot.account_id" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not a choice
        await kb(config, "add", "support", "--solved-tickets", "zendesk")
    assert await kb(config, "add", "support", "solved-tickets:zendesk") == 2
    assert "solved tickets come from chatwoot or django-helpdesk" in capsys.readouterr().err


async def test_a_timeout_is_tried_again(tmp_path: Path, cw: FakeChatwoot) -> None:
    cw.portal("help")
    cw.article("help", "Error E21", PUMP_ARTICLE)
    settings = make_settings(tmp_path, adapters={"chatwoot": {"base_url": cw.url, "account_id": 1}})
    cw.delay("articles.index", 1.0)
    async with httpx.AsyncClient(timeout=0.3) as http:
        source = resolver(settings, http)("chatwoot-portal:help")
        assert source is not None
        docs = [d async for d in source.documents()]
        assert [d.title for d in docs] == ["Error E21"]
        cw.delay("portals.show", 1.0, times=3)
        with pytest.raises(SourceUnavailable, match=r"chatwoot-portal:help: GET http://127.0.0.1:\d+/api/v1/"
                                                     r"accounts/1/portals/help: timed out, 3 tries — Chatwoot at "
                                                     r".* check it and the network"):
            _ = [d async for d in source.documents()]


# -- the Help Center -----------------------------------------------------------------------------------------


async def test_portal_articles_are_indexed_updated_and_removed(tmp_path: Path, cw: FakeChatwoot,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    cw.portal("help")
    e21 = cw.article("help", "Error E21", PUMP_ARTICLE, category="Pumps")
    reset = cw.article("help", "Resetting the router", "Hold the reset button of the router R5 for ten seconds.")
    cw.article("help", "Unreleased pump X300", "The X300 pump ships next year.", status="draft")
    config = chatwoot_config(tmp_path, cw)
    assert await kb(config, "add", "support", "--chatwoot-portal", "help") == 0
    assert "2 added, 0 updated, 0 unchanged" in capsys.readouterr().out
    [best, *_] = await search(config, capsys, "support", "what does error E21 on the pump mean?")
    assert (best["doc"], best["title"]) == (f"{cw.url}/hc/help/articles/{cw._articles[e21]['slug']}", "Error E21")
    assert "impeller is blocked" in best["text"]
    assert await search(config, capsys, "support", "X300 ships next year") == []  # a draft is not published
    # the token went in the header Chatwoot reads, never in a URL
    assert all(c.token == TOKEN and TOKEN not in c.path for c in cw.calls)
    # a second add does nothing
    assert await kb(config, "add", "support", "--chatwoot-portal", "help") == 0
    assert "0 added, 0 updated, 2 unchanged" in capsys.readouterr().out
    # edited -> updated, deleted -> removed, on sync
    cw.update_article(e21, content="Error E21: the impeller is jammed by gravel; rinse the filter basket.")
    cw.delete_article(reset)
    assert await kb(config, "sync", "support") == 0
    assert "0 added, 1 updated, 0 unchanged, 1 removed" in capsys.readouterr().out
    assert "gravel" in (await search(config, capsys, "support", "impeller jammed gravel"))[0]["text"]
    assert await search(config, capsys, "support", "reset button router R5") == []
    assert await kb(config, "list") == 0
    assert "sources: chatwoot-portal:help" in capsys.readouterr().out
    # a portal that suddenly reads as nothing at all does not empty the base: said, and kept
    cw.delete_article(e21)
    assert await kb(config, "sync", "support") == 1
    captured = capsys.readouterr()
    assert "0 removed" in captured.out and "chatwoot-portal:help: read no document where 1 were indexed" in \
        captured.err
    assert "gravel" in (await search(config, capsys, "support", "impeller jammed gravel"))[0]["text"]
    # remove forgets the source and its documents
    assert await kb(config, "remove", "support", "chatwoot-portal:help") == 0
    assert "1 document(s) removed" in capsys.readouterr().out
    assert await search(config, capsys, "support", "impeller jammed gravel") == []


async def test_config_sources_and_pages_and_a_custom_domain(tmp_path: Path, cw: FakeChatwoot,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    cw.portal("docs", custom_domain="help.acme.example")
    first = cw.article("docs", "Valve V1 pressure", "The valve V1 opens at 2 bar.")
    for n in range(30):  # two pages of 25
        cw.article("docs", f"Filter F{n}", f"Filter F{n} is changed every {n + 1} months.")
    config = chatwoot_config(tmp_path, cw, knowledge={"bases": {"help": {"sources": ["chatwoot-portal:docs"]}}})
    assert await kb(config, "sync", "help") == 0
    assert "31 added" in capsys.readouterr().out
    assert [c.params["page"] for c in cw.calls if c.name == "articles.index"] == ["1", "2", "3"]
    settings = make_settings(tmp_path, adapters={"chatwoot": {"base_url": cw.url, "account_id": 1}})
    [hit] = (await search(config, capsys, "help", "valve V1 opening pressure bar"))[:1]
    assert hit["doc"] == f"{cw.url}/hc/docs/articles/{cw._articles[first]['slug']}"
    from bot.knowledge import open_index
    from bot.store import SQLiteStore

    store = SQLiteStore(settings.store_path)
    await store.open()
    try:
        [passage] = (await open_index(settings, store).search(["help"], "valve V1 opening pressure"))[:1]
        assert passage.url == cw.article_url(first) == \
            f"https://help.acme.example/hc/docs/articles/{cw._articles[first]['slug']}"
    finally:
        await store.close()


# -- solved tickets, scrubbed -----------------------------------------------------------------------------------


async def test_resolved_conversations_are_indexed_without_the_people(tmp_path: Path, cw: FakeChatwoot,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    contact = {"name": "Jane Doe", "email": "jane.doe@example.com", "phone_number": "+14155550134"}
    conv = cw.conversation(contact=contact)
    await cw.customer_message(conv, "Hello, this is Jane Doe. My pump X200 shows error E21 after cleaning. "
                                    "Call me on +1 415 555 0134 or write to jane.doe@example.com")
    async with httpx.AsyncClient() as http:  # the bot's own answer, as the agent bot posts it
        await http.post(f"{cw.url}/api/v1/accounts/1/conversations/{conv}/messages",
                        headers={"api_access_token": cw.bot_token},
                        json={"content": "BOTSAYS please restart the pump", "message_type": "outgoing"})
    await cw.agent_message(conv, "PRIVATENOTE customer is on the gold plan", private=True)
    await cw.agent_message(conv, "Hi Jane,\n\nE21 means the impeller is blocked: switch the pump off, open the "
                                 "front cover and remove the debris.\n\nBest regards,\nAna Agent")
    cw.label(conv, "pump-x200", product="Pump X200")
    await cw.set_status(conv, "resolved", notify=False)
    bot_only = cw.conversation()
    await cw.customer_message(bot_only, "Does the router R5 support mesh networking?")
    await cw.set_status(bot_only, "resolved", notify=False)
    still_open = cw.conversation(status="open")
    await cw.customer_message(still_open, "Printer P9 paper jam in tray 2")
    await cw.agent_message(still_open, "Open tray 2 and pull the sheet out.")
    config = chatwoot_config(tmp_path, cw)
    assert await kb(config, "add", "support", "--solved-tickets", "chatwoot") == 0
    assert "1 added" in capsys.readouterr().out
    [hit] = await search(config, capsys, "support", "pump E21 impeller blocked after cleaning")
    assert hit["doc"] == f"{cw.url}/app/accounts/1/conversations/{conv}"
    assert hit["title"] == f"Solved conversation #{conv} (pump-x200)"
    text = hit["text"]
    assert "E21 means the impeller is blocked: switch the pump off" in text  # the answer survives
    assert "My pump X200 shows error E21 after cleaning" in text and "Pump X200" in text
    for personal in ("Jane", "Doe", "jane.doe@example.com", "415", "0134", "Ana", "Best regards", "Hi Jane"):
        assert personal.lower() not in text.lower(), personal
    assert "BOTSAYS" not in text and "PRIVATENOTE" not in text
    assert await search(config, capsys, "support", "router mesh networking") == []
    assert await search(config, capsys, "support", "printer paper jam tray") == []


# -- django-helpdesk, the real one ----------------------------------------------------------------------------------


async def test_django_helpdesk_kb_items_and_solved_tickets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    async with helpdesk_site(tmp_path) as site:
        monkeypatch.setenv("HELPDESK_API_USER", site.api_user)
        monkeypatch.setenv("HELPDESK_API_PASSWORD", site.api_password)
        valve = await site.kb_item("valves", "Valve V1 pressure", "At which pressure does V1 open?",
                                   "The valve **V1** opens at 2 bar.\n\n- check the seal\n- then the spring",
                                   category_title="Valves")
        await site.kb_item("valves", "Valve V2 noise", "Why does V2 whistle?", "A worn seat makes V2 whistle.")
        await site.kb_item("internal", "Discount codes", "Which codes exist?", "STAFF50 gives half off.",
                           public=False)
        ticket = await site.customer_ticket("Pump hums", "Hi, my pump hums loudly since Monday. Jane Roe",
                                            email="jane.roe@example.org")
        await site.staff_followup(ticket, "Hello Jane,\n\nA humming pump has a stuck capacitor: replace the "
                                          "start capacitor C3.\n\nKind regards,\nAgent", new_status=RESOLVED)
        open_ticket = await site.customer_ticket("Router slow", "The router R5 is slow at night.")
        await site.staff_followup(open_ticket, "Restart the router R5 at midnight.")
        config = write_config(tmp_path, adapters={"django_helpdesk": {"base_url": site.url}})
        assert await kb(config, "add", "support", "--django-helpdesk-kb", "--solved-tickets", "django-helpdesk") == 0
        assert "3 added" in capsys.readouterr().out
        [hit, *_] = await search(config, capsys, "support", "valve V1 opening pressure bar")
        assert (hit["doc"], hit["title"]) == (f"{site.url}/kb/valves/?kbitem={valve}", "Valve V1 pressure")
        assert "At which pressure does V1 open?" in hit["text"] and "opens at 2 bar" in hit["text"]
        assert "check the seal" in hit["text"]
        assert await search(config, capsys, "support", "STAFF50 discount codes half off") == []  # not public
        [solved] = await search(config, capsys, "support", "pump hums capacitor")
        assert (solved["doc"], solved["title"]) == (f"{site.url}/tickets/{ticket}/", f"Solved ticket #{ticket}")
        assert "replace the start capacitor C3" in solved["text"] and "hums loudly since Monday" in solved["text"]
        for personal in ("Jane", "Roe", "jane.roe@example.org", "Kind regards"):
            assert personal.lower() not in solved["text"].lower(), personal
        assert await search(config, capsys, "support", "router R5 slow at night midnight") == []
        # edited and deleted items, a closed ticket: on sync
        await site.kb_item("valves", answer="The valve V1 opens at 3 bar since 2025.", item_id=valve)
        await site.staff_followup(open_ticket, "Fixed by the firmware 2.1 update.", new_status=CLOSED)
        assert await kb(config, "sync", "support") == 0
        assert "1 added, 1 updated, 2 unchanged, 0 removed" in capsys.readouterr().out
        assert "3 bar" in (await search(config, capsys, "support", "valve V1 opening pressure bar"))[0]["text"]
        v2 = next(h for h in await search(config, capsys, "support", "V2 whistle worn seat"))
        await site.kb_item("valves", item_id=int(v2["doc"].rsplit("=", 1)[1]), delete=True)
        assert await kb(config, "sync", "support") == 0
        assert "1 removed" in capsys.readouterr().out
    # the helpdesk is gone: one line, the index keeps serving
    assert await kb(config, "sync", "support") == 1
    err = capsys.readouterr().err
    assert len(lines_about(err, "django-helpdesk-kb:")) == 1 and "cannot connect" in err
    assert (await search(config, capsys, "support", "valve V1 opening pressure bar"))[0]["title"] == \
        "Valve V1 pressure"


# -- an answer that cites the article ---------------------------------------------------------------------------


async def test_the_web_chat_cites_the_help_center_article_by_its_public_url(
        tmp_path: Path, cw: FakeChatwoot) -> None:
    cw.portal("help")
    e21 = cw.article("help", "Pump error E21", PUMP_ARTICLE)
    personas = tmp_path / "personas"
    personas.mkdir()
    support = yaml.safe_load((ROOT / "prompts" / "support.yaml").read_text(encoding="utf-8"))
    support["knowledge"] = ["support"]
    (personas / "support.yaml").write_text(yaml.safe_dump(support, allow_unicode=True), encoding="utf-8")
    overrides: dict[str, Any] = {"conversation": {"personas_dir": str(personas), "default_persona": "support"},
                                 "server": {"public_url": "https://bot.example.com"},
                                 "adapters": {"chatwoot": {"base_url": cw.url, "account_id": 1}}}
    config = write_config(tmp_path, **overrides)
    assert await kb(config, "add", "support", "--chatwoot-portal", "help") == 0
    engine = EchoEngine(record=True)
    async with live_server(make_settings(tmp_path, **overrides), engine) as live, live.client() as client:
        await open_session(client)
        text = await ask(live, client, "What does error E21 on my pump mean?")
    assert "[knowledge 1: Pump error E21]" in text, text
    assert footer_links(text) == [("Pump error E21", cw.article_url(e21))]
    assert "impeller is blocked" in engine.calls[-1][-1].prompt_text
