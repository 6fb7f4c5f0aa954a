"""``/points`` (积分): a member's own standing, a head's leaderboard, an admin's adjustment.

``/points`` — members and workers see this month's points and their total, their rank in their
grid this month and their last awards; heads (and admins) see the leaderboard of the grids
they lead. ``/points adjust <person> <+/-n> <reason>`` — admins add or take away points, with a
reason, for someone in their part of the tree (by import key or exact name).
"""

from __future__ import annotations

from sqlalchemy import or_, select

from bot.core import points
from bot.core.orders import OrderError
from bot.ports import Outbound
from handlers.context import Ctx
from models import Grid, Person, PointsEntry, Role
from models.people import ROLE_ADMIN, ROLE_HEAD

#: Lines of the leaderboard a head sees, and awards a member sees.
BOARD_LINES = 10
RECENT_LINES = 5


async def command(ctx: Ctx, arg: str) -> None:
    """Dispatch ``/points`` and ``/points adjust …``."""
    assert ctx.person is not None
    word, _, rest = arg.strip().partition(" ")
    if word.lower() in ("adjust", "调整"):
        await adjust(ctx, rest.strip())
        return
    if word:
        ctx.say("points.usage")
        return
    await show(ctx)


async def _subtree_ids(ctx: Ctx, grid_ids: list[int]) -> list[int]:
    grids = (await ctx.session.scalars(select(Grid).where(Grid.id.in_(grid_ids)))).all()
    if not grids:
        return []
    stmt = select(Grid.id).where(
        or_(*(Grid.path.startswith(g.path, autoescape=True) for g in grids))
    )
    return list((await ctx.session.scalars(stmt)).all())


def _when(ctx: Ctx, entry: PointsEntry) -> str:
    return entry.created_at.astimezone(ctx.settings.tz).strftime("%m-%d")


def _entry_line(ctx: Ctx, entry: PointsEntry) -> str:
    reason = ctx.t(f"points.reason.{entry.reason}")
    if entry.note:
        reason = (
            f"{reason}（{entry.note}）"
            if ctx.lang.startswith("zh")
            else f"{reason} ({entry.note})"
        )
    return ctx.t(
        "points.entry", date=_when(ctx, entry), reason=reason, points=f"{entry.points:+d}"
    )


async def show(ctx: Ctx) -> None:
    """The sender's standing (members, workers) and/or their grids' leaderboard (heads)."""
    assert ctx.person is not None
    roles = await ctx.roles()
    start, end = points.month_bounds(ctx.now, ctx.settings.tz)
    month = start.strftime("%Y-%m")
    parts: list[str] = []
    earner = [r for r in roles if r.role in points.RANKED_ROLES]
    if earner:
        pid = ctx.person.id
        this_month = await points.total(ctx.session, pid, start, end)
        overall = await points.total(ctx.session, pid)
        grid = await ctx.session.get(Grid, earner[0].grid_id)
        assert grid is not None
        table = await points.standings(ctx.session, [grid.id], start, end)
        rank = points.rank_of(table, pid)
        lines = [
            ctx.t(
                "points.mine",
                month=month,
                points=str(this_month),
                total=str(overall),
                grid=grid.name,
                rank=str(rank or "-"),
                of=str(len(table)),
            )
        ]
        entries = await points.recent(ctx.session, pid, RECENT_LINES)
        if entries:
            lines.append(ctx.t("points.recent"))
            lines += [_entry_line(ctx, e) for e in entries]
        else:
            lines.append(ctx.t("points.none_yet"))
        parts.append("\n".join(lines))
    led = [r.grid_id for r in roles if r.role in (ROLE_HEAD, ROLE_ADMIN)]
    for grid_id in dict.fromkeys(led):
        grid = await ctx.session.get(Grid, grid_id)
        assert grid is not None
        ids = await _subtree_ids(ctx, [grid_id])
        table = await points.standings(ctx.session, ids, start, end)
        lines = [ctx.t("points.board", grid=grid.name, month=month)]
        for line in table[:BOARD_LINES]:
            lines.append(
                ctx.t(
                    "points.board_line",
                    rank=str(points.rank_of(table, line.person_id)),
                    name=line.name,
                    points=str(line.points),
                )
            )
        if not table:
            lines.append(ctx.t("points.board_empty"))
        parts.append("\n".join(lines))
    if not parts:
        ctx.say("points.not_for_you")
        return
    ctx.reply(Outbound("\n\n".join(parts)))


async def _target(ctx: Ctx, who: str, scope: list[int]) -> Person:
    """The person an admin names, by key or exact name, among people with a role in scope."""
    in_scope = select(Role.person_id).where(Role.grid_id.in_(scope))
    found = (
        await ctx.session.scalars(
            select(Person)
            .where(or_(Person.key == who, Person.name == who), Person.id.in_(in_scope))
            .order_by(Person.id)
        )
    ).all()
    by_key = [p for p in found if p.key == who]
    if by_key:
        return by_key[0]
    if not found:
        raise OrderError("points.unknown_person", who=who[:40])
    if len(found) > 1:
        raise OrderError("points.ambiguous_person", who=who[:40])
    return found[0]


async def adjust(ctx: Ctx, arg: str) -> None:
    """``/points adjust <person> <+/-n> <reason>``: admins only; bad input changes nothing."""
    assert ctx.person is not None
    admin_grids = [r.grid_id for r in await ctx.roles() if r.role == ROLE_ADMIN]
    if not admin_grids:
        raise OrderError("points.adjust_not_allowed")
    fields = arg.split(maxsplit=2)
    if len(fields) < 3:
        ctx.say("points.adjust_usage")
        return
    who, delta_text, note = fields
    try:
        delta = points.parse_delta(delta_text)
        note = points.check_note(note)
    except points.AdjustError as err:
        raise OrderError(err.key, **err.args_) from err
    target = await _target(ctx, who, await _subtree_ids(ctx, admin_grids))
    await points.adjust(
        ctx.session,
        person_id=target.id,
        delta=delta,
        note=note,
        now=ctx.now,
        actor_id=ctx.person.id,
        actor_name=ctx.person.name,
    )
    now_total = await points.total(ctx.session, target.id)
    ctx.say(
        "points.adjusted",
        name=target.name,
        delta=f"{delta:+d}",
        reason=note,
        total=str(now_total),
    )
    if target.id != ctx.person.id:
        await ctx.notify.to_person(
            target.id,
            lambda lang: Outbound(
                ctx.tr.t(
                    lang,
                    "points.adjusted_you",
                    delta=f"{delta:+d}",
                    reason=note,
                    total=str(now_total),
                )
            ),
        )
