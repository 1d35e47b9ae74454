"""Answers from a knowledge base, end to end: ``internvl-bot kb add`` indexes a PDF manual and a Markdown FAQ,
a persona names the base, and a question on the web chat, Telegram, Chatwoot, Slack, django-helpdesk and the
helpdesk API is answered with the passages the echo engine lists (``[knowledge k: title p.N]``) and a Sources
footer whose links work."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from PIL import Image

from adapters.cli import main
from adapters.django_helpdesk import WEBHOOK_PATH
from bot.engines import EchoEngine
from bot.engines.base import ChatMessage
from bot.knowledge.base import Passage
from bot.knowledge.citing import cited, sources_footer
from bot.l10n import i18n
from tests.conftest import ROOT, make_settings
from tests.live_server import exchange, live_server, open_session
from tests.test_knowledge import make_pdf

PUBLIC = "https://bot.example.com"
PUMP_PAGES = [
    "Pump X200 installation. Mount the pump on a level surface and connect the inlet hose.",
    "Pump X200 error codes. Error E21 means the impeller is blocked: switch the pump off, open the front cover "
    "and remove the debris around the impeller. Error E30 means the water is too hot.",
    "Pump X200 warranty. The warranty lasts two years from the date of purchase.",
]
FAQ = """# Router R5 questions

## Resetting the router

Hold the reset button on the back of the router R5 for ten seconds until the light blinks orange.
"""


@pytest.fixture
def base(tmp_path: Path) -> dict[str, Any]:
    """A knowledge base "support" with the pump manual (PDF) and the router FAQ, indexed by the real CLI; the
    support persona draws on it."""
    docs = tmp_path / "docs"
    docs.mkdir()
    pdf = make_pdf(docs / "pump-x200.pdf", PUMP_PAGES, title="Pump X200 manual")
    (docs / "router-faq.md").write_text(FAQ, encoding="utf-8")
    Image.new("RGB", (800, 600), "blue").save(docs / "wiring-diagram.png")
    (docs / "wiring-diagram.png.txt").write_text("Terminal block wiring of the pump controller: L, N and PE.",
                                                 encoding="utf-8")
    personas = tmp_path / "personas"
    personas.mkdir()
    support = yaml.safe_load((ROOT / "prompts" / "support.yaml").read_text(encoding="utf-8"))
    support["knowledge"] = ["support"]
    (personas / "support.yaml").write_text(yaml.safe_dump(support, allow_unicode=True), encoding="utf-8")
    overrides: dict[str, Any] = {"conversation": {"personas_dir": str(personas), "default_persona": "support"},
                                 "server": {"public_url": PUBLIC}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), **overrides}), encoding="utf-8")
    assert main(["--config", str(config), "kb", "add", "support", str(docs)]) == 0
    return {"pdf": pdf, "overrides": overrides, "config": config}


async def ask(live: Any, client: httpx.AsyncClient, question: str) -> str:
    """The final text of the answer to ``question``, as the page shows it."""
    response, events = await exchange(live, client, question)
    assert response.status_code == 202, response.text
    [done] = [e for e in events if e["type"] == "done"]
    return str(done["text"])


def footer_links(text: str) -> list[tuple[str, str]]:
    """(label, url) of each link in a Sources footer."""
    return re.findall(r"\[([^\]]+)\]\((https?://[^)\s]+)\)", text.split("**Sources**", 1)[1])


async def test_the_web_chat_answers_from_the_manual_cites_it_and_the_link_opens_the_pdf(
        tmp_path: Path, base: dict[str, Any]) -> None:
    engine = EchoEngine(record=True)
    settings = make_settings(tmp_path, **base["overrides"])
    async with live_server(settings, engine) as live, live.client() as client:
        await open_session(client)
        text = await ask(live, client, "What does error E21 on my pump mean?")
        assert "[knowledge 1: Pump X200 manual p.2]" in text, text
        assert text.index("[knowledge 1:") < text.index("echo: What does error E21")
        assert "**Sources**" in text
        [(label, url)] = [link for link in footer_links(text) if "Pump" in link[0]]
        assert label == "Pump X200 manual p.2" and url.startswith(f"{PUBLIC}/kb/files/") and url.endswith("#page=2")
        # the model read the passage's text and saw the page itself
        prompt = engine.calls[-1][-1]
        assert isinstance(prompt, ChatMessage) and "impeller is blocked" in prompt.prompt_text
        assert any(part.label == "Source [1], page 2" for part in prompt.images)
        # the link serves the stored PDF (its path on this server; the public host is the proxy's)
        path = urlsplit(url).path
        pdf = await client.get(path)
        assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
        assert pdf.content == base["pdf"].read_bytes()
        forged = await client.get(path[:-3] + ("AAA" if not path.endswith("AAA") else "BBB"))
        assert forged.status_code == 404
        # nothing in the documentation: no Sources, and the model is told to say so
        other = await ask(live, client, "Which colour is the sky on Mars at noon?")
        assert "**Sources**" not in other and "[knowledge" not in other
        assert "nothing about this question" in engine.calls[-1][-1].prompt_text


async def test_a_picture_in_the_base_is_shown_to_the_model(tmp_path: Path, base: dict[str, Any]) -> None:
    engine = EchoEngine(record=True)
    settings = make_settings(tmp_path, **base["overrides"])
    async with live_server(settings, engine) as live, live.client() as client:
        await open_session(client)
        text = await ask(live, client, "How is the terminal block of the pump controller wired?")
        assert "[knowledge 1:" in text and "wiring" in text.split("[knowledge 1:", 1)[1].split("]", 1)[0].lower()
        [picture] = [p for p in engine.calls[-1][-1].images if p.label == "Source [1]"]
        assert picture.size == (800, 600) and tuple(picture.image[10, 10]) == (0, 0, 255)


async def test_a_short_follow_up_is_searched_with_the_question_before_it(tmp_path: Path, base: dict[str, Any]) -> None:
    engine = EchoEngine(record=True)
    settings = make_settings(tmp_path, **base["overrides"])
    async with live_server(settings, engine) as live, live.client() as client:
        await open_session(client)
        await ask(live, client, "My router R5 needs resetting, how?")
        follow = await ask(live, client, "and how long do I hold it?")
        assert "[knowledge 1: Router R5 questions" in follow, follow


async def test_an_expired_link_says_so(tmp_path: Path, base: dict[str, Any]) -> None:
    settings = make_settings(tmp_path, **{**base["overrides"], "knowledge": {"link_days": 0.00001}})
    async with live_server(settings, EchoEngine()) as live, live.client() as client:
        await open_session(client)
        text = await ask(live, client, "error E21 pump")
        [(_, url)] = footer_links(text)[:1]
        await asyncio.sleep(2)  # the link's age is counted in whole seconds
        expired = await client.get(urlsplit(url).path)
        assert expired.status_code == 410 and "expired" in expired.json()["error"]


def test_citations_and_the_footer() -> None:
    """Only what the answer cites is listed, numbered as cited; two passages of one page are one source."""
    passages = [Passage("b", "m.pdf", "Manual", "a", page=2, blob="x"), Passage("b", "m.pdf", "Manual", "b", page=2),
                Passage("b", "faq.md", "FAQ [v2]", "c", url="https://help.example.com/a?id=1&x=(2)")]
    assert cited("See [3] and [1, 2]; not [7].", 3) == [3, 1, 2]
    footer = sources_footer(passages, [1, 2, 3], "de", lambda p: f"https://bot.example.com/kb/files/t#page={p.page}")
    assert footer == ("**Quellen**\n\n1. [Manual p.2](https://bot.example.com/kb/files/t#page=2)\n"
                      "3. [FAQ \\[v2\\]](https://help.example.com/a?id=1&x=%282%29)")
    assert sources_footer(passages, [], "en") == ""


async def test_telegram_and_chatwoot_show_the_sources(tmp_path: Path, base: dict[str, Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_chatwoot import chatwoot
    from tests.test_telegram import ANA, DM, message, telegram

    # the harnesses build their own data dirs: the indexed base goes with them
    for where in ("tg", "cw"):
        shutil.copytree(tmp_path / "data", tmp_path / where / "data")
    conversation = base["overrides"]["conversation"]
    async with telegram(tmp_path / "tg", monkeypatch, mode="webhook", conversation=conversation) as h:
        message(h.tg, DM, ANA, "pump error E21?")
        await h.tg.wait_for(lambda: any("Sources" in (m.text or "") for m in h.shown(111)), 15)
        shown = next(m for m in h.shown(111) if "Sources" in (m.text or ""))
        assert "[knowledge 1: Pump X200 manual p.2]" in (shown.text or "")
        links = [e["url"] for e in shown.entities if e.get("type") == "text_link"]
        [link] = [u for u in links if "/kb/files/" in u]
        assert link.startswith(h.url) and link.endswith("#page=2")  # the harness's public_url is this server
        async with httpx.AsyncClient() as http:
            pdf = await http.get(link.split("#")[0])
        assert pdf.status_code == 200 and pdf.content == base["pdf"].read_bytes()
    # no server.public_url: nothing to link to, the source is named by title and page
    async with chatwoot(tmp_path / "cw", monkeypatch, conversation=conversation) as h:
        conv = h.cw.conversation()
        await h.cw.customer_message(conv, "what does E21 mean on the pump")
        await h.cw.wait_for(lambda: any("Sources" in r for r in h.cw.public_replies(conv)), 15)
        reply = next(r for r in h.cw.public_replies(conv) if "Sources" in r)
        assert "[knowledge 1: Pump X200 manual p.2]" in reply
        assert "1. Pump X200 manual p.2" in reply.split("Sources", 1)[1]


async def test_agent_assist_drafts_cite_the_same_way(tmp_path: Path, base: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A draft for agents (a Chatwoot private note) carries the same Sources footer, so the agent can check
    the manual before sending."""
    from tests.test_chatwoot import chatwoot

    shutil.copytree(tmp_path / "data", tmp_path / "cw" / "data")
    async with chatwoot(tmp_path / "cw", monkeypatch, conversation=base["overrides"]["conversation"],
                        agent_assist_inboxes=[2]) as h:
        h.cw.add_inbox(2, "Email")
        conv = h.cw.conversation(status="open", inbox_id=2)
        await h.cw.customer_message(conv, "My pump shows error E21, what now?")
        await h.cw.wait_for(lambda: any("Sources" in n for n in h.cw.private_notes(conv)), 15)
        note = next(n for n in h.cw.private_notes(conv) if "Sources" in n)
        assert "1. Pump X200 manual p.2" in note.split("Sources", 1)[1]
        assert h.cw.public_replies(conv) == []


async def test_an_adapter_bound_to_a_base_searches_it_whatever_the_persona(tmp_path: Path,
                                                                          base: dict[str, Any]) -> None:
    """``adapters.web.knowledge: [support]``: the web chat's turns search the base although their persona
    (diagnosis, built-in; no persona names a base) names none, and its links work; the console of the same
    process, not bound, does not search at all."""
    import io

    from adapters.console import ConsoleAdapter

    engine = EchoEngine(record=True)
    settings = make_settings(tmp_path, server={"public_url": PUBLIC},
                             adapters={"web": {"enabled": True, "knowledge": ["support"]}})
    async with live_server(settings, engine) as live, live.client() as client:
        await open_session(client)
        text = await ask(live, client, "What does error E21 on my pump mean?")
        assert "[knowledge 1: Pump X200 manual p.2]" in text, text
        [(label, url)] = [link for link in footer_links(text) if "Pump" in link[0]]
        assert label == "Pump X200 manual p.2" and url.startswith(f"{PUBLIC}/kb/files/")
        assert (await client.get(urlsplit(url).path)).content == base["pdf"].read_bytes()
        out = io.StringIO()
        console = ConsoleAdapter(live.runtime.manager, conversation="ops", stdin=io.StringIO("pump error E21?\n"),
                                 stdout=out)
        await console.run()
        assert "echo: pump error E21?" in out.getvalue()
        assert "[knowledge" not in out.getvalue() and "Sources" not in out.getvalue()
        # not searched at all: no "nothing found" note either
        assert "documentation" not in engine.calls[-1][-1].prompt_text


def tight(tmp_path: Path, base: dict[str, Any], budget: int) -> Any:
    """Settings whose prompts hold ``budget`` tokens, with a persona of one sentence bound to the base by the web
    chat."""
    personas = Path(base["overrides"]["conversation"]["personas_dir"])
    (personas / "terse.yaml").write_text("name: terse\nsystem: Answer from the manual.\n", encoding="utf-8")
    return make_settings(tmp_path, server={"public_url": PUBLIC},
                         conversation={"personas_dir": str(personas), "default_persona": "terse",
                                       "history_token_budget": 64 + budget},
                         engine={"generation": {"max_new_tokens": 64}},
                         adapters={"web": {"enabled": True, "knowledge": ["support"]}})


async def test_passages_and_pages_left_out_by_the_budget_are_said(tmp_path: Path, base: dict[str, Any]) -> None:
    """A tight prompt: a third of it holds the best passage of the manual but not the next two, and no room is
    left for its page as an image; the user is told both, as for their own images, in their language."""
    engine = EchoEngine(record=True)
    settings = tight(tmp_path, base, 240)
    async with live_server(settings, engine) as live, live.client() as client:
        await open_session(client)
        _, events = await exchange(live, client, "Pump X200 installation, error codes and warranty")
        notes = [e["text"] for e in events if e["type"] == "notice"]
        [done] = [e["text"] for e in events if e["type"] == "done"]
        assert "[knowledge 1: Pump X200 manual p.2]" in done and "[knowledge 2:" not in done, done
        assert i18n.text("knowledge_left_out", "en", count=2) in notes, notes
        assert i18n.text("source_pages_left_out", "en", count=1) in notes, notes
        prompt = engine.calls[-1][-1]
        assert len(prompt.knowledge) == 1 and not prompt.images  # the page left out, its passage's text kept
        assert "**Sources**" in done and "Pump X200 manual p.2" in done.split("**Sources**", 1)[1]
        # a question whose one passage fits: only its page is said to be left out
        _, events = await exchange(live, client, "How long does the warranty of the Pump X200 last?")
        notes = [e["text"] for e in events if e["type"] == "notice"]
        assert notes == [i18n.text("source_pages_left_out", "en", count=1)], notes


async def test_when_no_passage_fits_the_model_is_not_told_the_documentation_has_nothing(
        tmp_path: Path, base: dict[str, Any]) -> None:
    engine = EchoEngine(record=True)
    async with live_server(tight(tmp_path, base, 150), engine) as live, live.client() as client:
        await open_session(client)
        _, events = await exchange(live, client, "Pump X200 installation, error codes and warranty")
        notes = [e["text"] for e in events if e["type"] == "notice"]
        [done] = [e["text"] for e in events if e["type"] == "done"]
        assert notes == [i18n.text("knowledge_left_out", "en", count=3)], notes
        assert "[knowledge" not in done and "Sources" not in done
        prompt = engine.calls[-1][-1].prompt_text
        assert "do not fit in this conversation" in prompt and "nothing about this question" not in prompt


async def fetched(base_url: str, link: str) -> bytes:
    """What a Sources link serves: its path on this server (the public host is the proxy's)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        response = await http.get(urlsplit(link).path)
    assert response.status_code == 200 and response.headers["content-type"] == "application/pdf", response.text
    return response.content


@pytest.mark.parametrize("native", [True, False], ids=["streamed", "posted"])
async def test_slack_shows_the_sources_as_slack_links(tmp_path: Path, base: dict[str, Any],
                                                      monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """Streamed (chat.startStream), the answer is Slack Markdown (``markdown_text``): ``[title](url)``; posted, its
    Markdown goes in a markdown block and what notifications show is mrkdwn, ``<url|title>``."""
    from tests.test_slack import CHANNEL, mention, slack

    shutil.copytree(tmp_path / "data", tmp_path / "sl" / "data")
    async with slack(tmp_path / "sl", monkeypatch, mode="http", conversation=base["overrides"]["conversation"],
                     server={"public_url": PUBLIC}, native_streaming=native) as h:
        payload = mention(h, "what does error E21 on the pump mean?")
        assert (await h.slack.post_event(h.url, payload)).status_code == 200
        ts = payload["event"]["ts"]
        await h.slack.wait_for(lambda: any("Sources" in m.text and not m.streaming for m in h.thread(CHANNEL, ts)),
                               15)
        [answer] = [m for m in h.thread(CHANNEL, ts) if "Sources" in m.text]
        assert "[knowledge 1: Pump X200 manual p.2]" in answer.text
        markdown = answer.text if native else next(b["text"] for b in answer.blocks or [] if b["type"] == "markdown")
        [link] = re.findall(r"\[Pump X200 manual p\.2\]\((https?://[^)\s]+)\)", markdown)
        assert link.startswith(f"{PUBLIC}/kb/files/") and link.endswith("#page=2")
        if not native:
            assert f"<{link}|Pump X200 manual p.2>" in answer.text
        assert await fetched(h.url.rsplit("/slack/events", 1)[0], link) == base["pdf"].read_bytes()


async def test_the_helpdesk_api_reply_carries_the_sources_by_callback_and_by_polling(
        tmp_path: Path, base: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_helpdesk_api import helpdesk_api

    shutil.copytree(tmp_path / "data", tmp_path / "api" / "data")
    async with helpdesk_api(tmp_path / "api", monkeypatch, settings=base["overrides"]) as h:
        assert (await h.message("T-7", "What does error E21 on my pump mean?")).status_code == 202
        [called] = await h.receiver.wait_for(1)
        await h.idle()
        [polled] = (await h.poll("T-7"))["replies"]
        assert polled["text"] == called["text"] and polled["type"] == "answer"
        text = polled["text"]
        assert "[knowledge 1: Pump X200 manual p.2]" in text and "**Sources**" in text
        [(label, link)] = [pair for pair in footer_links(text) if "Pump" in pair[0]]
        assert label == "Pump X200 manual p.2" and link.startswith(f"{PUBLIC}/kb/files/") and link.endswith("#page=2")
        assert await fetched(h.url, link) == base["pdf"].read_bytes()


@pytest.mark.slow
async def test_django_helpdesk_follow_up_carries_the_sources_as_text_and_html(
        tmp_path: Path, base: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The follow-up's comment is the Markdown footer: staff read it as Markdown, the customer's public ticket page
    as text through Django's urlize; both link the manual at its page, and the link serves it."""
    from tests.test_django_helpdesk import helpdesk_bot, helpdesk_peer

    shutil.copytree(tmp_path / "data", tmp_path / "dh" / "data")
    async with helpdesk_peer(tmp_path / "dh", monkeypatch) as peer, \
            helpdesk_bot(tmp_path / "dh", peer, settings=base["overrides"]) as h:
        ticket = await h.site.customer_ticket("Pump error E21", "What does error E21 on my pump mean?")
        [followup] = await h.until(lambda: h.bot_followups(ticket))
        comment = followup["comment"]
        assert followup["public"] is True and "[knowledge 1: Pump X200 manual p.2]" in comment
        [(label, link)] = re.findall(r"\[(Pump[^\]]+)\]\( (https?://\S+) \)", comment.split("**Sources**")[1])
        assert label == "Pump X200 manual p.2" and link.startswith(f"{PUBLIC}/kb/files/") and link.endswith("#page=2")
        # the ticket's secret key, from the e-mails django-helpdesk sent the customer
        [key] = {k for mail in h.site.sent_mail() for k in re.findall(r"key=([0-9a-f-]{36})", mail)}
        async with h.site.client(None) as customer:
            page = await customer.get("/view/", params={"ticket": f"support-{ticket}",
                                                        "email": "customer@example.com", "key": key})
        assert page.status_code == 200, page.text[:300]
        # the customer's page links the manual itself (it once linked "http://p.2](https://…")
        hrefs = re.findall(r'<a href="([^"]+)"', page.text)
        assert link.replace("&", "&amp;") in hrefs and not [u for u in hrefs if "](" in u], hrefs
        # staff read it as Markdown (django-helpdesk's get_markdown: python-markdown): the same link
        import markdown

        assert f'<a href="{link}">Pump X200 manual p.2</a>' in markdown.markdown(comment)
        assert await fetched(peer.hook.split(WEBHOOK_PATH)[0], link) == base["pdf"].read_bytes()


def test_django_helpdesk_links_are_spaced_for_urlize_and_back_for_drafts() -> None:
    from adapters.django_helpdesk import spaced_links, unspaced_links

    text = "See [Manual p.2](https://bot.example.com/kb/files/t#page=2) and [x](mailto:a@b.c), [y] (z)."
    assert spaced_links(text) == ("See [Manual p.2]( https://bot.example.com/kb/files/t#page=2 ) and "
                                  "[x](mailto:a@b.c), [y] (z).")
    assert unspaced_links(spaced_links(text)) == text
