"""Order clocks: the configured times an order may wait at each step (dispatch, accept, the
deadline, escalation when overdue, rating), most specific setting first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from models import Category, ClockSetting


@dataclass
class Clocks:
    """The order clocks that apply to one category at one level (minutes/hours/days)."""

    dispatch_minutes: int
    accept_minutes: int
    deadline_hours: int
    overdue_escalate_minutes: int
    rate_days: int


async def resolve_clocks(
    session: AsyncSession, settings: Settings, category: str, depth: int, cache: dict[Any, Any]
) -> Clocks:
    """The clocks of a category at a level: most specific setting row first, then the
    category's deadline, then the service defaults. ``cache`` (a dict the caller keeps for one
    pass) holds the rows and the answers, so a pass reads ``clock_setting`` once."""
    key = (category, depth)
    if key in cache:
        return cache[key]
    if "rows" not in cache:
        cache["rows"] = (await session.scalars(select(ClockSetting))).all()
        cache["cats"] = {c.code: c for c in (await session.scalars(select(Category)))}
    rows: list[ClockSetting] = sorted(
        (r for r in cache["rows"] if r.category in (None, category) and r.depth in (None, depth)),
        key=lambda r: (r.category is not None, r.depth is not None),
    )
    cat = cache["cats"].get(category)
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
    cache[key] = Clocks(**values)
    return cache[key]
