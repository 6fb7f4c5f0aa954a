"""``/queue``: the open orders of the grids a worker, head or admin looks after, grouped as
:mod:`bot.core.workqueue` defines (overdue, waiting for dispatch, in progress), short lines
that read on a phone, and a "view" button for the first ones."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from bot.core import cards
from bot.core import payloads as p
from bot.core.orders import OrderError
from bot.core.workqueue import QueueItem, work_queue
from bot.ports import Button, Outbound
from handlers.context import Ctx
from models import Grid
from models.people import ROLE_ADMIN, ROLE_HEAD, ROLE_WORKER

#: Lines listed per group; the rest is counted.
GROUP_LIMIT = 10
#: "View" buttons, for the first orders listed (overdue first).
BUTTON_LIMIT = 10


def late_text(ctx: Ctx, late: timedelta) -> str:
    """"2天3小时", "5小时20分钟", "12分钟": how long an order is overdue, to the minute."""
    minutes = int(late.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return ctx.t("queue.days_hours", days=str(days), hours=str(hours))
    if hours:
        return ctx.t("queue.hours_minutes", hours=str(hours), minutes=str(mins))
    return ctx.t("queue.minutes", minutes=str(mins))


def _line(ctx: Ctx, item: QueueItem) -> str:
    o = item.order
    line = ctx.t(
        "queue.line",
        number=cards.number(o),
        category=cards.category_name(ctx.tr, ctx.lang, o.category),
        building=item.building,
        status=ctx.t(f"queue.status_{o.status}"),
    )
    if item.assignee:
        line += ctx.t("queue.who", name=item.assignee)
    if item.late is not None:
        line += ctx.t("queue.late", late=late_text(ctx, item.late))
    return line


async def queue(ctx: Ctx) -> None:
    """Open orders in the grids this worker/head/admin looks after: overdue, waiting, in
    progress."""
    assert ctx.person is not None
    managed = [r for r in await ctx.roles() if r.role in (ROLE_WORKER, ROLE_HEAD, ROLE_ADMIN)]
    if not managed:
        raise OrderError("error.not_a_manager")
    grids = list(
        (
            await ctx.session.scalars(
                select(Grid).where(Grid.id.in_([r.grid_id for r in managed]))
            )
        ).all()
    )
    work = await work_queue(ctx.session, ctx.settings, grids, ctx.now)
    if work.empty:
        ctx.say("queue.empty")
        return
    lines: list[str] = []
    shown: list[QueueItem] = []
    for key, items in (
        ("queue.overdue", work.overdue),
        ("queue.waiting", work.waiting),
        ("queue.in_progress", work.in_progress),
    ):
        if not items:
            continue
        if lines:
            lines.append("")
        lines.append(ctx.t(key, count=str(len(items))))
        lines += [_line(ctx, item) for item in items[:GROUP_LIMIT]]
        if len(items) > GROUP_LIMIT:
            lines.append(ctx.t("queue.more", count=str(len(items) - GROUP_LIMIT)))
        shown += items[:GROUP_LIMIT]
    buttons = [
        Button(ctx.t("btn.view", number=cards.number(i.order)), p.order("view", i.order.id))
        for i in shown[:BUTTON_LIMIT]
    ]
    rows = [buttons[n : n + 2] for n in range(0, len(buttons), 2)]
    ctx.reply(Outbound("\n".join(lines), rows))
