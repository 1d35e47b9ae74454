"""The web chat in headless Chromium (system package) driven by Playwright, against a live server.

The screenshot lands in ``$INTERNVL_BOT_TEST_ARTIFACTS`` (default ``test-artifacts/``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from bot.engines import EchoEngine
from bot.l10n.i18n import text
from bot.store import NewMessage
from bot.types import ConversationKey
from tests.conftest import image_bytes, make_settings
from tests.live_server import exchange, live_server, open_session, post, static_site

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("INTERNVL_BOT_TEST_ARTIFACTS") or ROOT / "test-artifacts")

if CHROMIUM is None and not os.environ.get("INTERNVL_BOT_REQUIRE_BROWSER"):
    pytest.skip("Chromium is not installed (.ci/run installs it with apt)", allow_module_level=True)

PAYLOAD = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script> **bold**'


async def test_web_chat_in_a_real_browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.async_api import async_playwright, expect

    monkeypatch.setenv("INTERNVL_BOT_OPERATOR_TOKEN", "op-token")  # an operator inbox: someone to hand over to
    photo = tmp_path / "kettle.jpg"
    photo.write_bytes(image_bytes(800, 600))
    dialogs: list[str] = []
    async with live_server(make_settings(tmp_path), EchoEngine(delay=0.02)) as live, async_playwright() as pw:
        assert CHROMIUM is not None
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(locale="en-US")
            page.on("dialog", lambda d: dialogs.append(d.message))
            await page.goto(live.url + "/")
            await expect(page.locator("#persona option")).to_have_count(len(live.runtime.manager.personas))
            # a new conversation starts with the persona's greeting and questions to start from
            persona = live.runtime.manager.personas["diagnosis"]
            await expect(page.locator(".msg.greeting .body")).to_have_text(persona.greeting_for("en"))
            await expect(page.locator(".msg.greeting .suggestions button")).to_have_count(
                min(4, len(persona.suggestions_for("en"))))

            # a text question: the answer is seen streaming, then complete
            await page.fill("#text", "hello from the browser")
            await page.press("#text", "Enter")
            await expect(page.locator(".msg.assistant.streaming")).to_have_count(1)
            answer = page.locator(".msg.assistant .body").last
            await expect(answer).to_have_text("echo: hello from the browser")
            await expect(page.locator(".msg.assistant.streaming")).to_have_count(0)

            # a photo, attached with the picker
            await page.set_input_files("#files", str(photo))
            await expect(page.locator(".chip")).to_have_text("kettle.jpg×")
            await page.fill("#text", "what is this?")
            await page.click("#send")
            await expect(page.locator(".msg.user").last).to_contain_text("kettle.jpg")
            await expect(page.locator(".msg.user .thumbs img")).to_have_count(1)  # a thumbnail, not just a name
            await expect(page.locator(".msg.assistant").last).to_contain_text("[image 1: 800x600,")
            await expect(page.locator(".msg.assistant").last).to_contain_text("echo: what is this?")
            assert await page.evaluate("document.getElementById('progress').value") == 100  # upload progress ran

            # markup in a message and in the model's answer (the echo engine repeats it) stays text
            await page.fill("#text", PAYLOAD)
            await page.press("#text", "Enter")
            await expect(page.locator(".msg.assistant").last).to_contain_text('<img src=x onerror="window.__pwned=1">')
            await expect(page.locator(".msg.assistant strong").last).to_have_text("bold")  # Markdown still works
            await expect(page.locator(".msg.user").last).to_contain_text("<script>window.__pwned=2</script>")
            assert await page.evaluate("window.__pwned") is None
            assert await page.locator("#log .body img, #log script").count() == 0

            # after a reload the conversation is still there
            await page.reload()
            await expect(page.locator(".msg.user")).to_have_count(3)
            await expect(page.locator(".msg.assistant:not(.greeting)")).to_have_count(3)
            await expect(page.locator(".msg.user").nth(1)).to_contain_text("kettle.jpg")
            thumbnail = page.locator(".msg.user").nth(1).locator(".thumbs img")
            await expect(thumbnail).to_have_count(1)
            await page.wait_for_function("document.querySelector('.msg.user .thumbs img').naturalWidth === 800")
            assert await page.evaluate("window.__pwned") is None

            # talk to a human: the button acts, it posts no "/human" bubble
            await page.click("#human")
            await expect(page.locator(".msg.assistant .body").last).to_have_text(text("handoff_started", "en"))
            await expect(page.locator(".msg.user")).to_have_count(3)
            await expect(page.locator("#waiting")).to_be_visible()
            await expect(page.locator("#human")).to_be_disabled()
            await page.fill("#text", "my kettle leaks")
            await page.press("#text", "Enter")
            await expect(page.locator(".msg.user").last).to_have_text("my kettle leaks")
            # the bot does not answer that one; it says it was passed on
            await expect(page.locator(".msg.assistant .body").last).to_have_text(text("handoff_passed_on", "en"))
            await page.wait_for_timeout(300)
            await expect(page.locator(".msg.assistant:not(.greeting)")).to_have_count(5)

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "web-chat.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # back to the assistant, with the banner button
            await page.click("#back")
            await expect(page.locator("#waiting")).to_be_hidden()
            await expect(page.locator(".msg.assistant .body").last).to_have_text(text("handoff_ended", "en"))
        finally:
            await browser.close()
    assert dialogs == []


async def test_the_page_follows_the_browser_language_and_uploads_show_progress(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    video = tmp_path / "clip.bin"
    video.write_bytes(os.urandom(3_000_000))
    settings = make_settings(tmp_path, media={"max_file_bytes": 1_000_000})
    async with live_server(settings, EchoEngine()) as live, async_playwright() as pw:
        assert CHROMIUM is not None
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(locale="pt-BR", extra_http_headers={"Accept-Language": "pt-BR,pt;q=0.9"})
            await page.goto(live.url + "/")
            await expect(page.locator("#send")).to_have_text("Enviar")
            await expect(page.locator("#human")).to_have_text("Falar com uma pessoa")
            await page.set_input_files("#files", str(video))
            await page.click("#send")
            # too large: refused politely in Portuguese, and the page keeps working
            await expect(page.locator(".msg.assistant.error").last).to_contain_text("grande demais")
            await page.fill("#text", "tudo bem?")
            await page.press("#text", "Enter")
            await expect(page.locator(".msg.assistant .body").last).to_have_text("echo: tudo bem?")
        finally:
            await browser.close()


async def test_drop_a_file_pick_a_persona_and_a_language(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    async with live_server(make_settings(tmp_path), EchoEngine()) as live, async_playwright() as pw:
        assert CHROMIUM is not None
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(locale="en-US")
            await page.goto(live.url + "/")
            await expect(page.locator("#persona option")).to_have_count(len(live.runtime.manager.personas))
            # drag and drop a photo onto the page
            data = list(image_bytes(320, 240))
            handle = await page.evaluate_handle(
                """(bytes) => { const dt = new DataTransfer();
                   dt.items.add(new File([new Uint8Array(bytes)], "dropped.jpg", {type: "image/jpeg"}));
                   return dt; }""", data)
            await page.dispatch_event("body", "drop", {"dataTransfer": handle})
            await expect(page.locator(".chip")).to_have_text("dropped.jpg×")
            await page.fill("#text", "and this one?")
            await page.press("#text", "Enter")
            await expect(page.locator(".msg.assistant").last).to_contain_text("[image 1: 320x240,")

            await page.select_option("#persona", "tutor")
            await expect(page.locator(".msg.assistant .body").last).to_have_text(text("persona_set", "en", persona="Tutor"))
            await page.select_option("#language", "de")
            await expect(page.locator(".msg.assistant .body").last).to_have_text(
                text("lang_set", "de", language="Deutsch"))
            await expect(page.locator("#send")).to_have_text("Senden")  # the page follows the conversation
            await page.click("#reset")
            await expect(page.locator(".msg.assistant .body").last).to_have_text(text("reset_done", "de"))

            # the event stream drops (a restart, a network gap); what was said meanwhile shows up after
            live.web.close_streams()
            key = ConversationKey.parse((await page.evaluate(
                "fetch('/api/session').then(r => r.json())"))["conversation"])
            await live.runtime.manager.operator_reply(key, "Hallo, hier ist Ana.", author="Ana")
            await expect(page.locator(".msg.operator").last).to_contain_text("Hallo, hier ist Ana.", timeout=10_000)
        finally:
            await browser.close()


async def test_the_widget_embeds_the_chat_in_another_site(tmp_path: Path) -> None:
    """Another site (another origin and site: localhost vs 127.0.0.1) embeds the chat with one script tag.
    The browser does not send the bot's cookie into that frame; the signed session travels in a header."""
    from playwright.async_api import async_playwright, expect

    host_page = "<!doctype html><title>Shop</title><h1>Our shop</h1><script src='{bot}/widget.js' defer></script>"
    async with contextlib.AsyncExitStack() as stack:
        site = await stack.enter_async_context(static_site(host_page))
        settings = make_settings(tmp_path, adapters={"web": {"embed_origins": [site.origin]}})
        live = await stack.enter_async_context(live_server(settings, EchoEngine()))
        site.fill(bot=live.url)
        pw = await stack.enter_async_context(async_playwright())
        assert CHROMIUM is not None
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        stack.push_async_callback(browser.close)
        page = await browser.new_page(locale="en-US")
        await page.goto(site.origin + "/")
        await page.click("text=Chat")
        frame = page.frame_locator("iframe[title=Chat]")
        await expect(frame.locator("#persona option")).to_have_count(len(live.runtime.manager.personas))
        await frame.locator("#text").fill("hello from the shop")
        await frame.locator("#text").press("Enter")
        await expect(frame.locator(".msg.assistant .body").last).to_have_text("echo: hello from the shop")
        # the shop's page is reloaded: the widget finds its conversation again
        await page.reload()
        await page.click("text=Chat")
        await expect(frame.locator(".msg.user")).to_have_text(["hello from the shop"])


@pytest.mark.parametrize("locale", ["en-US", "pt-BR"])
async def test_the_user_and_the_operator_talk_through_the_inbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                locale: str) -> None:
    """Two browsers: a user's chat page and an operator's inbox, each in its own context (no shared cookies or
    storage), talking to each other through the service. Screenshots of both in each language."""
    from playwright.async_api import async_playwright, expect

    monkeypatch.setenv("INTERNVL_BOT_OPERATOR_TOKEN", "op-token")
    lang = locale[:2]
    photo = tmp_path / "kettle.jpg"
    photo.write_bytes(image_bytes(800, 600))
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, async_playwright() as pw:
        assert CHROMIUM is not None
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            headers = {"Accept-Language": f"{locale},{lang};q=0.9"}
            user = await (await browser.new_context(locale=locale, extra_http_headers=headers)).new_page()
            operator = await (await browser.new_context(locale=locale, extra_http_headers=headers)).new_page()
            await operator.goto(live.url + "/operator")
            await operator.fill("#token", "wrong")
            await operator.fill("#name", "Marta")
            await operator.click("#signin")
            await expect(operator.locator("#loginerror")).to_be_visible()
            await operator.fill("#token", "op-token")
            await operator.click("#signin")
            await expect(operator.locator("#nonewaiting")).to_have_text(text("op_none_waiting", lang))
            await expect(operator.locator("body")).to_have_attribute("data-ready", "1")

            # the user asks, sends a photo, then asks for a person
            await user.goto(live.url + "/")
            await user.set_input_files("#files", str(photo))
            await user.fill("#text", "my kettle leaks")
            await user.click("#send")
            await expect(user.locator(".msg.assistant").last).to_contain_text("echo: my kettle leaks")
            await user.click("#human")
            await expect(user.locator(".msg.assistant .body").last).to_have_text(text("handoff_started", lang))

            # the operator's inbox shows it at once (live), with how long it has waited
            waiting = operator.locator("#waiting li")
            await expect(waiting).to_have_count(1)
            before, after = text("op_waited", lang, time="{time}").split("{time}")
            await expect(waiting.locator(".waited")).to_have_text(
                re.compile(re.escape(before) + r"\d+\u00a0(s|min|h|d)" + re.escape(after)))
            await waiting.click()
            await expect(operator.locator("#log .msg.user").first).to_contain_text("my kettle leaks")
            await expect(operator.locator("#log .thumbs img")).to_have_count(1)
            assert await operator.locator("#log .thumbs img").evaluate("img => img.naturalWidth") == 800
            await expect(operator.locator("#mode")).to_have_text(text("op_with_person", lang))

            # a message the user sends while waiting appears in the inbox live
            await user.fill("#text", "hello? it is the blue one")
            await user.press("#text", "Enter")
            await expect(operator.locator("#log .msg.user").last).to_have_text("hello? it is the blue one")

            # the operator answers; the user sees it with the operator's name
            await operator.fill("#reply", "Hi, Marta here: a new kettle is on its way.")
            await operator.press("#reply", "Control+Enter")
            await expect(user.locator(".msg.assistant").last).to_contain_text("Hi, Marta here: a new kettle is on its way.")
            await expect(user.locator(".msg.assistant").last).to_contain_text("Marta")
            await expect(operator.locator("#log .msg.person").last).to_contain_text("a new kettle is on its way")

            # answered: the inbox's sections, titled in the page's language; a screenshot of it
            await expect(operator.locator("nav h2:visible")).to_have_text(
                [text("op_waiting", lang), text("op_in_progress", lang, name="Marta"), text("op_active", lang)])
            await expect(operator.locator("ul.progress li .name")).to_have_text([text("op_visitor", lang, number=1)])
            await expect(operator.locator(".shortcuts")).to_have_text(text("op_shortcuts", lang))
            shot = tmp_path / f"operator-inbox-{lang}.png"
            await operator.screenshot(path=str(shot), full_page=True)
            png = shot.read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, len(png)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await user.screenshot(path=str(ARTIFACTS / f"web-chat-{lang}.png"), full_page=True)
            shutil.copyfile(shot, ARTIFACTS / f"operator-inbox-{lang}.png")

            # given back: the user is told, and the assistant answers again
            await operator.click("#giveback")
            await expect(user.locator(".msg.assistant .body").last).to_have_text(text("handoff_ended", lang))
            await expect(operator.locator("#waiting li")).to_have_count(0)
            await user.fill("#text", "thanks")
            await user.press("#text", "Enter")
            await expect(user.locator(".msg.assistant .body").last).to_have_text("echo: thanks")

            # and the operator can take a conversation the assistant is handling
            await expect(operator.locator("#active li")).to_have_count(1)
            await operator.locator("#active li").click()
            await operator.click("#take")
            await expect(user.locator(".msg.assistant .body").last).to_have_text(text("handoff_taken", lang, name="Marta"))
            # taken: Marta's, in her own section, not waiting for a person
            await expect(operator.locator("ul.progress li")).to_have_count(1)
            await expect(operator.locator("h2.progress")).to_have_text(text("op_in_progress", lang, name="Marta"))
            await expect(operator.locator("#waiting li")).to_have_count(0)
        finally:
            await browser.close()


async def test_the_inbox_names_people_keeps_the_newest_message_in_view_and_works_from_the_keyboard(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long conversation with photos opens at its newest message (also once the photos have loaded); people
    are named as their platform names them, with its mark, the raw key in a small line; a Telegram conversation
    (Telegram is not served by this process) is read-only; ↑/↓ and Enter move and open, Enter in the reply box
    is a new line and Ctrl+Enter sends."""
    from playwright.async_api import async_playwright, expect

    monkeypatch.setenv("INTERNVL_BOT_OPERATOR_TOKEN", "op-token")
    photo = ("kettle.jpg", image_bytes(800, 600), "image/jpeg")
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, live.client() as visitor, \
            live.client() as other, async_playwright() as pw:
        # Visitor 1: a long conversation with photos, then "a person, please" and one more photo
        await open_session(visitor)
        for i in range(12):
            await exchange(live, visitor, f"question {i}: is this part broken?", files=[photo])
        await exchange(live, visitor, "I want to talk to a person", until="notice")
        assert (await post(visitor, "and here is the latest photo", files=[photo])).status_code == 202
        await open_session(other)
        await exchange(live, other, "hello")  # Visitor 2, with the assistant
        # Telegram, enabled once and not now: its conversation waits, read-only here
        store = live.runtime.manager.store
        telegram = ConversationKey("telegram", "444")
        await store.add_incoming(telegram, NewMessage(role="user", text="is anyone there?", state="held",
                                                      sender_id="444", event_id="u-1"))
        await store.update_conversation(telegram, name="Joana Prado (@joana_p)", mode="human", handoff_at=time.time())

        assert CHROMIUM is not None
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            operator = await browser.new_page(locale="en-US", viewport={"width": 1100, "height": 700})
            await operator.goto(live.url + "/operator")
            await operator.fill("#token", "op-token")
            await operator.fill("#name", "Marta")
            await operator.click("#signin")
            await expect(operator.locator("body")).to_have_attribute("data-ready", "1")
            waiting = operator.locator("#waiting li")
            await expect(waiting.locator(".name")).to_have_text(["Visitor 1", "Joana Prado (@joana_p)"])
            assert [await li.get_attribute("data-platform") for li in await waiting.all()] == ["web", "telegram"]
            await expect(waiting.nth(0).locator(".platform.platform-web")).to_have_count(1)
            await expect(waiting.nth(1).locator(".platform.platform-telegram")).to_have_count(1)
            await expect(waiting.nth(1).locator(".details")).to_have_text("telegram:444")
            await expect(operator.locator("#active li .name")).to_have_text(["Visitor 2"])

            # ↓ and Enter open the first conversation: at its newest message, photos loaded or not
            await operator.keyboard.press("ArrowDown")
            await expect(waiting.nth(0)).to_have_class(re.compile(r"\bcursor\b"))
            await operator.keyboard.press("Enter")
            await expect(operator.locator("#title")).to_have_text("Visitor 1")
            await expect(operator.locator("#log .msg.user").last).to_contain_text("and here is the latest photo")
            key = await waiting.nth(0).get_attribute("data-key")
            assert key is not None and key.startswith("web:")
            await expect(operator.locator("#details")).to_have_text(key)
            at_bottom = """() => { const log = document.getElementById('log');
                const box = log.getBoundingClientRect();
                const seen = [...log.querySelectorAll('img')].filter(i => { const r = i.getBoundingClientRect();
                    return r.bottom > box.top && r.top < box.bottom; });
                return seen.length > 0 && seen.every(i => i.complete && i.naturalWidth > 0)
                    && Math.abs(log.scrollHeight - log.scrollTop - log.clientHeight) <= 2; }"""
            await operator.wait_for_function(at_bottom, timeout=10_000)
            assert await operator.evaluate("document.getElementById('log').scrollHeight") > 2 * await operator.evaluate(
                "document.getElementById('log').clientHeight")  # long enough to have needed the scroll
            for text_ in ("I want to talk to a person", "and here is the latest photo"):
                message = operator.locator("#log .msg.user", has_text=text_).last
                await expect(message).to_be_in_viewport()

            # ↓ Enter: the Telegram conversation, read-only here, and why
            await operator.keyboard.press("ArrowDown")
            await operator.keyboard.press("Enter")
            await expect(operator.locator("#title")).to_have_text("Joana Prado (@joana_p)")
            await expect(operator.locator("#icon")).to_have_class(re.compile(r"platform-telegram"))
            await expect(operator.locator("#readonly")).to_have_text(text("op_read_only", "en", platform="Telegram"))
            await expect(operator.locator("#replyform")).to_be_hidden()
            await expect(operator.locator("#take")).to_be_disabled()
            await expect(operator.locator("#giveback")).to_be_disabled()

            # ↑ Enter: back to Visitor 1; Enter in the reply box is a new line, Ctrl+Enter sends
            await operator.keyboard.press("ArrowUp")
            await operator.keyboard.press("Enter")
            await expect(operator.locator("#title")).to_have_text("Visitor 1")
            await expect(operator.locator("#readonly")).to_be_hidden()
            await operator.click("#reply")
            await operator.keyboard.type("Hi, Marta here.")
            await operator.keyboard.press("Enter")
            await operator.keyboard.type("Is it the blue kettle?")
            assert await operator.input_value("#reply") == "Hi, Marta here.\nIs it the blue kettle?"
            await expect(operator.locator("#log .msg.person")).to_have_count(0)
            await operator.keyboard.press("Control+Enter")
            await expect(operator.locator("#log .msg.person")).to_contain_text(["Hi, Marta here.\nIs it the blue"])
            await expect(operator.locator("#reply")).to_have_value("")
            # answered: out of "Waiting for a person", into Marta's own section
            await expect(waiting.locator(".name")).to_have_text(["Joana Prado (@joana_p)"])
            await expect(operator.locator("h2.progress")).to_have_text(text("op_in_progress", "en", name="Marta"))
            await expect(operator.locator("ul.progress li .name")).to_have_text(["Visitor 1"])
            history = (await visitor.get("/api/history")).json()["messages"]
            assert history[-1]["text"] == "Hi, Marta here.\nIs it the blue kettle?"
        finally:
            await browser.close()


async def test_the_page_after_a_reload_shows_what_it_showed_live(tmp_path: Path) -> None:
    """Queued questions and their answers in order, notes and refusals (red) kept, in the page's language;
    New conversation clears the screen; Delete removes the conversation and its files."""
    from playwright.async_api import async_playwright, expect

    photos = []
    for i in range(2):
        photos.append(tmp_path / f"p{i}.png")
        photos[-1].write_bytes(image_bytes(64 + i, 64, fmt="PNG"))
    settings = make_settings(tmp_path, media={"max_images_per_turn": 1}, conversation={"max_message_chars": 500})
    async with live_server(settings, EchoEngine(delay=0.03)) as live, async_playwright() as pw:
        assert CHROMIUM is not None
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(locale="pt-BR", extra_http_headers={"Accept-Language": "pt-BR,pt;q=0.9"})
            await page.goto(live.url + "/")
            await expect(page.locator("header h1")).to_have_text(text("ui_title", "pt"))
            assert await page.title() == text("ui_title", "pt")
            await expect(page.locator("#persona option[value=diagnosis]")).to_have_text("Diagnóstico de falhas")

            # three questions sent while the first is still being answered
            for i in range(3):
                await page.fill("#text", f"pergunta {i}")
                await page.press("#text", "Enter")
                await expect(page.locator(".msg.user")).to_have_count(i + 1)
            await expect(page.locator(".msg.assistant:not(.greeting):not(.streaming)")).to_have_count(3)
            order = ["pergunta 0", "echo: pergunta 0", "pergunta 1", "echo: pergunta 1", "pergunta 2",
                     "echo: pergunta 2"]
            assert await page.locator(".msg:not(.greeting) .body").all_inner_texts() == order

            # a note (one of two images looked at) and a refusal (too long): both survive a reload
            await page.set_input_files("#files", [str(p) for p in photos])
            await page.fill("#text", "duas fotos")
            await page.click("#send")
            await expect(page.locator(".msg.assistant").last).to_contain_text("echo: duas fotos")
            await page.fill("#text", "x" * 600)
            await page.press("#text", "Enter")
            await expect(page.locator(".msg.assistant.error")).to_have_count(1)
            live_view = await page.locator(".msg:not(.greeting)").evaluate_all(
                "els => els.map(e => e.className + '|' + e.querySelector('.body').innerText)")
            await page.reload()
            await expect(page.locator(".msg.user")).to_have_count(5)
            await expect(page.locator(".msg.assistant.error")).to_have_count(1)
            reloaded = await page.locator(".msg:not(.greeting)").evaluate_all(
                "els => els.map(e => e.className + '|' + e.querySelector('.body').innerText)")
            # the same, except that the store kept the limit of the long text (with a marker), not all of it
            assert reloaded[9] == "msg user|" + "x" * 500 + "\n[… cut: 600 characters in all]"
            assert reloaded[:9] + reloaded[10:] == live_view[:9] + live_view[10:]
            assert any(text("too_many_images", "pt", limit=1, count=2) in row for row in reloaded)

            # New conversation clears the screen (the greeting again), also after a reload
            await page.click("#reset")
            await expect(page.locator(".msg.user")).to_have_count(0)
            await expect(page.locator(".msg.greeting")).to_have_count(1)
            await page.reload()
            await expect(page.locator(".msg.greeting")).to_have_count(1)
            await expect(page.locator(".msg.user")).to_have_count(0)

            # Delete: asks once more, then the conversation and its files are gone
            await page.fill("#text", "apague isto")
            await page.press("#text", "Enter")
            await expect(page.locator(".msg.assistant .body").last).to_have_text("echo: apague isto")
            key = ConversationKey.parse(await page.evaluate(
                "fetch('/api/session').then(r => r.json()).then(s => s.conversation)"))
            assert live.runtime.store is not None and await live.runtime.store.transcript(key) != []
            await page.click("#delete")
            await expect(page.locator("#delete")).to_have_text(text("ui_delete_confirm", "pt"))
            await page.click("#delete")
            await expect(page.locator(".msg.user")).to_have_count(0)
            assert await live.runtime.store.transcript(key) == []

            # too many files are refused before a byte is uploaded
            await page.set_input_files("#files", [str(photos[0])] * 11)
            await page.click("#send")
            await expect(page.locator(".msg.assistant.error").last).to_have_text(
                text("ui_too_many", "pt", limit=10))
        finally:
            await browser.close()


async def test_a_question_answered_again_by_another_replica_shows_one_answer(tmp_path: Path) -> None:
    """A replica that dies just after sending an answer, before storing it: the replica taking over answers
    the same question again. The page shows one answer for the question — the new one — not two."""
    from playwright.async_api import async_playwright, expect

    async with live_server(make_settings(tmp_path), EchoEngine(delay=0.01)) as live, async_playwright() as pw:
        assert CHROMIUM is not None
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(locale="en-US")
            posted: list[dict[str, str]] = []
            page.on("request", lambda r: posted.append(r.headers) if r.url.endswith("/api/messages") else None)
            await page.goto(live.url + "/")
            await page.fill("#text", "is the kettle broken?")
            await page.press("#text", "Enter")
            await expect(page.locator(".msg.assistant:not(.greeting) .body")).to_have_text(["echo: is the kettle broken?"])
            # each message carries its own request id: a proxy passing it on again gets it stored once
            assert len(posted) == 1 and re.fullmatch(r"[0-9a-f]{32}", posted[0].get("x-request-id", ""))
            (sid,) = list(live.web.sessions.live)
            (question,) = [m for m in await live.runtime.manager.store.transcript(ConversationKey("web", sid))
                           if m.role == "user"]
            # what the replica taking over sends, as the bus delivers it
            for event in ({"type": "partial", "text": "echo:"}, {"type": "chunk", "text": " again"},
                          {"type": "done", "text": "echo: again", "html": "<p>echo: again</p>"}):
                live.web.sessions.apply({"sid": sid, "event": {**event, "reply_to": question.id}})
            await expect(page.locator(".msg.assistant:not(.greeting) .body")).to_have_text(["echo: again"])
            await expect(page.locator(".msg.assistant.streaming")).to_have_count(0)
        finally:
            await browser.close()


async def test_the_quality_tab_shows_a_rated_answer_filters_and_charts_feedback_per_day(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 👎 pressed in the web chat, with its comment, and a draft corrected yesterday: the operator's Quality tab
    shows them with the question and its image, narrows them by date, and draws a bar for each day."""
    from playwright.async_api import async_playwright, expect

    monkeypatch.setenv("INTERNVL_BOT_OPERATOR_TOKEN", "op-token")
    photo = tmp_path / "valve.png"
    photo.write_bytes(image_bytes(64, 48, fmt="PNG"))
    async with live_server(make_settings(tmp_path), EchoEngine()) as live, async_playwright() as pw:
        manager = live.runtime.manager
        assert manager is not None and CHROMIUM is not None
        store = manager.store
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            user = await (await browser.new_context(locale="en-US")).new_page()
            await user.goto(live.url + "/")
            await user.fill("#text", "where is the reset button?")
            await user.press("#text", "Enter")
            await expect(user.locator(".msg.assistant .body").last).to_have_text("echo: where is the reset button?")
            [web] = [s.conversation.key for s in await store.list_conversations(mode="bot")]
            [first] = [m for m in await store.transcript(web) if m.role == "assistant"]
            # yesterday, an agent corrected that answer: the store's clock set back a day, a real day boundary
            now = time.time()
            real_clock = store._clock  # type: ignore[attr-defined]
            store._clock = lambda: now - 86400  # type: ignore[attr-defined]
            try:
                assert await manager.feedback.record(first, "edited", value="Hold it for 5 s.") is not None
            finally:
                store._clock = real_clock  # type: ignore[attr-defined]

            # today: a photo and a question, its answer rated 👎 in the page, and the comment the 👎 asks for
            await user.set_input_files("#files", str(photo))
            await user.fill("#text", "is this valve broken?")
            await user.click("#send")
            await expect(user.locator(".msg.assistant .body").last).to_contain_text("echo: is this valve broken?")
            await user.locator(".msg.assistant .rate-down").last.click()
            await expect(user.locator(".rate-thanks")).to_have_count(1)
            await expect(user.locator(".msg.assistant").last).to_contain_text(text("feedback_ask_comment", "en"))
            await user.fill("#text", "it named the wrong valve")
            await user.press("#text", "Enter")
            await expect(user.locator(".msg").last).to_contain_text(text("feedback_comment_thanks", "en"))

            operator = await (await browser.new_context(locale="en-US")).new_page()
            await operator.goto(live.url + "/operator")
            await operator.fill("#token", "op-token")
            await operator.fill("#name", "Marta")
            await operator.click("#signin")
            await expect(operator.locator("body")).to_have_attribute("data-ready", "1")
            await operator.click("#tab-quality")
            items = operator.locator("#qitems > li")
            await expect(items).to_have_count(2)
            rated = items.first
            await expect(rated).to_have_attribute("data-kind", "down")
            await expect(rated.locator(".qnote.comment")).to_contain_text("it named the wrong valve")
            await expect(rated.locator(".msg.user").last).to_contain_text("is this valve broken?")
            await expect(rated.locator(".thumbs img")).to_have_count(1)
            await expect(rated.locator(".thumbs img")).to_have_js_property("naturalWidth", 64)
            # the earlier turns are folded away
            await expect(rated.locator("details.earlier")).not_to_have_attribute("open", "")
            await expect(rated.locator("details.earlier summary")).to_have_text(
                text("op_q_earlier", "en", number=2))
            await expect(items.last.locator(".qnote.sent")).to_contain_text("Hold it for 5 s.")

            # a bar for each day with feedback: yesterday's correction, today's 👎
            today, yesterday = (time.strftime("%Y-%m-%d", time.gmtime(t)) for t in (now, now - 86400))
            await expect(operator.locator(f'#qchart rect.bar-down[data-day="{today}"]')).to_have_attribute(
                "data-count", "1")
            await expect(operator.locator(f'#qchart rect.bar-corrected[data-day="{yesterday}"]')).to_have_count(1)
            await expect(operator.locator("#qchart rect")).to_have_count(2)

            # from today on: the correction leaves the list
            await operator.fill("#qsince", today)
            await operator.click("#qapply")
            await expect(operator.locator("body")).to_have_attribute("data-quality", f"since={today}")
            await expect(items).to_have_count(1)
            await expect(items.first).to_have_attribute("data-kind", "down")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await operator.screenshot(path=str(ARTIFACTS / "operator-quality-en.png"), full_page=True)
        finally:
            await browser.close()
