"""The web chat in headless Chromium (system package) driven by Playwright, against a live server.

The screenshot lands in ``$INTERNVL_BOT_TEST_ARTIFACTS`` (default ``test-artifacts/``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bot.engines import EchoEngine
from bot.i18n import text
from tests.conftest import image_bytes, make_settings
from tests.live_server import live_server

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
