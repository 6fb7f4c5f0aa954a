"""Who a person is to the others: their name (称呼), phone and room, asked at binding and
changed with ``/me`` (the 我的信息 button).

A name is how the grid worker and the members address the person ("已由王建国接单"); a phone
and a room go only to those who handle the person's orders (see :mod:`bot.core.cards`).
"""

from __future__ import annotations

import re

from bot.core import payloads as p
from bot.core.orders import OrderError
from bot.ports import Button, Outbound
from handlers import common
from handlers.context import Ctx, Flow, Step
from models import Building, Role
from models.people import ROLE_RESIDENT

#: A room as residents write it: "3-502", "502室", "B座1201".
ROOM_RE = re.compile(r"^[0-9A-Za-z\u4e00-\u9fff#\- ]{1,16}$")
#: A mainland mobile number once spaces, dashes, brackets and the +86 prefix are gone.
MOBILE_RE = re.compile(r"^1[3-9][0-9]{9}$")
#: What may be typed around the digits of a phone number.
_PHONE_NOISE = re.compile(r"[ \-()（）\u00a0]")
#: A name: letters (any script), digits, spaces and a few joiners, starting and ending with
#: a letter or digit.
_NAME_RE = re.compile(r"^[^\W_](?:[\w ·.'\-]*[^\W_])?$")
MAX_NAME = 20


def normalize_phone(text: str) -> str | None:
    """The 11 digits of a mainland mobile number as people type it ("138 0000-1234",
    "+86 138…", "86-138…"); ``None`` when it is not one."""
    digits = _PHONE_NOISE.sub("", text.strip())
    if digits.startswith("+86"):
        digits = digits[3:]
    elif digits.startswith("0086"):
        digits = digits[4:]
    elif digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    return digits if MOBILE_RE.match(digits) else None


def clean_name(text: str) -> str | None:
    """A name as the person wants to be called ("王阿姨", "Li Wei"), spaces tidied; ``None``
    for anything that is not a name (empty, too long, digits only, a link, a command)."""
    name = " ".join(text.split())
    if not name or len(name) > MAX_NAME or not _NAME_RE.match(name):
        return None
    if not any(ch.isalpha() for ch in name):
        return None
    return name


def room_ok(text: str) -> bool:
    """Whether ``text`` reads like a room ("3-502")."""
    return bool(ROOM_RE.match(text))


async def _residence(ctx: Ctx) -> Role | None:
    return next((r for r in await ctx.roles() if r.role == ROLE_RESIDENT), None)


async def show(ctx: Ctx, note: str | None = None) -> None:
    """``/me``: the person's name, phone and room, with a button to change each."""
    assert ctx.person is not None
    residence = await _residence(ctx)
    lines = [note] if note else []
    lines += [
        ctx.t("me.title"),
        ctx.t("me.name", name=ctx.person.name),
        ctx.t("me.phone", phone=ctx.person.phone or ctx.t("me.unset")),
    ]
    buttons = [
        Button(ctx.t("btn.me_name"), p.flow("me", "name")),
        Button(ctx.t("btn.me_phone"), p.flow("me", "phone")),
    ]
    if residence is not None:
        building = (
            await ctx.session.get(Building, residence.building_id)
            if residence.building_id
            else None
        )
        lines.append(
            ctx.t(
                "me.room",
                building=building.name if building else "-",
                room=residence.room or ctx.t("me.unset"),
            )
        )
        buttons.append(Button(ctx.t("btn.me_room"), p.flow("me", "room")))
    lines.append(ctx.t("me.privacy"))
    ctx.reply(Outbound("\n".join(lines), [buttons]))


async def edit(ctx: Ctx, what: str, value: str | None = None) -> None:
    """A 改称呼 / 改电话 / 改房号 button (or ``/name``, ``/phone``, ``/room``): ask for the
    new value, or take ``value`` when it came with the command."""
    if ctx.person is None:
        raise OrderError("error.not_bound")
    if what not in ("name", "phone", "room"):
        raise OrderError("error.button_invalid")
    if what == Step.ROOM and await _residence(ctx) is None:
        raise OrderError("me.no_room")
    if value is not None:
        await _apply(ctx, what, value.strip())
        return
    await ctx.set_conversation(Flow.PROFILE, Step(what), {})
    ctx.say(f"me.ask_{what}", [common.cancel_row(ctx)])


async def step(ctx: Ctx, state: str, payload: p.Payload | None) -> None:
    """The answer to 改称呼 / 改电话 / 改房号."""
    if payload is not None:
        raise OrderError("error.button_stale")
    await _apply(ctx, state, (ctx.event.text or "").strip())


async def _apply(ctx: Ctx, what: str, text: str) -> None:
    """Store the new name, phone or room; bad input is asked again and changes nothing."""
    assert ctx.person is not None
    again = [common.cancel_row(ctx)]
    if what == Step.NAME:
        name = clean_name(text)
        if name is None:
            await ctx.set_conversation(Flow.PROFILE, Step.NAME, {})
            ctx.say("bind.bad_name", again)
            return
        ctx.person.name = name
    elif what == Step.PHONE:
        phone = normalize_phone(text)
        if phone is None:
            await ctx.set_conversation(Flow.PROFILE, Step.PHONE, {})
            ctx.say("me.bad_phone", again)
            return
        ctx.person.phone = phone
    elif what == Step.ROOM:
        residence = await _residence(ctx)
        if residence is None:
            await ctx.end_conversation()
            raise OrderError("me.no_room")
        if not room_ok(text):
            await ctx.set_conversation(Flow.PROFILE, Step.ROOM, {})
            ctx.say("me.bad_room", again)
            return
        residence.room = text
    else:
        await ctx.end_conversation()
        raise OrderError("error.button_stale")
    await ctx.end_conversation()
    # The menu keyboard was never replaced in this flow: it stays as it is.
    await show(ctx, ctx.t("me.saved"))
