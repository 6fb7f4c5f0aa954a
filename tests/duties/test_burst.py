"""A burst of reminders due at the same time: the due-job pass in chunks, reminders in batches
(multi-row inserts), every one exactly once, and nothing twice when a batch is replayed."""

from __future__ import annotations

import asyncio
import gc
from datetime import datetime

from sqlalchemy import func, select

from bot.scheduler import patrol_reminders, visit_reminders
from bot.scheduler.engine import LoopExecutor
from models import Building, DutyFire, Household, OutboxMessage, PatrolRun, VisitPlan
from tests.duties.conftest import SH, DutyHarness

NINE = datetime(2027, 3, 1, 9, 0, tzinfo=SH)


async def visit_plans(h: DutyHarness, n: int, member: str = "p-li-dangyuan") -> list[int]:
    """``n`` households of xh-b01, each with a weekly visit plan first due Monday 09:00."""
    grid_id = await h.grid_id("xh-g1-m1")
    member_id = await h.person_id(member)
    async with h.app.sessionmaker() as session, session.begin():
        building = await session.scalar(select(Building).where(Building.code == "xh-b01"))
        assert building is not None
        households = [
            Household(code=f"burst-{i}", grid_id=grid_id, building_id=building.id,
                      kind="elderly_alone", name=f"独居老人{i}", address=f"新华路{i}号")
            for i in range(n)
        ]
        session.add_all(households)
        await session.flush()
        plans = [VisitPlan(household_id=hh.id, member_id=member_id, frequency="weekly",
                           starts_at=NINE) for hh in households]
        session.add_all(plans)
        await session.flush()
        return [p.id for p in plans]


async def count(h: DutyHarness, model: type, *where: object) -> int:
    async with h.app.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where))
                   or 0)


async def test_a_burst_in_chunks_fires_every_reminder_once(duty: DutyHarness) -> None:
    h = duty
    wang = await h.login("p-wang")
    li = await h.login("p-li-dangyuan")
    for _ in range(12):
        await h.patrol_plan()
    await visit_plans(h, 9)
    s = await h.scheduler()
    assert s.scheduler is not None and s.executor is not None
    s.scheduler.chunk = 5  # 21 due jobs: the pass reads, submits and stores them 5 at a time
    s.executor.batch = 4  # and reminders run 4 to a transaction

    h.clock.set(2027, 3, 1, 9, 0, 10)
    await h.tick(s)
    assert sum("巡查提醒" in t for t in wang.texts()) == 12
    assert sum("走访提醒" in t for t in li.texts()) == 9
    assert await count(h, PatrolRun) == 12
    assert await count(h, DutyFire, DutyFire.kind == "visit") == 9
    async with h.app.sessionmaker() as session:
        refs = list((await session.scalars(
            select(OutboxMessage.ref).where(OutboxMessage.ref.is_not(None)))).all())
    assert len(refs) == len(set(refs)) == 21
    # Every job's next run time was stored: nothing is due any more, a second pass sends nothing.
    assert s.store is not None
    assert await asyncio.to_thread(s.store.due_ids, h.clock()) == []
    await h.tick(s)
    assert len(wang.texts()) == 12 and len(li.texts()) == 9

    # The next morning the patrols (daily) are due again, the visits (weekly) are not.
    h.clock.set(2027, 3, 2, 9, 0, 10)
    await h.tick(s)
    assert sum("巡查提醒" in t for t in wang.texts()) == 24
    assert len(li.texts()) == 9


async def test_a_replayed_batch_sends_nothing_twice(duty: DutyHarness) -> None:
    """A crash after a batch committed but before the store kept the next run times: the pass
    hands the same jobs over again, in other batches; only the ones not yet done are sent."""
    h = duty
    wang = await h.login("p-wang")
    li = await h.login("p-li-dangyuan")
    patrols = [await h.patrol_plan() for _ in range(3)]
    visits = await visit_plans(h, 3)
    s = await h.scheduler()
    h.clock.set(2027, 3, 1, 9, 0, 5)
    await patrol_reminders(s.runtime, [(NINE, (patrols[0],)), (NINE, (patrols[2],))])
    await visit_reminders(s.runtime, [(NINE, (visits[1],))])
    await h.tick(s)
    assert sum("巡查提醒" in t for t in wang.texts()) == 3
    assert sum("走访提醒" in t for t in li.texts()) == 3
    assert await count(h, PatrolRun) == 3
    assert await count(h, OutboxMessage) == 6


async def test_overdue_visits_in_one_batch_tell_the_head_once_each(duty: DutyHarness) -> None:
    """The head's "overdue" messages are looked up with queries in the middle of a batch (the
    session flushes the rows written so far): still every message exactly once."""
    h = duty
    li = await h.login("p-li-dangyuan")
    head = await h.login("p-liu-wanggezhang")
    await visit_plans(h, 4)
    s = await h.scheduler()
    h.clock.set(2027, 3, 1, 9, 0, 10)
    await h.tick(s)
    assert sum("走访提醒" in t for t in li.texts()) == 4
    h.clock.set(2027, 3, 8, 9, 0, 10)  # nobody visited in the first week
    await h.tick(s)
    assert sum("走访提醒" in t for t in li.texts()) == 8
    assert sum("走访逾期" in t for t in head.texts()) == 4
    async with h.app.sessionmaker() as session:
        refs = list((await session.scalars(
            select(OutboxMessage.ref).where(OutboxMessage.ref.like("visit:%")))).all())
    assert len(refs) == 8


async def test_due_runs_are_handed_over_as_plain_tuples(duty: DutyHarness) -> None:
    """What waits in the executor's queue during a burst is invisible to the garbage collector
    (no Job objects: a full collection would scan all of them with the GIL held)."""
    h = duty
    await h.patrol_plan()
    s = await h.scheduler()
    assert s.store is not None
    h.clock.set(2027, 3, 1, 9, 0, 10)
    ids = await asyncio.to_thread(s.store.due_ids, h.clock())
    jobs = await asyncio.to_thread(s.store.load_due, ids, h.clock())
    [job] = [j for j in jobs if j.id.startswith("patrol:")]
    del jobs
    executor = LoopExecutor(s.runtime, 1)  # not started: nothing takes from the queue
    executor.deferred = True
    executor._do_submit_job(job, [NINE])
    [run] = executor.queue
    assert run[1] == "bot.scheduler:patrol_reminder" and run[3] == (NINE,)
    del job
    gc.collect()
    gc.collect()
    assert not gc.is_tracked(run)


async def test_stopping_in_the_middle_of_a_burst_loses_nothing(duty: DutyHarness) -> None:
    """Next run times are stored only for runs that have finished: what a stopped (or killed)
    leader handed over but did not finish fires under the next one, and nothing twice."""
    h = duty
    wang = await h.login("p-wang")
    for _ in range(10):
        await h.patrol_plan()
    first = await h.scheduler()
    assert first.scheduler is not None and first.executor is not None
    first.scheduler.chunk = 2
    first.executor.batch = 1
    stopping: list[asyncio.Task[None]] = []

    def wake() -> None:  # after each committed reminder: stop after the third
        if len(stopping) == 0 and len(commits) == 2:
            stopping.append(asyncio.get_running_loop().create_task(first.stop()))
        commits.append(1)

    commits: list[int] = []
    first.runtime.wake = wake
    h.clock.set(2027, 3, 1, 9, 0, 10)
    await first.scheduler.run_pass()  # returns once stopped
    await asyncio.wait_for(stopping[0], 60)  # a guard against a hang, not a timing
    await h.flush()
    assert sum("巡查提醒" in t for t in wang.texts()) < 10

    second = await h.scheduler()
    await h.tick(second)
    assert sum("巡查提醒" in t for t in wang.texts()) == 10
    assert await count(h, PatrolRun) == 10
