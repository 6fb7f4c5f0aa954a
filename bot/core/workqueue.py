"""What ``/queue`` shows a worker, head or admin: the open orders of the grids they look after,
in three groups — overdue (see :mod:`bot.core.overdue`), waiting for dispatch, in progress
(offered, accepted, done and waiting for the rating). Each order is in exactly one group."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from bot.core.order_clocks import ClockCache, resolve_clocks
from bot.core.overdue import overdue_by
from models import Building, Grid, Order, Person
from models.orders import AWAITING_DISPATCH, OPEN_STATES

#: Open orders read for one queue (the oldest first); a grid with more has bigger problems
#: than a chat list can show, and the head's digest and bulletin count them all.
SCAN_LIMIT = 500


@dataclass
class QueueItem:
    """One open order as the queue lists it."""

    order: Order
    building: str
    assignee: str | None
    #: How long it has been overdue, ``None`` when it is not.
    late: timedelta | None


@dataclass
class WorkQueue:
    """The groups of open orders, each oldest first."""

    overdue: list[QueueItem] = field(default_factory=list)
    waiting: list[QueueItem] = field(default_factory=list)
    in_progress: list[QueueItem] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Whether nothing is open."""
        return not (self.overdue or self.waiting or self.in_progress)


async def work_queue(
    session: AsyncSession, settings: Settings, grids: list[Grid], now: datetime
) -> WorkQueue:
    """Open orders whose handling grid is in one of ``grids``' subtrees, grouped."""
    queue = WorkQueue()
    if not grids:
        return queue
    rows = (
        await session.execute(
            select(Order, Grid.depth, Building.name)
            .join(Grid, Grid.id == Order.handling_grid_id)
            .join(Building, Building.id == Order.building_id)
            .where(
                Order.status.in_(OPEN_STATES),
                or_(*[Grid.path.startswith(g.path, autoescape=True) for g in grids]),
            )
            .order_by(Order.id)
            .limit(SCAN_LIMIT)
        )
    ).all()
    assignee_ids = {o.assignee_id for o, _, _ in rows if o.assignee_id}
    names: dict[int, str] = {}
    if assignee_ids:
        people = await session.execute(
            select(Person.id, Person.name).where(Person.id.in_(assignee_ids))
        )
        names = {pid: name for pid, name in people.all()}
    cache = ClockCache()
    for order, depth, building in rows:
        clocks = await resolve_clocks(session, settings, order.category, depth, cache)
        item = QueueItem(
            order,
            building,
            names.get(order.assignee_id) if order.assignee_id else None,
            overdue_by(order, clocks, now),
        )
        if item.late is not None:
            queue.overdue.append(item)
        elif order.status in AWAITING_DISPATCH:
            queue.waiting.append(item)
        else:
            queue.in_progress.append(item)
    return queue
