"""``/queue`` lists the open orders of the grids a worker looks after, grouped: overdue by the
order clocks (``gridbot clocks``: 30 minutes to dispatch, the category's deadline once
accepted), waiting for dispatch, in progress. Lateness is computed here by hand."""

from __future__ import annotations

from sqlalchemy import update

from models import Order
from tests.duties.conftest import DutyHarness


async def set_state(h: DutyHarness, oid: int, status: str, assignee: str) -> None:
    async with h.app.sessionmaker() as session, session.begin():
        await session.execute(update(Order).where(Order.id == oid).values(
            status=status, assignee_id=await h.person_id(assignee), updated_at=h.clock()))


async def test_queue_groups_overdue_waiting_and_in_progress(duty: DutyHarness) -> None:
    h = duty
    worker = await h.login("p-wang")
    h.clock.set(2027, 3, 1, 9, 0)
    a = await h.submit()  # repair, waits for dispatch: due 09:30
    c = await h.submit(category="safety")  # accepted at 09:00: 4-hour deadline, due 13:00
    await set_state(h, c, "accepted", "p-li-dangyuan")
    d = await h.submit()
    await set_state(h, d, "done", "p-li-dangyuan")  # waits for the rating: never overdue
    await h.submit(building="xh-b09")  # another micro-grid's order: not his
    h.clock.set(2027, 3, 1, 9, 45)
    b = await h.submit()  # due 10:15
    assert (a, b, c, d) == (1, 5, 2, 3)

    h.clock.set(2027, 3, 1, 10, 0)
    await worker.send("/queue")
    assert worker.last().text.split("\n") == [
        "⏰ 已超时（1）",
        "000001 维修报修 · 翠屏小区1栋 · 待派单 · 超时30分钟",
        "",
        "📥 待派单（1）",
        "000005 维修报修 · 翠屏小区1栋 · 待派单",
        "",
        "🔧 处理中（2）",
        "000002 安全隐患 · 翠屏小区1栋 · 处理中 · 李党员",
        "000003 维修报修 · 翠屏小区1栋 · 待居民评价 · 李党员",
    ]
    assert [b.label for b in worker.last().buttons] == [
        "查看 000001", "查看 000005", "查看 000002", "查看 000003"]

    h.clock.set(2027, 3, 1, 14, 10)
    await worker.send("/queue")
    lines = worker.last().text.split("\n")
    assert lines[:4] == [
        "⏰ 已超时（3）",
        "000001 维修报修 · 翠屏小区1栋 · 待派单 · 超时4小时40分钟",
        "000002 安全隐患 · 翠屏小区1栋 · 处理中 · 李党员 · 超时1小时10分钟",
        "000005 维修报修 · 翠屏小区1栋 · 待派单 · 超时3小时55分钟",
    ]
    assert "📥" not in worker.last().text
    h.clock.set(2027, 3, 3, 16, 10)  # two days later
    await worker.send("/queue")
    assert "000001 维修报修 · 翠屏小区1栋 · 待派单 · 超时2天6小时" in worker.last().text


async def test_queue_of_someone_without_open_orders(duty: DutyHarness) -> None:
    h = duty
    worker = await h.login("p-wang")
    await worker.send("/queue")
    assert worker.last().text == "您负责的网格目前没有待派或处理中的工单。"
    member = await h.login("p-li-dangyuan")
    await member.send("/queue")
    assert "网格员" in member.last().text  # not a manager: polite refusal
