"""Responsibility up the grid tree: who handles an order (new or escalated), who is above,
who may dispatch it and to which members."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from models import Grid, Order, Person, Role
from models.orders import ACCEPTED, DISPATCHED
from models.people import ROLE_ADMIN, ROLE_HEAD, ROLE_MEMBER, ROLE_WORKER


@dataclass(frozen=True)
class Target:
    """The grid that handles an order and the people who receive it there."""

    grid: Grid
    person_ids: list[int]


def path_ids(grid: Grid) -> list[int]:
    """Ids from the root down to ``grid`` itself, read from the materialised path."""
    return [int(p) for p in grid.path.strip("/").split("/") if p]


async def ancestors(session: AsyncSession, grid: Grid) -> list[Grid]:
    """The grids above ``grid``, nearest first."""
    ids = path_ids(grid)[:-1]
    if not ids:
        return []
    rows = (await session.scalars(select(Grid).where(Grid.id.in_(ids)))).all()
    by_id = {g.id: g for g in rows}
    return [by_id[i] for i in reversed(ids) if i in by_id]


async def people_with_role(session: AsyncSession, grid_id: int, *roles: str) -> list[int]:
    """Ids of people holding one of ``roles`` on exactly this grid, in a stable order."""
    rows = await session.scalars(
        select(Role.person_id)
        .where(Role.grid_id == grid_id, Role.role.in_(roles))
        .order_by(Role.person_id)
    )
    return list(dict.fromkeys(rows.all()))


async def _first_responsible(
    session: AsyncSession, chain: list[Grid], first_roles: tuple[str, ...]
) -> Target | None:
    """Walk ``chain``; the first grid with someone responsible wins.

    On the first grid ``first_roles`` are tried before heads; above it heads come first, then
    workers; admins are the last resort so that an order is never dropped on the floor.
    """
    for index, grid in enumerate(chain):
        order = (*first_roles, ROLE_HEAD) if index == 0 else (ROLE_HEAD, ROLE_WORKER)
        for role in order:
            ids = await people_with_role(session, grid.id, role)
            if ids:
                return Target(grid, ids)
    for grid in chain:
        ids = await people_with_role(session, grid.id, ROLE_ADMIN)
        if ids:
            return Target(grid, ids)
    return None


async def new_order_target(session: AsyncSession, grid: Grid) -> Target | None:
    """Workers of the micro-grid; else the nearest head up the tree; else an admin."""
    return await _first_responsible(
        session, [grid, *await ancestors(session, grid)], (ROLE_WORKER,)
    )


async def escalation_target(session: AsyncSession, grid: Grid) -> Target | None:
    """Who receives an order escalated from ``grid``: the nearest grid above with a head.

    ``None`` when ``grid`` is the top of the tree.
    """
    above = await ancestors(session, grid)
    if not above:
        return None
    return await _first_responsible(session, above, (ROLE_HEAD,))


async def can_manage(session: AsyncSession, person_id: int, grid: Grid) -> bool:
    """Whether a person may dispatch orders handled at ``grid``: worker, head or admin of it or
    of any grid above it."""
    found = await session.scalar(
        select(func.count())
        .select_from(Role)
        .where(
            Role.person_id == person_id,
            Role.grid_id.in_(path_ids(grid)),
            Role.role.in_((ROLE_WORKER, ROLE_HEAD, ROLE_ADMIN)),
        )
    )
    return bool(found)


@dataclass(frozen=True)
class MemberLoad:
    """A member who can take an order, with their open load."""

    person_id: int
    name: str
    open_orders: int


async def members_in_subtree(
    session: AsyncSession, grid: Grid, limit: int = 30
) -> list[MemberLoad]:
    """Members registered on ``grid`` or below it, least loaded first."""
    open_load = (
        select(Order.assignee_id, func.count().label("n"))
        .where(Order.status.in_((ACCEPTED, DISPATCHED)), Order.assignee_id.is_not(None))
        .group_by(Order.assignee_id)
        .subquery()
    )
    rows = await session.execute(
        select(Person.id, Person.name, func.coalesce(open_load.c.n, 0))
        .join(Role, Role.person_id == Person.id)
        .join(Grid, Grid.id == Role.grid_id)
        .outerjoin(open_load, open_load.c.assignee_id == Person.id)
        .where(Role.role == ROLE_MEMBER, Grid.path.startswith(grid.path))
        .group_by(Person.id, Person.name, open_load.c.n)
        .order_by(func.coalesce(open_load.c.n, 0), Person.name, Person.id)
        .limit(limit)
    )
    return [MemberLoad(pid, name, int(n)) for pid, name, n in rows.all()]
