"""Commands, the main menu, help and the polite fallbacks."""

from __future__ import annotations

from sqlalchemy import select

from bot.core import cards
from bot.core import payloads as p
from bot.core.orders import OrderError
from bot.core.responsibility import path_ids, people_with_role
from bot.i18n import SUPPORTED
from bot.ports import Button, Outbound
from handlers.context import Ctx
from models import Building, Grid, Offer, Order, OutboxMessage, Person
from models.orders import ACCEPTED, CANCELLABLE, DONE, OFFER_OPEN
from models.people import ROLE_ADMIN, ROLE_HEAD, ROLE_MEMBER, ROLE_RESIDENT, ROLE_WORKER

LIST_LIMIT = 10

#: Menu labels (catalog keys) and the command each one runs.
MENU = {
    "menu.order": "order",
    "menu.myorders": "myorders",
    "menu.mygrid": "mygrid",
    "menu.tasks": "tasks",
    "menu.queue": "queue",
    "menu.me": "me",
    "menu.help": "help",
}


def cancel_row(ctx: Ctx) -> list[Button]:
    """The "cancel" button of a flow's question."""
    return [Button(ctx.t("btn.cancel_flow"), p.flow("x"))]


def skip_row(ctx: Ctx) -> list[Button]:
    """"Skip" and "cancel", for an optional step of a flow."""
    return [Button(ctx.t("btn.skip"), p.flow("skip")), *cancel_row(ctx)]


def location_question(ctx: Ctx, key: str) -> Outbound:
    """Ask for a location (the sentence ``key``) with skip/cancel."""
    # A location request is a reply keyboard; skip/cancel ride on it as keys, since a
    # Telegram message carries one keyboard only.
    return Outbound(
        ctx.t(key),
        menu=[[ctx.t("btn.skip"), ctx.t("btn.cancel_flow")]],
        ask_location=ctx.t("btn.send_location"),
    )


def menu_command(ctx: Ctx, text: str) -> str | None:
    """The command a menu label stands for, in whatever language the label was shown."""
    if not text or len(text) > 40:
        return None
    for key, name in MENU.items():
        if text in ctx.tr.all_variants(key):
            return name
    return None


async def menu_layout(ctx: Ctx) -> list[list[str]]:
    """The persistent menu for the sender's roles, as catalog keys (``menu.*``)."""
    roles = {r.role for r in await ctx.roles()}
    rows: list[list[str]] = []
    if ROLE_RESIDENT in roles:
        rows.append(["menu.order", "menu.myorders"])
    work = []
    if ROLE_MEMBER in roles or ROLE_WORKER in roles or ROLE_HEAD in roles:
        work.append("menu.tasks")
    if roles & {ROLE_WORKER, ROLE_HEAD, ROLE_ADMIN}:
        work.append("menu.queue")
    if work:
        rows.append(work)
    rows.append(["menu.mygrid", "menu.me", "menu.help"])
    return rows


async def menu_rows(ctx: Ctx) -> list[list[str]]:
    """The persistent menu for the sender's roles, labelled in their language."""
    return [[ctx.t(key) for key in row] for row in await menu_layout(ctx)]


async def show_menu(ctx: Ctx) -> None:
    """Give the sender the main menu keyboard again.

    It rides on the last message this event already sends them (the receipt, "已取消", ...)
    rather than on a bare "请选择：" of its own. A platform that cannot show a message's
    buttons and a keyboard together (Telegram) sends the keyboard after it with
    ``menu_note``. Only when nothing else is said does the menu come on its own.
    """
    rows = await menu_rows(ctx)
    last = _last_reply(ctx)
    if last is not None:
        payload = dict(last.payload)
        payload["menu"] = rows
        payload.pop("remove_menu", None)
        if payload.get("buttons"):
            payload["menu_note"] = ctx.t("menu.note")
        last.payload = payload  # a new dict: the JSON column sees the change
        return
    # kind "menu": platforms with a fixed account menu (WeChat) need not send it at all.
    ctx.reply(Outbound(ctx.t("menu.title"), menu=rows, kind="menu"))


def _last_reply(ctx: Ctx) -> OutboxMessage | None:
    """The newest message this event sends to the sender's chat, if it can carry the menu
    (not an edit of an older message, not a location request with its own keyboard)."""
    for row in reversed(ctx.notify.written):
        if row.channel != ctx.event.channel or row.chat_id != ctx.event.chat_id:
            continue
        if row.edit_ref is not None:
            continue
        data = row.payload or {}
        if data.get("ask_location"):
            return None
        return row
    return None


async def help_(ctx: Ctx) -> None:
    """What this person can do here."""
    if ctx.person is None:
        ctx.say("bind.welcome")
        return
    roles = {r.role for r in await ctx.roles()}
    # First what the person sees: the menu's buttons by their labels, from the very layout
    # they are shown; then the commands, for those who type.
    buttons = [
        ctx.t(f"help.btn.{MENU[key]}", label=ctx.t(key))
        for row in await menu_layout(ctx)
        for key in row
    ]
    parts = [ctx.t("help.intro"), ctx.t("help.buttons") + "\n" + "\n".join(buttons)]
    commands = []
    for role in (ROLE_RESIDENT, ROLE_MEMBER, ROLE_WORKER, ROLE_HEAD, ROLE_ADMIN):
        if role in roles:
            commands.append(ctx.t(f"help.{role}"))
    if roles & {ROLE_MEMBER, ROLE_WORKER, ROLE_HEAD, ROLE_ADMIN}:
        commands.append(ctx.t("help.points"))
    if roles & {ROLE_WORKER, ROLE_HEAD, ROLE_ADMIN}:
        commands.append(ctx.t("help.duty_lists"))
    if roles & {ROLE_HEAD, ROLE_ADMIN}:
        commands.append(ctx.t("help.whistle_notice"))
        commands.append(ctx.t("help.bulletin"))
        if ctx.settings.console_on:
            commands.append(ctx.t("help.console"))
    commands.append(ctx.t("help.me"))
    commands.append(ctx.t("help.common"))
    parts.append(ctx.t("help.commands") + "\n" + "\n".join(commands))
    ctx.reply(Outbound("\n\n".join(parts), menu=await menu_rows(ctx)))


async def fallback(ctx: Ctx) -> None:
    """Free text outside any flow: point to the menu, change nothing."""
    ctx.reply(Outbound(ctx.t("fallback.hint"), menu=await menu_rows(ctx)))


async def courtesy(ctx: Ctx) -> None:
    """A resident's pleasantry ("谢谢", "好的") outside any flow: a polite word, nothing else."""
    ctx.reply(Outbound(ctx.t("fallback.courtesy"), menu=await menu_rows(ctx)))


async def cancel_flow(ctx: Ctx) -> None:
    """/cancel: leave the current flow."""
    if await ctx.conversation() is None:
        ctx.say("flow.nothing_to_cancel")
        return
    await ctx.end_conversation()
    ctx.say("flow.cancelled")
    await show_menu(ctx)


async def choose_language(ctx: Ctx) -> None:
    """/lang: pick a language."""
    ctx.say(
        "lang.pick",
        [[Button(ctx.tr.t(code, "lang.name"), p.flow("lang", code)) for code in SUPPORTED]],
    )


async def set_language(ctx: Ctx, code: str) -> None:
    """Store the chosen language."""
    if code not in SUPPORTED or ctx.person is None:
        raise OrderError("error.button_invalid")
    ctx.person.locale = code
    ctx.lang = code
    ctx.say("lang.set")
    await show_menu(ctx)


def _status_line(ctx: Ctx, order: Order) -> str:
    return ctx.t(
        "list.line",
        number=cards.number(order),
        category=cards.category_name(ctx.tr, ctx.lang, order.category),
        status=cards.status_name(ctx.tr, ctx.lang, order.status),
        date=order.created_at.astimezone(ctx.settings.tz).strftime("%m-%d %H:%M"),
    )


async def my_orders(ctx: Ctx) -> None:
    """A resident's latest orders, with what they can do next."""
    assert ctx.person is not None
    orders = (
        await ctx.session.scalars(
            select(Order)
            .where(Order.resident_id == ctx.person.id)
            .order_by(Order.id.desc())
            .limit(LIST_LIMIT)
        )
    ).all()
    if not orders:
        ctx.say("list.no_orders", [[Button(ctx.t("menu.order"), p.menu("order"))]])
        return
    rows = []
    for o in orders:
        if o.status in CANCELLABLE:
            rows.append(
                [
                    Button(ctx.t("btn.view", number=cards.number(o)), p.order("view", o.id)),
                    Button(
                        ctx.t("btn.cancel_order_n", number=cards.number(o)), p.order("cx", o.id)
                    ),
                ]
            )
        elif o.status == DONE:
            rows.append(
                [Button(ctx.t("btn.rate_n", number=cards.number(o)), p.order("view", o.id))]
            )
    text = ctx.t("list.my_orders") + "\n" + "\n".join(_status_line(ctx, o) for o in orders)
    ctx.reply(Outbound(text, rows))


async def my_tasks(ctx: Ctx) -> None:
    """A member's accepted orders and open offers."""
    assert ctx.person is not None
    me = ctx.person.id
    mine = (
        await ctx.session.scalars(
            select(Order)
            .where(Order.assignee_id == me, Order.status == ACCEPTED)
            .order_by(Order.id)
            .limit(LIST_LIMIT)
        )
    ).all()
    offered = (
        await ctx.session.scalars(
            select(Order)
            .join(Offer, Offer.order_id == Order.id)
            .where(Offer.person_id == me, Offer.status == OFFER_OPEN)
            .order_by(Order.id)
            .limit(LIST_LIMIT)
        )
    ).all()
    if not mine and not offered:
        ctx.say("list.no_tasks")
        return
    lines, rows = [], []
    if mine:
        lines.append(ctx.t("list.my_tasks"))
        lines += [_status_line(ctx, o) for o in mine]
        rows += [
            [Button(ctx.t("btn.view", number=cards.number(o)), p.order("view", o.id))]
            for o in mine
        ]
    if offered:
        lines.append(ctx.t("list.my_offers"))
        lines += [_status_line(ctx, o) for o in offered]
        rows += [
            [Button(ctx.t("btn.view", number=cards.number(o)), p.order("view", o.id))]
            for o in offered
        ]
    ctx.reply(Outbound("\n".join(lines), rows))


async def my_grid(ctx: Ctx) -> None:
    """Who looks after my building: the micro-grid, its worker(s) and the grid head."""
    roles = await ctx.roles()
    residence = next((r for r in roles if r.role == ROLE_RESIDENT), None)
    role = residence or (roles[0] if roles else None)
    if role is None:
        raise OrderError("error.not_bound")
    grid = await ctx.session.get(Grid, role.grid_id)
    assert grid is not None
    lines = []
    if residence and residence.building_id:
        building = await ctx.session.get(Building, residence.building_id)
        if building is not None:
            lines.append(ctx.t("grid.building", building=building.name))
    lines.append(ctx.t("grid.name", grid=grid.name))
    chain = (await ctx.session.scalars(select(Grid).where(Grid.id.in_(path_ids(grid))))).all()
    by_id = {g.id: g for g in chain}
    for gid in reversed(path_ids(grid)):
        g = by_id[gid]
        for role_name in (ROLE_WORKER, ROLE_HEAD):
            for pid in await people_with_role(ctx.session, g.id, role_name):
                person = await ctx.session.get(Person, pid)
                if person is None:
                    continue
                lines.append(
                    ctx.t(
                        f"grid.{role_name}",
                        name=person.name,
                        grid=g.name,
                        phone=person.phone or "-",
                    )
                )
        if any(line for line in lines[2:]):
            break
    ctx.reply(Outbound("\n".join(lines), menu=await menu_rows(ctx)))
