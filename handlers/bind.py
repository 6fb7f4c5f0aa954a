"""Binding: /start <invite> (or a scanned QR code) makes a person and gives them a role."""

from __future__ import annotations

from sqlalchemy import select

from bot.core import payloads as p
from bot.core.invites import InviteError, check_invite, redeem_invite, signing_key
from bot.core.orders import OrderError
from bot.ports import Button, Outbound
from handlers import common, profile
from handlers.context import Ctx, Flow, Step
from models import Building, Grid, Identity, Person, Role
from models.people import ROLE_RESIDENT


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
    new_person = ctx.person is None
    if ctx.person is None:
        ev = ctx.event
        person = Person(
            name=profile.clean_name(ev.display_name or "") or ctx.t("bind.default_name"),
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
        ctx.reply(
            Outbound(
                ctx.t("bind.already", role=ctx.t(f"role.{invite.role}"), grid=grid.name)
                + "\n"
                + ctx.t("bind.already_me", me=ctx.t("menu.me")),
                menu=await common.menu_rows(ctx),
            )
        )
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
    data: dict[str, object] = {}
    if invite.role == ROLE_RESIDENT:
        building = await ctx.session.get(Building, invite.building_id)
        assert building is not None
        welcome = ctx.t("bind.resident_ok", building=building.name, grid=grid.name)
        data["role_id"] = role.id
    else:
        welcome = ctx.t("bind.role_ok", role=ctx.t(f"role.{invite.role}"), grid=grid.name)
    if new_person:
        # Someone new: how do the others call them? (WeChat gives no name at all.)
        await ctx.set_conversation(Flow.BIND, Step.NAME, data)
        ctx.reply(Outbound(welcome + "\n\n" + ctx.t("bind.ask_name"), _name_buttons(ctx)))
        return
    if invite.role == ROLE_RESIDENT:
        await _ask_room(ctx, data, welcome + "\n\n")
        return
    ctx.reply(Outbound(welcome, menu=await common.menu_rows(ctx)))


def _name_buttons(ctx: Ctx) -> list[list[Button]]:
    """"Keep the platform's name" when the platform gave one (Telegram), else nothing."""
    shown = (ctx.event.display_name or "").strip()
    if ctx.person is None or not shown or profile.clean_name(shown) is None:
        return []
    return [[Button(ctx.t("btn.keep_name", name=ctx.person.name), p.flow("skip"))]]


async def _ask_room(ctx: Ctx, data: dict[str, object], before: str = "") -> None:
    await ctx.set_conversation(Flow.BIND, Step.ROOM, data)
    # One message, not two: the welcome and the first question belong together.
    ctx.reply(before + ctx.t("bind.ask_room"), [[Button(ctx.t("btn.skip"), p.flow("skip"))]])


async def step(ctx: Ctx, state: str, data: dict[str, object], payload: p.Payload | None) -> None:
    """Name, then (residents) room, then phone, after binding; room and phone may be skipped,
    a name may be kept as the platform gave it."""
    assert ctx.person is not None
    text = (ctx.event.text or "").strip()
    skip = payload is not None and payload.action == "skip"
    if payload is not None and not skip:
        raise OrderError("error.button_stale")
    skip_row = [[Button(ctx.t("btn.skip"), p.flow("skip"))]]
    if state == Step.NAME:
        if skip and not _name_buttons(ctx):
            skip = False  # nothing to keep: a name is needed
        if not skip:
            name = profile.clean_name(text)
            if name is None:
                ctx.say("bind.bad_name", _name_buttons(ctx))
                return
            ctx.person.name = name
        if data.get("role_id") is not None:
            await _ask_room(ctx, data, ctx.t("bind.name_ok", name=ctx.person.name) + "\n")
        else:
            await ctx.set_conversation(Flow.BIND, Step.PHONE, data)
            ctx.say("bind.ask_phone_member", skip_row, name=ctx.person.name)
        return
    if state == Step.ROOM:
        if not skip:
            if not profile.room_ok(text):
                ctx.say("bind.bad_room", skip_row)
                return
            role = await ctx.session.get(Role, int(str(data["role_id"])))
            if role is not None and role.person_id == ctx.person.id:
                role.room = text
        await ctx.set_conversation(Flow.BIND, Step.PHONE, data)
        ctx.say("bind.ask_phone", skip_row)
        return
    if not skip:
        phone = profile.normalize_phone(text)
        if phone is None:
            ctx.say("bind.bad_mobile", skip_row)
            return
        ctx.person.phone = phone
    await ctx.end_conversation()
    # "All set" carries the menu itself rather than being followed by a bare menu message.
    done = "bind.done" if data.get("role_id") is not None else "bind.done_member"
    ctx.reply(Outbound(ctx.t(done), menu=await common.menu_rows(ctx)))
