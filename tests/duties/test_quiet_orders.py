"""Quiet hours for pushes of the normal order flow: non-urgent pushes written between 22:00 and
07:00 (the community's time zone) wait until 07:00; urgent categories never wait; the reply to
the person chatting is immediate."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from models import OutboxMessage, QuietHours
from tests.duties.conftest import SH, DutyHarness
from tests.flows.helpers import place_order


async def rows(h: DutyHarness) -> list[OutboxMessage]:
    async with h.app.sessionmaker() as session:
        return list((await session.scalars(
            select(OutboxMessage).order_by(OutboxMessage.id))).all())


async def test_night_order_pushes_wait_for_the_morning(duty: DutyHarness) -> None:
    h = duty
    resident = await h.login("p-zhang-ayi")
    worker = await h.login("p-wang")
    h.clock.set(2027, 3, 1, 23, 10)
    await place_order(resident)
    assert any("工单号" in t for t in resident.texts())  # the person chatting: at once
    assert not any("新工单" in t for t in worker.texts())  # the push to the worker waits
    [card] = [r for r in await rows(h) if r.ref and r.ref.startswith("disp:")]
    assert card.not_before == datetime(2027, 3, 2, 7, 0, tzinfo=SH)
    assert card.status == "pending"
    # Just after midnight the same day's morning is meant.
    h.clock.set(2027, 3, 2, 0, 30)
    await place_order(resident, text="电梯异响")
    cards = [r for r in await rows(h) if r.ref and r.ref.startswith("disp:")]
    assert cards[-1].not_before == datetime(2027, 3, 2, 7, 0, tzinfo=SH)
    # At 07:00 they go out.
    h.clock.now = datetime(2027, 3, 1, 23, 0, 1, tzinfo=UTC)  # 07:00:01 Shanghai
    await h.flush()
    assert sum("新工单" in t for t in worker.texts()) == 2


async def test_urgent_orders_and_daytime_never_wait(duty: DutyHarness) -> None:
    h = duty
    resident = await h.login("p-zhang-ayi")
    worker = await h.login("p-wang")
    h.clock.set(2027, 3, 1, 23, 10)
    await place_order(resident, category="安全", text="楼道里电动车飞线充电")
    assert any("新工单" in t for t in worker.texts())
    h.clock.set(2027, 3, 1, 21, 59)
    await place_order(resident)
    assert sum("新工单" in t for t in worker.texts()) == 2
    for row in await rows(h):
        assert row.not_before <= h.clock() or row.ref is None


async def test_dispatcher_actions_at_night_hold_pushes_to_others(duty: DutyHarness) -> None:
    h = duty
    resident = await h.login("p-zhang-ayi")
    worker = await h.login("p-wang")
    member = await h.login("p-li-dangyuan")
    h.clock.set(2027, 3, 1, 21, 0)
    await place_order(resident)
    card = worker.last()
    assert "新工单" in card.text
    # The community's own quiet hours (21:30-06:30) replace the default.
    async with h.app.sessionmaker() as session, session.begin():
        session.add(QuietHours(community_id=1, start="21:30", end="06:30",
                               timezone="Asia/Shanghai"))
    h.clock.set(2027, 3, 1, 21, 45)
    before = len(member.texts())
    await worker.press("广播", message=card)
    assert len(member.texts()) == before  # the offer waits
    assert worker.last().edits or worker.texts()  # the worker's own card/reply is immediate
    offers = [r for r in await rows(h) if r.ref and r.ref.startswith("offer:")]
    mine = [r for r in offers if r.chat_id == "p-wang"]  # the worker is a member too
    assert mine and all(r.not_before <= h.clock() for r in mine)
    offers = [r for r in offers if r.chat_id != "p-wang"]
    assert offers and all(r.not_before == datetime(2027, 3, 2, 6, 30, tzinfo=SH) for r in offers)
