"""Multi-step flows: placing an order, escalation reason, done note, revisit note.

Each step reads the flow's state from the database (``conversation``), so a restart or a second
instance continues where the user was. Free text where a button is expected is answered with the
same question again, and changes nothing.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from bot.core import cards
from bot.core import payloads as p
from bot.core.orders import NewOrder, OrderError
from bot.i18n import SUPPORTED
from bot.ports import Button, Outbound
from handlers import bind, common, duties, free_text, profile
from handlers.context import Ctx, Flow, FlowStep, Step, declared_step
from models import Building, Category, Conversation, Order, Person, Role, refs
from models.orders import OPEN_STATES
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
    steps: dict[str, FlowStep] = {
        Flow.BIND: bind.step,
        Flow.PROFILE: _profile_step,
        Flow.ORDER: order_step,
        Flow.ESCALATE: escalate_step,
        Flow.DONE: done_step,
        Flow.REVISIT: revisit_step,
        **duties.FLOWS,
    }
    handler = steps.get(conv.flow)
    if handler is not None and declared_step(conv.flow, conv.state):
        await handler(ctx, conv.state, dict(conv.data), payload)
    else:  # a flow or step no longer declared (a row from another version): start afresh
        await ctx.end_conversation()
        await common.fallback(ctx)


async def _profile_step(
    ctx: Ctx, state: str, data: dict[str, Any], payload: p.Payload | None
) -> None:
    await profile.step(ctx, state, payload)  # /me keeps nothing in the conversation's data


def _typed_flow_button(ctx: Ctx) -> p.Payload | None:
    """A reply-keyboard tap (or typed label) of "skip"/"cancel" counts as the button."""
    text = (ctx.event.text or "").strip()
    if text and text in ctx.tr.all_variants("btn.skip"):
        return p.Payload(p.PayloadKind.FLOW, "skip")
    if text and text in ctx.tr.all_variants("btn.cancel_flow"):
        return p.Payload(p.PayloadKind.FLOW, "x")
    return None


# ---- placing an order ---------------------------------------------------------------------

#: Flow buttons that finish an order's confirmation; their argument names the confirmation
#: (``key``), so that a press of an old one is told what came of it (:func:`finished`).
FINISHING = ("ok", "new", "same")


def new_key() -> str:
    """A fresh name for one order being placed (its confirmation buttons carry it)."""
    return secrets.token_hex(8)


async def _residence(ctx: Ctx) -> Role:
    residence = next((r for r in await ctx.roles() if r.role == ROLE_RESIDENT), None)
    if residence is None or residence.building_id is None:
        raise OrderError("order.not_resident")
    return residence


async def start_order(ctx: Ctx) -> None:
    """Begin the order flow: a resident picks a category."""
    residence = await _residence(ctx)
    await ctx.set_conversation(
        Flow.ORDER, Step.CATEGORY, {"role_id": residence.id, "key": new_key()}
    )
    await _ask_category(ctx)


async def is_resident(ctx: Ctx) -> bool:
    """Whether the sender may place orders (a resident with an address)."""
    return any(r.role == ROLE_RESIDENT and r.building_id for r in await ctx.roles())


async def start_from_message(ctx: Ctx) -> None:
    """A resident wrote (or sent a photo or a voice message) outside any flow: that is the
    problem. It becomes the description of a new order; a category is proposed from the words
    to confirm (or asked when none matches), then the flow goes on as usual."""
    ev = ctx.event
    residence = await _residence(ctx)
    text = (ev.text or "").strip()
    if len(text) < MIN_DESCRIPTION:
        text = ctx.t("order.voice_only" if ev.voice and not ev.photo else "order.photo_only")
    data: dict[str, Any] = {"role_id": residence.id, "key": new_key(), "description": text}
    if ev.photo:
        data["photo"] = ev.photo
    if ev.voice:
        data["voice"] = ev.voice
    categories = (
        await ctx.session.scalars(select(Category).order_by(Category.sort, Category.id))
    ).all()
    guess = None
    if ev.text and len(ev.text.strip()) >= MIN_DESCRIPTION:
        guess = free_text.guess_category(
            ev.text,
            [
                (
                    c.code,
                    [
                        *free_text.split_keywords(c.keywords),
                        *{cards.category_name(ctx.tr, lang, c.code) for lang in SUPPORTED},
                    ],
                )
                for c in categories
            ],
        )
    await ctx.set_conversation(Flow.ORDER, Step.CATEGORY, data)
    if guess is None:
        # One message (WeChat's passive reply carries one): what we heard, and the question.
        await _ask_category(ctx, ctx.t("order.started", description=_quote(text)))
        return
    name = cards.category_name(ctx.tr, ctx.lang, guess)
    others = [
        Button(cards.category_name(ctx.tr, ctx.lang, c.code), p.flow("cat", c.code))
        for c in categories
        if c.code != guess
    ]
    rows = [
        [Button(ctx.t("btn.category_yes", category=name), p.flow("cat", guess))],
        *[others[i : i + 2] for i in range(0, len(others), 2)],
        common.cancel_row(ctx),
    ]
    ctx.say("order.propose_category", rows, description=_quote(text), category=name)


def _quote(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _ask_category(ctx: Ctx, intro: str | None = None) -> None:
    categories = (
        await ctx.session.scalars(select(Category).order_by(Category.sort, Category.id))
    ).all()
    buttons = [
        Button(cards.category_name(ctx.tr, ctx.lang, c.code), p.flow("cat", c.code))
        for c in categories
    ]
    rows = [buttons[i : i + 2] for i in range(0, len(buttons), 2)]
    question = ctx.t("order.ask_category")
    ctx.reply(f"{intro}\n{question}" if intro else question, [*rows, common.cancel_row(ctx)])


async def order_step(
    ctx: Ctx, state: str, data: dict[str, Any], payload: p.Payload | None
) -> None:
    """One step of placing an order."""
    ev = ctx.event
    text = (ev.text or "").strip()
    if payload is not None and payload.action == "cat" and state != Step.CATEGORY:
        # A category button of an earlier question: the resident changes their mind. Say
        # so, and ask the current step again (never keep the old category silently).
        code = await _category(ctx, payload.arg)
        data["category"] = code
        await ctx.set_conversation(Flow.ORDER, Step(state), data)
        ctx.say("order.category_changed", category=cards.category_name(ctx.tr, ctx.lang, code))
        await _ask_again(ctx, state, data)
        return
    if state == Step.CATEGORY:
        if payload is None or payload.action != "cat":
            await _ask_category(ctx)
            return
        data["category"] = await _category(ctx, payload.arg)
        if data.get("description"):  # started from the resident's own words
            await _after_description(ctx, data)
            return
        await ctx.set_conversation(Flow.ORDER, Step.DESCRIPTION, data)
        ctx.say(
            "order.ask_description",
            [common.cancel_row(ctx)],
            category=cards.category_name(ctx.tr, ctx.lang, data["category"]),
        )
        return
    if state == Step.DESCRIPTION:
        if ev.photo and not data.get("photo"):
            data["photo"] = ev.photo
        if ev.voice and not data.get("voice"):
            data["voice"] = ev.voice
        if ev.voice and len(text) < MIN_DESCRIPTION:
            text = ctx.t("order.voice_only")
        if len(text) < MIN_DESCRIPTION or payload is not None:
            await ctx.set_conversation(Flow.ORDER, Step.DESCRIPTION, data)
            ctx.say("order.ask_description_again", [common.cancel_row(ctx)])
            return
        data["description"] = text
        await _after_description(ctx, data)
        return
    if state == Step.PHOTO:
        if ev.photo:
            data["photo"] = ev.photo
        elif ev.voice:
            data["voice"] = ev.voice  # kept; a photo is still welcome
            await ctx.set_conversation(Flow.ORDER, Step.PHOTO, data)
            ctx.say("order.ask_photo_again", [common.skip_row(ctx)])
            return
        elif ev.photo_lost:
            pass  # the resident was told the photo could not be kept: go on without it
        elif payload is None or payload.action != "skip":
            ctx.say("order.ask_photo_again", [common.skip_row(ctx)])
            return
        await _ask_location(ctx, data)
        return
    if state == Step.LOCATION:
        if ev.location:
            data["lat"], data["lon"] = ev.location
        elif payload is None or payload.action != "skip":
            ctx.reply(common.location_question(ctx, "order.ask_location_again"))
            return
        await _confirm(ctx, data)
        return
    if state == Step.CONFIRM:
        if payload is None or payload.action != "ok":
            await _confirm(ctx, data)
            return
        if not await _ask_if_duplicate(ctx, data):
            await _submit(ctx, data)
        return
    if state == Step.DUPLICATE:
        if payload is not None and payload.action == "new":
            await _submit(ctx, data)
        elif payload is not None and payload.action == "same":
            await _same_as(ctx, data)
        else:
            await _ask_duplicate(ctx, data)
        return
    raise OrderError("error.button_stale")


async def _category(ctx: Ctx, code: str | None) -> str:
    category = await ctx.session.scalar(select(Category).where(Category.code == code))
    if category is None:
        raise OrderError("error.unknown_category")
    return category.code


async def _after_description(ctx: Ctx, data: dict[str, Any]) -> None:
    if data.get("photo"):
        await _ask_location(ctx, data)
    else:
        await ctx.set_conversation(Flow.ORDER, Step.PHOTO, data)
        ctx.say("order.ask_photo", [common.skip_row(ctx)])


async def _ask_again(ctx: Ctx, state: str, data: dict[str, Any]) -> None:
    """The question of ``state`` once more (after the category changed)."""
    if state == Step.DESCRIPTION:
        ctx.say(
            "order.ask_description",
            [common.cancel_row(ctx)],
            category=cards.category_name(ctx.tr, ctx.lang, data["category"]),
        )
    elif state == Step.PHOTO:
        ctx.say("order.ask_photo", [common.skip_row(ctx)])
    elif state == Step.LOCATION:
        ctx.reply(common.location_question(ctx, "order.ask_location"))
    elif state == Step.DUPLICATE:
        await _ask_duplicate(ctx, data)
    else:
        await _confirm(ctx, data)


async def _ask_location(ctx: Ctx, data: dict[str, Any]) -> None:
    await ctx.set_conversation(Flow.ORDER, Step.LOCATION, data)
    ctx.reply(common.location_question(ctx, "order.ask_location"))


def _summary_lines(ctx: Ctx, data: dict[str, Any]) -> list[str]:
    lines = [
        ctx.t(
            "order.confirm_category",
            category=cards.category_name(ctx.tr, ctx.lang, data["category"]),
        ),
        ctx.t("order.confirm_description", text=data["description"]),
    ]
    if data.get("photo"):
        lines.append(ctx.t("card.has_photo"))
    if data.get("voice"):
        lines.append(ctx.t("card.has_voice"))
    if data.get("lat") is not None:
        lines.append(ctx.t("card.location", lat=f"{data['lat']:.5f}", lon=f"{data['lon']:.5f}"))
    return lines


def _confirm_ref(data: dict[str, Any]) -> str | None:
    """Outbox ref of the confirmation (edited once it is answered: no live buttons stay)."""
    return refs.confirm(data["key"]) if data.get("key") else None


def _question_ref(data: dict[str, Any]) -> str | None:
    """Outbox ref of the "same thing?" question (edited once it is answered, too)."""
    return refs.duplicate_question(data["key"]) if data.get("key") else None


async def _confirm(ctx: Ctx, data: dict[str, Any]) -> None:
    await ctx.set_conversation(Flow.ORDER, Step.CONFIRM, data)
    lines = [ctx.t("order.confirm_title"), *_summary_lines(ctx, data)]
    ctx.reply(
        Outbound(
            "\n".join(lines),
            [[Button(ctx.t("btn.submit"), p.flow("ok", data.get("key"))),
              *common.cancel_row(ctx)]],
            remove_menu=False,
        ),
        ref=_confirm_ref(data),
    )


async def _close_confirmation(ctx: Ctx, data: dict[str, Any], key: str, **args: str) -> None:
    """Edit the answered confirmation (and the "same thing?" question, if it was asked): its
    summary and what came of it, no buttons left."""
    ref = _confirm_ref(data)
    if ref is None or ctx.person is None:
        return
    summary = _summary_lines(ctx, data)

    def render(lang: str) -> Outbound:
        return Outbound("\n".join([*summary, "", ctx.tr.t(lang, key, **args)]))

    await ctx.notify.edit_for_person(ctx.person.id, ref, render)
    if data.get("dup_of"):
        question = _question_ref(data)
        assert question is not None
        await ctx.notify.edit_for_person(ctx.person.id, question, render)


async def _role_building(ctx: Ctx, data: dict[str, Any]) -> tuple[Role, Building]:
    assert ctx.person is not None
    role = await ctx.session.get(Role, int(data["role_id"]))
    if role is None or role.person_id != ctx.person.id or role.building_id is None:
        raise OrderError("order.not_resident")
    building = await ctx.session.get(Building, role.building_id)
    assert building is not None
    return role, building


async def _ask_if_duplicate(ctx: Ctx, data: dict[str, Any]) -> bool:
    """Before a second order like one still open: ask whether it is the same thing. True when
    the question was asked (nothing is stored yet)."""
    assert ctx.person is not None
    window = ctx.settings.duplicate_window_minutes
    if window <= 0:
        return False
    _, building = await _role_building(ctx, data)
    # One person's submissions one after the other, whatever chat they come from (PostgreSQL
    # locks the row; SQLite runs one writer at a time): two submits at once cannot both miss
    # each other's order.
    await ctx.session.execute(
        select(Person.id).where(Person.id == ctx.person.id).with_for_update()
    )
    earlier = await ctx.session.scalar(
        select(Order)
        .where(
            Order.resident_id == ctx.person.id,
            Order.category == data["category"],
            Order.building_id == building.id,
            Order.status.in_(OPEN_STATES),
            Order.created_at >= ctx.now - timedelta(minutes=window),
        )
        .order_by(Order.id.desc())
        .limit(1)
    )
    if earlier is None:
        return False
    data["dup_of"] = earlier.id
    await _ask_duplicate(ctx, data)
    return True


async def _ask_duplicate(ctx: Ctx, data: dict[str, Any]) -> None:
    earlier = await ctx.orders.get(int(data["dup_of"]))
    await ctx.set_conversation(Flow.ORDER, Step.DUPLICATE, data)
    minutes = max(1, int((ctx.now - _aware(earlier.created_at, ctx.now)).total_seconds() // 60))
    key = data.get("key") or ""
    ctx.reply(
        ctx.t(
            "order.duplicate_ask",
            minutes=str(minutes),
            number=cards.number(earlier),
            status=cards.status_name(ctx.tr, ctx.lang, earlier.status),
            description=_quote(earlier.description),
        ),
        [
            [
                Button(ctx.t("btn.same_order"), p.flow("same", f"{earlier.id}-{key}")),
                Button(ctx.t("btn.another_order"), p.flow("new", key or None)),
            ],
            common.cancel_row(ctx),
        ],
        ref=_question_ref(data),
    )


def _aware(moment: datetime, like: datetime) -> datetime:
    """``moment`` comparable with ``like`` (SQLite returns naive UTC datetimes)."""
    if moment.tzinfo is None and like.tzinfo is not None:
        return moment.replace(tzinfo=UTC)
    return moment


async def _same_as(ctx: Ctx, data: dict[str, Any]) -> None:
    """The resident says it is the same thing: nothing new is created; what they wrote this
    time is kept on the earlier order as a note, and they are told where it stands."""
    assert ctx.person is not None
    earlier = await ctx.orders.get(int(data["dup_of"]))
    if earlier.resident_id != ctx.person.id:
        raise OrderError("error.not_your_button")
    await ctx.orders.add_note(
        earlier,
        ctx.person.id,
        data["description"],
        photo=data.get("photo"),
        voice=data.get("voice"),
    )
    await ctx.end_conversation()
    args = {
        "number": cards.number(earlier),
        "status": cards.status_name(ctx.tr, ctx.lang, earlier.status),
    }
    await _close_confirmation(ctx, data, "order.same_done", **args)
    ctx.say("order.same_done", None, **args)
    ctx.toast = ctx.t("order.same_done_short", number=args["number"])


async def _submit(ctx: Ctx, data: dict[str, Any]) -> None:
    assert ctx.person is not None
    role, building = await _role_building(ctx, data)
    order = await ctx.orders.submit(
        ctx.person,
        building,
        role.room,
        NewOrder(
            category=data["category"],
            description=data["description"],
            photo=data.get("photo"),
            voice=data.get("voice"),
            latitude=data.get("lat"),
            longitude=data.get("lon"),
            submit_key=data.get("key"),
        ),
    )
    await ctx.end_conversation()
    await _close_confirmation(
        ctx, data, "order.received_short", number=cards.number(order)
    )
    ctx.reply(
        Outbound(
            ctx.t("order.received", number=cards.number(order)),
            [[Button(ctx.t("btn.cancel_order"), p.order("cx", order.id))]],
        ),
        ref=refs.receipt(order.id),
    )
    # The location step replaced the menu keyboard: it comes back on the receipt.
    await common.show_menu(ctx)
    ctx.toast = ctx.t("order.received_short", number=cards.number(order))


def confirmation_key(payload: p.Payload) -> str | None:
    """The confirmation a finishing button belongs to (``None``: an old button without one)."""
    if payload.action not in FINISHING or not payload.arg:
        return None
    return payload.arg.rsplit("-", 1)[-1] if payload.action == "same" else payload.arg


def belongs(conv: Conversation, payload: p.Payload) -> bool:
    """Whether a flow button is one of the current conversation's (a confirmation's button
    names its order-to-be; one of an earlier, finished or cancelled, confirmation does not
    belong to the order being placed now)."""
    key = confirmation_key(payload)
    if key is None:
        return True
    return conv.flow == Flow.ORDER and (conv.data or {}).get("key") == key


async def finished(ctx: Ctx, payload: p.Payload) -> bool:
    """A finishing button pressed again after its confirmation was answered: say what came
    of it (the order's number and state) rather than "expired". False when nothing came of it
    (the flow was cancelled)."""
    assert ctx.person is not None
    key = confirmation_key(payload)
    if key is None:
        return False
    order = await ctx.session.scalar(
        select(Order).where(Order.resident_id == ctx.person.id, Order.submit_key == key)
    )
    if order is not None:
        args = {
            "number": cards.number(order),
            "status": cards.status_name(ctx.tr, ctx.lang, order.status),
        }
        ctx.say("order.already_submitted", None, **args)
        ctx.toast = ctx.t("order.already_submitted", **args)
        return True
    if payload.action == "same" and payload.arg and payload.arg.split("-", 1)[0].isdigit():
        earlier = await ctx.session.get(Order, int(payload.arg.split("-", 1)[0]))
        if earlier is not None and earlier.resident_id == ctx.person.id:
            args = {
                "number": cards.number(earlier),
                "status": cards.status_name(ctx.tr, ctx.lang, earlier.status),
            }
            ctx.say("order.same_done", None, **args)
            ctx.toast = ctx.t("order.same_done_short", number=args["number"])
            return True
    return False


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
