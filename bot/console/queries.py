"""The console's order list: filters, the overdue rule and keyset paging, scoped on the server.

Every query takes the viewer's subtree (``scope``: a condition on a grid id column) and applies
it in SQL, so a URL naming something outside it finds nothing. Paging is by keyset (``id <
before``, newest first) on the primary key: each page costs the same however deep it is,
unlike ``OFFSET``, which reads and drops every row before the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, false, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from bot.config import Settings
from bot.core.order_clocks import ClockCache, resolve_clocks
from bot.reports.kpi import Period
from models import Building, Category, Grid, Order, Person
from models.orders import (
    ACCEPTED,
    AUTO_CLOSED,
    CANCELLED,
    CLOSED,
    CONFIRMED,
    DISPATCHED,
    DONE,
    ESCALATED,
    OPEN_STATES,
    SUBMITTED,
)

#: Rows on one page of the order list.
PAGE_SIZE = 50
#: The status filter's choices besides a single status: every open state.
OPEN = "open"
#: Every status, in the order an order goes through them (the status filter's choices).
STATUSES = (SUBMITTED, ESCALATED, DISPATCHED, ACCEPTED, DONE, CONFIRMED, CLOSED, AUTO_CLOSED,
            CANCELLED)


@dataclass(frozen=True)
class OrderFilter:
    """What the order list (and its export) is narrowed to; ``None``/empty: no filter."""

    grid: Grid | None = None
    status: str | None = None
    category: str | None = None
    period: Period | None = None
    overdue: bool = False
    number: int | None = None


@dataclass(frozen=True)
class OrderLine:
    """One row of the list."""

    id: int
    number: str
    status: str
    category: str
    created_at: datetime
    grid: str
    building: str
    assignee: str | None


async def overdue_condition(
    session: AsyncSession, settings: Settings, now: datetime
) -> Any:
    """Overdue, the one rule of the order clock and the daily digest
    (``bot.core.order_clocks``): accepted, and ``now`` is at or past the acceptance time plus the
    deadline (hours) the clocks give the order's category at its handling grid's depth.

    Written as one condition per category and group of depths with the same deadlines, so
    it runs in SQL on both databases (one group, no depth test, when no clock setting differs
    by level)."""
    depths = sorted((await session.scalars(select(Grid.depth).distinct())).all())
    categories = sorted((await session.scalars(select(Category.code))).all())
    cache = ClockCache()
    groups: dict[tuple[int, ...], list[int]] = {}
    for depth in depths:
        hours = tuple(
            [(await resolve_clocks(session, settings, c, depth, cache)).deadline_hours
             for c in categories]
        )
        groups.setdefault(hours, []).append(depth)
    parts = []
    for hours, at_depths in groups.items():
        late = or_(
            *(
                and_(Order.category == code, Order.updated_at <= now - timedelta(hours=h))
                for code, h in zip(categories, hours, strict=True)
            )
        )
        if len(groups) > 1:
            late = and_(
                Order.handling_grid_id.in_(select(Grid.id).where(Grid.depth.in_(at_depths))),
                late,
            )
        parts.append(late)
    if not parts or not categories:
        return false()
    return and_(Order.status == ACCEPTED, or_(*parts))


async def conditions(
    session: AsyncSession, settings: Settings, scope: Any, f: OrderFilter, now: datetime
) -> list[Any]:
    """The WHERE clauses of a filtered, scoped order list."""
    where = [scope]
    if f.grid is not None:
        where.append(
            Order.grid_id.in_(
                select(Grid.id).where(Grid.path.startswith(f.grid.path, autoescape=True))
            )
        )
    if f.status == OPEN:
        where.append(Order.status.in_(OPEN_STATES))
    elif f.status:
        where.append(Order.status == f.status)
    if f.category:
        where.append(Order.category == f.category)
    if f.period is not None:
        where += [Order.created_at >= f.period.start, Order.created_at < f.period.end]
    if f.overdue:
        where.append(await overdue_condition(session, settings, now))
    if f.number is not None:
        where.append(Order.id == f.number)
    return where


async def order_page(
    session: AsyncSession,
    settings: Settings,
    scope: Any,
    f: OrderFilter,
    now: datetime,
    *,
    before: int | None = None,
    size: int = PAGE_SIZE,
) -> tuple[list[OrderLine], int | None]:
    """A page of the list, newest first, and the id to continue ``before`` (``None``: last
    page)."""
    where = await conditions(session, settings, scope, f, now)
    if before is not None:
        where.append(Order.id < before)
    assignee = aliased(Person)
    ids = (
        await session.scalars(
            select(Order.id).where(*where).order_by(Order.id.desc()).limit(size + 1)
        )
    ).all()
    more = len(ids) > size
    ids = ids[:size]
    if not ids:
        return [], None
    rows = (
        await session.execute(
            select(
                Order.id,
                Order.status,
                Order.category,
                Order.created_at,
                Grid.name,
                Building.name,
                assignee.name,
            )
            .join(Grid, Grid.id == Order.grid_id)
            .join(Building, Building.id == Order.building_id)
            .outerjoin(assignee, assignee.id == Order.assignee_id)
            .where(Order.id.in_(ids))
            .order_by(Order.id.desc())
        )
    ).all()
    lines = [
        OrderLine(oid, f"{oid:06d}", status, category, created, grid, building, who)
        for oid, status, category, created, grid, building, who in rows
    ]
    return lines, (ids[-1] if more else None)


async def order_ids(
    session: AsyncSession, settings: Settings, scope: Any, f: OrderFilter, now: datetime
) -> set[int]:
    """Every id the filter matches (for an export, which is of one period)."""
    where = await conditions(session, settings, scope, f, now)
    return set((await session.scalars(select(Order.id).where(*where))).all())
