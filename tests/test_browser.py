"""The web chat in headless Chromium (system package) driven by Playwright, against a live server.

The screenshot lands in ``$INTERNVL_BOT_TEST_ARTIFACTS`` (default ``test-artifacts/``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

from bot.engines import EchoEngine
from bot.i18n import text
from bot.types import ConversationKey
from tests.conftest import image_bytes, make_settings
from tests.live_server import live_server, static_site

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("INTERNVL_BOT_TEST_ARTIFACTS") or ROOT / "test-artifacts")

if CHROMIUM is None and not os.environ.get("INTERNVL_BOT_REQUIRE_BROWSER"):
    pytest.skip("Chromium is not installed (.ci/run installs it with apt)", allow_module_level=True)

PAYLOAD = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script> **bold**'


async def test_web_chat_in_a_real_browser(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

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

            # a text question: the answer is seen streaming, then complete
            await page.fill("#text", "hello from the browser")
            await page.press("#text", "Enter")
            await expect(page.locator(".msg.assistant.streaming")).to_have_count(1)
            answer = page.locator(".msg.assistant").last
            await expect(answer).to_have_text("echo: hello from the browser")
            await expect(page.locator(".msg.assistant.streaming")).to_have_count(0)

            # a photo, attached with the picker
            await page.set_input_files("#files", str(photo))
            await expect(page.locator(".chip")).to_have_text("kettle.jpg×")
            await page.fill("#text", "what is this?")
            await page.click("#send")
            await expect(page.locator(".msg.user").last).to_contain_text("kettle.jpg")
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
            assert await page.locator("#log img, #log script").count() == 0

            # after a reload the conversation is still there
            await page.reload()
            await expect(page.locator(".msg.user")).to_have_count(3)
            await expect(page.locator(".msg.assistant")).to_have_count(3)
            await expect(page.locator(".msg.user").nth(1)).to_contain_text("kettle.jpg")
            assert await page.evaluate("window.__pwned") is None

            # talk to a human
            await page.click("#human")
            await expect(page.locator(".msg.assistant").last).to_have_text(text("handoff_started", "en"))
            await expect(page.locator("#waiting")).to_be_visible()
            await expect(page.locator("#human")).to_be_disabled()
            await page.fill("#text", "my kettle leaks")
            await page.press("#text", "Enter")
            await expect(page.locator(".msg.user").last).to_have_text("my kettle leaks")
            await page.wait_for_timeout(300)
            await expect(page.locator(".msg.assistant")).to_have_count(4)  # the bot did not answer that one

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "web-chat.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # back to the assistant, with the banner button
            await page.click("#back")
            await expect(page.locator("#waiting")).to_be_hidden()
            await expect(page.locator(".msg.assistant").last).to_have_text(text("handoff_ended", "en"))
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
            await expect(page.locator(".msg.assistant").last).to_have_text("echo: tudo bem?")
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
            await expect(page.locator(".msg.assistant").last).to_have_text(text("persona_set", "en", persona="Tutor"))
            await page.select_option("#language", "de")
            await expect(page.locator(".msg.assistant").last).to_have_text(
                text("lang_set", "de", language="Deutsch"))
            await expect(page.locator("#send")).to_have_text("Senden")  # the page follows the conversation
            await page.click("#reset")
            await expect(page.locator(".msg.assistant").last).to_have_text(text("reset_done", "de"))

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
        await expect(frame.locator(".msg.assistant").last).to_have_text("echo: hello from the shop")
        # the shop's page is reloaded: the widget finds its conversation again
        await page.reload()
        await page.click("text=Chat")
        await expect(frame.locator(".msg.user")).to_have_text(["hello from the shop"])
