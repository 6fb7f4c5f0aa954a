"""The ``order_facts`` rows (models/facts.py), on SQLite and PostgreSQL:

* every kind of order event, written through a session, updates its order's row in the same
  flush (nothing else has to remember it);
* after random histories the rows equal the rows recomputed from the whole event log, and
  the per-order figures read from them equal those read from the events by the event-log
  SQL (``naive``) for every order of every period and subtree, whether the facts rows or the
  events serve an order.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.reports.kpi import (
    Period,
    cohort_clocks,
    cohort_where,
    load_scope,
    order_rows,
    settled,
    stored_facts,
)
from models import (
    Building,
    Community,
    Grid,
    Order,
    OrderEvent,
    OrderFactsRow,
    OutboxMessage,
    Person,
)
from models.db import make_engine, upgrade
from models.facts import STATUS_CODE, epoch_us, rebuild, refresh
from tests.conftest import Harness
from tests.duties.conftest import SH
from tests.reports.history import local
from tests.reports.test_kpi_sql import random_history
from tests.support.pg import fresh_database

#: Every action the product writes (bot/core/orders.py), with a status it may lead to, and
#: the column of the facts row it sets (None: only the last event and status move).
KINDS: list[tuple[str, str, str | None]] = [
    ("submit", "submitted", None),
    ("assign", "dispatched", "dispatched_us"),
    ("broadcast", "dispatched", "dispatched_us"),
    ("auto_broadcast", "dispatched", "dispatched_us"),
    ("decline", "dispatched", None),
    ("released", "submitted", None),
    ("returned", "submitted", None),
    ("escalate", "escalated", "responded_us"),
    ("auto_escalate", "escalated", "escalations"),
    ("handle", "accepted", "accepted_us"),
    ("accept", "accepted", "accepted_us"),
    ("note", "accepted", None),
    ("done", "done", "done_us"),
    ("reopen", "accepted", "reopened"),
    ("rate", "confirmed", "rated_us"),
    ("revisit", "closed", "closed_us"),
    ("close", "closed", "closed_us"),
    ("auto_close", "auto_closed", "auto_closed"),
    ("cancel", "cancelled", "cancelled_us"),
]


async def _facts(session: AsyncSession) -> dict[int, tuple[Any, ...]]:
    rows = (await session.execute(select(OrderFactsRow))).scalars().all()
    return {r.order_id: tuple(getattr(r, c.key) for c in OrderFactsRow.__table__.columns)
            for r in rows}


async def _new_order(session: AsyncSession, at: Any) -> Order:
    resident = await session.scalar(select(Person.id).where(Person.key == "p-zhang-ayi"))
    building = await session.scalar(select(Building).where(Building.code == "xh-b01"))
    assert resident is not None and building is not None
    order = Order(resident_id=resident, building_id=building.id, grid_id=building.grid_id,
                  handling_grid_id=building.grid_id, category="repair", description="kinds",
                  created_at=at, updated_at=at)
    session.add(order)
    await session.flush()
    return order


async def test_every_event_kind_updates_the_facts_row(harness: Harness) -> None:
    at = local(2026, 10, 5, 10, 0)
    async with harness.app.sessionmaker() as session, session.begin():
        actor = await session.scalar(select(Person.id).where(Person.key == "p-wang"))
        for action, to, column in KINDS:
            order = await _new_order(session, at)
            assert await session.get(OrderFactsRow, order.id) is None  # no event yet
            when = at + timedelta(minutes=7)
            session.add(OrderEvent(order_id=order.id, actor_id=actor, action=action,
                                   to_status=to, note="5", created_at=when))
            await session.flush()
            row = await session.get(OrderFactsRow, order.id)
            assert row is not None, action
            await session.refresh(row)
            assert (row.first_us, row.last_us) == (epoch_us(when), epoch_us(when)), action
            assert row.status_code == STATUS_CODE[to], action
            if column is not None:
                assert getattr(row, column) not in (None, 0), (action, column)
            # A second event moves the row again (here: a cancel, later).
            later = when + timedelta(minutes=3)
            session.add(OrderEvent(order_id=order.id, actor_id=None, action="cancel",
                                   to_status="cancelled", created_at=later))
            await session.flush()
            await session.refresh(row)
            assert row.last_us == epoch_us(later) and row.cancelled_us == epoch_us(later)
            assert row.status_code == STATUS_CODE["cancelled"]
        # The order's receipt names its channel, whenever it is written.
        session.add(OutboxMessage(channel="wechat", chat_id="c", payload={},
                                  ref=f"receipt:{order.id}", status="sent"))
        await session.flush()
        await session.refresh(row)
        assert row.channel == "wechat"
        # Deleting an order's events takes its row away (no events: no facts).
        session.add(OrderEvent(order_id=order.id, actor_id=None, action="submit",
                               to_status="submitted", created_at=at))
        await session.flush()
        for ev in (await session.scalars(
                select(OrderEvent).where(OrderEvent.order_id == order.id))).all():
            await session.delete(ev)
        await session.flush()
        assert await session.scalar(select(func.count()).select_from(OrderFactsRow)
                                    .where(OrderFactsRow.order_id == order.id)) == 0


async def test_facts_equal_the_event_log_after_random_histories(harness: Harness) -> None:
    await random_history(harness.app.sessionmaker, 200)
    settings = harness.app.settings
    async with harness.app.sessionmaker() as session, session.begin():
        # Some events removed and some added late, before others in time, in another flush.
        ids = list((await session.scalars(select(OrderEvent.id).order_by(OrderEvent.id))).all())
        await session.execute(delete(OrderEvent).where(OrderEvent.id.in_(ids[::17])))
        for ev in (await session.scalars(
                select(OrderEvent).where(OrderEvent.id.in_(ids[5::23])))).all():
            session.add(OrderEvent(order_id=ev.order_id, actor_id=ev.actor_id,
                                   action="reopen", to_status="accepted",
                                   created_at=ev.created_at - timedelta(minutes=1)))
        await session.flush()
        # A bulk delete bypasses the ORM: such a path calls refresh itself.
        touched = {o for (o,) in (await session.execute(select(Order.id))).all()}
        await session.run_sync(lambda s: refresh(s.connection(), touched))
    async with harness.app.sessionmaker() as session:
        kept = await _facts(session)
        with_events = await session.scalar(select(func.count(func.distinct(OrderEvent.order_id))))
    assert len(kept) == with_events and with_events > 150
    # Recomputed from scratch from the event log: the same rows.
    async with harness.app.sessionmaker() as session, session.begin():
        await session.execute(delete(OrderFactsRow))
        await session.run_sync(lambda s: rebuild(s.connection()))
    async with harness.app.sessionmaker() as session:
        assert await _facts(session) == kept
    # Read from the facts rows or from the events: the same per-order figures.
    periods = [Period.month(2026, 10, SH), Period.month(2026, 9, SH),
               Period.month(2026, 11, SH),
               Period.days(local(2026, 10, 30).date(), local(2026, 11, 2).date(), SH),
               Period.days(local(2026, 8, 1).date(), local(2027, 3, 1).date(), SH)]
    from_facts = 0
    async with harness.app.sessionmaker() as session:
        for code in (None, "xinhua", "xh-g1", "xh-g1-m1"):
            scope = await load_scope(session, code)
            for period in periods:
                clocks = await cohort_clocks(session, settings, scope, period)
                if not clocks:
                    continue
                rows = {}
                for naive in (True, False):
                    q = order_rows(scope, period, clocks, naive=naive).subquery()
                    rows[naive] = sorted(tuple(r) for r in
                                         (await session.execute(select(q))).all())
                assert rows[False] == rows[True], (code, period.label)
                n = (await session.execute(select(func.count()).select_from(
                    stored_facts(period, clocks, cohort_where(scope, period)).subquery()))
                ).scalar_one()
                from_facts += n
        # Over the wide period every order with events is read from its facts row.
        wide = periods[-1]
        scope = await load_scope(session, None)
        n = await session.scalar(select(func.count()).select_from(OrderFactsRow)
                                 .where(*settled(wide)))
        assert n == with_events
    assert from_facts > 300


async def test_migration_0020_fills_the_rows_from_the_event_log(database_url: str) -> None:
    """Orders and events written before 0020 (no rows then) get their rows from the upgrade."""
    if database_url.startswith("postgresql"):
        async with fresh_database("gridbot_t_facts") as url:
            await _backfill(url)
    else:
        await _backfill(database_url)


async def _backfill(database_url: str) -> None:
    engine = make_engine(database_url)
    at = local(2026, 10, 5, 10, 0)
    try:
        await upgrade(engine, "0016")
        async with engine.begin() as conn:
            await conn.execute(insert(Community), [{"id": 1, "code": "c", "name": "c"}])
            await conn.execute(insert(Grid), [{"id": 1, "community_id": 1, "code": "g",
                                               "name": "g", "depth": 0, "path": "/1/"}])
            await conn.execute(insert(Building), [{"id": 1, "code": "b", "grid_id": 1,
                                                   "name": "b", "address": ""}])
            await conn.execute(insert(Person), [{"id": 1, "name": "p"}])
            await conn.execute(insert(Order), [
                {"id": n, "resident_id": 1, "building_id": 1, "grid_id": 1,
                 "handling_grid_id": 1, "category": "repair", "description": "d",
                 "created_at": at} for n in (1, 2, 3)])
            steps = [(1, 0, "submit", "submitted", None), (1, 5, "assign", "dispatched", None),
                     (1, 9, "accept", "accepted", None), (1, 60, "done", "done", None),
                     (1, 90, "rate", "confirmed", "4"), (2, 0, "submit", "submitted", None),
                     (2, 3, "cancel", "cancelled", None)]
            await conn.execute(insert(OrderEvent), [
                {"order_id": o, "actor_id": 1, "action": a, "to_status": s, "note": note,
                 "created_at": at + timedelta(minutes=m)} for o, m, a, s, note in steps])
        await upgrade(engine)
        async with engine.connect() as conn:
            got = {r.order_id: r for r in (await conn.execute(select(OrderFactsRow))).all()}
    finally:
        await engine.dispose()
    assert sorted(got) == [1, 2]  # order 3 has no events
    one, two = got[1], got[2]
    assert (one.first_us, one.accepted_us, one.done_us, one.stars, one.verdict) == (
        epoch_us(at), epoch_us(at + timedelta(minutes=9)),
        epoch_us(at + timedelta(minutes=60)), 4, 1)
    assert one.offer_us == epoch_us(at + timedelta(minutes=5)) and one.handler_id == 1
    assert two.status_code == STATUS_CODE["cancelled"] and two.responded_us is None
