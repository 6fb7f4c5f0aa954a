"""Points for duties, through the real flows: a patrol checked in on time (a late one earns
nothing), a visit logged (once a day per plan), a whistle answered with 报到 (once per whistle,
even when the answer is redelivered or pressed again)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from models import Household, Person, PointsEntry
from tests.duties.conftest import DutyHarness


async def ledger(h: DutyHarness) -> list[tuple[str, int, str, str | None]]:
    """(person key, points, reason, award key) of every ledger row, oldest first."""
    async with h.app.sessionmaker() as session:
        rows = await session.execute(
            select(Person.key, PointsEntry.points, PointsEntry.reason, PointsEntry.award_key)
            .join(Person, Person.id == PointsEntry.person_id)
            .order_by(PointsEntry.id)
        )
        return [tuple(r) for r in rows.all()]  # type: ignore[misc]


async def counter_matches_ledger(h: DutyHarness) -> None:
    async with h.app.sessionmaker() as session:
        sums = dict(
            (
                await session.execute(
                    select(PointsEntry.person_id, func.sum(PointsEntry.points)).group_by(
                        PointsEntry.person_id
                    )
                )
            ).all()
        )
        for person in (await session.scalars(select(Person))).all():
            assert person.points == sums.get(person.id, 0), person.key


async def test_a_patrol_on_time_earns_points_and_a_late_one_does_not(duty: DutyHarness) -> None:
    h = duty
    wang = await h.login("p-wang")
    await h.patrol_plan(deadline=120)
    s = await h.scheduler()
    h.clock.set(2027, 3, 1, 9, 0, 20)
    await h.tick(s)
    await wang.press("打卡")
    await wang.send("楼道畅通")
    await wang.press("跳过")
    await wang.location(31.21, 107.46)
    assert "打卡成功" in wang.last().text
    [(key, pts, reason, award_key)] = await ledger(h)
    assert (key, pts, reason) == ("p-wang", 2, "patrol")  # GRIDBOT_POINTS_PATROL
    assert award_key is not None and award_key.startswith("patrol:")

    # The next day the deadline passes first; the late check-in is kept but earns nothing.
    h.clock.set(2027, 3, 2, 9, 0, 20)
    await h.tick(s)
    h.clock.set(2027, 3, 2, 11, 1)
    await h.tick(s)
    await wang.press("打卡")
    await wang.send("补打卡")
    await wang.press("跳过")
    await wang.location(31.21, 107.46)
    assert len(await ledger(h)) == 1
    await counter_matches_ledger(h)


async def test_a_visit_logged_earns_points_once_a_day(duty: DutyHarness) -> None:
    h = duty
    worker = await h.login("p-wang")
    member = await h.login("p-li-dangyuan")
    await worker.send("/household xh-b01 | elderly_alone | 张阿姨 | 新华路12号2-301 | 独居")
    async with h.app.sessionmaker() as session:
        code = await session.scalar(select(Household.code))
    await worker.send(f"/visitplan {code} | 李党员 | weekly")
    s = await h.scheduler()
    h.clock.set(2027, 3, 2, 9, 0, 30)
    await h.tick(s)
    reminder = member.last()
    await member.press("一切正常", message=reminder)
    await member.send("身体不错，聊了半小时")
    assert "走访已记录" in member.last().text
    # Logged again the same day (a second press of the same reminder): recorded, no points.
    h.clock.set(2027, 3, 2, 15, 0)
    await member.press("一切正常", message=reminder)
    await member.send("下午又去送了药")
    assert "走访已记录" in member.last().text
    assert [(k, p, r) for k, p, r, _ in await ledger(h)] == [("p-li-dangyuan", 3, "visit")]
    # Another day: points again.
    h.clock.set(2027, 3, 3, 10, 0)
    await member.press("一切正常", message=reminder)
    await member.press("跳过")
    assert [(k, p, r) for k, p, r, _ in await ledger(h)] == [("p-li-dangyuan", 3, "visit")] * 2
    await counter_matches_ledger(h)


async def test_a_whistle_answer_earns_points_exactly_once(duty: DutyHarness) -> None:
    h = duty
    h.clock.set(2027, 3, 1, 14, 0)
    head = await h.login("p-liu-wanggezhang")
    li = await h.login("p-li-dangyuan")
    zhao = await h.login("p-zhao-zhiyuanzhe")
    await head.send("/whistle 3栋燃气泄漏，请速到楼下集合")
    call = li.last()
    # The platform delivers li's press twice (same update): handled once.
    button = next(b for b in call.buttons if "报到" in b.label)
    event = li._event(button=button.payload, button_message_id=call.id)
    await h.intake(event)
    assert (await h.intake(event)).duplicate
    # li presses again, later; zhao cannot come.
    h.clock.now += timedelta(minutes=1)
    await li.press("报到", message=call)
    await zhao.press("去不了")
    assert [(k, p, r) for k, p, r, _ in await ledger(h)] == [("p-li-dangyuan", 2, "whistle")]
    await counter_matches_ledger(h)
