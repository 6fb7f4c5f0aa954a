"""Points (积分): the ledger of awards and adjustments, and leaderboards read from it.

Every point a person holds is a ``points_entry`` row naming why (an order done, a rating
bonus, a visit, a patrol, a whistle answer, an admin's adjustment). Rankings and totals are sums
over those rows; nothing else is the truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from models.orders import PointsEntry
from models.people import ROLE_MEMBER, ROLE_WORKER, Person, Role

#: The roles whose holders are ranked: the people who earn points by doing the work.
RANKED_ROLES: tuple[str, ...] = (ROLE_MEMBER, ROLE_WORKER)


@dataclass(frozen=True)
class PointsStanding:
    """One line of a leaderboard: a person and the points they earned in the period."""

    person_id: int
    name: str
    points: int


def _check_period(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")


async def standings(
    session: AsyncSession,
    grid_ids: Sequence[int],
    start: datetime,
    end: datetime,
    *,
    roles: Sequence[str] = RANKED_ROLES,
) -> list[PointsStanding]:
    """Everyone holding one of ``roles`` on one of ``grid_ids``, with the points of the ledger
    rows created in ``[start, end)``, best first.

    Definition (the one every ranking uses): a person's points in a period are the sum of
    ``points_entry.points`` (awards and adjustments, negative ones included) whose
    ``created_at`` is at or after ``start`` and before ``end``. People without rows have 0 and
    are listed too. Order: points descending, then name, then person id (a stable order).
    ``grid_ids`` are taken as given: pass a subtree's ids to rank a subtree.
    """
    _check_period(start, end)
    if not grid_ids:
        return []
    eligible = (
        select(Role.person_id)
        .where(Role.grid_id.in_(list(grid_ids)), Role.role.in_(list(roles)))
        .distinct()
        .subquery()
    )
    totals = (
        select(PointsEntry.person_id, func.sum(PointsEntry.points).label("points"))
        .where(PointsEntry.created_at >= start, PointsEntry.created_at < end)
        .group_by(PointsEntry.person_id)
        .subquery()
    )
    earned = func.coalesce(totals.c.points, 0)
    stmt = (
        select(Person.id, Person.name, earned)
        .join(eligible, eligible.c.person_id == Person.id)
        .outerjoin(totals, totals.c.person_id == Person.id)
        .order_by(earned.desc(), Person.name, Person.id)
    )
    return [
        PointsStanding(person_id=pid, name=name, points=int(points))
        for pid, name, points in await session.execute(stmt)
    ]


async def leaderboard(
    session: AsyncSession,
    grid_ids: Sequence[int],
    start: datetime,
    end: datetime,
    limit: int = 10,
) -> list[PointsStanding]:
    """The top ``limit`` of :func:`standings` for members and workers of ``grid_ids`` by points
    awarded in ``[start, end)`` (people with no points in the period rank last, with 0)."""
    if limit < 1:
        return []
    return (await standings(session, grid_ids, start, end))[:limit]


def rank_of(table: Sequence[PointsStanding], person_id: int) -> int | None:
    """A person's rank in ``table`` (1 = most points); equal points share the better rank
    (competition ranking: 10, 8, 8, 5 → 1, 2, 2, 4). None when the person is not listed."""
    for index, line in enumerate(table):
        if line.person_id == person_id:
            better = sum(1 for other in table[:index] if other.points > line.points)
            return better + 1
    return None
