"""Duty conversations: patrol check-in, visit log, whistle answers, and the duty commands
(/whistle, /notice, /household, /visitplan)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bot.core import payloads as p
from bot.core.cards import number
from bot.core.orders import OrderError
from bot.ports import Outbound
from handlers import duty_lists, notice
from handlers.common import cancel_row, location_question, skip_row
from handlers.context import Ctx, Flow, FlowStep, Step
from models import Order
from models.duties import VISIT_FINE, VISIT_HELP
from models.people import ROLE_ADMIN, ROLE_HEAD, ROLE_WORKER

COMMANDS = ("whistle", "notice", "household", "visitplan")
#: Separator of the fields of /household and /visitplan (ASCII or full-width bar).
FIELD_SEPARATORS = ("|", "｜")


async def _check_in(ctx: Ctx, payload: p.Payload) -> None:
    """检到 on a patrol reminder (``dp:ci:<run>``): the check-in flow asks a note."""
    assert ctx.person is not None and payload.id is not None
    await ctx.duties().start_check_in(ctx.person, payload.id)
    await ctx.set_conversation(Flow.CHECKIN, Step.NOTE, {"run_id": payload.id})
    ctx.say("patrol.ask_note", [cancel_row(ctx)])


async def _visit(ctx: Ctx, payload: p.Payload) -> None:
    """A visit's outcome (``dv:ok|help:<plan>``): the visit flow asks a note."""
    assert ctx.person is not None and payload.id is not None
    outcome = VISIT_HELP if payload.action == "help" else VISIT_FINE
    await ctx.duties().start_visit(ctx.person, payload.id)
    await ctx.set_conversation(Flow.VISIT, Step.NOTE, {"plan_id": payload.id, "outcome": outcome})
    if outcome == VISIT_HELP:
        ctx.say("visit.ask_help", [cancel_row(ctx)])
    else:
        ctx.say("visit.ask_note", [skip_row(ctx)])


async def _whistle(ctx: Ctx, payload: p.Payload) -> None:
    """An answer to a whistle (``dw:on|no:<whistle>``)."""
    assert ctx.person is not None and payload.id is not None
    answer = await ctx.duties().answer_whistle(ctx.person, payload.id, payload.action)
    ctx.toast = ctx.t(f"whistle.answered_{answer}")
    ctx.say(f"whistle.answered_{answer}")


async def _send_notice(ctx: Ctx, payload: p.Payload) -> None:
    """确认发送 under a notice's preview (``nc:<code>``)."""
    await notice.confirm(ctx, payload.arg or "")


#: The duty buttons, by kind (combined with the order buttons in the intake's table).
BUTTONS: dict[p.PayloadKind, Callable[[Ctx, p.Payload], Awaitable[None]]] = {
    p.PayloadKind.PATROL: _check_in,
    p.PayloadKind.VISIT: _visit,
    p.PayloadKind.WHISTLE: _whistle,
    p.PayloadKind.NOTICE_CONFIRM: _send_notice,
}


async def checkin_step(
    ctx: Ctx, state: str, data: dict[str, Any], payload: p.Payload | None
) -> None:
    """Patrol check-in: a note, then an optional photo, then an optional location."""
    assert ctx.person is not None
    ev = ctx.event
    text = (ev.text or "").strip()
    skip = payload is not None and payload.action == "skip"
    if state == Step.NOTE:
        if ev.photo:
            data["photo"] = ev.photo
        if not text or payload is not None:
            await ctx.set_conversation(Flow.CHECKIN, Step.NOTE, data)
            ctx.say("patrol.ask_note", [cancel_row(ctx)])
            return
        data["note"] = text
        if data.get("photo"):
            await _ask_location(ctx, data)
            return
        await ctx.set_conversation(Flow.CHECKIN, Step.PHOTO, data)
        ctx.say("patrol.ask_photo", [skip_row(ctx)])
        return
    if state == Step.PHOTO:
        if ev.photo:
            data["photo"] = ev.photo
        elif not skip:
            ctx.say("patrol.ask_photo", [skip_row(ctx)])
            return
        await _ask_location(ctx, data)
        return
    if ev.location:
        data["lat"], data["lon"] = ev.location
    elif not skip:
        await _ask_location(ctx, data)
        return
    location = (data["lat"], data["lon"]) if data.get("lat") is not None else None
    run = await ctx.duties().check_in(
        ctx.person, int(data["run_id"]), data.get("note"), data.get("photo"), location
    )
    await ctx.end_conversation()
    key = "patrol.checked_in_late" if run.head_told_at else "patrol.checked_in"
    ctx.reply(Outbound(ctx.t(key), remove_menu=True))


async def _ask_location(ctx: Ctx, data: dict[str, Any]) -> None:
    await ctx.set_conversation(Flow.CHECKIN, Step.LOCATION, data)
    ctx.reply(location_question(ctx, "patrol.ask_location"))


async def visit_step(
    ctx: Ctx, state: str, data: dict[str, Any], payload: p.Payload | None
) -> None:
    """Visit log: a note ("all fine" may skip it; "needs help" must say what is needed)."""
    assert ctx.person is not None
    text = (ctx.event.text or "").strip()
    skip = payload is not None and payload.action == "skip"
    outcome = str(data["outcome"])
    if outcome == VISIT_HELP and len(text) < 2:
        ctx.say("visit.ask_help", [cancel_row(ctx)])
        return
    if outcome == VISIT_FINE and not text and not skip:
        ctx.say("visit.ask_note", [skip_row(ctx)])
        return
    entry = await ctx.duties().log_visit(
        ctx.person, int(data["plan_id"]), outcome, None if skip else text
    )
    await ctx.end_conversation()
    if entry.order_id:
        # The number as every other message shows it (000012), not the bare row id.
        order = await ctx.session.get(Order, entry.order_id)
        assert order is not None
        ctx.say("visit.logged_help", number=number(order))
    else:
        ctx.say("visit.logged")


FLOWS: dict[str, FlowStep] = {
    Flow.CHECKIN: checkin_step,
    Flow.VISIT: visit_step,
    Flow.NOTICE: notice.confirm_step,
    **duty_lists.FLOWS,
}


def _fields(arg: str) -> list[str]:
    for sep in FIELD_SEPARATORS[1:]:
        arg = arg.replace(sep, FIELD_SEPARATORS[0])
    return [f.strip() for f in arg.split(FIELD_SEPARATORS[0])]


async def command(ctx: Ctx, name: str, arg: str) -> None:
    """/whistle, /notice (heads, admins), /household, /visitplan (workers, heads, admins)."""
    assert ctx.person is not None
    duties = ctx.duties()
    if name in ("whistle", "notice"):
        if not await ctx.has_role(ROLE_HEAD, ROLE_ADMIN):
            raise OrderError("whistle.not_allowed")
        if len(arg) < 2:
            ctx.say(f"{name}.usage")
            return
        if name == "whistle":
            await duties.blow_whistle(
                ctx.person, arg, (ctx.event.channel, ctx.event.chat_id)
            )
            ctx.toast = ctx.t("whistle.sent_short")
        else:
            await notice.ask(ctx, arg)
        return
    if not await ctx.has_role(ROLE_WORKER, ROLE_HEAD, ROLE_ADMIN):
        raise OrderError("error.not_a_manager")
    fields = _fields(arg)
    if name == "household":
        await duty_lists.household(ctx, fields)
    else:
        await duty_lists.visitplan(ctx, fields)
