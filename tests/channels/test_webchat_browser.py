"""The local web chat page in a real headless Chromium, against a real uvicorn server."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette

from bot.channels.webchat import Persona, WebChatChannel
from bot.ports import Button, HandleResult, Inbound, Outbound
from models.db import make_engine, make_sessionmaker, upgrade

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed"),
]
async_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed")

PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PERSONAS = [
    Persona(chat_id="p-resident", name="张阿姨", roles=["居民"], locale="zh_CN"),
    Persona(chat_id="p-member", name="王党员", roles=["党员", "志愿者"], locale="zh_CN"),
    Persona(chat_id="p-worker", name="李网格员", roles=["网格员"], locale="zh_CN"),
]


async def _personas() -> list[Persona]:
    return PERSONAS


class StubCore:
    """Replies to text with a button; a press edits that message and answers with a toast."""

    def __init__(self) -> None:
        self.channel: WebChatChannel | None = None
        self.calls: list[Inbound] = []

    async def __call__(self, inbound: Inbound) -> HandleResult:
        assert self.channel is not None
        self.calls.append(inbound)
        if inbound.button == "acc:1" and inbound.button_message_id:
            await self.channel.edit(
                inbound.chat_id,
                inbound.button_message_id,
                Outbound("✅ 已接单 Order accepted: 3号楼 水管漏水"),
            )
            return HandleResult(toast="已接单 Accepted")
        if inbound.location:
            await self.channel.send(inbound.chat_id, Outbound("📍 已签到 Checked in"))
        elif inbound.photo:  # the order flow's next question after a photo
            await self.channel.send(
                inbound.chat_id, Outbound("收到照片。请发送位置 Photo received: your location?")
            )
        elif inbound.text:
            await self.channel.send(
                inbound.chat_id,
                Outbound(
                    f"新工单 New order #1: {inbound.text}\n3号楼 2单元 · 水管漏水 leaking pipe",
                    buttons=[[Button("接单 Accept", "acc:1"), Button("转派 Reassign", "re:1")]],
                    menu=[["下单 Order", "我的工单 My orders"], ["签到 Check in", "帮助 Help"]],
                    ask_location="签到 Check in",
                ),
            )
        return HandleResult()


@pytest.fixture
async def base_url(tmp_path: Path) -> AsyncIterator[str]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'web.db'}")
    await upgrade(engine)
    core = StubCore()
    channel = WebChatChannel(
        make_sessionmaker(engine), core, _personas, media_dir=tmp_path / "media"
    )
    core.channel = channel
    app = Starlette(routes=channel.routes())

    # A socket bound here, handed to uvicorn: no race for a "free" port.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1, access_log=False
    )
    server = uvicorn.Server(config)
    # Listening before uvicorn starts: early connections wait in the backlog, no polling needed.
    sock.listen(64)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}/chat/"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)
        sock.close()
        await engine.dispose()


async def test_chat_as_resident_and_worker(base_url: str, tmp_path: Path) -> None:
    expect = async_api.expect
    shots = Path(os.environ.get("WEBCHAT_SCREENSHOTS", tmp_path))
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            await page.goto(base_url)
            pane = page.get_by_test_id("pane").first

            # Pick an identity; the pane header shows who we are.
            await pane.get_by_test_id("persona-option").filter(has_text="李网格员").click()
            await expect(pane.get_by_test_id("pane-title")).to_have_text("李网格员")

            # Type and press Enter: our bubble on the right, the bot's reply with buttons.
            await pane.get_by_test_id("input").fill("厨房漏水")
            await pane.get_by_test_id("input").press("Enter")
            mine = pane.locator('[data-testid=bubble][data-direction="in"]')
            await expect(mine.get_by_test_id("bubble-text")).to_have_text("厨房漏水")
            reply = pane.locator('[data-testid=bubble][data-direction="out"]')
            await expect(reply).to_contain_text("新工单 New order #1")
            await expect(pane.get_by_test_id("input")).to_have_value("")
            await expect(pane.get_by_test_id("menu-chip")).to_have_count(4)
            await expect(pane.get_by_test_id("location-chip")).to_be_visible()

            # Press a button: the message is edited in place and a toast shows.
            await reply.get_by_test_id("msg-button").filter(has_text="接单").click()
            await expect(reply).to_contain_text("已接单 Order accepted")
            await expect(reply).to_have_attribute("data-version", "2")
            await expect(reply.get_by_test_id("msg-button")).to_have_count(0)
            await expect(pane.get_by_test_id("toast")).to_have_text("已接单 Accepted")

            # A second pane plays the resident, side by side.
            await page.get_by_test_id("add-pane").click()
            second = page.get_by_test_id("pane").nth(1)
            await second.get_by_test_id("persona-option").filter(has_text="张阿姨").click()
            await second.get_by_test_id("input").fill("你好")
            await second.get_by_test_id("send").click()
            await expect(
                second.locator('[data-testid=bubble][data-direction="out"]')
            ).to_contain_text("你好")
            # A photo from the attach button appears in the transcript.
            await second.get_by_test_id("file").set_input_files(
                files=[{"name": "dot.png", "mimeType": "image/png", "buffer": PNG_1PX}]
            )
            await expect(
                second.locator('[data-testid=bubble][data-direction="in"] img')
            ).to_have_count(1)
            await page.screenshot(path=str(shots / "webchat-desktop.png"))

            # The panes survive a reload (localStorage).
            await page.reload()
            await expect(page.get_by_test_id("pane")).to_have_count(2)
            await expect(page.get_by_test_id("pane-title").first).to_have_text("李网格员")
            await expect(
                page.get_by_test_id("pane").first.locator('[data-testid=bubble][data-version="2"]')
            ).to_contain_text("已接单")

            # Phone-sized: one pane fills the screen.
            phone = await browser.new_page(viewport={"width": 390, "height": 780})
            await phone.goto(base_url)
            await phone.get_by_test_id("persona-option").filter(has_text="王党员").click()
            await phone.get_by_test_id("menu-chip").filter(has_text="/start").click()
            await expect(
                phone.locator('[data-testid=bubble][data-direction="out"]')
            ).to_be_visible()
            await phone.get_by_test_id("location-chip").click()
            await expect(phone.get_by_test_id("bubble").last).to_contain_text("已签到")
            await phone.screenshot(path=str(shots / "webchat-phone.png"))
        finally:
            await browser.close()


def _tall_png() -> bytes:
    """A photo much taller than the image placeholder (a phone's portrait shot)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (300, 900), (90, 140, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_phone_width_photo_keeps_the_next_question_in_view_and_tabs_show_panes(
    base_url: str, tmp_path: Path
) -> None:
    expect = async_api.expect
    shots = Path(os.environ.get("WEBCHAT_SCREENSHOTS", tmp_path))
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 390, "height": 780})

            # Photos arrive over a slow mobile link: they get their height after the
            # question that follows them is already shown.
            async def slow_media(route: object) -> None:
                await asyncio.sleep(0.5)
                await route.continue_()  # type: ignore[attr-defined]

            await page.route("**/chat/media/**", slow_media)
            await page.goto(base_url)
            tabs = page.get_by_test_id("pane-tab")
            await expect(page.get_by_test_id("pane-tabs")).to_be_hidden()  # one pane: no tabs
            first = page.get_by_test_id("pane").first
            await first.get_by_test_id("persona-option").filter(has_text="张阿姨").click()
            for text in ("楼道灯坏了", "三单元", "晚上很黑"):
                await first.get_by_test_id("input").fill(text)
                await first.get_by_test_id("input").press("Enter")
                await expect(first.get_by_test_id("bubble").last).to_contain_text(text)
            await first.get_by_test_id("file").set_input_files(
                files=[{"name": "lamp.png", "mimeType": "image/png", "buffer": _tall_png()}]
            )
            question = first.get_by_test_id("bubble").filter(has_text="请发送位置")
            await expect(question).to_have_count(1)
            await page.wait_for_function(
                "() => [...document.querySelectorAll('.log img')].every("
                "i => i.complete && i.naturalHeight > 0)"
            )
            await expect(question).to_be_in_viewport(ratio=1)
            await page.screenshot(path=str(shots / "webchat-phone-photo.png"))

            # A second pane: a tab per pane shows which one is on screen.
            await page.get_by_test_id("add-pane").click()
            second = page.get_by_test_id("pane").nth(1)
            await second.get_by_test_id("persona-option").filter(has_text="李网格员").click()
            await expect(tabs).to_have_count(2)
            await expect(tabs.nth(0)).to_contain_text("张阿姨")
            await expect(tabs.nth(1)).to_contain_text("李网格员")
            await expect(tabs.nth(1)).to_have_attribute("aria-selected", "true")
            await expect(second).to_be_in_viewport(ratio=0.9)

            # News for the pane that is not on screen shows as an unread count on its tab.
            sent = await page.request.post(
                base_url + "api/send",
                data={"chat_id": "p-resident", "id": "0b6c1e52-5a1c-4d2e-9a51-3c0f3d2b7a10",
                      "text": "还有一件事"},
            )  # fmt: skip
            assert sent.ok
            await expect(tabs.nth(0).get_by_test_id("unread-badge")).to_have_text("1")
            await page.screenshot(path=str(shots / "webchat-phone-tabs.png"))

            # Tapping the tab brings that pane back, and its news counts as read.
            await tabs.nth(0).click()
            await expect(first).to_be_in_viewport(ratio=0.9)
            await expect(tabs.nth(0)).to_have_attribute("aria-selected", "true")
            await expect(tabs.nth(0).get_by_test_id("unread-badge")).to_have_count(0)
            await expect(first.get_by_test_id("bubble").last).to_be_in_viewport()
        finally:
            await browser.close()
