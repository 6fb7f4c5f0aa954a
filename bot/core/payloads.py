"""Button payloads: short, parseable, and treated as untrusted input.

Every payload fits Telegram's 64-byte ``callback_data``. Parsing is strict: anything that does not
match a known shape is rejected, and what a payload asks for is authorised on the server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: ``cx`` asks the resident to confirm the withdrawal, ``cxy`` is that confirmation.
ORDER_ACTIONS = ("as", "bc", "me", "esc", "acc", "dec", "done", "ns", "cx", "cxy", "view")
FLOW_ACTIONS = ("cat", "skip", "ok", "x", "lang", "push", "same", "new", "pick", "me")
#: Row ids are 32-bit integers (PostgreSQL ``integer``): a larger one cannot name a row and
#: would make the database refuse the query instead of the handler refusing politely.
MAX_ID = 2**31 - 1

_PATTERNS = {
    "o": re.compile(r"^o:(?P<act>[a-z]{2,4}):(?P<id>\d{1,12})$"),
    "oa": re.compile(r"^oa:(?P<id>\d{1,12}):(?P<arg>\d{1,12})$"),
    "or": re.compile(r"^or:(?P<id>\d{1,12}):(?P<arg>[1-5])$"),
    "rv": re.compile(r"^rv:(?P<id>\d{1,12})$"),
    "f": re.compile(r"^f:(?P<act>[a-z]{1,5})(?::(?P<arg>[A-Za-z0-9_-]{1,32}))?$"),
    "m": re.compile(r"^m:(?P<act>[a-z]{1,16})$"),
    # duties: patrol check-in, visit outcome, whistle answer
    "dp": re.compile(r"^dp:(?P<act>ci):(?P<id>\d{1,12})$"),
    "dv": re.compile(r"^dv:(?P<act>ok|help):(?P<id>\d{1,12})$"),
    "dw": re.compile(r"^dw:(?P<act>on|no):(?P<id>\d{1,12})$"),
    # "send this notice": the one-time code of the pending notice (handlers.notice)
    "nc": re.compile(r"^nc:(?P<arg>[0-9a-f]{8})$"),
}


@dataclass(frozen=True)
class Payload:
    """A parsed button payload."""

    kind: str
    action: str = ""
    id: int | None = None
    arg: str | None = None


def parse(raw: str | None) -> Payload | None:
    """Parse a payload; ``None`` for anything malformed or unknown."""
    if not raw or len(raw) > 64:
        return None
    kind = raw.split(":", 1)[0]
    pattern = _PATTERNS.get(kind)
    # fullmatch: ``$`` alone would accept a trailing newline.
    match = pattern.fullmatch(raw) if pattern else None
    if match is None:
        return None
    groups = match.groupdict()
    action = groups.get("act") or ""
    if kind == "o" and action not in ORDER_ACTIONS:
        return None
    if kind == "f" and action not in FLOW_ACTIONS:
        return None
    ident = groups.get("id")
    if ident and int(ident) > MAX_ID:
        return None
    if kind == "oa" and int(groups["arg"]) > MAX_ID:
        return None
    return Payload(kind, action, int(ident) if ident else None, groups.get("arg"))


def order(action: str, order_id: int) -> str:
    """Payload of an order action button."""
    assert action in ORDER_ACTIONS
    return f"o:{action}:{order_id}"


def assign(order_id: int, person_id: int) -> str:
    """Payload of 'assign this order to this member'."""
    return f"oa:{order_id}:{person_id}"


def rate(order_id: int, stars: int) -> str:
    """Payload of a star rating."""
    return f"or:{order_id}:{stars}"


def revisit(revisit_id: int) -> str:
    """Payload of 'revisit done'."""
    return f"rv:{revisit_id}"


def flow(action: str, arg: str | None = None) -> str:
    """Payload of a step inside a conversation flow."""
    assert action in FLOW_ACTIONS
    return f"f:{action}:{arg}" if arg else f"f:{action}"


def notice_confirm(code: str) -> str:
    """Payload of 确认发送 under a pending notice."""
    return f"nc:{code}"


def menu(action: str) -> str:
    """Payload of a main-menu shortcut."""
    return f"m:{action}"


def check_in(run_id: int) -> str:
    """Payload of "check in" on a patrol reminder."""
    return f"dp:ci:{run_id}"


def visit(action: str, plan_id: int) -> str:
    """Payload of "all fine" (``ok``) / "needs help" (``help``) on a visit reminder."""
    return f"dv:{action}:{plan_id}"


def whistle(action: str, whistle_id: int) -> str:
    """Payload of "on my way" (``on``) / "cannot" (``no``) on a whistle."""
    return f"dw:{action}:{whistle_id}"
