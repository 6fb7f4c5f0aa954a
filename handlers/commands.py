"""Slash commands (and the menu labels standing for them), in one table.

Each row says what runs, whether it needs a bound person and whether it ends the person's
current flow. The handler modules stay independent of one another: this module imports them,
none of them imports it (only the intake does), so there is no import cycle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from handlers import (
    bind,
    common,
    console,
    duties,
    flows,
    link,
    points,
    profile,
    reports,
    work,
)
from handlers.context import Ctx

#: What a command runs: the context and what followed the command.
Run = Callable[[Ctx, str, str], Awaitable[None]]


@dataclass(frozen=True)
class Command:
    """One command: what runs, and how it treats the person and their flow."""

    run: Run
    #: Only for a bound person (others get the welcome that says how to bind).
    needs_person: bool = True
    #: Leaving the current flow first (a command is a new topic), unless it is about the flow.
    ends_flow: bool = True


def _plain(handler: Callable[[Ctx], Awaitable[None]]) -> Run:
    """A command that takes no argument."""

    async def run(ctx: Ctx, name: str, arg: str) -> None:
        await handler(ctx)

    return run


async def _start(ctx: Ctx, name: str, arg: str) -> None:
    if arg:
        await ctx.end_conversation()
        await bind.start(ctx, arg)
    elif ctx.person is None:
        await bind.welcome(ctx)
    else:
        # Someone imported or linked, writing for the first time, is greeted as new.
        key = "start.hello" if ctx.first_visit else "start.back"
        ctx.say(key, name=ctx.person.name, help=ctx.t("menu.help"))
        await common.show_menu(ctx)


async def _link(ctx: Ctx, name: str, arg: str) -> None:
    await link.link(ctx, arg)


async def _push(ctx: Ctx, name: str, arg: str) -> None:
    await link.push(ctx, arg)


async def _me(ctx: Ctx, name: str, arg: str) -> None:
    await profile.show(ctx)


async def _profile_field(ctx: Ctx, name: str, arg: str) -> None:
    """/name, /phone, /room: shortcuts to 改称呼 / 改电话 / 改房号 ("/phone 138…" at once)."""
    await profile.edit(ctx, name, arg or None)


async def _points(ctx: Ctx, name: str, arg: str) -> None:
    await points.command(ctx, arg)


TABLE: dict[str, Command] = {
    # Also for someone not bound yet: that is how a second platform joins, or anyone starts.
    "link": Command(_link, needs_person=False, ends_flow=False),
    "push": Command(_push, needs_person=False, ends_flow=False),
    "start": Command(_start, needs_person=False, ends_flow=False),
    "help": Command(_plain(common.help_), needs_person=False, ends_flow=False),
    "me": Command(_me),
    **{field: Command(_profile_field) for field in ("name", "phone", "room")},
    "points": Command(_points),
    **{name: Command(duties.command) for name in duties.COMMANDS},
    **{name: Command(console.command) for name in console.COMMANDS},
    **{name: Command(reports.command) for name in reports.COMMANDS},
    "order": Command(_plain(flows.start_order)),
    "myorders": Command(_plain(common.my_orders)),
    "mygrid": Command(_plain(common.my_grid)),
    "tasks": Command(_plain(common.my_tasks)),
    "queue": Command(_plain(work.queue)),
    # About the current flow (or shown beside it): they leave it as it is.
    "cancel": Command(_plain(common.cancel_flow), ends_flow=False),
    "lang": Command(_plain(common.choose_language), ends_flow=False),
    "menu": Command(_plain(common.show_menu), ends_flow=False),
}


async def run(ctx: Ctx, name: str, arg: str) -> None:
    """Run a slash command (or its menu label)."""
    command = TABLE.get(name)
    if command is not None and not command.needs_person:
        await command.run(ctx, name, arg)
        return
    if ctx.person is None:
        await bind.welcome(ctx)
        return
    if command is None:
        ctx.say("error.unknown_command", command=name[:32])
        return
    if command.ends_flow:
        await ctx.end_conversation()
    await command.run(ctx, name, arg)
