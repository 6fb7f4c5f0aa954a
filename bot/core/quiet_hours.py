"""Quiet hours: when a community's night is, and the order flow's pushes waiting it out.

The duties' own pushes wait through the duty service's ``hold``, which asks
:func:`community_quiet_end`; the order flow's wait through :func:`hold_order_pushes`, called once
per handled event before its transaction commits.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from models import Category, Community, Grid, Order, OutboxMessage, QuietHours
from models.refs import RefKind, parse_ref


def parse_hhmm(value: str) -> time:
    """``"07:30"`` → ``time(7, 30)``."""
    hours, _, minutes = value.strip().partition(":")
    return time(int(hours), int(minutes or 0))


def parse_span(value: str) -> tuple[time, time]:
    """``"22:00-07:00"`` → (start, end)."""
    start, _, end = value.partition("-")
    return parse_hhmm(start), parse_hhmm(end)


def quiet_end(now: datetime, start: time, end: time, tz: ZoneInfo) -> datetime | None:
    """When the quiet hours that contain ``now`` end; ``None`` when ``now`` is not quiet."""
    local = now.astimezone(tz)
    t = local.time()
    if start == end:
        return None
    inside = (start <= t or t < end) if start > end else (start <= t < end)
    if not inside:
        return None
    day = local.date() if t < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, tz)


async def community_quiet_end(
    session: AsyncSession, settings: Settings, grid_id: int, now: datetime
) -> datetime | None:
    """End of the quiet hours of the grid's community (its ``quiet_hours`` row, else the
    ``quiet_hours`` setting in the community's time zone), if ``now`` is quiet there."""
    grid = await session.get(Grid, grid_id)
    row = await session.get(QuietHours, grid.community_id) if grid else None
    if row is not None:
        return quiet_end(now, parse_hhmm(row.start), parse_hhmm(row.end), ZoneInfo(row.timezone))
    start, end = parse_span(settings.quiet_hours)
    community = await session.get(Community, grid.community_id) if grid else None
    tz = ZoneInfo(community.timezone) if community else settings.tz
    return quiet_end(now, start, end, tz)


#: Outbox refs of the order flow pushed to others that name their order (``disp:12``); an
#: ``offer:7`` names its offer.
_ORDER_REFS = frozenset({RefKind.DISPATCH, RefKind.NOTE, RefKind.TASK, RefKind.RATE})


async def hold_order_pushes(
    session: AsyncSession,
    settings: Settings,
    rows: list[OutboxMessage],
    now: datetime,
    *,
    reply_chat: tuple[str, str] | None = None,
) -> int:
    """Quiet hours for the order flow, in one place: every new message about an order that is
    pushed to someone else (not the chat being answered, not an edit of a message already
    there) waits until the quiet hours of the order's community end, unless the order's
    category is urgent. Called once per handled event, before its transaction commits.
    Returns how many rows now wait."""
    order_of: dict[int, int] = {}
    offers: dict[int, int] = {}
    for i, row in enumerate(rows):
        if row.edit_ref or not row.ref or (row.channel, row.chat_id) == reply_chat:
            continue
        ref = parse_ref(row.ref)
        if ref is None:
            continue
        if ref.kind in _ORDER_REFS:
            order_of[i] = ref.id
        elif ref.kind is RefKind.OFFER:
            offers[i] = ref.id
    if offers:
        from models import Offer

        found = dict(
            (
                await session.execute(
                    select(Offer.id, Offer.order_id).where(Offer.id.in_(set(offers.values())))
                )
            ).all()
        )
        order_of.update({i: found[o] for i, o in offers.items() if o in found})
    if not order_of:
        return 0
    facts = {
        oid: (grid_id, bool(urgent))
        for oid, grid_id, urgent in (
            await session.execute(
                select(Order.id, Order.grid_id, Category.urgent)
                .outerjoin(Category, Category.code == Order.category)
                .where(Order.id.in_(set(order_of.values())))
            )
        ).all()
    }
    until: dict[int, datetime | None] = {}
    held = 0
    for i, oid in order_of.items():
        if oid not in facts or facts[oid][1]:
            continue
        grid_id = facts[oid][0]
        if grid_id not in until:
            until[grid_id] = await community_quiet_end(session, settings, grid_id, now)
        if until[grid_id] is not None:
            rows[i].not_before = until[grid_id]  # type: ignore[assignment]
            held += 1
    return held


__all__ = [
    "community_quiet_end",
    "hold_order_pushes",
    "parse_hhmm",
    "parse_span",
    "quiet_end",
]
