"""Order buttons: dispatch (assign, broadcast, handle, escalate), accept/decline, done, rate,
cancel, revisit. Every press is authorised against the order on the server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import select

from bot.core import cards
from bot.core import payloads as p
from bot.core.orders import REVISIT_AT_OR_BELOW, OrderError
from bot.core.responsibility import can_manage
from bot.ports import Button, Outbound
from handlers.context import Ctx, Flow, Step
from models import Grid, Offer, Person, Revisit, refs
from models.orders import AWAITING_DISPATCH, DISPATCHED, DONE


async def _order_action(ctx: Ctx, payload: p.Payload) -> None:
    """``o:<action>:<order>``: the function :data:`BY_ACTION` names for the action."""
    assert ctx.person is not None and payload.id is not None
    act = BY_ACTION.get(payload.action)
    if act is None:  # pragma: no cover - parse() only lets known actions through
        raise OrderError("error.button_invalid")
    await act(ctx, ctx.person, payload.id)


async def _assign(ctx: Ctx, payload: p.Payload) -> None:
    person = _person(ctx)
    assert payload.id is not None
    order = await ctx.orders.assign(person, payload.id, int(payload.arg or 0))
    member = await ctx.session.get(Person, int(payload.arg or 0))
    ctx.toast = ctx.t("dispatch.assigned_short")
    ctx.say("dispatch.assigned", number=cards.number(order), name=member.name if member else "-")


async def _rate(ctx: Ctx, payload: p.Payload) -> None:
    person = _person(ctx)
    assert payload.id is not None
    stars = int(payload.arg or 0)
    # The thanks goes first, ahead of the receipt's edit and the member's news: a refused
    # rating rolls it back with everything else.
    follow_up = "resident.rated_revisit" if stars <= REVISIT_AT_OR_BELOW else "resident.rated"
    ctx.say(follow_up, stars="★" * stars)
    await ctx.orders.rate(person, payload.id, stars)
    ctx.toast = ctx.t("resident.rated_short")


async def _revisit(ctx: Ctx, payload: p.Payload) -> None:
    person = _person(ctx)
    revisit = await ctx.session.get(Revisit, payload.id)
    if revisit is None or revisit.status != "open":
        raise OrderError("error.revisit_done_already")
    grid = await ctx.session.get(Grid, revisit.grid_id)
    if grid is None or not await can_manage(ctx.session, person.id, grid):
        raise OrderError("error.not_your_button")
    await ctx.set_conversation(Flow.REVISIT, Step.NOTE, {"revisit_id": revisit.id})
    ctx.say("revisit.ask_note", [_skip_or_cancel(ctx)])


def _person(ctx: Ctx) -> Person:
    assert ctx.person is not None  # the intake answers buttons of bound people only
    return ctx.person


def _skip_or_cancel(ctx: Ctx) -> list[Button]:
    """The row under a note question: skip the note, or leave the flow."""
    return [
        Button(ctx.t("btn.skip"), p.flow("skip")),
        Button(ctx.t("btn.cancel_flow"), p.flow("x")),
    ]


async def _pick_member(ctx: Ctx, person: Person, oid: int) -> None:
    order, members = await ctx.orders.assignable(person, oid)
    if not members:
        raise OrderError("error.no_members")
    rows = [
        [
            Button(
                ctx.t("dispatch.member_label", name=m.name, load=str(m.open_orders)),
                p.assign(oid, m.person_id),
            )
        ]
        for m in members
    ]
    ctx.say("dispatch.pick_member", rows, number=cards.number(order))


async def _broadcast(ctx: Ctx, person: Person, oid: int) -> None:
    order, reached = await ctx.orders.broadcast(person, oid)
    ctx.toast = ctx.t("dispatch.broadcast_short")
    ctx.say("dispatch.broadcast_ok", number=cards.number(order), count=str(reached))


async def _handle_myself(ctx: Ctx, person: Person, oid: int) -> None:
    await ctx.orders.handle_self(person, oid)
    ctx.toast = ctx.t("dispatch.handle_short")


async def _escalate(ctx: Ctx, person: Person, oid: int) -> None:
    await ctx.orders.escalation_check(person, oid)
    await ctx.set_conversation(Flow.ESCALATE, Step.REASON, {"order_id": oid})
    ctx.say("dispatch.ask_reason", [[Button(ctx.t("btn.cancel_flow"), p.flow("x"))]])


async def _accept(ctx: Ctx, person: Person, oid: int) -> None:
    order = await ctx.orders.accept(person, oid)
    ctx.toast = ctx.t("member.accept_short", number=cards.number(order))


async def _decline(ctx: Ctx, person: Person, oid: int) -> None:
    await ctx.orders.decline(person, oid)
    ctx.toast = ctx.t("member.declined_short")


async def _done(ctx: Ctx, person: Person, oid: int) -> None:
    await ctx.orders.start_done(person, oid)
    await ctx.set_conversation(Flow.DONE, Step.NOTE, {"order_id": oid})
    ctx.say("member.ask_done_note", [_skip_or_cancel(ctx)])


async def _not_solved(ctx: Ctx, person: Person, oid: int) -> None:
    order = await ctx.orders.not_solved(person, oid)
    ctx.say("resident.reopened", number=cards.number(order))


async def _ask_cancel(ctx: Ctx, person: Person, oid: int) -> None:
    order = await ctx.orders.cancel_check(person, oid)
    ctx.reply(
        ctx.t("resident.confirm_cancel", number=cards.number(order)),
        [
            [
                Button(ctx.t("btn.confirm_cancel"), p.order("cxy", oid)),
                Button(ctx.t("btn.keep_order"), p.order("view", oid)),
            ]
        ],
        ref=refs.cancel_ask(oid),
    )


async def _cancel(ctx: Ctx, person: Person, oid: int) -> None:
    order = await ctx.orders.cancel(person, oid)
    ctx.toast = ctx.t("resident.cancelled_short")
    # The question loses its buttons (where the platform can edit): nothing to press twice.
    await ctx.notify.edit_for_person(
        person.id,
        refs.cancel_ask(oid),
        lambda lang: Outbound(ctx.tr.t(lang, "resident.cancelled", number=cards.number(order))),
    )
    ctx.say("resident.cancelled", number=cards.number(order))


async def _view(ctx: Ctx, person: Person, oid: int) -> None:
    await show_order(ctx, oid)


#: What each ``o:<action>:<order>`` button does (every action of ``payloads.ORDER_ACTIONS``).
BY_ACTION: dict[str, Callable[[Ctx, Person, int], Awaitable[None]]] = {
    "as": _pick_member,
    "bc": _broadcast,
    "me": _handle_myself,
    "esc": _escalate,
    "acc": _accept,
    "dec": _decline,
    "done": _done,
    "ns": _not_solved,
    "cx": _ask_cancel,
    "cxy": _cancel,
    "view": _view,
}
#: The order buttons, by kind (combined with the duty buttons in the intake's table).
BUTTONS: dict[p.PayloadKind, Callable[[Ctx, p.Payload], Awaitable[None]]] = {
    p.PayloadKind.ORDER: _order_action,
    p.PayloadKind.ASSIGN: _assign,
    p.PayloadKind.RATE: _rate,
    p.PayloadKind.REVISIT: _revisit,
}


async def show_order(ctx: Ctx, order_id: int) -> None:
    """Show one order to whoever may see it, with the buttons their part allows."""
    assert ctx.person is not None
    order = await ctx.orders.get(order_id)
    view = await ctx.orders.view(order)
    lang, tr, me = ctx.lang, ctx.tr, ctx.person.id
    grid = await ctx.session.get(Grid, order.handling_grid_id)
    assert grid is not None
    if order.resident_id == me:
        buttons = []
        if order.status in (*AWAITING_DISPATCH, DISPATCHED):
            buttons = [[Button(ctx.t("btn.cancel_order"), p.order("cx", order.id))]]
        if order.status == DONE:
            ctx.reply(cards.rating_card(tr, lang, view))
            return
        ctx.reply(Outbound(cards.card_text(tr, lang, view, contact=False, full=True), buttons))
    elif order.assignee_id == me and order.status == "accepted":
        ctx.reply(cards.assignee_card(tr, lang, view, "member.your_task"))
    elif await can_manage(ctx.session, me, grid):
        if order.status in AWAITING_DISPATCH:
            ctx.reply(cards.dispatch_card(tr, lang, view))
        else:
            ctx.reply(Outbound(cards.card_text(tr, lang, view, contact=True, full=True)))
    else:
        offer = await ctx.session.scalar(
            select(Offer.id).where(
                Offer.order_id == order.id, Offer.person_id == me, Offer.status == "open"
            )
        )
        if offer is None:
            raise OrderError("error.not_your_button")
        ctx.reply(cards.offer_card(tr, lang, view, assigned=False))
