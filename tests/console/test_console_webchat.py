"""The demo's way in: in the local web chat, 陈书记 (社区管理员) sends /console, clicks the link
in the bot's answer and is in the console (the real service, headless Chromium)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.app import Gridbot
from bot.config import load_settings
from tests.e2e.test_webchat_fullstack import CHROMIUM, CHROMIUM_ARGS, STEP_MS
from tests.fakes.telegram_server import serve_asgi

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed"),
]
async_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed")


async def test_the_demo_admin_opens_the_console_from_the_web_chat(tmp_path: Path) -> None:
    settings = load_settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'gridbot.db'}", demo=True,
        secret_key="console-e2e", webchat_enabled=True, telegram_token=None,
        media_dir=tmp_path / "media", qr_dir=tmp_path / "qr",
    )
    app = Gridbot(settings)
    await app.prepare()
    app.enable("web")
    await app.start()
    expect = type(async_api.expect)()
    expect.set_options(timeout=STEP_MS)
    try:
        async with serve_asgi(app.web_app()) as root:
            app.settings.public_url = root  # the links point at this test's port
            async with async_api.async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
                )
                try:
                    context = await browser.new_context(viewport={"width": 390, "height": 844})
                    page = await context.new_page()
                    await page.goto(f"{root}/chat/")
                    await expect(page.locator("body[data-ready='1']")).to_have_count(1)
                    pane = page.get_by_test_id("pane").first
                    await pane.get_by_test_id("persona-option").filter(has_text="陈书记").click()
                    await pane.get_by_test_id("input").fill("/console")
                    await pane.get_by_test_id("input").press("Enter")
                    link = pane.locator('[data-testid=bubble][data-direction="out"] a').filter(
                        has_text="/console/login/")
                    await expect(link).to_have_count(1)
                    async with context.expect_page() as opened:
                        await link.click()
                    console = await opened.value
                    await console.get_by_test_id("sign-in").click()
                    await expect(console.get_by_test_id("overview-title")).to_contain_text(
                        "新华社区")
                finally:
                    await browser.close()
    finally:
        await app.stop()
