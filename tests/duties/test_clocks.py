"""Order clocks (auto-broadcast, escalation ladder to the top, deadline reminder, auto-close)
and quiet hours."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from models import Order
from models.orders import AUTO_CLOSED, DONE
from tests.duties.conftest import DutyHarness


async def test_escalation_ladder_to_the_top_of_the_tree(duty: DutyHarness) -> None:
    h = duty
    h.clock.set(2027, 3, 1, 9, 0)
    worker = await h.login("p-wang")
    head = await h.login("p-liu-wanggezhang")
    top = await h.login("p-zhou-zhuren")
    await h.login("p-li-dangyuan")
    s = await h.scheduler()
    oid = await h.submit()
    await h.flush()
    for minutes in (31, 92, 123, 184, 215, 276, 300):  # dispatch 30, accept 60, per level
        h.clock.now = h.clock.now.replace(hour=9, minute=0) + timedelta(minutes=minutes)
        await h.tick(s)
    actions = [a for a, _, _ in await h.events(oid)]
    assert actions == ["submit", "auto_broadcast", "auto_escalate", "auto_broadcast",
                       "auto_escalate", "auto_broadcast"] or actions[:5] == [
        "submit", "auto_broadcast", "auto_escalate", "auto_broadcast", "auto_escalate"]
    order = await h.order(oid)
    assert order.handling_grid_id == await h.grid_id("xinhua")
    assert any("自动发给" in t for t in worker.texts())
    assert any("自动发给" in t for t in head.texts())  # the head dispatched it one level up
    # At the top nobody is above: whoever is there is told once, and the ladder stops.
    h.clock.now += timedelta(hours=3)
    await h.tick(s)
    h.clock.now += timedelta(hours=1)
    await h.tick(s)
    assert sum("最高层级" in t for t in top.texts()) == 1


async def test_deadline_reminder_then_escalation_and_auto_close(duty: DutyHarness) -> None:
    h = duty
    h.clock.set(2027, 3, 1, 9, 0)
    member = await h.login("p-li-dangyuan")
    s = await h.scheduler()
    oid = await h.submit(category="safety")  # urgent: 4 h deadline
    member_id = await h.person_id("p-li-dangyuan")
    async with h.app.sessionmaker() as session, session.begin():
        await session.execute(update(Order).where(Order.id == oid).values(
            status="accepted", assignee_id=member_id, updated_at=h.clock()))
    h.clock.now += timedelta(hours=4, minutes=1)
    await h.tick(s)
    assert sum("超过办理期限" in t for t in member.texts()) == 1
    h.clock.now += timedelta(minutes=30)
    await h.tick(s)
    assert sum("超过办理期限" in t for t in member.texts()) == 1  # reminded once
    h.clock.now += timedelta(hours=2)
    await h.tick(s)
    assert (await h.order(oid)).status == "escalated"

    oid2 = await h.submit()
    async with h.app.sessionmaker() as session, session.begin():
        await session.execute(update(Order).where(Order.id == oid2).values(
            status=DONE, assignee_id=member_id, updated_at=h.clock()))
    h.clock.now += timedelta(days=8)
    h.clock.now = h.clock.now.replace(hour=10)
    await h.tick(s)
    assert (await h.order(oid2)).status == AUTO_CLOSED
    assert ("auto_close", DONE, AUTO_CLOSED) in await h.events(oid2)


async def test_quiet_hours_hold_non_urgent_pushes_but_not_urgent_ones(duty: DutyHarness) -> None:
    h = duty
    h.clock.set(2027, 3, 1, 22, 0)
    worker = await h.login("p-wang")
    await h.login("p-li-dangyuan")
    s = await h.scheduler()
    calm = await h.submit(category="repair")
    urgent = await h.submit(category="safety")
    await h.flush()
    before = len(worker.inbox)
    h.clock.set(2027, 3, 1, 23, 0)
    await h.tick(s)
    assert (await h.order(urgent)).status == "dispatched"  # urgent never waits
    assert (await h.order(calm)).status == "submitted"  # its clock waits for the morning
    assert len(worker.inbox) > before

    # A patrol reminder due in quiet hours waits until 07:00.
    await h.patrol_plan(schedule="30 23 * * *")
    await s.resync_if_changed()
    h.clock.set(2027, 3, 2, 23, 30, 10)
    await h.tick(s)
    [row] = await h.outbox("patrol:%")
    assert row.status == "pending"
    assert row.not_before.astimezone(h.clock().tzinfo).hour == 7
    h.clock.set(2027, 3, 3, 7, 0, 1)
    await h.flush()
    assert any("巡查提醒" in t for t in worker.texts())
