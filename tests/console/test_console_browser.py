"""The console in a real headless Chromium against the real service on uvicorn: the community
admin asks for a link in Telegram (the fake Bot API server), signs in, reads the overview,
filters the orders, opens one, exports the ledger and adjusts points; a used or expired link,
a form without its CSRF token and another subtree's order by URL are refused."""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import uvicorn
from openpyxl import load_workbook
from sqlalchemy import select

from models import PointsEntry
from tests.channels.test_webchat_browser import CHROMIUM, CHROMIUM_ARGS
from tests.console.support import place
from tests.e2e.duty_support import DutyService, running

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed"),
]
async_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed")

CHEN, LIU = 4001, 4002
LINK = re.compile(r"http://\S+/console/login/\S+")


async def test_the_console_in_a_browser(tmp_path: Path) -> None:
    expect = async_api.expect
    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS", tmp_path))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    url = f"sqlite+aiosqlite:///{tmp_path / 'console.db'}"
    people = {CHEN: "p-chen-shuji", LIU: "p-liu-wanggezhang"}
    async with running(
        DutyService, url, tmp_path, people, public_url=f"http://127.0.0.1:{port}",
        demo_history=False, console_report_wait_ms=0,
    ) as svc:
        now = svc.clock()
        sm = svc.app.sessionmaker
        lamp = await place(sm, "xh-b01", at=now - timedelta(hours=3), description="楼道灯坏了")
        await place(sm, "xh-b02", at=now - timedelta(hours=2), category="sanitation",
                    description="垃圾没人清")
        other = await place(sm, "xh-b09", at=now - timedelta(hours=1), description="第二网格水管")
        server = uvicorn.Server(uvicorn.Config(
            svc.app.web_app(), log_level="warning", lifespan="off",
            timeout_graceful_shutdown=1, access_log=False,
        ))
        sock.listen(64)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            await svc.users[CHEN].send_command("console")
            message = await svc.tg.wait_for(CHEN, lambda m: "/console/login/" in (m.text or ""))
            found = LINK.search(message.text or "")
            assert found
            link = found.group(0)
            async with async_api.async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
                )
                try:
                    ctx = await browser.new_context(
                        viewport={"width": 390, "height": 844}, accept_downloads=True
                    )
                    page = await ctx.new_page()
                    await page.goto(link)
                    await page.get_by_test_id("sign-in").click()
                    # The overview: nothing kept yet (and no time to wait), so it says the
                    # figures are being computed and reloads itself; then this month's figures,
                    # their time, and the chart.
                    await expect(page.get_by_test_id("overview-title")).to_contain_text(
                        "新华社区 · 2027-03")
                    await expect(page.get_by_test_id("computing")).to_contain_text("正在计算")
                    await expect(page.get_by_test_id("received")).to_have_text(
                        "3", timeout=30_000)
                    await expect(page.get_by_test_id("computed-at")).to_contain_text("计算于")
                    chart = page.locator("img.chart")
                    await expect(chart).to_have_count(1)
                    # The chart is a PNG the browser decodes (a broken image has no width).
                    width = await chart.evaluate(
                        "img => img.decode().then(() => img.naturalWidth)")
                    assert width > 100
                    await page.screenshot(path=str(shots / "console-overview-390.png"),
                                          full_page=True)
                    # Nothing is wider than the phone's screen.
                    assert await page.evaluate(
                        "() => document.documentElement.scrollWidth <= window.innerWidth")

                    # Orders: filter by category, open one.
                    await page.get_by_role("link", name="工单", exact=True).click()
                    await expect(page.get_by_test_id("order-row")).to_have_count(3)
                    await page.locator("select[name=category]").select_option("repair")
                    await page.get_by_test_id("filter").click()
                    await expect(page.get_by_test_id("order-row")).to_have_count(2)
                    await page.get_by_role("link", name=f"{lamp:06d}").click()
                    await expect(page.get_by_test_id("order-title")).to_contain_text(
                        f"工单 {lamp:06d}")
                    await expect(page.get_by_test_id("timeline")).to_contain_text("提交工单")
                    await expect(page.get_by_test_id("contact")).to_contain_text("13800000009")

                    # Export the filtered list as the ledger.
                    await page.get_by_role("link", name="← 返回工单列表").click()
                    async with page.expect_download() as info:
                        await page.get_by_test_id("export-xlsx").click()
                    download = await info.value
                    data = await asyncio.to_thread(Path(await download.path()).read_bytes)
                    wb = load_workbook(io.BytesIO(data))
                    assert wb.sheetnames[0] == "汇总"
                    assert len(list(wb["工单"].iter_rows(min_row=3))) == 3

                    # Adjust 李党员's points with a reason.
                    await page.get_by_role("link", name="成员", exact=True).click()
                    row = page.get_by_test_id("member-row").filter(has_text="李党员")
                    await row.locator("input[name=delta]").fill("+5")
                    await row.locator("input[name=reason]").fill("组织楼道清扫")
                    await row.get_by_test_id("adjust").click()
                    await expect(page.get_by_test_id("done")).to_contain_text("积分已调整")

                    # A form without its CSRF token changes nothing.
                    row = page.get_by_test_id("member-row").filter(has_text="李党员")
                    await row.locator("input[name=delta]").fill("+100")
                    await row.locator("input[name=reason]").fill("伪造")
                    await row.locator("input[name=csrf]").evaluate("e => e.remove()")
                    await row.get_by_test_id("adjust").click()
                    await expect(page.get_by_test_id("message")).to_contain_text("表单已失效")

                    # The same link again, in another browser: refused.
                    other_ctx = await browser.new_context()
                    stranger = await other_ctx.new_page()
                    await stranger.goto(link)
                    await stranger.get_by_test_id("sign-in").click()
                    await expect(stranger.get_by_test_id("message")).to_contain_text(
                        "已使用或已过期")

                    # 刘网格长 (head of 第一网格) asks for a link; it expires unused.
                    await svc.users[LIU].send_command("console")
                    msg = await svc.tg.wait_for(LIU, lambda m: "/console/login/" in (m.text or ""))
                    first = LINK.search(msg.text or "")
                    assert first
                    svc.clock.now = svc.clock.now + timedelta(minutes=11)
                    await stranger.goto(first.group(0))
                    await stranger.get_by_test_id("sign-in").click()
                    await expect(stranger.get_by_test_id("message")).to_contain_text(
                        "已使用或已过期")
                    # A fresh one works, and shows only his subtree: 第二网格's order by URL
                    # is not found.
                    last = svc.last_id(LIU)
                    await svc.users[LIU].send_command("console")
                    msg = await svc.tg.wait_for(
                        LIU, lambda m: m.message_id > last and "/console/login/" in (m.text or ""))
                    fresh = LINK.search(msg.text or "")
                    assert fresh
                    await stranger.goto(fresh.group(0))
                    await stranger.get_by_test_id("sign-in").click()
                    await expect(stranger.get_by_test_id("overview-title")).to_contain_text(
                        "第一网格")
                    response = await stranger.goto(
                        f"http://127.0.0.1:{port}/console/orders/{other}")
                    assert response is not None and response.status == 404
                    await expect(stranger.get_by_test_id("message")).to_contain_text("没有找到")
                    assert "第二网格水管" not in await stranger.content()
                finally:
                    await browser.close()
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, timeout=10)
            sock.close()
        async with sm() as session:
            entries = (await session.scalars(select(PointsEntry))).all()
            assert [(e.points, e.note) for e in entries] == [(5, "组织楼道清扫")]
