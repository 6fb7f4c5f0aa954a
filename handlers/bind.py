"""Binding: /start <invite> (or a scanned QR code) makes a person and gives them a role."""

from __future__ import annotations

import re

from sqlalchemy import select

from bot.core import payloads as p
from bot.core.invites import InviteError, check_invite, redeem_invite, signing_key
from bot.core.orders import OrderError
from bot.ports import Button, Outbound
from handlers import common
from handlers.context import FLOW_BIND, Ctx
from models import Building, Grid, Identity, Person, Role
from models.people import ROLE_RESIDENT

ROOM_RE = re.compile(r"^[0-9A-Za-z\u4e00-\u9fff#\- ]{1,16}$")
PHONE_RE = re.compile(r"^\+?[0-9][0-9 \-]{5,18}[0-9]$")


async def welcome(ctx: Ctx) -> None:
    """Someone we do not know yet wrote to us: explain how to bind."""
    ctx.say("bind.welcome")


async def start(ctx: Ctx, token: str) -> None:
    """Redeem an invite: create the person on first contact, then add the invited role."""
    key = await signing_key(ctx.session, ctx.settings)
    try:
        invite = await check_invite(ctx.session, key, token, ctx.now)
    except InviteError as err:
        raise OrderError(f"invite.{err.reason}") from err
    grid = await ctx.session.get(Grid, invite.grid_id)
    assert grid is not None
    if ctx.person is None:
        ev = ctx.event
        person = Person(
            name=(ev.display_name or "").strip()[:100] or ctx.t("bind.default_name"),
            created_at=ctx.now,
        )
        ctx.session.add(person)
        await ctx.session.flush()
        identity = Identity(
            person_id=person.id,
            channel=ev.channel,
            external_id=ev.user_id,
            chat_id=ev.chat_id,
            locale=ctx.lang,
            last_inbound_at=ctx.now,
            created_at=ctx.now,
        )
        ctx.session.add(identity)
        await ctx.session.flush()
        ctx.person, ctx.identity = person, identity
    assert ctx.person is not None
    existing = await ctx.session.scalar(
        select(Role).where(
            Role.person_id == ctx.person.id,
            Role.grid_id == invite.grid_id,
            Role.role == invite.role,
        )
    )
    if existing is not None and (
        invite.role != ROLE_RESIDENT or existing.building_id == invite.building_id
    ):
        # Checked before redeeming: holding the role already must not use up the invite.
        ctx.say("bind.already", role=ctx.t(f"role.{invite.role}"), grid=grid.name)
        await common.show_menu(ctx)
        return
    try:
        await redeem_invite(ctx.session, key, token, ctx.now)
    except InviteError as err:  # lost a race for the last use
        raise OrderError(f"invite.{err.reason}") from err
    if existing is not None:
        existing.building_id = invite.building_id
        role = existing
    else:
        role = Role(
            person_id=ctx.person.id,
            grid_id=invite.grid_id,
            role=invite.role,
            building_id=invite.building_id,
            created_at=ctx.now,
        )
        ctx.session.add(role)
        await ctx.session.flush()
    await ctx.roles(refresh=True)
    if invite.role == ROLE_RESIDENT:
        building = await ctx.session.get(Building, invite.building_id)
        assert building is not None
        welcome = ctx.t("bind.resident_ok", building=building.name, grid=grid.name)
        await ctx.set_conversation(FLOW_BIND, "room", {"role_id": role.id})
        # One message, not two: the welcome and the first question belong together.
        ctx.reply(
            welcome + "\n\n" + ctx.t("bind.ask_room"),
            [[Button(ctx.t("btn.skip"), p.flow("skip"))]],
        )
        return
    ctx.say("bind.role_ok", role=ctx.t(f"role.{invite.role}"), grid=grid.name)
    await common.show_menu(ctx)


async def step(ctx: Ctx, state: str, data: dict[str, object], payload: p.Payload | None) -> None:
    """Room, then phone, after a resident binds (both may be skipped)."""
    assert ctx.person is not None
    text = (ctx.event.text or "").strip()
    skip = payload is not None and payload.action == "skip"
    if payload is not None and not skip:
        raise OrderError("error.button_stale")
    if state == "room":
        if not skip:
            if not ROOM_RE.match(text):
                ctx.say("bind.bad_room", [[Button(ctx.t("btn.skip"), p.flow("skip"))]])
                return
            role = await ctx.session.get(Role, int(str(data["role_id"])))
            if role is not None and role.person_id == ctx.person.id:
                role.room = text
        await ctx.set_conversation(FLOW_BIND, "phone", data)
        ctx.say("bind.ask_phone", [[Button(ctx.t("btn.skip"), p.flow("skip"))]])
        return
    if not skip:
        if not PHONE_RE.match(text):
            ctx.say("bind.bad_phone", [[Button(ctx.t("btn.skip"), p.flow("skip"))]])
            return
        ctx.person.phone = re.sub(r"[ \-]", "", text)
    await ctx.end_conversation()
    # "All set" carries the menu itself rather than being followed by a bare menu message.
    ctx.reply(Outbound(ctx.t("bind.done"), menu=await common.menu_rows(ctx)))
