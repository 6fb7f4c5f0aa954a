"""The whole service behind the local web chat, driven through headless Chromium.

A real :class:`~bot.app.Gridbot` (SQLite, demo community, delivery worker running) serves its
``web_app()`` with uvicorn; three panes of one page play the resident 张阿姨, her micro-grid's
worker 王网格员 and the party member 李党员: an order is placed, broadcast, accepted, and the
resident learns who is coming.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.app import Gridbot
from bot.config import load_settings
from models import Order
from tests.fakes.telegram_server import serve_asgi

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
#: Generous for one step on a loaded CI machine; the whole test takes a few seconds.
STEP_MS = 10_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)"
    ),
]
async_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed")

DESCRIPTION = "1栋2单元楼道灯坏了，晚上看不见"


@pytest.fixture
async def chat_url(tmp_path: Path) -> AsyncIterator[tuple[Gridbot, str]]:
    """The service on a fresh SQLite file with the demo community, its web app on a free port."""
    settings = load_settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'gridbot.db'}",
        demo=True,
        secret_key="webchat-e2e",
        webchat_enabled=True,
        telegram_token=None,
        media_dir=tmp_path / "media",
        qr_dir=tmp_path / "qr",
    )
    app = Gridbot(settings)
    await app.prepare()
    app.enable("web")
    await app.start()
    try:
        async with serve_asgi(app.web_app()) as root:
            yield app, f"{root}/chat/"
    finally:
        await app.stop()


def _out(pane: Any) -> Any:
    """The bot's bubbles in a pane."""
    return pane.locator('[data-testid=bubble][data-direction="out"]')


async def test_order_broadcast_accept_in_three_panes(
    chat_url: tuple[Gridbot, str], tmp_path: Path
) -> None:
    app, url = chat_url
    expect = type(async_api.expect)()  # our own: set_options must not leak into other tests
    expect.set_options(timeout=STEP_MS)
    shots = Path(os.environ.get("WEBCHAT_SCREENSHOTS", tmp_path))
    started = time.monotonic()
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            # One context for both pages below: they share localStorage (the saved panes).
            context = await browser.new_context(viewport={"width": 1440, "height": 900})
            page = await context.new_page()
            page.set_default_timeout(STEP_MS)
            await page.goto(url)
            await expect(page.locator("body[data-ready='1']")).to_have_count(1)
            panes = page.get_by_test_id("pane")
            resident = panes.nth(0)

            # Pane 1: the resident, from the picker (roles are shown under each name).
            option = resident.get_by_test_id("persona-option").filter(has_text="张阿姨")
            await expect(option).to_contain_text("居民")
            await option.click()
            await expect(resident.get_by_test_id("pane-title")).to_have_text("张阿姨")

            # Pane 2: her micro-grid's worker.
            await page.get_by_test_id("add-pane").click()
            worker = panes.nth(1)
            option = worker.get_by_test_id("persona-option").filter(has_text="王网格员")
            await expect(option).to_contain_text("网格员")
            await option.click()
            await expect(worker.get_by_test_id("pane-title")).to_have_text("王网格员")

            # The resident starts (a fresh chat offers /start), then uses the menu.
            await resident.get_by_test_id("menu-chip").filter(has_text="/start").click()
            order_chip = resident.get_by_test_id("menu-chip").filter(has_text="📝 我要报事")
            await order_chip.click()
            ask = _out(resident).filter(has_text="类别")
            await ask.get_by_test_id("msg-button").filter(has_text="维修报修").click()
            await expect(_out(resident).filter(has_text="描述")).to_have_count(1)
            await resident.get_by_test_id("input").fill(DESCRIPTION)
            await resident.get_by_test_id("send").click()
            photo_q = _out(resident).filter(has_text="照片")
            await photo_q.get_by_test_id("msg-button").filter(has_text="跳过").click()
            # The location question: a "share location" chip, and skip/cancel as menu chips.
            await expect(resident.get_by_test_id("location-chip")).to_be_visible()
            await resident.get_by_test_id("menu-chip").filter(has_text="跳过").click()
            confirm = _out(resident).filter(has_text="请确认")
            await expect(confirm).to_contain_text(DESCRIPTION)
            await confirm.get_by_test_id("msg-button").filter(has_text="✅ 提交").click()
            await expect(_out(resident).filter(has_text="工单号")).to_have_count(1)

            async with app.sessionmaker() as session:
                orders = list(await session.scalars(select(Order)))
            assert len(orders) == 1
            assert orders[0].description == DESCRIPTION

            # The worker's pane shows the new order card with the dispatch buttons.
            card = _out(worker).filter(has_text="新工单").filter(has_text=DESCRIPTION)
            await expect(card).to_have_count(1)
            labels = await card.get_by_test_id("msg-button").all_inner_texts()
            for label in ("👤 指派", "📢 广播抢单", "🙋 我来处理", "⬆️ 上报"):
                assert label in labels, labels
            await page.screenshot(path=str(shots / "fullstack-order.png"))

            # Pane 3: the party member; the worker broadcasts, the member sees the offer.
            await page.get_by_test_id("add-pane").click()
            member = panes.nth(2)
            await member.get_by_test_id("persona-option").filter(has_text="李党员").click()
            await expect(member.get_by_test_id("pane-title")).to_have_text("李党员")
            await card.get_by_test_id("msg-button").filter(has_text="📢 广播抢单").click()
            await expect(_out(worker).filter(has_text="已广播给")).to_have_count(1)
            offer = _out(member).filter(has_text="新的服务需求")
            await expect(offer).to_have_count(1)
            offer_text = await offer.inner_text()
            # Privacy by stage: an offer carries neither phone nor room.
            assert "13800000009" not in offer_text and "2-301" not in offer_text
            await offer.get_by_test_id("msg-button").filter(has_text="接单").click()

            # The member gets the contact; the resident learns who is coming.
            task = _out(member).filter(has_text="接单成功")
            await expect(task.first).to_contain_text("13800000009")
            coming = _out(resident).filter(has_text="已由李党员接单")
            await expect(coming).to_have_count(1)
            await page.screenshot(path=str(shots / "fullstack-accepted.png"))

            # Earlier messages are brought up to date: no stale button is left to press.
            worker_card = _out(worker).filter(has_text=DESCRIPTION).filter(has_text="处理人")
            worker_card = worker_card.filter(has_text="联系人")
            await expect(worker_card).to_have_count(1)
            # Only "escalate" stays: the member might get stuck.
            await expect(worker_card.get_by_test_id("msg-button")).to_have_text(["⬆️ 上报"])
            receipt = _out(resident).filter(has_text="工单号")
            await expect(receipt.get_by_test_id("msg-button")).to_have_count(0)
            await expect(receipt).to_contain_text("已接单")
            taken = _out(member).filter(has_text="您已接下这张工单")
            await expect(taken.get_by_test_id("msg-button")).to_have_count(0)
            async with app.sessionmaker() as session:
                order = await session.get(Order, orders[0].id)
                assert order is not None and order.status == "accepted"

            # Phone-sized: one pane fills the width and the page is still usable.
            phone = await context.new_page()
            await phone.set_viewport_size({"width": 390, "height": 780})
            await phone.goto(url)
            await expect(phone.get_by_test_id("pane")).to_have_count(3)  # kept in localStorage
            first = phone.get_by_test_id("pane").first
            box = await first.bounding_box()
            assert box is not None and box["width"] >= 380
            await expect(_out(first).filter(has_text="工单号")).to_have_count(1)
            await phone.screenshot(path=str(shots / "fullstack-phone.png"))
        finally:
            await browser.close()
    assert time.monotonic() - started < 30
