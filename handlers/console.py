"""``/console``: a head or community admin asks for a one-time link to the web console.

The link is stored (as a hash) in this event's transaction, so it works as soon as the
message carrying it arrives; it is for the sender only, valid ten minutes, good once."""

from __future__ import annotations

from bot.console.auth import LINK_VALID, issue_link
from bot.core.invites import signing_key
from bot.core.orders import OrderError
from handlers.context import Ctx
from models.people import ROLE_ADMIN, ROLE_HEAD

COMMANDS = ("console",)
#: Where a link lands (under the web server's public URL).
LOGIN_PATH = "/console/login/"


async def command(ctx: Ctx, name: str, arg: str) -> None:
    """Send the sender a sign-in link, or say politely why not."""
    assert ctx.person is not None
    if not ctx.settings.console_on:
        raise OrderError("console.disabled")
    if not await ctx.has_role(ROLE_HEAD, ROLE_ADMIN):
        raise OrderError("console.not_allowed")
    key = await signing_key(ctx.session, ctx.settings)
    token = await issue_link(ctx.session, key, ctx.person.id, ctx.now)
    url = f"{ctx.settings.base_url}{LOGIN_PATH}{token}"
    ctx.say("console.link", url=url, minutes=str(int(LINK_VALID.total_seconds() // 60)))
