"""Points (积分): the ledger of awards and adjustments, and leaderboards read from it.

Every point a person holds is a ``points_entry`` row naming why (an order done, a rating
bonus, a visit, a patrol, a whistle answer, an admin's adjustment). Rankings and totals are sums
over those rows; nothing else is the truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from models.orders import PointsEntry
from models.people import ROLE_MEMBER, ROLE_WORKER, Person, Role

if TYPE_CHECKING:
    from bot.config import Settings

#: Why points were credited (``points_entry.reason``); catalog key ``points.reason.<reason>``.
ORDER_DONE = "order_done"
RATING_BONUS = "rating_bonus"
VISIT = "visit"
PATROL = "patrol"
WHISTLE = "whistle"
ADJUST = "adjust"
REASONS = (ORDER_DONE, RATING_BONUS, VISIT, PATROL, WHISTLE, ADJUST)

#: A rating of this many stars or more earns the member the rating bonus (the 满意 threshold).
BONUS_AT_OR_ABOVE = 4
#: Limits of one adjustment and of its written reason.
MAX_ADJUST = 10_000
MAX_NOTE = 200


@dataclass(frozen=True)
class PointsRules:
    """How many points each kind of award is worth (``GRIDBOT_POINTS_*``).

    An order done earns its category's ``points`` (set in the community file).
    """

    rating_bonus: int = 5
    visit: int = 3
    patrol: int = 2
    whistle: int = 2

    @classmethod
    def from_settings(cls, settings: Settings) -> PointsRules:
        """The amounts configured in ``settings``."""
        return cls(
            rating_bonus=settings.points_rating_bonus,
            visit=settings.points_visit,
            patrol=settings.points_patrol,
            whistle=settings.points_whistle,
        )


class AdjustError(ValueError):
    """An adjustment was refused; ``key`` is the catalog key of the polite answer."""

    def __init__(self, key: str, **args: str) -> None:
        super().__init__(key)
        self.key = key
        self.args_ = args


# --------------------------------------------------------------------------------------------
# Writing the ledger.


async def award(
    session: AsyncSession,
    *,
    person_id: int,
    points: int,
    reason: str,
    key: str,
    now: datetime,
    order_id: int | None = None,
) -> bool:
    """Credit ``points`` for the event named ``key``, once: False if that event was credited
    already (a redelivery, a second path to the same state) or ``points`` is 0.

    Written in the caller's transaction, with the event that causes it: both commit or neither.
    ``INSERT … ON CONFLICT DO NOTHING`` on the unique ``award_key`` makes a concurrent second
    attempt a no-op rather than an error.
    """
    if points == 0:
        return False
    if reason not in REASONS or reason == ADJUST:
        raise ValueError(f"not an award reason: {reason!r}")
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    result = await session.execute(
        insert(PointsEntry)
        .values(
            person_id=person_id,
            order_id=order_id,
            points=points,
            reason=reason,
            award_key=key,
            created_at=now,
        )
        .on_conflict_do_nothing()
        .returning(PointsEntry.id)
    )
    if result.first() is None:
        return False
    await _add_to_counter(session, person_id, points)
    return True


async def _add_to_counter(session: AsyncSession, person_id: int, points: int) -> None:
    await session.execute(
        update(Person)
        .where(Person.id == person_id)
        .values(points=Person.points + points)
        .execution_options(synchronize_session=False)
    )


def parse_delta(text: str) -> int:
    """``+5``, ``-3``, ``12`` → an adjustment; :class:`AdjustError` when it is not a whole
    number from 1 to ``MAX_ADJUST`` either way."""
    raw = text.strip().replace("＋", "+").replace("－", "-")
    body = raw[1:] if raw[:1] in "+-" else raw
    if not body.isascii() or not body.isdigit():
        raise AdjustError("points.bad_delta", max=str(MAX_ADJUST))
    value = int(raw)
    if value == 0 or abs(value) > MAX_ADJUST:
        raise AdjustError("points.bad_delta", max=str(MAX_ADJUST))
    return value


def check_note(note: str) -> str:
    """The adjustment's reason, trimmed; :class:`AdjustError` when empty or too long."""
    note = " ".join(note.split())
    if not note:
        raise AdjustError("points.no_reason")
    if len(note) > MAX_NOTE:
        raise AdjustError("points.reason_too_long", max=str(MAX_NOTE))
    return note


async def adjust(
    session: AsyncSession,
    *,
    person_id: int,
    delta: int,
    note: str,
    now: datetime,
    actor_id: int | None,
    actor_name: str,
) -> PointsEntry:
    """An admin's adjustment: one ledger row with who (``actor_*``), when and why (``note``)."""
    if delta == 0 or abs(delta) > MAX_ADJUST:
        raise AdjustError("points.bad_delta", max=str(MAX_ADJUST))
    entry = PointsEntry(
        person_id=person_id,
        points=delta,
        reason=ADJUST,
        note=check_note(note),
        actor_id=actor_id,
        actor_name=actor_name[:100],
        created_at=now,
    )
    session.add(entry)
    await session.flush()
    await _add_to_counter(session, person_id, delta)
    return entry


# --------------------------------------------------------------------------------------------
# Reading it.


def month_bounds(now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The local calendar month containing ``now``: ``[first day 00:00, next first day 00:00)``
    in ``tz``, as aware datetimes."""
    local = now.astimezone(tz)
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


async def total(
    session: AsyncSession,
    person_id: int,
    start: datetime | None = None,
    end: datetime | None = None,
) -> int:
    """A person's points: the sum of their ledger rows (in ``[start, end)`` when given)."""
    stmt = select(func.coalesce(func.sum(PointsEntry.points), 0)).where(
        PointsEntry.person_id == person_id
    )
    if start is not None:
        stmt = stmt.where(PointsEntry.created_at >= start)
    if end is not None:
        stmt = stmt.where(PointsEntry.created_at < end)
    return int(await session.scalar(stmt) or 0)


async def recent(session: AsyncSession, person_id: int, limit: int = 5) -> list[PointsEntry]:
    """A person's newest ledger rows."""
    stmt = (
        select(PointsEntry)
        .where(PointsEntry.person_id == person_id)
        .order_by(PointsEntry.created_at.desc(), PointsEntry.id.desc())
        .limit(limit)
    )
    return list((await session.scalars(stmt)).all())


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
    ``grid_ids`` are taken as given: pass a subtree's ids to rank a subtree. Only the rows of
    the people ranked are summed (by ``person_id``), so one grid costs its own rows, not the
    city's.
    """
    _check_period(start, end)
    if not grid_ids:
        return []
    holders = select(Role.person_id).where(
        Role.grid_id.in_(list(grid_ids)), Role.role.in_(list(roles))
    )
    eligible = holders.distinct().subquery()
    totals = (
        select(PointsEntry.person_id, func.sum(PointsEntry.points).label("points"))
        .where(
            PointsEntry.person_id.in_(holders),
            PointsEntry.created_at >= start,
            PointsEntry.created_at < end,
        )
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
