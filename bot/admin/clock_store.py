"""The order clocks settings store (``clock_setting`` rows): what ``gridbot clocks`` and the
``clocks:`` section of a community file write, and how a level name or depth is resolved.

A row sets durations for one scope, (category, depth), either of which may be ``None`` (any);
the order clocks read them (:mod:`bot.core.order_clocks`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from bot.admin.rows import assign_changed
from models.duties import ClockSetting

#: The durations of an order clock row (``clock_setting``): unit, and the largest value taken
#: (a year: larger ones would only overflow the scheduler's date arithmetic).
CLOCK_FIELDS: dict[str, tuple[str, int]] = {
    "dispatch_minutes": ("minutes", 525_600),
    "accept_minutes": ("minutes", 525_600),
    "deadline_hours": ("hours", 8_760),
    "overdue_escalate_minutes": ("minutes", 525_600),
    "rate_days": ("days", 365),
}


def resolve_level(
    level: str | int, level_lists: Sequence[Sequence[str]], depths: Iterable[int]
) -> int:
    """The tree depth ``level`` stands for: a depth (a number, 0 = the top), or a level name
    of the communities whose level names are ``level_lists``.

    A depth must be named by some community or held by some grid (``depths``); a name must
    mean one depth in every community that has it. Raises :class:`ValueError` with the reason.
    """
    labels = level_labels(level_lists, depths)
    known = ", ".join(f"{d} {n}".rstrip() for d, n in sorted(labels.items())) or "none yet"
    if isinstance(level, int) or level.isdigit():
        depth = int(level)
        if depth not in labels:
            raise ValueError(f"unknown level {depth} (levels: {known})")
        return depth
    found = {i for names in level_lists for i, name in enumerate(names) if name == level}
    if not found:
        raise ValueError(f"unknown level '{level}' (levels: {known})")
    if len(found) > 1:
        raise ValueError(
            f"level '{level}' is at depths {', '.join(map(str, sorted(found)))} in different "
            "communities: give the depth instead"
        )
    return found.pop()


def level_labels(level_lists: Sequence[Sequence[str]], depths: Iterable[int]) -> dict[int, str]:
    """Every known depth with its level name(s) (``a|b`` where communities differ, ``""``
    for a depth that grids have but no community names)."""
    names: dict[int, list[str]] = {d: [] for d in depths}
    for level_names in level_lists:
        for depth, name in enumerate(level_names):
            if name and name not in names.setdefault(depth, []):
                names[depth].append(name)
    return {d: "|".join(n) for d, n in sorted(names.items())}


def clock_scope(category: str | None, depth: int | None, level: str = "") -> str:
    """A clock row's scope in words: ``category safety at depth 3 (微网格)``."""
    what = f"category {category}" if category is not None else "any category"
    if depth is None:
        return f"{what} at any level"
    return f"{what} at depth {depth}" + (f" ({level})" if level else "")


async def clock_rows(
    session: AsyncSession, category: str | None, depth: int | None
) -> list[ClockSetting]:
    """The rows of one scope, oldest first; ``None`` matches NULL (``IS NULL``), because the
    unique constraint on (category, depth) does not stop two rows with a NULL in them."""
    stmt = (
        select(ClockSetting)
        .where(
            ClockSetting.category.is_(None)
            if category is None
            else ClockSetting.category == category,
            ClockSetting.depth.is_(None) if depth is None else ClockSetting.depth == depth,
        )
        .order_by(ClockSetting.id)
    )
    return list(await session.scalars(stmt))


async def lock_clock_settings(session: AsyncSession) -> None:
    """Serialise writers of ``clock_setting`` until the transaction ends, so that two of them
    cannot both find no row for a scope with a NULL and both insert one. (SQLite has one writer
    at a time anyway; readers are not blocked.)"""
    conn = await session.connection()
    if conn.dialect.name == "postgresql":
        await session.execute(text("LOCK TABLE clock_setting IN SHARE ROW EXCLUSIVE MODE"))


async def write_clock_setting(
    session: AsyncSession,
    category: str | None,
    depth: int | None,
    values: dict[str, int | None],
) -> str:
    """Set (a number) or clear (``None``) durations of the row for (category, depth), in the
    caller's transaction; tell what happened: created, updated, removed or unchanged.

    A row left with no duration is deleted. Duplicate rows of the scope (possible only from
    before this check) are folded into the oldest: the newest value of each duration wins, as
    it did when the clocks read them.
    """
    await lock_clock_settings(session)
    rows = await clock_rows(session, category, depth)
    if not rows:
        wanted = {k: v for k, v in values.items() if v is not None}
        if not wanted:
            return "unchanged"
        session.add(ClockSetting(category=category, depth=depth, **wanted))
        return "created"
    row, *extra = rows
    for dup in extra:
        for name in CLOCK_FIELDS:
            if getattr(dup, name) is not None:
                setattr(row, name, getattr(dup, name))
        await session.delete(dup)
    changed = assign_changed(row, **values) or bool(extra)
    if all(getattr(row, name) is None for name in CLOCK_FIELDS):
        await session.delete(row)
        return "removed"
    return "updated" if changed else "unchanged"


async def delete_clock_setting(
    session: AsyncSession, category: str | None, depth: int | None
) -> int:
    """Delete the row(s) of one scope; how many there were."""
    await lock_clock_settings(session)
    rows = await clock_rows(session, category, depth)
    for row in rows:
        await session.delete(row)
    return len(rows)
