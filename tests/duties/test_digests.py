"""The daily digest to grid heads and the month-end pre-reminder (月末预提醒): content, exactly
one per head per local day / month, in the community's time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from models import Household, PatrolRun, VisitPlan
from tests.duties.conftest import SH, DutyHarness

HEADS = ("p-liu-wanggezhang", "p-luo-jianguo", "p-he-xiuying", "p-zhou-zhuren")


def digests(texts: list[str]) -> list[str]:
    return [t for t in texts if "今日汇总" in t]


async def test_daily_digest_content_and_once_per_local_day(duty: DutyHarness) -> None:
    h = duty
    heads = {k: await h.login(k) for k in HEADS}
    liu = heads["p-liu-wanggezhang"]
    await h.patrol_plan()  # 09:00 in xh-g1-m1, deadline 2 h
    await h.patrol_plan(grid="xh-g2-m1", who="p-deng-wei", schedule="0 8 * * *")
    s = await h.scheduler()
    h.clock.set(2027, 3, 1, 9, 0, 10)
    await h.tick(s)
    order_id = await h.submit()  # a new, open order in xh-g1-m1
    assert order_id
    h.clock.set(2027, 3, 1, 11, 5)  # the patrol was not checked in: missed
    await h.tick(s)

    # 17:59 Shanghai = 09:59 UTC: no digest yet, whatever zone the clock speaks.
    h.clock.now = datetime(2027, 3, 1, 9, 59, tzinfo=UTC)
    await h.tick(s)
    assert not digests(liu.texts())
    h.clock.now = datetime(2027, 3, 1, 10, 0, 5, tzinfo=UTC)  # 18:00:05 Shanghai
    await h.tick(s)
    [digest] = digests(liu.texts())
    assert "第一网格今日汇总" in digest
    assert "新工单：1" in digest and "未办结：1" in digest and "已超期：0" in digest
    assert "漏巡：1" in digest and "完成巡查/走访：0" in digest
    assert "明日待办：1" in digest  # tomorrow's 09:00 patrol in the subtree
    # Every head gets one, about their own subtree.
    luo = digests(heads["p-luo-jianguo"].texts())
    assert len(luo) == 1 and "第二网格今日汇总" in luo[0] and "新工单：0" in luo[0]
    zhou = digests(heads["p-zhou-zhuren"].texts())
    assert len(zhou) == 1 and "新工单：1" in zhou[0] and "明日待办：2" in zhou[0]

    # Later passes, a restart, and a second scheduler: still one per day.
    h.clock.now += timedelta(minutes=30)
    await h.tick(s)
    await s.stop()
    h.clock.set(2027, 3, 1, 23, 30)
    s2 = await h.scheduler()
    await h.tick(s2)
    assert all(len(digests(u.texts())) == 1 for u in heads.values())
    # The next local day brings the next one.
    h.clock.set(2027, 3, 2, 18, 0, 5)
    await h.tick(s2)
    assert len(digests(liu.texts())) == 2
    assert all(len(digests(u.texts())) == 2 for u in heads.values())


async def add_visits(h: DutyHarness, member: str, households: list[tuple[str, str]]) -> list[int]:
    ids = []
    async with h.app.sessionmaker() as session, session.begin():
        pid = await h.person_id(member)
        for code, building in households:
            from models import Building

            b = await session.scalar(select(Building).where(Building.code == building))
            assert b is not None
            hh = Household(code=code, grid_id=b.grid_id, building_id=b.id, kind="elderly_alone",
                           name=f"户{code}", address="", notes="", private=True)
            session.add(hh)
            await session.flush()
            plan = VisitPlan(household_id=hh.id, member_id=pid, frequency="monthly",
                             starts_at=datetime(2027, 2, 1, 10, 0, tzinfo=SH),
                             timezone="Asia/Shanghai", created_at=h.clock(),
                             updated_at=h.clock())
            session.add(plan)
            await session.flush()
            ids.append(plan.id)
    return ids


async def test_month_end_pre_reminder_once_per_month(duty: DutyHarness) -> None:
    h = duty
    h.clock.set(2027, 3, 27, 9, 0)
    li = await h.login("p-li-dangyuan")
    liu = await h.login("p-liu-wanggezhang")
    plans = await add_visits(h, "p-li-dangyuan", [("m1", "xh-b01"), ("m2", "xh-b02"),
                                                  ("m3", "xh-b04")])
    async with h.app.sessionmaker() as session, session.begin():
        visited = await session.get(VisitPlan, plans[2])
        assert visited is not None
        visited.last_visit_at = datetime(2027, 3, 15, 10, 0, tzinfo=SH)
    s = await h.scheduler()

    # Four days before the end (31 March): nothing. Month_end_days = 3 → 28 March, 10:00.
    h.clock.set(2027, 3, 27, 10, 0, 5)
    await h.tick(s)
    assert not any("月末预提醒" in t for t in li.texts() + liu.texts())
    # 28 March 10:00 Shanghai is 02:00 UTC; at 01:59 UTC (09:59 local) still nothing.
    h.clock.now = datetime(2027, 3, 28, 1, 59, tzinfo=UTC)
    await h.tick(s)
    assert not any("月末预提醒" in t for t in li.texts())
    h.clock.now = datetime(2027, 3, 28, 2, 0, 5, tzinfo=UTC)
    await h.tick(s)
    [owed] = [t for t in li.texts() if "月末预提醒" in t]
    assert "还有 2 户未走访" in owed and "户m1" in owed and "户m2" in owed and "户m3" not in owed
    [head] = [t for t in liu.texts() if "月末预提醒" in t]
    assert "还有 2 户走访未完成" in head
    # Again later that day, after a restart, the next day: still one this month.
    h.clock.set(2027, 3, 28, 12, 0)
    await h.tick(s)
    await s.stop()
    s2 = await h.scheduler()
    h.clock.set(2027, 3, 29, 10, 0, 5)
    await h.tick(s2)
    assert sum("月末预提醒" in t for t in li.texts()) == 1
    assert sum("月末预提醒" in t for t in liu.texts()) == 1
    # April (30 days): the 27th, once more.
    h.clock.set(2027, 4, 27, 10, 0, 5)
    await h.tick(s2)
    assert sum("月末预提醒" in t for t in li.texts()) == 2
    assert sum("月末预提醒" in t for t in liu.texts()) == 2
    assert await h.count(PatrolRun) == 0


async def test_a_head_of_two_grids_gets_the_digest_of_each(duty: DutyHarness) -> None:
    from models import Grid, Role

    h = duty
    liu = await h.login("p-liu-wanggezhang")  # head of 第一网格 (xh-g1)
    liu_id = await h.person_id("p-liu-wanggezhang")
    async with h.app.sessionmaker() as session, session.begin():
        second = await session.scalar(select(Grid).where(Grid.code == "xh-g2"))
        assert second is not None
        session.add(Role(person_id=liu_id, grid_id=second.id, role="head"))
    s = await h.scheduler()
    h.clock.now = datetime(2027, 3, 1, 10, 0, 5, tzinfo=UTC)  # 18:00:05 Shanghai
    await h.tick(s)
    h.clock.now += timedelta(minutes=30)
    await h.tick(s)
    mine = digests(liu.texts())
    assert len(mine) == 2
    assert any("第一网格今日汇总" in d for d in mine)
    assert any("第二网格今日汇总" in d for d in mine)
