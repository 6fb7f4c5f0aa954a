"""Order clocks: the configured times an order may wait at each step (dispatch, accept, the
deadline, escalation when overdue, rating), most specific setting first, and the pass that acts
on them (:class:`OrderClocks`, run by the scheduler through the duty service)."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from bot.core import cards
from bot.core.cards import number
from bot.core.duties.base import DutyBase
from bot.core.orders import OrderError
from bot.core.overdue import due_at as order_due_at
from bot.core.responsibility import escalation_target, members_in_subtree, new_order_target
from bot.ports import Outbound
from models import Category, ClockSetting, Grid, Order, refs
from models.orders import (
    ACCEPTED,
    AUTO_CLOSED,
    AWAITING_DISPATCH,
    DISPATCHED,
    DONE,
    ESCALATED,
    OFFER_WITHDRAWN,
    OPEN_STATES,
)

log = logging.getLogger(__name__)


@dataclass
class Clocks:
    """The order clocks that apply to one category at one level (minutes/hours/days)."""

    dispatch_minutes: int
    accept_minutes: int
    deadline_hours: int
    overdue_escalate_minutes: int
    rate_days: int


@dataclass
class ClockCache:
    """What one pass has read of ``clock_setting`` and the clocks it has answered, so a pass
    reads the table once (a caller keeps one for a pass, never longer)."""

    rows: list[ClockSetting] | None = None
    categories: dict[str, Category] = field(default_factory=dict)
    answers: dict[tuple[str, int], Clocks] = field(default_factory=dict)


async def resolve_clocks(
    session: AsyncSession, settings: Settings, category: str, depth: int, cache: ClockCache
) -> Clocks:
    """The clocks of a category at a level: most specific setting row first, then the
    category's deadline, then the service defaults."""
    key = (category, depth)
    if key in cache.answers:
        return cache.answers[key]
    if cache.rows is None:
        cache.rows = list((await session.scalars(select(ClockSetting))).all())
        cache.categories = {c.code: c for c in (await session.scalars(select(Category)))}
    rows = sorted(
        (r for r in cache.rows if r.category in (None, category) and r.depth in (None, depth)),
        key=lambda r: (r.category is not None, r.depth is not None),
    )
    cat = cache.categories.get(category)
    values: dict[str, Any] = {
        "dispatch_minutes": settings.order_dispatch_minutes,
        "accept_minutes": settings.order_accept_minutes,
        "deadline_hours": cat.deadline_hours if cat else 72,
        "overdue_escalate_minutes": settings.order_overdue_escalate_minutes,
        "rate_days": settings.order_rate_days,
    }
    for row in rows:  # least specific first: the most specific wins
        for name in values:
            if getattr(row, name) is not None:
                values[name] = getattr(row, name)
    clocks = cache.answers[key] = Clocks(**values)
    return clocks


class OrderClocks(DutyBase):
    """The order clocks acting on open orders: auto-broadcast, escalate, remind, auto-close
    (a pass the scheduler runs; non-urgent orders wait out quiet hours)."""

    async def clocks_for(self, category: str, depth: int, cache: ClockCache) -> Clocks:
        """The clocks of a category at a level (see :func:`resolve_clocks`)."""
        return await resolve_clocks(self.session, self.settings, category, depth, cache)

    async def order_clocks(self) -> dict[str, int]:
        """One pass over open orders: auto-broadcast, escalate, remind, auto-close.

        Non-urgent orders' clocks do not act during quiet hours (nobody could have answered).
        """
        done: dict[str, int] = defaultdict(int)
        cache = ClockCache()
        orders = (
            await self.session.scalars(
                select(Order).where(Order.status.in_(OPEN_STATES)).order_by(Order.id)
            )
        ).all()
        for order in orders:
            cat = await self.session.scalar(
                select(Category).where(Category.code == order.category)
            )
            urgent = bool(cat and cat.urgent)
            if not urgent and await self.quiet_until(order.grid_id) is not None:
                continue
            grid = await self.session.get(Grid, order.handling_grid_id)
            assert grid is not None
            clocks = await self.clocks_for(order.category, grid.depth, cache)
            age = self.now - order.updated_at
            try:
                async with self.session.begin_nested():
                    action = await self._clock(order, grid, clocks, age, urgent)
            except OrderError as err:  # a concurrent human action won: nothing to do
                log.info("order clock on %s gave way: %s", order.id, err.key)
                continue
            if action:
                done[action] += 1
        return dict(done)

    async def _clock(
        self, order: Order, grid: Grid, c: Clocks, age: timedelta, urgent: bool
    ) -> str | None:
        due = order_due_at(order, c)  # the one definition of "overdue" (also /queue's)
        if order.status in AWAITING_DISPATCH and due is not None and self.now >= due:
            return await self.auto_broadcast(order, grid, urgent)
        if order.status == DISPATCHED and due is not None and self.now >= due:
            return await self.auto_escalate(order, grid, "clock.reason_accept", urgent)
        if order.status == ACCEPTED and due is not None:
            deadline = due
            if self.now >= deadline + timedelta(minutes=c.overdue_escalate_minutes):
                return await self.auto_escalate(order, grid, "clock.reason_overdue", urgent)
            if (
                self.now >= deadline
                and order.assignee_id
                and await self.fire_once("overdue", str(order.id), deadline)
            ):
                await self._push(
                    order.assignee_id,
                    lambda lang: Outbound(self.tr.t(lang, "clock.overdue", number=number(order))),
                    order.grid_id,
                    urgent=urgent,
                )
                return "reminded"
        if order.status == DONE and age >= timedelta(days=c.rate_days):
            return await self.auto_close(order)
        return None

    async def auto_broadcast(self, order: Order, grid: Grid, urgent: bool) -> str | None:
        """Nobody dispatched in time: offer to every member of the handling grid's subtree."""
        members = await members_in_subtree(self.session, grid)
        if not members:
            return await self.auto_escalate(order, grid, "clock.reason_no_members", urgent)
        start = len(self.notify.written)
        old = await self.orders._transition(order, AWAITING_DISPATCH, DISPATCHED, assignee_id=None)
        self.orders._event(order, None, "auto_broadcast", old, note=str(len(members)))
        await self.orders._offer(order, [m.person_id for m in members], assigned=False)
        target = await new_order_target(self.session, grid)
        for pid in target.person_ids if target else []:
            await self.notify.to_person(
                pid,
                lambda lang: Outbound(
                    self.tr.t(
                        lang, "clock.auto_broadcast", number=number(order), count=str(len(members))
                    )
                ),
            )
        await self.hold(self.notify.written[start:], order.grid_id, urgent)
        return "broadcast"

    async def auto_escalate(
        self, order: Order, grid: Grid, reason_key: str, urgent: bool
    ) -> str | None:
        """Escalate one level up the tree (the ladder); at the top, tell whoever is there once."""
        start = len(self.notify.written)
        target = await escalation_target(self.session, grid)
        if target is None:
            if await self.fire_once("top", str(order.id), order.updated_at):
                here = await new_order_target(self.session, grid)
                for pid in here.person_ids if here else []:
                    await self.notify.to_person(
                        pid,
                        lambda lang: Outbound(
                            self.tr.t(lang, "clock.at_top", number=number(order))
                        ),
                    )
                await self.hold(self.notify.written[start:], order.grid_id, urgent)
                return "top"
            return None
        reason = self.tr.t(self.settings.default_locale, reason_key)
        allowed = (*AWAITING_DISPATCH, DISPATCHED, ACCEPTED)
        previous = order.assignee_id
        old = await self.orders._transition(
            order, allowed, ESCALATED, handling_grid_id=target.grid.id, assignee_id=None
        )
        self.orders._event(order, None, "auto_escalate", old, note=reason)
        await self.orders._close_open_offers(order, OFFER_WITHDRAWN, "offer.withdrawn")
        if previous:
            await self.notify.to_person(
                previous,
                lambda lang: Outbound(
                    self.tr.t(lang, "member.escalated_away", number=number(order))
                ),
            )
        by = self.tr.t(self.settings.default_locale, "clock.by_system")
        await self.orders._notify_handlers(
            order,
            target.person_ids,
            "dispatch.escalated",
            reason=reason,
            by=by,
            level=target.grid.name,
        )
        await self.orders._tell_resident(order, "resident.escalated", grid=target.grid.name)
        await self.hold(self.notify.written[start:], order.grid_id, urgent)
        return "escalated"

    async def auto_close(self, order: Order) -> str:
        """Done but never rated: close it; the rating card loses its buttons."""
        start = len(self.notify.written)
        old = await self.orders._transition(order, (DONE,), AUTO_CLOSED)
        self.orders._event(order, None, "auto_close", old)
        await self.orders._award_points(order)
        view = await self.orders.view(order)
        await self.notify.edit_for_person(
            order.resident_id,
            refs.rate(order.id),
            lambda lang: Outbound(cards.card_text(self.tr, lang, view, contact=False, full=True)),
        )
        await self.orders._tell_resident(order, "clock.auto_closed")
        await self.hold(self.notify.written[start:], order.grid_id)
        return "auto_closed"
