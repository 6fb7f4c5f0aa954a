"""The reference implementation of the order figures: each order's events replayed in Python,
one by one. The product computes them in SQL (:func:`bot.reports.kpi.cohort_figures`); this
module is kept as the test oracle (``tests/reports/test_kpi_sql.py`` checks that both agree
on a varied history, on SQLite and PostgreSQL) and as the baseline of ``bench/accountability.py``.
It reads the same definitions as the module docstring of :mod:`bot.reports.kpi`, written
independently: do not call it from the product."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from bot.core.order_clocks import ClockCache, resolve_clocks
from bot.reports.kpi import (
    FINISHED,
    SATISFIED_STARS,
    TIME_SPANS,
    Figures,
    OrderFacts,
    Period,
    Ratio,
    Scope,
    _chunks,
    _ranked,
    cohort_where,
    load_revisits,
    nearest_rank,
)
from models import ClockSetting, Order, OrderEvent, OutboxMessage, refs
from models.facts import (
    ACCEPT_ACTIONS,
    DISPATCH_ACTIONS,
    ESCALATE_ACTIONS,
    OFFER_ACTIONS,
    RESPONSE_ACTIONS,
)
from models.orders import AUTO_CLOSED, CANCELLED, CLOSED, SOURCE_RESIDENT


def replay(facts: OrderFacts, events: Iterable[Any]) -> OrderFacts:
    """Fill ``facts`` from the order's events (in order, already cut at the period's end):
    rows with ``created_at``, ``action``, ``to_status``, ``actor_id`` and ``note``."""
    last_offer = None
    for ev in events:
        at, action = ev.created_at, ev.action
        facts.status = ev.to_status
        if action in RESPONSE_ACTIONS and ev.actor_id is not None and facts.responded_at is None:
            facts.responded_at = at
            facts.handler_id = ev.actor_id
        if action in DISPATCH_ACTIONS and facts.dispatched_at is None:
            facts.dispatched_at = at
        if action in OFFER_ACTIONS:
            last_offer = at
        if action in ACCEPT_ACTIONS:
            if facts.accepted_at is None:
                facts.accepted_at = at
                facts.accepted_on_time = action == "handle" or (
                    last_offer is not None
                    and at <= last_offer + timedelta(minutes=facts.accept_minutes)
                )
            facts.member_id = ev.actor_id
        elif action == "done":
            facts.done_at = at
            facts.member_id = ev.actor_id or facts.member_id
        elif action == "rate":
            facts.rated_at = at
            facts.verdict = "rated"
            facts.stars = int(ev.note) if ev.note and ev.note.isdigit() else None
        elif action == "reopen":
            facts.reopened += 1
            facts.verdict = "reopened"
        elif action == "cancel":
            facts.cancelled_at = at
        elif action in ESCALATE_ACTIONS:
            facts.escalations += 1
        if action == "auto_close":
            facts.auto_closed = True
        if ev.to_status in (CLOSED, AUTO_CLOSED) and facts.closed_at is None:
            facts.closed_at = at
    facts.cancelled_unhandled = facts.status == CANCELLED and facts.responded_at is None
    facts.responded_on_time = facts.responded_at is not None and facts.responded_at <= (
        facts.submitted_at + timedelta(minutes=facts.dispatch_minutes)
    )
    facts.done_on_time = (
        facts.done_at is not None
        and facts.accepted_at is not None
        and facts.done_at <= facts.accepted_at + timedelta(hours=facts.deadline_hours)
    )
    return facts


def order_figures(
    orders: Sequence[OrderFacts],
    revisits: Sequence[tuple[int, bool]] = (),
    level_of: dict[int, str] | None = None,
) -> Figures:
    """The order KPIs of ``orders`` (a cohort). ``revisits``: (order id, done by the period's
    end) of the cohort's revisits; ``level_of``: grid id → level name."""
    f = Figures()
    f.received = len(orders)
    f.cancelled = sum(o.status == CANCELLED for o in orders)
    f.by_category = _ranked(Counter(o.category for o in orders))
    f.by_channel = _ranked(Counter(o.channel or "—" for o in orders))
    f.by_source = _ranked(Counter(o.source for o in orders))
    counted = [o for o in orders if not o.cancelled_unhandled]
    f.response = Ratio(sum(o.responded_on_time for o in counted), len(counted))
    accepted = [o for o in orders if o.accepted_at is not None]
    f.on_time_acceptance = Ratio(sum(o.accepted_on_time for o in accepted), len(accepted))
    done = [o for o in orders if o.done_at is not None]
    f.done = len(done)
    f.on_time_completion = Ratio(sum(o.done_on_time for o in done), len(done))
    f.completion = Ratio(sum(o.status in FINISHED for o in orders), f.received - f.cancelled)
    verdicts = [o for o in orders if o.verdict is not None]
    f.resolution = Ratio(sum(o.verdict == "rated" for o in verdicts), len(verdicts))
    rated = [o for o in orders if o.stars is not None]
    f.satisfaction = Ratio(sum((o.stars or 0) >= SATISFIED_STARS for o in rated), len(rated))
    ids = {o.id for o in orders}
    mine = [done_ for oid, done_ in revisits if oid in ids]
    f.revisits_opened, f.revisits_done = len(mine), sum(mine)
    spans = {"dispatch": "dispatched_at", "accept": "accepted_at", "done": "done_at",
             "closed": "closed_at"}
    for span in TIME_SPANS:
        values = [m for o in orders
                  if (m := o.minutes_to(getattr(o, spans[span]))) is not None]
        f.times[span] = {"median": nearest_rank(values, 0.5), "p90": nearest_rank(values, 0.9)}
    escalated = [o for o in orders if o.escalations]
    f.escalated = len(escalated)
    levels = level_of or {}
    f.escalated_by_level = _ranked(Counter(levels.get(o.handling_grid_id, "—") for o in escalated))
    f.auto_closed = sum(o.auto_closed for o in orders)
    return f


async def load_orders_replay(
    session: AsyncSession, settings: Settings, scope: Scope, period: Period
) -> list[OrderFacts]:
    """The cohort of ``period`` in ``scope``, each order replayed from its events up to the
    period's end (the orders, then their events joined to them)."""
    cohort = cohort_where(scope, period)
    orders = (
        await session.execute(
            select(Order.id, Order.category, Order.grid_id, Order.handling_grid_id,
                   Order.building_id, Order.created_at, Order.room, Order.resident_id,
                   Order.source)
            .where(*cohort)
            .order_by(Order.id)
        )
    ).all()
    if not orders:
        return []
    events: dict[int, list[Any]] = defaultdict(list)
    for ev in (
        await session.execute(
            select(OrderEvent.order_id, OrderEvent.created_at, OrderEvent.action,
                   OrderEvent.to_status, OrderEvent.actor_id, OrderEvent.note)
            .join(Order, Order.id == OrderEvent.order_id)
            .where(*cohort, OrderEvent.created_at < period.end)
            .order_by(OrderEvent.order_id, OrderEvent.created_at, OrderEvent.id)
        )
    ).all():
        events[ev.order_id].append(ev)
    channels: dict[int, str] = {}
    for chunk in _chunks([o.id for o in orders]):
        receipts = [refs.receipt(i) for i in chunk]
        for ref, channel in (
            await session.execute(
                select(OutboxMessage.ref, OutboxMessage.channel).where(
                    OutboxMessage.ref.in_(receipts)
                )
            )
        ).all():
            parsed = refs.parse_ref(ref)
            assert parsed is not None
            channels[parsed.id] = channel
    cache = ClockCache()
    facts = []
    for o in orders:
        handling = scope.grids.get(o.handling_grid_id)
        clocks = await resolve_clocks(
            session, settings, o.category, handling.depth if handling else 0, cache
        )
        f = OrderFacts(
            id=o.id, category=o.category, grid_id=o.grid_id,
            handling_grid_id=o.handling_grid_id, building_id=o.building_id,
            source=o.source or SOURCE_RESIDENT, channel=channels.get(o.id),
            submitted_at=o.created_at, dispatch_minutes=clocks.dispatch_minutes,
            accept_minutes=clocks.accept_minutes, deadline_hours=clocks.deadline_hours,
            room=o.room, resident_id=o.resident_id,
        )
        facts.append(replay(f, events.get(o.id, [])))
    return facts


async def figures_by_replay(
    session: AsyncSession, settings: Settings, scope: Scope, period: Period
) -> dict[str, Figures]:
    """The order figures of the subtree ('*') and of each child grid (by id, as text), the
    way the reports made them before SQL: replay, then filter per child grid."""
    orders = await load_orders_replay(session, settings, scope, period)
    revisits = await load_revisits(session, [o.id for o in orders], period.end)
    out = {"*": order_figures(orders, revisits, scope.levels)}
    for child in scope.children():
        ids = scope.ids(child.path)
        out[str(child.id)] = order_figures(
            [o for o in orders if o.grid_id in ids], revisits, scope.levels
        )
    return out


async def member_work_replay(
    session: AsyncSession,
    people: Sequence[int],
    start: datetime,
    end: datetime,
    settings: Settings | None = None,
) -> dict[int, tuple[int, int, list[int]]]:
    """:func:`bot.reports.kpi.member_work` as the reports computed it before: the events of
    the orders these people took or did, replayed in Python."""
    accepted: dict[int, set[int]] = defaultdict(set)
    done: dict[int, set[int]] = defaultdict(set)
    ratings: dict[int, list[int]] = defaultdict(list)
    wanted = set(people)
    longest = await session.scalar(select(func.max(ClockSetting.rate_days)))
    settings_days = settings.order_rate_days if settings is not None else 0
    since = start - timedelta(days=max(longest or 0, settings_days, 7) + 1)
    rows = (
        await session.execute(
            select(OrderEvent.order_id, OrderEvent.actor_id, OrderEvent.action, OrderEvent.note,
                   OrderEvent.created_at)
            .where(
                OrderEvent.order_id.in_(
                    select(OrderEvent.order_id).where(
                        OrderEvent.actor_id.in_(list(wanted)),
                        OrderEvent.created_at >= since,
                        OrderEvent.created_at < end,
                        OrderEvent.action.in_((*ACCEPT_ACTIONS, "done")),
                    )
                ),
                OrderEvent.created_at < end,
                OrderEvent.action.in_((*ACCEPT_ACTIONS, "done", "rate")),
            )
            .order_by(OrderEvent.order_id, OrderEvent.created_at, OrderEvent.id)
        )
    ).all()
    doer: dict[int, int | None] = {}
    for oid, actor, action, note, at in rows:
        if action == "done":
            doer[oid] = actor
        inside = at >= start
        if action in ACCEPT_ACTIONS and inside and actor in wanted:
            accepted[actor].add(oid)
        elif action == "done" and inside and actor in wanted:
            done[actor].add(oid)
        elif action == "rate" and inside and doer.get(oid) in wanted and note and note.isdigit():
            ratings[doer[oid]].append(int(note))  # type: ignore[index]
    return {
        pid: (len(accepted[pid]), len(done[pid]), ratings[pid])
        for pid in wanted
        if pid in accepted or pid in done or pid in ratings
    }
