"""Order clocks, quiet hours, the daily digest and notices (宣传) through the real
python-telegram-bot against the fake Bot API server.

As in ``test_telegram_duties``: the demo community, people given a Telegram identity, the
clock is the test's and the scheduler runs a pass when the test says ``tick``; waiting is on
the fake server's messages, never on sleeps. Assertions are on what the fake server received
and on database rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.scheduler import daily_digest
from models import (
    ClockSetting,
    Grid,
    Notice,
    Order,
    OrderEvent,
    OutboxMessage,
    Person,
    Role,
)
from tests.duties.conftest import SH
from tests.e2e.duty_support import DutyService, running
from tests.fakes.telegram_server import SentMessage
from tests.support.messages import has

RES, RES2, RES3, OTHER = 6001, 6002, 6003, 6004
WORKER, LI, ZHAO, SUN, HEAD, TOP = 6010, 6011, 6012, 6013, 6014, 6015
PEOPLE = {
    RES: "p-zhang-ayi",  # resident, xh-b01 in xh-g1-m1
    RES2: "p-zhong-daye",  # resident, xh-b02 in xh-g1-m1
    RES3: "p-wang-xiuzhen",  # resident, xh-b04 in xh-g1-m2 (blocks the bot in the notice test)
    OTHER: "p-pan-hui",  # resident of xh-g2-m2: outside 第一网格
    WORKER: "p-wang",  # worker (and member) of xh-g1-m1
    LI: "p-li-dangyuan",  # members of xh-g1-m1
    ZHAO: "p-zhao-zhiyuanzhe",
    SUN: "p-sun-jianhua",  # member of xh-g1-m3: in 第一网格, not in the micro-grid
    HEAD: "p-liu-wanggezhang",  # head of xh-g1 (第一网格), the parent of xh-g1-m1
    TOP: "p-zhou-zhuren",  # head of xinhua
}
ACCEPT = "✋ 接单"


class Clocks(DutyService):
    """The running service, the fake server, the clock and the chat users."""

    async def submit(self, category: str, description: str) -> tuple[Order, SentMessage]:
        """The resident reports over Telegram (no photo, no location); the new order and the
        resident's receipt."""
        res, tg = self.users[RES], self.tg
        start = self.last_id(RES)
        await res.send_command("order")
        ask = await tg.wait_for(RES, has("类别", start))
        await res.press_label(ask, category)
        desc = await tg.wait_for(RES, has(f"【{category}】", ask.message_id))
        await res.send_text(description)
        photo_q = await tg.wait_for(RES, has("照片", desc.message_id))
        await res.press_label(photo_q, "跳过")
        loc_q = await tg.wait_for(RES, has("位置", photo_q.message_id))
        await res.send_text("跳过")
        confirm = await tg.wait_for(RES, has("请确认", loc_q.message_id))
        await res.press_label(confirm, "✅ 提交")
        received = await tg.wait_for(RES, has("工单号", confirm.message_id))
        async with self.app.sessionmaker() as session:
            order = await session.scalar(select(Order).where(Order.description == description))
        assert order is not None
        assert f"{order.id:06d}" in (received.text or "")
        return order, received

    async def order(self, order_id: int) -> Order:
        async with self.app.sessionmaker() as session:
            order = await session.get(Order, order_id)
            assert order is not None
            return order

    async def actions(self, order_id: int) -> list[str]:
        async with self.app.sessionmaker() as session:
            return list((await session.scalars(
                select(OrderEvent.action).where(OrderEvent.order_id == order_id)
                .order_by(OrderEvent.id))).all())

    async def outbox(self, like: str) -> list[OutboxMessage]:
        async with self.app.sessionmaker() as session:
            return list((await session.scalars(
                select(OutboxMessage).where(OutboxMessage.ref.like(like))
                .order_by(OutboxMessage.id))).all())


@pytest.fixture
async def tc(database_url: str, tmp_path: Path) -> AsyncIterator[Clocks]:
    """Monday 2027-03-01 08:00 Shanghai; the demo community without duty plans."""
    async with running(Clocks, database_url, tmp_path, PEOPLE, demo_duties=False,
                       digest_time="18:00") as t:
        yield t


async def test_order_clocks_broadcast_then_escalate_then_accept(tc: Clocks) -> None:
    t, tg = tc, tc.tg
    # Repairs on micro-grids: broadcast after 20 minutes, escalate after 25 more (the
    # defaults, 30 and 60, would do neither at the times below).
    async with t.app.sessionmaker() as session, session.begin():
        depth = await session.scalar(select(Grid.depth).where(Grid.code == "xh-g1-m1"))
        session.add(ClockSetting(category="repair", depth=depth, dispatch_minutes=20,
                                 accept_minutes=25))
    t.clock.set(2027, 3, 1, 9, 0)
    order, _ = await t.submit("维修报修", "3单元楼道灯坏了，晚上看不见")
    oid, number = order.id, f"{order.id:06d}"
    card = await tg.wait_for(WORKER, has("新工单"))
    assert number in (card.text or "")

    # The worker does nothing. Before the dispatch clock: nothing happens.
    await t.at(2027, 3, 1, 9, 19, 30)
    assert (await t.order(oid)).status == "submitted"
    assert await t.queued(LI, number) == 0

    await t.at(2027, 3, 1, 9, 20, 30)
    offers = {uid: await tg.wait_for(uid, has("先接先得")) for uid in (LI, ZHAO, WORKER)}
    for offer in offers.values():
        assert number in (offer.text or "")
        assert offer.buttons == [(ACCEPT, f"o:acc:{oid}"), ("婉拒", f"o:dec:{oid}")]
    told = await tg.wait_for(WORKER, has("超时未派单"))
    assert number in (told.text or "") and "3 名" in (told.text or ""), told.text
    assert (await t.order(oid)).status == "dispatched"
    assert await t.queued(SUN, number) == 0  # not in the micro-grid
    assert await t.queued(HEAD, number) == 0

    # Nobody accepts. Before the accept clock: nothing; after it, one level up.
    await t.at(2027, 3, 1, 9, 45, 0)
    assert (await t.order(oid)).status == "dispatched"
    await t.at(2027, 3, 1, 9, 46, 0)
    escalated = await tg.wait_for(HEAD, has("系统上报"))
    body = escalated.text or ""
    assert number in body and "第一网格" in body and "超时无人接单" in body, body
    assert ("📢 广播抢单", f"o:bc:{oid}") in escalated.buttons
    moved = await tg.wait_for(RES, has("已转到第一网格"))
    assert number in (moved.text or "")
    def withdrawn() -> bool:  # the old offers are taken back
        return all("已收回" in (o.text or "") for o in offers.values())

    await tg.wait_until(withdrawn)
    for uid, offer in offers.items():
        assert ACCEPT not in [label for label, _ in offer.buttons], uid
    stored = await t.order(oid)
    assert stored.status == "escalated"
    async with t.app.sessionmaker() as session:
        g1 = await session.scalar(select(Grid.id).where(Grid.code == "xh-g1"))
    assert stored.handling_grid_id == g1
    assert await t.actions(oid) == ["submit", "auto_broadcast", "auto_escalate"]
    assert await t.queued(TOP, number) == 0  # one level, not two

    # The head broadcasts to 第一网格; a member of another micro-grid accepts.
    await t.users[HEAD].press_label(escalated, "📢 广播抢单")
    offer = await tg.wait_for(SUN, has("先接先得"))
    assert (ACCEPT, f"o:acc:{oid}") in offer.buttons
    await t.users[SUN].press_label(offer, ACCEPT)
    await tg.wait_for(SUN, has("接单成功"))
    coming = await tg.wait_for(RES, has("已由", moved.message_id))
    assert number in (coming.text or "") and "孙建华" in (coming.text or ""), coming.text
    stored = await t.order(oid)
    async with t.app.sessionmaker() as session:
        sun = await session.scalar(select(Person.id).where(Person.key == "p-sun-jianhua"))
    assert (stored.status, stored.assignee_id) == ("accepted", sun)
    assert (await t.actions(oid)).count("accept") == 1


async def test_quiet_hours_hold_the_worker_card_until_morning(tc: Clocks) -> None:
    t, tg = tc, tc.tg
    t.clock.set(2027, 3, 1, 23, 0)
    calm, _ = await t.submit("维修报修", "楼道灯坏了，不急")  # the resident: at once
    urgent, _ = await t.submit("安全隐患", "楼道里电动车飞线充电")
    # The urgent card goes out at once, though it was written after the calm one.
    card = await tg.wait_for(WORKER, has("飞线充电"))
    assert "新工单" in (card.text or "") and f"{urgent.id:06d}" in (card.text or "")
    assert not t.texts(WORKER, "不急")
    [held] = [r for r in await t.outbox("disp:%") if f"{calm.id:06d}" in str(r.payload)]
    assert held.status == "pending" and held.chat_id == str(WORKER)
    assert held.not_before == datetime(2027, 3, 2, 7, 0, tzinfo=SH)

    # 06:59: the deliverer runs, still nothing. Anything sent after this wake-up would
    # arrive before a message the resident is answered with now.
    t.clock.set(2027, 3, 2, 6, 59)
    t.app.deliverer.wake()
    before = t.last_id(RES)
    await t.users[RES].send_command("help")
    await tg.wait_for(RES, lambda m: m.message_id > before)
    assert not t.texts(WORKER, "不急")
    assert (await t.outbox(held.ref or ""))[0].status == "pending"

    t.clock.set(2027, 3, 2, 7, 0, 1)
    t.app.deliverer.wake()
    morning = await tg.wait_for(WORKER, has("不急"))
    assert "新工单" in (morning.text or "") and f"{calm.id:06d}" in (morning.text or "")
    assert morning.message_id > card.message_id
    assert len(t.texts(WORKER, "不急")) == 1


async def test_daily_digest_to_the_head_once_per_day(tc: Clocks) -> None:
    t, tg = tc, tc.tg
    t.clock.set(2027, 3, 1, 9, 0)
    await t.submit("维修报修", "单元门禁坏了")
    await t.at(2027, 3, 1, 17, 59)
    assert not t.texts(HEAD, "今日汇总")

    await t.at(2027, 3, 1, 18, 0, 5)
    digest = await tg.wait_for(HEAD, has("今日汇总"))
    body = digest.text or ""
    assert "第一网格今日汇总" in body, body
    for line in ("新工单：1", "未办结：1", "已超期：0", "完成巡查/走访：0", "漏巡：0",
                 "明日待办：0"):
        assert line in body, (line, body)
    top = await tg.wait_for(TOP, has("今日汇总"))
    assert "新华社区今日汇总" in (top.text or "") and "新工单：1" in (top.text or "")
    for uid in (WORKER, LI, RES):  # heads only
        assert await t.queued(uid, "今日汇总") == 0

    # Ticked again that evening, and the job run once more for the same day: still one.
    await t.at(2027, 3, 1, 18, 30)
    await daily_digest(rt=t.duties.runtime, due_at=datetime(2027, 3, 1, 18, 0, tzinfo=SH))
    await t.at(2027, 3, 1, 23, 0)
    assert await t.queued(HEAD, "今日汇总") == 1 and await t.queued(TOP, "今日汇总") == 1
    assert len(t.texts(HEAD, "今日汇总")) == 1

    # The next local day brings the next one: no new orders since yesterday 18:00.
    await t.at(2027, 3, 2, 18, 0, 5)
    second = await tg.wait_for(HEAD, has("今日汇总", digest.message_id))
    assert "新工单：0" in (second.text or "") and "未办结：1" in (second.text or "")
    assert await t.queued(HEAD, "今日汇总") == 2


async def test_notice_to_the_subtree_with_delivery_report(tc: Clocks) -> None:
    t, tg = tc, tc.tg
    t.clock.set(2027, 3, 1, 10, 0)
    tg.block(RES3)  # has a Telegram identity, but blocked the bot
    async with t.app.sessionmaker() as session:
        g1 = await session.scalar(select(Grid).where(Grid.code == "xh-g1"))
        assert g1 is not None
        total = int(await session.scalar(
            select(func.count(func.distinct(Role.person_id)))
            .join(Grid, Grid.id == Role.grid_id)
            .where(Grid.path.startswith(g1.path), Role.role == "resident")) or 0)
    assert total >= 4  # RES, RES2, RES3 and at least one without any chat
    text = "明晚8点停水检修，请提前储水"
    await t.users[HEAD].send_command("notice", text)
    ask = await tg.wait_for(HEAD, has("确认发送吗"))
    assert f"将发给第一网格的 {total} 位居民" in (ask.text or "")
    await t.users[HEAD].press_label(ask, "确认发送")
    sending = await tg.wait_for(HEAD, has("通知正在发送"))
    assert f"发送给 {total} 位居民" in (sending.text or "")
    assert f"其中 {total - 3} 位暂时联系不上" in (sending.text or ""), sending.text

    for uid in (RES, RES2):
        got = await tg.wait_for(uid, has(text))
        assert "第一网格通知" in (got.text or "")
    # The sweeps after every copy went out or failed report to the head, once.
    report: SentMessage | None = None
    for _ in range(40):
        t.clock.now += timedelta(seconds=61)
        await t.duties.tick()
        try:
            report = await tg.wait_for(HEAD, has("通知发送完毕"), timeout=0.25)
            break
        except AssertionError:
            continue
    assert report is not None, "no notice report"
    assert report.text == (
        f"📢 通知发送完毕：送达 2 人，无法送达 {total - 2} 人（共 {total} 人）。")
    assert not t.texts(RES3, text) and not t.texts(OTHER, text)
    assert await t.queued(OTHER, text) == 0  # outside the head's subtree
    for _ in range(2):
        t.clock.now += timedelta(seconds=61)
        await t.duties.tick()
    assert await t.queued(HEAD, "通知发送完毕") == 1

    async with t.app.sessionmaker() as session:
        [notice] = (await session.scalars(select(Notice))).all()
        rows = (await session.scalars(select(OutboxMessage).where(
            OutboxMessage.ref == f"notice:{notice.id}"))).all()
    assert (notice.recipients, notice.delivered, notice.unreachable) == (total, 2, total - 2)
    assert notice.reported_at is not None and notice.text == text
    assert sorted((r.chat_id, r.status) for r in rows) == sorted(
        [(str(RES), "sent"), (str(RES2), "sent"), (str(RES3), "failed")])
