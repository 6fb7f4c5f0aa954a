"""``/notice`` asks before it sends: the text, the grid and how many residents it reaches,
with 确认发送 / 取消. The confirmation button carries a one-time code kept with the pending
notice (in the conversation row), so a button of another question, a forged one or one of
an earlier notice changes nothing."""

from __future__ import annotations

import secrets
from typing import Any

from bot.core import payloads as p
from bot.core.orders import OrderError
from bot.ports import Button, Outbound
from handlers.context import Ctx, Flow, Step
from models import refs


async def ask(ctx: Ctx, text: str) -> None:
    """Show what would be sent to whom, and ask to confirm."""
    assert ctx.person is not None
    duties = ctx.duties()
    grid = await duties.managed_grid(ctx.person)
    count = len(await duties.notice_residents(grid))
    if count == 0:
        raise OrderError("notice.nobody", grid=grid.name)
    code = secrets.token_hex(4)
    await ctx.set_conversation(Flow.NOTICE, Step.CONFIRM, {"text": text, "code": code})
    ctx.reply(
        ctx.t("notice.confirm", grid=grid.name, count=str(count), text=text),
        [
            [
                Button(ctx.t("btn.confirm_send"), p.notice_confirm(code)),
                Button(ctx.t("btn.cancel_flow"), p.flow("x")),
            ]
        ],
        ref=refs.notice_ask(ctx.person.id),
    )


async def confirm_step(
    ctx: Ctx, state: str, data: dict[str, Any], payload: p.Payload | None
) -> None:
    """Anything but 确认发送 while the question is open (typed text, a flow button of
    another question): ask again; nothing is sent."""
    if payload is not None:
        raise OrderError("notice.confirm_stale")
    ctx.say("notice.confirm_pending")


async def confirm(ctx: Ctx, code: str) -> None:
    """确认发送: sends the pending notice whose code the button carries, once."""
    assert ctx.person is not None
    conv = await ctx.conversation()
    if conv is None or conv.flow != Flow.NOTICE:
        # Sent or cancelled already (a second tap, an old message): nothing more goes out.
        raise OrderError("notice.confirm_done")
    data = dict(conv.data)
    if not code or code != data.get("code"):
        raise OrderError("notice.confirm_stale")
    notice = await ctx.duties().send_notice(ctx.person, str(data["text"]))
    await ctx.end_conversation()
    await ctx.notify.edit_for_person(
        ctx.person.id,
        refs.notice_ask(ctx.person.id),
        lambda lang: Outbound(ctx.tr.t(lang, "notice.confirmed", text=str(data["text"]))),
    )
    ctx.toast = ctx.t("notice.confirmed_short")
    ctx.say(
        "notice.sending",
        total=str(notice.recipients),
        unreachable=str(notice.unreachable or 0),
    )
