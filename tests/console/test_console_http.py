"""The web console over HTTP (Starlette's app in process), on SQLite and PostgreSQL: signing in
with the link the bot sends in chat, sessions, and the rule that a head sees only their own
subtree whatever URL they type."""

from __future__ import annotations

import asyncio
import io
from contextlib import aclosing
from pathlib import Path
from urllib.parse import unquote

from openpyxl import load_workbook
from sqlalchemy import func, select

from models import (
    ConsoleAction,
    ConsoleLink,
    ConsoleSession,
    Grid,
    OrderEvent,
    Person,
    PointsEntry,
    Role,
)
from tests.console.support import ConsoleHarness, console_harness, later
from tests.reports.history import write_history

CHEN = "p-chen-shuji"  # community admin (社区管理员) of 新华社区: the whole community
LIU = "p-liu-wanggezhang"  # head (网格长) of 第一网格 xh-g1 only


async def test_an_admin_signs_in_once_with_the_link_the_bot_sent(
    database_url: str, tmp_path: Path
) -> None:
    async with console_harness(database_url, tmp_path) as h:
        token = await h.link_for(CHEN)
        async with h.browser() as first, h.browser() as second:
            # Opening the link shows a button; it does not use the link up.
            page = await first.get(f"/console/login/{token}")
            assert page.status_code == 200 and "登录" in page.text
            done = await first.post("/console/login", data={"token": token})
            assert done.status_code == 303 and done.headers["location"] == "/console/"
            cookie = done.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie
            assert "Secure" not in cookie  # the demo's public URL is http
            overview = await first.get("/console/")
            assert overview.status_code == 200 and "陈书记" in overview.text
            # The same link a second time, from anywhere: refused, no session.
            again = await second.post("/console/login", data={"token": token})
            assert again.status_code == 403 and "已使用或已过期" in again.text
            assert (await second.get("/console/")).status_code == 401
        async with h.app.sessionmaker() as session:
            link = (await session.scalars(select(ConsoleLink))).one()
            assert link.token_hash != token.split(".")[0]  # only a hash is kept


async def test_an_expired_or_forged_link_is_refused(database_url: str, tmp_path: Path) -> None:
    async with console_harness(database_url, tmp_path) as h:
        token = await h.link_for(CHEN)
        nonce, signature = token.split(".")
        async with h.browser() as browser:
            forged = await browser.post(
                "/console/login", data={"token": f"{nonce}.{'0' * len(signature)}"}
            )
            assert forged.status_code == 403
            later(h.clock, minutes=10, seconds=1)
            expired = await browser.post("/console/login", data={"token": token})
            assert expired.status_code == 403 and "/console" in expired.text
            assert (await browser.get("/console/")).status_code == 401


async def test_only_heads_and_admins_get_a_link(database_url: str, tmp_path: Path) -> None:
    async with console_harness(database_url, tmp_path) as h:
        for key in ("p-zhang-ayi", "p-li-dangyuan", "p-wang"):
            user = await h.login(key)
            await user.send("/console")
            assert user.last().text == "管理后台仅对网格长和社区管理员开放。"
            assert "http" not in user.last().text
        assert await h.count(ConsoleLink) == 0


async def test_sessions_end_when_idle_and_on_sign_out(database_url: str, tmp_path: Path) -> None:
    async with console_harness(database_url, tmp_path, console_idle_minutes=15) as h:
        async with aclosing(await h.signed_in(CHEN)) as browser:
            later(h.clock, minutes=14)
            assert (await browser.get("/console/orders")).status_code == 200
            later(h.clock, minutes=14)  # 14 minutes after the last request: still on
            page = await browser.get("/console/orders")
            assert page.status_code == 200
            later(h.clock, minutes=15)
            assert (await browser.get("/console/orders")).status_code == 401
        async with aclosing(await h.signed_in(CHEN)) as browser:
            csrf = _csrf((await browser.get("/console/")).text)
            cookie = browser.cookies.get("gridbot_console")
            out = await browser.post("/console/logout", data={"csrf": csrf})
            assert out.status_code == 200 and "已退出登录" in out.text
            # The old cookie is worth nothing on the server, even if a browser kept it.
            async with h.browser() as thief:
                thief.cookies.set("gridbot_console", cookie or "", path="/console")
                assert (await thief.get("/console/")).status_code == 401


async def test_a_head_sees_only_their_subtree_on_every_page(
    database_url: str, tmp_path: Path
) -> None:
    async with console_harness(database_url, tmp_path) as h:
        mine = await h.place("xh-b01", description="第一网格的灯")
        theirs = await h.place("xh-b09", description="第二网格的水管", status="accepted",
                               assignee="p-li-dangyuan")
        async with aclosing(await h.signed_in(LIU)) as browser:
            listing = await browser.get("/console/orders")
            assert f"{mine:06d}" in listing.text and f"{theirs:06d}" not in listing.text
            assert (await browser.get(f"/console/orders/{mine}")).status_code == 200
            refused = {
                f"/console/orders/{theirs}": 404,
                f"/console/orders/{theirs}/photo/order": 404,
                f"/console/orders?q={theirs:06d}": 200,  # a search finds nothing
                "/console/?grid=xh-g2": 404,
                "/console/?grid=xinhua": 404,  # above their grid
                "/console/chart.png?grid=xh-g2": 404,
                "/console/orders?grid=xh-g2": 404,
                "/console/orders/export.xlsx?grid=xh-g2": 404,
                "/console/duties?grid=xh-g2": 404,
                "/console/members?grid=xh-g2": 404,
                "/console/members/export.csv?grid=xh-g2": 404,
                "/console/bulletins?grid=xh-g2": 404,
                "/console/bulletins/2026-10?grid=xh-g2": 404,
                "/console/orders/99999999999999999999": 404,  # no id that large
                "/console/orders?q=99999999999999999999&before=99999999999999999999": 200,
                "/console/bulletins/2026-13": 404,
            }
            for url, status in refused.items():
                page = await browser.get(url)
                assert page.status_code == status, url
                assert "第二网格的水管" not in page.text and "第二网格" not in page.text, url
            csrf = _csrf((await browser.get("/console/orders")).text)
            esc = await browser.post(f"/console/orders/{theirs}/escalate",
                                     data={"csrf": csrf, "reason": "试试"})
            assert esc.status_code == 404
            # Points are adjusted by community admins only (as /points adjust in chat).
            li = await _person_id(h, "p-li-dangyuan")
            adjust = await browser.post(f"/console/members/{li}/points",
                                        data={"csrf": csrf, "delta": "+5", "reason": "好"})
            assert adjust.status_code == 403
            # Their own subtree's pages answer.
            for url in ("/console/?grid=xh-g1-m1", "/console/duties", "/console/members",
                        "/console/bulletins", "/console/chart.png"):
                assert (await browser.get(url)).status_code == 200, url
        assert [a for a, *_ in await h.events(theirs)] == ["submit"]
        async with h.app.sessionmaker() as session:
            assert await session.scalar(select(func.count()).select_from(PointsEntry)) == 0
            assert await session.scalar(select(func.count()).select_from(ConsoleAction)) == 0


async def test_contact_details_only_where_the_chat_shows_them(
    database_url: str, tmp_path: Path
) -> None:
    """The resident's phone and room go to the order's handler; the head of the community
    sees the order (it is in their subtree) but not the contact while a grid below handles
    it; the micro-grid's head (here: 刘网格长, head of xh-g1 above xh-g1-m1) handles it."""
    async with console_harness(database_url, tmp_path) as h:
        oid = await h.place("xh-b01", room="2-301")
        async with aclosing(await h.signed_in(LIU)) as liu:
            page = await liu.get(f"/console/orders/{oid}")
            assert "13800000009" in page.text and "2-301" in page.text
        async with aclosing(await h.signed_in(CHEN)) as chen:
            page = await chen.get(f"/console/orders/{oid}")
            assert page.status_code == 200
            assert "13800000009" in page.text  # the admin of the community above manages it
        async with aclosing(await h.signed_in("p-luo-jianguo")) as luo:  # head of xh-g2
            assert (await luo.get(f"/console/orders/{oid}")).status_code == 404


async def test_a_form_without_its_csrf_token_changes_nothing(
    database_url: str, tmp_path: Path
) -> None:
    async with console_harness(database_url, tmp_path) as h:
        oid = await h.place("xh-b01")
        async with aclosing(await h.signed_in(CHEN)) as chen:
            li = await _person_id(h, "p-li-dangyuan")
            for data in ({}, {"csrf": "forged"}):
                no = await chen.post(f"/console/orders/{oid}/escalate",
                                     data={**data, "reason": "无令牌"})
                assert no.status_code == 403 and "表单已失效" in no.text
                no = await chen.post(f"/console/members/{li}/points",
                                     data={**data, "delta": "+5", "reason": "无令牌"})
                assert no.status_code == 403
        assert [a for a, *_ in await h.events(oid)] == ["submit"]
        assert await h.count(PointsEntry) == 0 and await h.count(ConsoleAction) == 0


async def test_an_admin_adjusts_points_and_the_member_is_told(
    database_url: str, tmp_path: Path
) -> None:
    async with console_harness(database_url, tmp_path) as h:
        li_chat = await h.login("p-li-dangyuan")
        h.users["p-li-dangyuan"] = li_chat
        async with aclosing(await h.signed_in(CHEN)) as chen:
            members = await chen.get("/console/members")
            assert "李党员" in members.text
            li = await _person_id(h, "p-li-dangyuan")
            bad = await chen.post(f"/console/members/{li}/points",
                                  data={"csrf": _csrf(members.text), "delta": "abc",
                                        "reason": "x"})
            assert bad.status_code == 400
            done = await chen.post(f"/console/members/{li}/points",
                                   data={"csrf": _csrf(members.text), "delta": "+5",
                                         "reason": "组织楼道清扫"})
            assert done.status_code == 303
            after = await chen.get(done.headers["location"])
            assert "积分已调整" in after.text
        await h.flush()
        async with h.app.sessionmaker() as session:
            entry = (await session.scalars(select(PointsEntry))).one()
            assert (entry.points, entry.note, entry.actor_name) == (5, "组织楼道清扫", "陈书记")
            audit = (await session.scalars(select(ConsoleAction))).one()
            assert (audit.action, audit.target) == ("points", f"person:{li}")
        assert "组织楼道清扫" in li_chat.last().text and "+5" in li_chat.last().text


async def test_a_head_escalates_an_order_as_in_chat(database_url: str, tmp_path: Path) -> None:
    async with console_harness(database_url, tmp_path) as h:
        oid = await h.place("xh-b01")
        async with aclosing(await h.signed_in(LIU)) as liu:
            page = await liu.get(f"/console/orders/{oid}")
            empty = await liu.post(f"/console/orders/{oid}/escalate",
                                   data={"csrf": _csrf(page.text), "reason": "  "})
            assert empty.status_code == 409 and "请填写原因" in empty.text
            done = await liu.post(f"/console/orders/{oid}/escalate",
                                  data={"csrf": _csrf(page.text), "reason": "需要社区协调"})
            assert done.status_code == 303
            shown = await liu.get(done.headers["location"])
            assert "已上报上一级" in shown.text and "需要社区协调" in shown.text
        assert [a for a, *_ in await h.events(oid)] == ["submit", "escalate"]
        async with h.app.sessionmaker() as session:
            ev = await session.scalar(select(OrderEvent).where(OrderEvent.action == "escalate"))
            assert ev is not None and ev.note == "需要社区协调"
            audit = (await session.scalars(select(ConsoleAction))).one()
            assert (audit.action, audit.target, audit.detail) == (
                "escalate", f"order:{oid}", "需要社区协调")


async def test_filters_overdue_and_keyset_paging(database_url: str, tmp_path: Path) -> None:
    async with console_harness(database_url, tmp_path) as h:
        now = h.clock()
        from datetime import timedelta

        # Overdue (the order clock's rule): accepted, and 48 h (repair's deadline) have
        # passed since it was accepted. 47 h is not yet; a done order never is.
        late = await h.place("xh-b01", status="accepted", assignee="p-li-dangyuan",
                             updated=now - timedelta(hours=48))
        fresh = await h.place("xh-b01", status="accepted", assignee="p-li-dangyuan",
                              updated=now - timedelta(hours=47))
        done = await h.place("xh-b01", status="done", updated=now - timedelta(hours=100))
        safety = await h.place("xh-b01", status="accepted", category="safety",
                               updated=now - timedelta(hours=4))  # 4 h deadline
        ids = [await h.place("xh-b16", category="sanitation") for _ in range(55)]
        async with aclosing(await h.signed_in(CHEN)) as chen:
            page = await chen.get("/console/orders?overdue=1")
            shown = _numbers(page.text)
            assert shown == [f"{safety:06d}", f"{late:06d}"]
            assert f"{fresh:06d}" not in page.text and f"{done:06d}" not in page.text
            first = await chen.get("/console/orders?category=sanitation")
            one = _numbers(first.text)
            assert one == [f"{i:06d}" for i in reversed(ids)][:50]
            nxt = first.text.split('data-testid="next-page"')[0].rsplit('href="', 1)[1]
            nxt = nxt.split('"')[0].replace("&amp;", "&")
            second = await chen.get(nxt)
            assert _numbers(second.text) == [f"{i:06d}" for i in reversed(ids)][50:]
            assert 'data-testid="next-page"' not in second.text
            searched = await chen.get(f"/console/orders?q={late:06d}")
            assert _numbers(searched.text) == [f"{late:06d}"]
            by_status = await chen.get("/console/orders?status=done")
            assert _numbers(by_status.text) == [f"{done:06d}"]
            by_grid = await chen.get("/console/orders?grid=xh-g3&month=2027-03")
            assert len(_numbers(by_grid.text)) == 50


async def test_overview_and_export_show_the_reports_figures(
    database_url: str, tmp_path: Path
) -> None:
    """October 2026 of tests/reports/history.py, worked out by hand there: 8 orders received
    in 新华社区, 满意率 2/3; 第二网格 is below the 满意率 floor, 第一网格 below 按期办结率's
    (4 of 5 done on time)."""
    async with console_harness(database_url, tmp_path) as h:
        await write_history(h.app.sessionmaker)
        async with aclosing(await h.signed_in(CHEN)) as chen:
            page = await chen.get("/console/?month=2026-10")
            assert page.status_code == 200
            assert 'data-testid="received">8<' in page.text
            assert "66.7%" in page.text and "2/3" in page.text
            below = page.text.split("低于考核线的网格")[1].split("网格排名")[0]
            assert "满意率 0.0%（考核线 85%）" in below.split("第二网格")[1]
            assert "按期办结率 80.0%（考核线 90%）" in below.split("第一网格")[1]
            assert "第三网格" not in below
            chart = await chen.get("/console/chart.png?month=2026-10")
            assert chart.content.startswith(b"\x89PNG")
            xlsx = await chen.get("/console/orders/export.xlsx?month=2026-10&grid=xh-g1")
            wb = load_workbook(io.BytesIO(xlsx.content))
            assert wb.sheetnames[:2] == ["汇总", "工单"]
            numbers = [r[0].value for r in wb["工单"].iter_rows(min_row=3)]
            assert len(numbers) == 7  # the xh-g1 orders of October (all but B)
            csv_ = await chen.get("/console/orders/export.csv?month=2026-10&status=cancelled")
            lines = csv_.content.decode("utf-8-sig").strip().splitlines()
            assert len(lines) == 2 and "13800000009" not in csv_.text  # D; no phones
            bulletin = await chen.get("/console/bulletins/2026-10")
            assert "2026-10" in bulletin.text and "第二网格" in bulletin.text


async def test_a_head_of_two_grids_exports_the_orders_of_both(
    database_url: str, tmp_path: Path
) -> None:
    """刘网格长 heads 第一网格 and, standing in, 第三网格: neither is above the other, so his
    list with no grid chosen holds the orders of both, and its export (xlsx and csv) holds
    exactly those, by number as every ledger lists them; nothing of 第二网格, the third grid
    of their community, which is not his. Narrowed to 第三网格, the export holds that grid's
    only."""
    async with console_harness(database_url, tmp_path) as h:
        await _liu_stands_in_for_the_third_grid(h)
        lamp = await h.place("xh-b01", description="第一网格的灯")
        bins = await h.place("xh-b16", category="sanitation", description="第三网格的垃圾")
        pipe = await h.place("xh-b09", description="第二网格的水管")
        door = await h.place("xh-b02", description="第一网格的门禁")
        river = await h.place("xh-b19", category="sanitation", description="第三网格的河边")
        listed = [f"{i:06d}" for i in (river, door, bins, lamp)]  # newest first
        async with aclosing(await h.signed_in(LIU)) as browser:
            assert _numbers((await browser.get("/console/orders")).text) == listed

            xlsx = await browser.get("/console/orders/export.xlsx")
            assert xlsx.status_code == 200
            wb = load_workbook(io.BytesIO(xlsx.content))
            ledger = sorted(listed)  # by number, as every ledger sheet
            assert [r[0].value for r in wb["工单"].iter_rows(min_row=3)] == ledger
            name = unquote(xlsx.headers["content-disposition"])
            assert "第一网格、第三网格" in name
            summary = [[c.value for c in r] for r in wb["汇总"].iter_rows(min_row=3)]
            grids = {row[2] for row in summary}
            assert {"第一网格", "第三网格"} <= grids
            everything = " ".join(
                str(c.value) for ws in wb for row in ws.iter_rows() for c in row
                if c.value is not None
            )
            assert "第二网格" not in everything and f"{pipe:06d}" not in everything
            assert "新华社区" not in everything  # their common parent's figures are not his

            csv_ = await browser.get("/console/orders/export.csv")
            lines = csv_.content.decode("utf-8-sig").strip().splitlines()
            assert [line.split(",")[0] for line in lines[1:]] == ledger
            assert "第二网格" not in csv_.text and "第一网格" in unquote(
                csv_.headers["content-disposition"])

            narrowed = await browser.get("/console/orders/export.csv?grid=xh-g3")
            lines = narrowed.content.decode("utf-8-sig").strip().splitlines()
            assert sorted(line.split(",")[0] for line in lines[1:]) == sorted(
                f"{i:06d}" for i in (bins, river))
            one = await browser.get("/console/orders/export.xlsx?grid=xh-g3")
            wb = load_workbook(io.BytesIO(one.content))
            assert sorted(r[0].value for r in wb["工单"].iter_rows(min_row=3)) == sorted(
                f"{i:06d}" for i in (bins, river))
            assert "第一网格" not in unquote(one.headers["content-disposition"])


async def test_a_notice_to_a_subtree_is_confirmed_first(
    database_url: str, tmp_path: Path
) -> None:
    async with console_harness(database_url, tmp_path) as h:
        async with aclosing(await h.signed_in(LIU)) as liu:
            form = await liu.get("/console/notice")
            csrf = _csrf(form.text)
            outside = await liu.post("/console/notice", data={
                "csrf": csrf, "grid": "xh-g2", "text": "停水通知"})
            assert outside.status_code == 404
            preview = await liu.post("/console/notice", data={
                "csrf": csrf, "grid": "xh-g1-m1", "text": "明天停水"})
            assert preview.status_code == 200 and 'data-testid="confirm"' in preview.text
            assert await h.count(ConsoleAction) == 0
            sent = await liu.post("/console/notice", data={
                "csrf": csrf, "grid": "xh-g1-m1", "text": "明天停水", "confirm": "yes"})
            assert sent.status_code == 303
        async with h.app.sessionmaker() as session:
            audit = (await session.scalars(select(ConsoleAction))).one()
            assert (audit.action, audit.target) == ("notice", "grid:xh-g1-m1")


def _csrf(html: str) -> str:
    return html.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def _numbers(html: str) -> list[str]:
    import re

    return re.findall(r'<tr data-testid="order-row"><td><a href="/console/orders/\d+">(\d{6})',
                      html)


async def _liu_stands_in_for_the_third_grid(h: ConsoleHarness) -> None:
    """刘网格长 is made head of 第三网格 too: two grids, neither above the other."""
    liu = await _person_id(h, LIU)
    async with h.app.sessionmaker() as session, session.begin():
        third = await session.scalar(select(Grid).where(Grid.code == "xh-g3"))
        assert third is not None
        session.add(Role(person_id=liu, grid_id=third.id, role="head"))


async def _person_id(h: object, key: str) -> int:
    async with h.app.sessionmaker() as session:  # type: ignore[attr-defined]
        pid = await session.scalar(select(Person.id).where(Person.key == key))
        assert pid is not None
        return int(pid)


async def test_two_requests_racing_with_one_link_open_one_session(
    database_url: str, tmp_path: Path
) -> None:
    async with console_harness(database_url, tmp_path) as h:
        token = await h.link_for(CHEN)
        browsers = [h.browser() for _ in range(4)]
        try:
            answers = await asyncio.gather(
                *(b.post("/console/login", data={"token": token}) for b in browsers)
            )
        finally:
            for b in browsers:
                await b.aclose()
        assert sorted(a.status_code for a in answers) == [303, 403, 403, 403]
        assert await h.count(ConsoleSession) == 1


async def test_behind_tls_the_cookie_is_secure_and_the_link_is_https(
    database_url: str, tmp_path: Path
) -> None:
    async with console_harness(
        database_url, tmp_path, public_url="https://grid.example.org/"
    ) as h:
        user = await h.login(CHEN)
        await user.send("/console")
        assert "https://grid.example.org/console/login/" in user.last().text
        token = user.last().text.split("/console/login/")[1].split()[0]
        async with h.browser() as browser:
            done = await browser.post("/console/login", data={"token": token})
            assert done.status_code == 303 and "Secure" in done.headers["set-cookie"]


async def test_switched_off_the_console_is_not_served(database_url: str, tmp_path: Path) -> None:
    async with console_harness(database_url, tmp_path, console_enabled=False) as h:
        user = await h.login(CHEN)
        await user.send("/console")
        assert user.last().text == "本服务未开启管理后台。"
        async with h.browser() as browser:
            assert (await browser.get("/console/")).status_code == 404
        assert await h.count(ConsoleLink) == 0


async def test_an_english_speaking_admin_reads_it_in_english(
    database_url: str, tmp_path: Path
) -> None:
    async with console_harness(database_url, tmp_path) as h:
        async with h.app.sessionmaker() as session, session.begin():
            chen = await session.scalar(select(Person).where(Person.key == CHEN))
            assert chen is not None
            chen.locale = "en"
        async with aclosing(await h.signed_in(CHEN)) as browser:
            page = await browser.get("/console/")
            assert "Overview" in page.text and "Orders" in page.text and "概览" not in page.text
            # 中文 in the header: the console switches, the person's chat language stays.
            switched = await browser.get("/console/lang/zh_CN")
            assert switched.status_code == 303
            page = await browser.get("/console/")
            assert "概览" in page.text and "Overview" not in page.text
        async with h.app.sessionmaker() as session:
            chen = await session.scalar(select(Person).where(Person.key == CHEN))
            assert chen is not None and chen.locale == "en"


async def test_duties_today_and_an_orders_photo_in_scope(
    database_url: str, tmp_path: Path
) -> None:
    """Today (10 March, Shanghai): 第一网格's patrol plans get three runs, one checked in late,
    one missed, one still due; 第二网格's run is not counted for 刘网格长. The resident's photo
    is shown on the order's page, and not to another subtree's head."""
    from datetime import timedelta

    from models import Grid, Order, PatrolPlan, PatrolRun

    png = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00"
           b"\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\xdac\xf8\xff\xff?\x00\x05\xfe\x02\xfe"
           b"\xa75\x81\x84\x00\x00\x00\x00IEND\xaeB`\x82")
    async with console_harness(database_url, tmp_path) as h:
        now = h.clock()
        async with h.app.sessionmaker() as session, session.begin():
            grids = dict((await session.execute(select(Grid.code, Grid.id))).all())
            wang = await session.scalar(select(Person.id).where(Person.key == "p-wang"))
            assert wang is not None
            for n, (code, status, checked) in enumerate((
                ("xh-g1-m1", "checked_in", now - timedelta(minutes=10)),
                ("xh-g1-m2", "missed", None),
                ("xh-g1-m3", "due", None),
                ("xh-g2-m1", "missed", None),
            )):
                plan = PatrolPlan(grid_id=grids[code], person_id=wang, schedule="0 8 * * *",
                                  code=f"bench-{n}")
                session.add(plan)
                await session.flush()
                due = now - timedelta(hours=2)
                session.add(PatrolRun(plan_id=plan.id, grid_id=grids[code], person_id=wang,
                                      due_at=due, deadline_at=due + timedelta(hours=1),
                                      status=status, checked_in_at=checked))
        oid = await h.place("xh-b01")
        ref = await h.app.media.save(png)
        async with h.app.sessionmaker() as session, session.begin():
            order = await session.get(Order, oid)
            assert order is not None
            order.photo = ref
        async with aclosing(await h.signed_in(LIU)) as liu:
            page = await liu.get("/console/duties")
            assert 'data-testid="patrols-due">3<' in page.text
            assert 'data-testid="patrols-done">1<' in page.text
            assert 'data-testid="patrols-missed">1<' in page.text
            shown = await liu.get(f"/console/orders/{oid}")
            assert f"/console/orders/{oid}/photo/order" in shown.text
            photo = await liu.get(f"/console/orders/{oid}/photo/order")
            assert photo.status_code == 200 and photo.content == png
            assert (await liu.get(f"/console/orders/{oid}/photo/done")).status_code == 404
        async with aclosing(await h.signed_in("p-luo-jianguo")) as luo:
            assert (await luo.get(f"/console/orders/{oid}/photo/order")).status_code == 404
            page = await luo.get("/console/duties")
            assert 'data-testid="patrols-due">1<' in page.text


async def test_assigning_follows_the_chats_rules(database_url: str, tmp_path: Path) -> None:
    """Offered to a member nobody can reach, the assignment is refused with the chat's
    sentence and nothing stays; once 李党员 chats with the bot, it goes to him."""
    async with console_harness(database_url, tmp_path) as h:
        oid = await h.place("xh-b01")
        li = await _person_id(h, "p-li-dangyuan")
        async with aclosing(await h.signed_in(LIU)) as liu:
            page = await liu.get(f"/console/orders/{oid}")
            assert 'data-testid="assign"' in page.text and "李党员" in page.text
            refused = await liu.post(f"/console/orders/{oid}/assign",
                                     data={"csrf": _csrf(page.text), "member": str(li)})
            assert refused.status_code == 409 and "李党员" in refused.text
            assert (await h.order(oid)).status == "submitted"
            assert await h.count(ConsoleAction) == 0
            li_chat = await h.login("p-li-dangyuan")
            done = await liu.post(f"/console/orders/{oid}/assign",
                                  data={"csrf": _csrf(page.text), "member": str(li)})
            assert done.status_code == 303
        await h.flush()
        assert (await h.order(oid)).status == "dispatched"
        assert [a for a, *_ in await h.events(oid)] == ["submit", "assign"]
        assert any(b.label.startswith("✋") or "接单" in b.label for b in li_chat.last().buttons)
        async with h.app.sessionmaker() as session:
            audit = (await session.scalars(select(ConsoleAction))).one()
            assert (audit.action, audit.target) == ("assign", f"order:{oid}")


async def test_times_are_shown_in_the_communitys_time_zone(
    database_url: str, tmp_path: Path
) -> None:
    async with console_harness(database_url, tmp_path) as h:
        oid = await h.place("xh-b01")  # 10 March 2027, 10:00 in Shanghai (02:00 UTC)
        async with aclosing(await h.signed_in(CHEN)) as chen:
            listing = await chen.get("/console/orders")
            assert "03-10 10:00" in listing.text and "03-10 02:00" not in listing.text
            page = await chen.get(f"/console/orders/{oid}")
            assert "2027-03-10 10:00" in page.text


async def test_every_page_has_every_sentence_in_both_languages(
    database_url: str, tmp_path: Path
) -> None:
    """A missing catalog entry shows its key (``console.nav.orders``): none on any page."""
    import re

    key = re.compile(r"\b(?:console|report|status|category|bulletin|points|error)\.[a-z_.]+\b")
    async with console_harness(database_url, tmp_path) as h:
        await write_history(h.app.sessionmaker)
        oid = await h.place("xh-b01")
        for lang in ("zh_CN", "en"):
            async with h.app.sessionmaker() as session, session.begin():
                chen = await session.scalar(select(Person).where(Person.key == CHEN))
                assert chen is not None
                chen.locale = lang
            async with aclosing(await h.signed_in(CHEN)) as browser:
                for url in ("/console/", "/console/?month=2026-10", "/console/orders",
                            f"/console/orders/{oid}", "/console/duties", "/console/members",
                            "/console/bulletins", "/console/bulletins/2026-10",
                            "/console/notice", "/console/orders/999999"):
                    page = await browser.get(url)
                    assert page.status_code in (200, 404), url
                    assert not key.findall(page.text), (lang, url, key.findall(page.text))


async def test_a_head_of_two_grids_can_switch_between_them_on_every_page_of_one_grid(
    database_url: str, tmp_path: Path
) -> None:
    """刘网格长, head of 第一网格 and standing in for 第三网格, opens the overview, duties and
    members pages on his first grid; each offers both of his grids (and the shown grid's
    micro-grids), never 第二网格, and the second one opens on request."""
    async with console_harness(database_url, tmp_path) as h:
        await _liu_stands_in_for_the_third_grid(h)
        async with aclosing(await h.signed_in(LIU)) as browser:
            for page in ("/console/", "/console/duties", "/console/members"):
                first = await browser.get(page)
                assert first.status_code == 200
                offered = first.text.split('<select name="grid"', 1)[1].split("</select>", 1)[0]
                assert 'value="xh-g1" selected' in offered and 'value="xh-g3"' in offered
                assert 'value="xh-g1-m1"' in offered and 'value="xh-g2"' not in offered
                second = await browser.get(f"{page}?grid=xh-g3")
                assert second.status_code == 200 and "第三网格" in second.text.split("</h1>")[0]
                assert (await browser.get(f"{page}?grid=xh-g2")).status_code == 404
