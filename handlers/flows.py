"""Multi-step flows: placing an order, escalation reason, done note, revisit note.

Each step reads the flow's state from the database (``conversation``), so a restart or a second
instance continues where the user was. Free text where a button is expected is answered with the
same question again, and changes nothing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bot.core import cards
from bot.core import payloads as p
from bot.core.orders import NewOrder, OrderError, receipt_ref
from bot.ports import Button, Outbound
from handlers import bind, common, duties, profile
from handlers.context import (
    FLOW_BIND,
    FLOW_DONE,
    FLOW_ESCALATE,
    FLOW_ORDER,
    FLOW_PROFILE,
    FLOW_REVISIT,
    Ctx,
)
from models import Building, Category, Conversation, Role
from models.people import ROLE_RESIDENT

MIN_DESCRIPTION = 2


async def step(ctx: Ctx, conv: Conversation, payload: p.Payload | None = None) -> None:
    """Feed one event (text, photo, location or flow button) to the user's current flow."""
    if payload is None:
        payload = _typed_flow_button(ctx)
    if payload is not None and payload.action == "x":
        await ctx.end_conversation()
        ctx.say("flow.cancelled")
        ctx.toast = ctx.t("flow.cancelled")
        await common.show_menu(ctx)
        return
    handler = {
        FLOW_ORDER: order_step,
        FLOW_ESCALATE: escalate_step,
        FLOW_DONE: done_step,
        FLOW_REVISIT: revisit_step,
        **duties.FLOWS,
    }.get(conv.flow)
    if conv.flow == FLOW_BIND:
        await bind.step(ctx, conv.state, dict(conv.data), payload)
    elif conv.flow == FLOW_PROFILE:
        await profile.step(ctx, conv.state, payload)
    elif handler is not None:
        await handler(ctx, conv.state, dict(conv.data), payload)
    else:
        await ctx.end_conversation()
        await common.fallback(ctx)


def _typed_flow_button(ctx: Ctx) -> p.Payload | None:
    """A reply-keyboard tap (or typed label) of "skip"/"cancel" counts as the button."""
    text = (ctx.event.text or "").strip()
    if text and text in ctx.tr.all_variants("btn.skip"):
        return p.Payload("f", "skip")
    if text and text in ctx.tr.all_variants("btn.cancel_flow"):
        return p.Payload("f", "x")
    return None


# ---- placing an order ---------------------------------------------------------------------


async def start_order(ctx: Ctx) -> None:
    """Begin the order flow: a resident picks a category."""
    residence = next((r for r in await ctx.roles() if r.role == ROLE_RESIDENT), None)
    if residence is None or residence.building_id is None:
        raise OrderError("order.not_resident")
    await ctx.set_conversation(FLOW_ORDER, "category", {"role_id": residence.id})
    await _ask_category(ctx)


async def _ask_category(ctx: Ctx) -> None:
    categories = (
        await ctx.session.scalars(select(Category).order_by(Category.sort, Category.id))
    ).all()
    buttons = [
        Button(cards.category_name(ctx.tr, ctx.lang, c.code), p.flow("cat", c.code))
        for c in categories
    ]
    rows = [buttons[i : i + 2] for i in range(0, len(buttons), 2)]
    ctx.say("order.ask_category", [*rows, common.cancel_row(ctx)])


async def order_step(
    ctx: Ctx, state: str, data: dict[str, Any], payload: p.Payload | None
) -> None:
    """One step of placing an order."""
    ev = ctx.event
    text = (ev.text or "").strip()
    if state == "category":
        if payload is None or payload.action != "cat":
            await _ask_category(ctx)
            return
        category = await ctx.session.scalar(select(Category).where(Category.code == payload.arg))
        if category is None:
            raise OrderError("error.unknown_category")
        data["category"] = category.code
        await ctx.set_conversation(FLOW_ORDER, "description", data)
        ctx.say(
            "order.ask_description",
            [common.cancel_row(ctx)],
            category=cards.category_name(ctx.tr, ctx.lang, category.code),
        )
        return
    if state == "description":
        if ev.photo and not data.get("photo"):
            data["photo"] = ev.photo
        if len(text) < MIN_DESCRIPTION or payload is not None:
            await ctx.set_conversation(FLOW_ORDER, "description", data)
            ctx.say("order.ask_description_again", [common.cancel_row(ctx)])
            return
        data["description"] = text
        if data.get("photo"):
            await _ask_location(ctx, data)
        else:
            await ctx.set_conversation(FLOW_ORDER, "photo", data)
            ctx.say("order.ask_photo", [common.skip_row(ctx)])
        return
    if state == "photo":
        if ev.photo:
            data["photo"] = ev.photo
        elif ev.photo_lost:
            pass  # the resident was told the photo could not be kept: go on without it
        elif payload is None or payload.action != "skip":
            ctx.say("order.ask_photo_again", [common.skip_row(ctx)])
            return
        await _ask_location(ctx, data)
        return
    if state == "location":
        if ev.location:
            data["lat"], data["lon"] = ev.location
        elif payload is None or payload.action != "skip":
            ctx.reply(common.location_question(ctx, "order.ask_location_again"))
            return
        await _confirm(ctx, data)
        return
    if state == "confirm":
        if payload is None or payload.action != "ok":
            await _confirm(ctx, data)
            return
        await _submit(ctx, data)
        return
    raise OrderError("error.button_stale")


async def _ask_location(ctx: Ctx, data: dict[str, Any]) -> None:
    await ctx.set_conversation(FLOW_ORDER, "location", data)
    ctx.reply(common.location_question(ctx, "order.ask_location"))


async def _confirm(ctx: Ctx, data: dict[str, Any]) -> None:
    await ctx.set_conversation(FLOW_ORDER, "confirm", data)
    lines = [
        ctx.t("order.confirm_title"),
        ctx.t(
            "order.confirm_category",
            category=cards.category_name(ctx.tr, ctx.lang, data["category"]),
        ),
        ctx.t("order.confirm_description", text=data["description"]),
    ]
    if data.get("photo"):
        lines.append(ctx.t("card.has_photo"))
    if data.get("lat") is not None:
        lines.append(ctx.t("card.location", lat=f"{data['lat']:.5f}", lon=f"{data['lon']:.5f}"))
    ctx.reply(
        Outbound(
            "\n".join(lines),
            [[Button(ctx.t("btn.submit"), p.flow("ok")), *common.cancel_row(ctx)]],
            remove_menu=False,
        )
    )


async def _submit(ctx: Ctx, data: dict[str, Any]) -> None:
    assert ctx.person is not None
    role = await ctx.session.get(Role, int(data["role_id"]))
    if role is None or role.person_id != ctx.person.id or role.building_id is None:
        raise OrderError("order.not_resident")
    building = await ctx.session.get(Building, role.building_id)
    assert building is not None
    order = await ctx.orders.submit(
        ctx.person,
        building,
        role.room,
        NewOrder(
            category=data["category"],
            description=data["description"],
            photo=data.get("photo"),
            latitude=data.get("lat"),
            longitude=data.get("lon"),
        ),
    )
    await ctx.end_conversation()
    ctx.reply(
        Outbound(
            ctx.t("order.received", number=cards.number(order)),
            [[Button(ctx.t("btn.cancel_order"), p.order("cx", order.id))]],
        ),
        ref=receipt_ref(order.id),
    )
    # The location step replaced the menu keyboard: it comes back on the receipt.
    await common.show_menu(ctx)
    ctx.toast = ctx.t("order.received_short", number=cards.number(order))


# ---- short flows ---------------------------------------------------------------------------


async def escalate_step(
    ctx: Ctx, state: str, data: dict[str, Any], payload: p.Payload | None
) -> None:
    """The reason for an escalation, then escalate."""
    assert ctx.person is not None
    text = (ctx.event.text or "").strip()
    if payload is not None or len(text) < MIN_DESCRIPTION:
        ctx.say("dispatch.ask_reason", [common.cancel_row(ctx)])
        return
    try:
        order = await ctx.orders.escalate(ctx.person, int(data["order_id"]), text)
    except OrderError as refusal:
        refusal.end_flow = True  # the order changed meanwhile: another reason will not help
        raise
    await ctx.end_conversation()
    ctx.say("dispatch.escalated_ok", number=cards.number(order))


async def done_step(ctx: Ctx, state: str, data: dict[str, Any], payload: p.Payload | None) -> None:
    """An optional note and/or photo, then mark the order done."""
    assert ctx.person is not None
    ev = ctx.event
    text = (ev.text or "").strip() or None
    skip = payload is not None and payload.action == "skip"
    if not skip and not text and not ev.photo:
        ctx.say("member.ask_done_note", [common.skip_row(ctx)])
        return
    try:
        order = await ctx.orders.finish(
            ctx.person, int(data["order_id"]), None if skip else text, None if skip else ev.photo
        )
    except OrderError as refusal:
        refusal.end_flow = True
        raise
    await ctx.end_conversation()
    ctx.say("member.done_ok", number=cards.number(order))


async def revisit_step(
    ctx: Ctx, state: str, data: dict[str, Any], payload: p.Payload | None
) -> None:
    """What the head learnt on the follow-up call, then close the revisit."""
    assert ctx.person is not None
    text = (ctx.event.text or "").strip() or None
    skip = payload is not None and payload.action == "skip"
    if not skip and not text:
        ctx.say("revisit.ask_note", [common.skip_row(ctx)])
        return
    try:
        await ctx.orders.revisit_done(ctx.person, int(data["revisit_id"]), None if skip else text)
    except OrderError as refusal:
        refusal.end_flow = True
        raise
    await ctx.end_conversation()
    ctx.say("revisit.done_ok")
