"""``/bulletin [YYYY-MM] [grid code]``: a head or admin asks for the monthly bulletin (月初通报)
of a grid they look after (default: the highest one, last month). The community admin may ask
for any grid of the tree below them."""

from __future__ import annotations

import re

from sqlalchemy import select

from bot.core.orders import OrderError
from bot.reports.bulletin import BulletinMaker
from bot.reports.kpi import load_scope, month_before, parse_month
from handlers.context import Ctx
from models import Community, Grid, Role
from models.people import ROLE_ADMIN, ROLE_HEAD

COMMANDS = ("bulletin",)
_MONTHISH = re.compile(r"(\d{2,4})[-/.年](\d{1,2})月?")


async def command(ctx: Ctx, name: str, arg: str) -> None:
    """/bulletin: check who asks and what, then answer with the chart, text and ledger."""
    assert ctx.person is not None
    managed = list(
        (
            await ctx.session.scalars(
                select(Grid)
                .join(Role, Role.grid_id == Grid.id)
                .where(Role.person_id == ctx.person.id, Role.role.in_((ROLE_HEAD, ROLE_ADMIN)))
                .order_by(Grid.depth, Grid.id)
            )
        ).all()
    )
    if not managed:
        raise OrderError("bulletin.not_allowed")
    words = arg.split()
    if len(words) > 2:
        raise OrderError("bulletin.usage")
    month_text = next((w for w in words if _MONTHISH.fullmatch(w)), None)
    codes = [w for w in words if w != month_text]
    grid = managed[0]
    if codes:
        wanted = await ctx.session.scalar(select(Grid).where(Grid.code == codes[0]))
        if wanted is None or not any(wanted.path.startswith(g.path) for g in managed):
            raise OrderError("bulletin.unknown_grid", code=codes[0][:64])
        grid = wanted
    community = await ctx.session.get(Community, grid.community_id)
    tz = ctx.settings.tz
    if community is not None:
        from zoneinfo import ZoneInfo

        tz = ZoneInfo(community.timezone)
    if month_text is None:
        period = month_before(ctx.now, tz)
    else:
        try:
            m = _MONTHISH.fullmatch(month_text)
            assert m is not None
            period = parse_month(f"{m.group(1)}-{int(m.group(2)):02d}", tz)
        except ValueError:
            raise OrderError("bulletin.bad_month", text=month_text[:16]) from None
        if period.start > ctx.now:
            raise OrderError("bulletin.future", period=period.label)
    scope = await load_scope(ctx.session, grid.code)
    maker = BulletinMaker(ctx.session, ctx.settings, ctx.tr, ctx.now)
    # A short first line: on WeChat it is the passive reply, and the picture and the figures
    # follow as customer-service messages (a passive reply carries text only).
    ctx.say("bulletin.sending", grid=grid.name, period=period.label)
    for message in await maker.messages(scope, period, ctx.lang):
        ctx.reply(message)
