"""One person, two platforms: ``/link`` gives a one-time code; ``/link <code>`` sent from the
other platform attaches that identity to the same person; ``/push`` picks where pushes go."""

from __future__ import annotations

import re
import secrets
from datetime import timedelta

from sqlalchemy import delete, or_, select, update

from bot.core import payloads
from bot.core.orders import OrderError
from bot.ports import Button
from handlers import common
from handlers.context import Ctx
from models import Identity, LinkCode, Person

LINK_MINUTES = 10
CODE_RE = re.compile(r"\d{6}")
#: ``/push auto`` goes back to "wherever I wrote last".
AUTO = "auto"


def channel_name(ctx: Ctx, channel: str) -> str:
    """A platform's name for people (``channel.<name>`` in the catalog)."""
    key = f"channel.{channel}"
    return ctx.t(key) if ctx.tr.has(key) else channel


async def link(ctx: Ctx, arg: str) -> None:
    """``/link``: show a code; ``/link <code>``: join the person who asked for it."""
    arg = arg.strip()
    if not arg:
        if ctx.person is None:
            ctx.say("bind.welcome")
            return
        code = await _new_code(ctx, ctx.person.id)
        ctx.say("link.code", code=code, minutes=str(LINK_MINUTES))
        return
    if not CODE_RE.fullmatch(arg):
        raise OrderError("link.bad_code")
    row = await ctx.session.scalar(select(LinkCode).where(LinkCode.code == arg))
    if row is None or row.used_at is not None or row.expires_at <= ctx.now:
        raise OrderError("link.bad_code")
    if ctx.person is not None and ctx.person.id == row.person_id:
        raise OrderError("link.same_person")
    target = await ctx.session.get(Person, row.person_id)
    if target is None:
        raise OrderError("link.bad_code")
    channel = ctx.event.channel
    clash = await ctx.session.scalar(
        select(Identity.id).where(Identity.person_id == target.id, Identity.channel == channel)
    )
    if clash is not None:
        raise OrderError("link.same_channel", channel=channel_name(ctx, channel))
    if ctx.person is not None and await ctx.roles():
        # Merging two people with roles would mix their orders and duties: refuse.
        raise OrderError("link.has_roles")
    used = await ctx.session.execute(
        update(LinkCode)
        .where(LinkCode.id == row.id, LinkCode.used_at.is_(None))
        .values(used_at=ctx.now)
        .returning(LinkCode.id)
    )
    if used.first() is None:
        raise OrderError("link.bad_code")
    if ctx.identity is None:
        ev = ctx.event
        ctx.identity = Identity(
            person_id=target.id,
            channel=channel,
            external_id=ev.user_id,
            chat_id=ev.chat_id,
            locale=ctx.lang,
            last_inbound_at=ctx.now,
            created_at=ctx.now,
        )
        ctx.session.add(ctx.identity)
    else:
        ctx.identity.person_id = target.id
    await ctx.session.flush()
    ctx.person = target
    ctx.lang = target.locale or ctx.lang
    await ctx.roles(refresh=True)
    ctx.say("link.done", name=target.name, channel=channel_name(ctx, channel))
    await common.show_menu(ctx)


async def _new_code(ctx: Ctx, person_id: int) -> str:
    """A fresh six-digit code, valid for ``LINK_MINUTES``; older codes of the person go."""
    await ctx.session.execute(
        delete(LinkCode).where(
            or_(
                LinkCode.expires_at <= ctx.now,
                LinkCode.used_at.is_not(None),
                LinkCode.person_id == person_id,
            )
        )
    )
    while True:
        code = f"{secrets.randbelow(10**6):06d}"
        taken = await ctx.session.scalar(select(LinkCode.id).where(LinkCode.code == code))
        if taken is None:
            break
    ctx.session.add(
        LinkCode(
            code=code,
            person_id=person_id,
            expires_at=ctx.now + timedelta(minutes=LINK_MINUTES),
            created_at=ctx.now,
        )
    )
    await ctx.session.flush()
    return code


async def push(ctx: Ctx, arg: str) -> None:
    """``/push <platform>`` or ``/push auto``: where pushes go; without an argument, show it
    with one button per platform (the same choice, as ``f:push:<platform>``)."""
    assert ctx.person is not None
    mine = sorted(
        set(
            (
                await ctx.session.scalars(
                    select(Identity.channel).where(Identity.person_id == ctx.person.id)
                )
            ).all()
        )
    )
    choice = arg.strip().lower()
    if not choice:
        current = ctx.person.preferred_channel
        # One button per platform (numbered options on WeChat), besides "/push <platform>".
        buttons = [
            [Button(channel_name(ctx, name), payloads.flow("push", name))] for name in mine
        ]
        buttons.append([Button(ctx.t("push.auto"), payloads.flow("push", AUTO))])
        ctx.say(
            "push.current",
            buttons,
            channel=channel_name(ctx, current) if current else ctx.t("push.auto"),
            choices=" / ".join([*mine, AUTO]),
        )
        return
    if choice == AUTO:
        ctx.person.preferred_channel = None
        ctx.say("push.set_auto")
        return
    if choice not in mine:
        raise OrderError("push.unknown", choices=" / ".join([*mine, AUTO]))
    ctx.person.preferred_channel = choice
    ctx.say("push.set", channel=channel_name(ctx, choice))
