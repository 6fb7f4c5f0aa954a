"""The whistle with concurrent answers, notices with counts, visits with a "needs help" order."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from sqlalchemy import select

from models import Household, Notice, Order, VisitLog, VisitPlan
from tests.duties.conftest import SH, DutyHarness

G1_PEOPLE = ("p-li-dangyuan", "p-wang", "p-zhao-zhiyuanzhe", "p-sun-jianhua", "p-yang-li",
             "p-tang-xiaofang")


async def test_whistle_concurrent_answers_and_one_reminder(duty: DutyHarness) -> None:
    h = duty
    h.clock.set(2027, 3, 1, 14, 0)
    head = await h.login("p-liu-wanggezhang")
    people = [await h.login(k) for k in G1_PEOPLE]
    s = await h.scheduler()
    await head.send("/whistle 3栋燃气泄漏，请速到楼下集合")
    roll = head.last()
    assert "报到 0/6" in roll.text
    for p in people:
        assert "燃气泄漏" in p.last().text
    # Four answer at the same moment.
    await asyncio.gather(*(p.press("报到") for p in people[:3]), people[3].press("去不了"))
    await h.flush()
    assert "报到 3/6" in roll.text and "未回复：2" in roll.text, roll.text
    assert roll.edits >= 1
    # Unanswered people are reminded once.
    h.clock.now += timedelta(minutes=11)
    await h.tick(s)
    h.clock.now += timedelta(minutes=11)
    await h.tick(s)
    for p in people[4:]:
        assert sum("等您回复" in t for t in p.texts()) == 1
    for p in people[:4]:
        assert not any("等您回复" in t for t in p.texts())
    # Only heads and admins blow the whistle.
    await people[0].send("/whistle 测试")
    assert "只有网格长" in people[0].last().text


async def test_notice_reports_delivered_and_unreachable(duty: DutyHarness) -> None:
    h = duty
    h.clock.set(2027, 3, 1, 15, 0)
    admin = await h.login("p-chen-shuji")
    resident = await h.login("p-zhang-ayi")
    s = await h.scheduler()
    await admin.send("/notice 周六上午社区义诊，地点社区活动中心")
    await admin.press("确认发送")
    assert "发送给" in admin.last().text
    assert "义诊" in resident.last().text
    h.clock.now += timedelta(minutes=2)
    await h.tick(s)
    assert "送达 1 人" in admin.last().text
    async with h.app.sessionmaker() as session:
        notice = await session.scalar(select(Notice))
        assert notice is not None and notice.delivered == 1
        assert notice.unreachable == notice.recipients - 1


async def test_visit_reminder_log_and_needs_help_order(duty: DutyHarness) -> None:
    h = duty
    h.clock.set(2027, 3, 1, 8, 0)
    worker = await h.login("p-wang")
    member = await h.login("p-li-dangyuan")
    head = await h.login("p-liu-wanggezhang")
    await worker.send("/household xh-b01 | elderly_alone | 张阿姨 | 新华路12号2-301 | 独居")
    assert "已添加重点户" in worker.last().text
    async with h.app.sessionmaker() as session:
        code = await session.scalar(select(Household.code))
    await worker.send(f"/visitplan {code} | 李党员 | weekly")
    assert "走访计划已建立" in worker.last().text
    s = await h.scheduler()
    h.clock.set(2027, 3, 2, 9, 0, 30)
    await h.tick(s)
    assert "走访提醒" in member.last().text and "新华路12号" in member.last().text
    await member.press("需要帮助")
    await member.send("冰箱坏了，需要维修")
    assert "工单" in member.last().text
    assert any("冰箱坏了" in t for t in worker.texts())  # became an order for the worker
    async with h.app.sessionmaker() as session:
        log = await session.scalar(select(VisitLog))
        assert log is not None and log.order_id is not None and log.outcome == "help"
        help_order = await session.get(Order, log.order_id)
        assert help_order is not None and help_order.source == "visit"  # counted as 走访 intake
    # The next week nobody visits: at the following due time the head is told.
    h.clock.set(2027, 3, 9, 9, 0, 30)
    await h.tick(s)
    h.clock.set(2027, 3, 16, 9, 0, 30)
    await h.tick(s)
    assert sum("走访逾期" in t for t in head.texts()) == 1
    # Privacy: the address went only to the member, worker and head.
    async with h.app.sessionmaker() as session:
        plan = await session.scalar(select(VisitPlan))
        assert plan is not None and plan.starts_at == datetime(2027, 3, 2, 9, 0, tzinfo=SH)
