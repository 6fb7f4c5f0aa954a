"""``/household`` and ``/visitplan`` as people write them: building and household by name,
kinds and frequencies in Chinese (or by code). What is ambiguous or missing is asked with
buttons; the command's other fields wait in the conversation row meanwhile. A pick is only
taken from the choices offered (kept with the question), so a forged or old button changes
nothing."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from bot.core import duty_names as names
from bot.core import payloads as p
from bot.core.orders import OrderError
from bot.ports import Button
from handlers.common import cancel_row
from handlers.context import Ctx, Flow, FlowStep, Step
from models import Building, Grid, Household, Person, Role, VisitPlan
from models.duties import FREQUENCIES, HOUSEHOLD_KINDS
from models.people import ROLE_MEMBER

#: Offer every building one looks after when a name matches none, if they are this few.
ALL_BUILDINGS_UP_TO = 12


async def _ask(
    ctx: Ctx,
    flow: Flow,
    state: Step,
    data: dict[str, Any],
    key: str,
    choices: list[tuple[str, str]],
    **args: str,
) -> None:
    """Ask to pick one of ``choices`` ((label, arg) pairs): one button per row, and cancel."""
    data = {**data, "choices": [arg for _, arg in choices]}
    await ctx.set_conversation(flow, state, data)
    rows = [[Button(label, p.flow("pick", arg))] for label, arg in choices]
    ctx.say(key, [*rows, cancel_row(ctx)], **args)


def _picked(data: dict[str, Any], payload: p.Payload | None) -> str | None:
    """The choice a pick button names, if it is one of those offered; ``None`` for typed text."""
    if payload is None:
        return None
    if payload.action != "pick" or payload.arg not in data.get("choices", []):
        raise OrderError("duty.pick_stale")
    return payload.arg


async def _grid_name(ctx: Ctx, grid_id: int) -> str:
    grid = await ctx.session.get(Grid, grid_id)
    return grid.name if grid else "-"


# ---- /household building | kind | name | address | notes ------------------------------------


async def household(ctx: Ctx, fields: list[str]) -> None:
    """Start /household: resolve the building, then the kind, then add."""
    if len(fields) < 4 or not fields[0] or not fields[2]:
        ctx.say("household.usage")
        return
    building, kind, who, address, *rest = fields
    data: dict[str, Any] = {
        "kind_text": kind,
        "name": who,
        "address": address,
        "notes": rest[0] if rest else "",
    }
    await _household_building(ctx, data, building)


async def _household_building(ctx: Ctx, data: dict[str, Any], text: str) -> None:
    assert ctx.person is not None
    found = await names.find_building(ctx.session, ctx.person.id, text)
    if found.one is not None:
        data["building_id"] = found.one.id
        await _household_kind(ctx, data)
        return
    choices = found.choices
    key = "duty.pick_building"
    if not choices:
        choices = await names.buildings_of(ctx.session, ctx.person.id, ALL_BUILDINGS_UP_TO)
        key = "duty.pick_building_all"
        if not choices:
            raise OrderError("duty.unknown_building_named", text=text[:32])
    options = [
        (ctx.t("duty.building_label", name=b.name, grid=await _grid_name(ctx, b.grid_id)),
         f"b{b.id}")
        for b in choices
    ]
    await _ask(ctx, Flow.HOUSEHOLD, Step.BUILDING, data, key, options, text=text[:32])


async def _household_kind(ctx: Ctx, data: dict[str, Any]) -> None:
    if not data.get("kind"):
        text = str(data.get("kind_text") or "")
        code = names.kind_code(text, ctx.tr) if text else None
        if code is None:
            options = [(ctx.t(f"household.kind.{k}"), k) for k in HOUSEHOLD_KINDS]
            key = "duty.pick_kind_unknown" if text else "duty.pick_kind"
            await _ask(ctx, Flow.HOUSEHOLD, Step.KIND, data, key, options, text=text[:20])
            return
        data["kind"] = code
    await _household_add(ctx, data)


async def _household_add(ctx: Ctx, data: dict[str, Any]) -> None:
    assert ctx.person is not None
    building = await ctx.session.get(Building, int(data["building_id"]))
    assert building is not None
    added = await ctx.duties().add_household(
        ctx.person, building.code, str(data["kind"]), str(data["name"]),
        str(data["address"]), str(data["notes"]),
    )
    await ctx.end_conversation()
    ctx.reply(
        ctx.t("household.added", code=added.code, name=added.name)
        + "\n"
        + ctx.t("household.added_where", building=building.name,
                kind=ctx.t(f"household.kind.{added.kind}"))
    )


async def household_step(
    ctx: Ctx, state: str, data: dict[str, Any], payload: p.Payload | None
) -> None:
    """A pick (or a typed answer) to the building or kind question."""
    picked = _picked(data, payload)
    text = (ctx.event.text or "").strip()
    if state == Step.BUILDING:
        if picked is not None:
            data["building_id"] = int(picked[1:])
            await _household_kind(ctx, data)
        elif text:
            await _household_building(ctx, data, text)
        return
    if picked is not None:
        data["kind"] = picked
    elif text:
        data["kind_text"] = text
    await _household_kind(ctx, data)


# ---- /visitplan household | member | frequency --------------------------------------------


async def visitplan(ctx: Ctx, fields: list[str]) -> None:
    """Start /visitplan: resolve the household, the member, the frequency, then add."""
    if len(fields) < 2 or not fields[0] or not fields[1]:
        ctx.say("visitplan.usage")
        return
    data: dict[str, Any] = {
        "member_text": fields[1],
        "frequency_text": fields[2] if len(fields) > 2 else "",
    }
    await _plan_household(ctx, data, fields[0])


async def _plan_household(ctx: Ctx, data: dict[str, Any], text: str) -> None:
    assert ctx.person is not None
    found = await names.find_household(ctx.session, ctx.person.id, text)
    if found.one is not None:
        data["household_id"] = found.one.id
        await _plan_member(ctx, data)
        return
    if not found.choices:
        raise OrderError("duty.unknown_household_named", text=text[:32])
    options = []
    for h in found.choices:
        building = await ctx.session.get(Building, h.building_id)
        label = ctx.t("duty.household_label", name=h.name,
                      building=building.name if building else "-")
        options.append((label, f"h{h.id}"))
    await _ask(ctx, Flow.VISITPLAN, Step.HOUSEHOLD, data, "duty.pick_household", options,
               text=text[:32])


async def _plan_member(ctx: Ctx, data: dict[str, Any]) -> None:
    assert ctx.person is not None
    if not data.get("member_id"):
        text = str(data["member_text"])
        found = await names.find_member(ctx.session, ctx.person.id, text)
        if found.one is None:
            if not found.choices:
                raise OrderError("duty.unknown_member", name=text[:32])
            options = []
            for m in found.choices:
                grid_id = await ctx.session.scalar(
                    select(Role.grid_id)
                    .where(Role.person_id == m.id, Role.role == ROLE_MEMBER)
                    .order_by(Role.id)
                    .limit(1)
                )
                where = await _grid_name(ctx, grid_id) if grid_id else "-"
                options.append((ctx.t("duty.member_label", name=m.name, grid=where),
                                f"m{m.id}"))
            await _ask(ctx, Flow.VISITPLAN, Step.MEMBER, data, "duty.pick_member", options,
                       text=text[:32])
            return
        data["member_id"] = found.one.id
    await _plan_frequency(ctx, data)


async def _plan_frequency(ctx: Ctx, data: dict[str, Any]) -> None:
    if not data.get("frequency"):
        text = str(data.get("frequency_text") or "")
        code = names.frequency_code(text, ctx.tr) if text else None
        if code is None:
            options = [(ctx.t(f"frequency.{f}"), f) for f in FREQUENCIES]
            key = "duty.pick_frequency_unknown" if text else "duty.pick_frequency"
            await _ask(ctx, Flow.VISITPLAN, Step.FREQUENCY, data, key, options, text=text[:20])
            return
        data["frequency"] = code
    await _plan_add(ctx, data)


async def _plan_add(ctx: Ctx, data: dict[str, Any]) -> None:
    assert ctx.person is not None
    household_row = await ctx.session.get(Household, int(data["household_id"]))
    member = await ctx.session.get(Person, int(data["member_id"]))
    if household_row is None or member is None:
        raise OrderError("duty.pick_stale")
    existing = await ctx.session.scalar(
        select(VisitPlan.id).where(
            VisitPlan.household_id == household_row.id, VisitPlan.member_id == member.id
        )
    )
    if existing is not None:
        raise OrderError("visitplan.exists", name=member.name, household=household_row.name)
    starts = next_morning(ctx.now, ctx)
    plan = await ctx.duties().add_visit_plan(
        ctx.person, household_row.code, member, str(data["frequency"]), starts
    )
    await ctx.end_conversation()
    ctx.say(
        "visitplan.added_who",
        member=member.name,
        household=household_row.name,
        frequency=ctx.t(f"frequency.{plan.frequency}"),
        date=starts.astimezone(ctx.settings.tz).strftime("%m-%d %H:%M"),
    )


async def visitplan_step(
    ctx: Ctx, state: str, data: dict[str, Any], payload: p.Payload | None
) -> None:
    """A pick (or a typed answer) to the household, member or frequency question."""
    picked = _picked(data, payload)
    text = (ctx.event.text or "").strip()
    if state == Step.HOUSEHOLD:
        if picked is not None:
            data["household_id"] = int(picked[1:])
            await _plan_member(ctx, data)
        elif text:
            await _plan_household(ctx, data, text)
        return
    if state == Step.MEMBER:
        if picked is not None:
            data["member_id"] = int(picked[1:])
        elif text:
            data["member_text"] = text
        await _plan_member(ctx, data)
        return
    if picked is not None:
        data["frequency"] = picked
    elif text:
        data["frequency_text"] = text
    await _plan_frequency(ctx, data)


FLOWS: dict[str, FlowStep] = {Flow.HOUSEHOLD: household_step, Flow.VISITPLAN: visitplan_step}


def next_morning(now: datetime, ctx: Ctx) -> datetime:
    """Tomorrow 09:00 local: a new plan's first due time."""
    local = now.astimezone(ctx.settings.tz) + timedelta(days=1)
    return local.replace(hour=9, minute=0, second=0, microsecond=0)
