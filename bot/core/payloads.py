"""Button payloads: short, parseable, and treated as untrusted input.

Every payload fits Telegram's 64-byte ``callback_data``. Parsing is strict: anything that does not
match a known shape is rejected, and what a payload asks for is authorised on the server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class PayloadKind(StrEnum):
    """What a button does; the value is the payload's prefix (before the first colon)."""

    #: An order action (``o:<action>:<order id>``).
    ORDER = "o"
    #: Assign an order to a member (``oa:<order id>:<person id>``).
    ASSIGN = "oa"
    #: A star rating (``or:<order id>:<stars>``).
    RATE = "or"
    #: "Revisit done" (``rv:<revisit id>``).
    REVISIT = "rv"
    #: A step inside a conversation flow (``f:<action>[:<arg>]``).
    FLOW = "f"
    #: A main-menu shortcut (``m:<command>``).
    MENU = "m"
    #: Check in on a patrol reminder (``dp:ci:<run id>``).
    PATROL = "dp"
    #: A visit's outcome (``dv:ok|help:<plan id>``).
    VISIT = "dv"
    #: A whistle answer (``dw:on|no:<whistle id>``).
    WHISTLE = "dw"
    #: "Send this notice": the one-time code of the pending notice (``nc:<code>``).
    NOTICE_CONFIRM = "nc"


#: ``cx`` asks the resident to confirm the withdrawal, ``cxy`` is that confirmation.
ORDER_ACTIONS = ("as", "bc", "me", "esc", "acc", "dec", "done", "ns", "cx", "cxy", "view")
FLOW_ACTIONS = ("cat", "skip", "ok", "x", "lang", "push", "same", "new", "pick", "me")
#: Row ids are 32-bit integers (PostgreSQL ``integer``): a larger one cannot name a row and
#: would make the database refuse the query instead of the handler refusing politely.
MAX_ID = 2**31 - 1

#: What follows ``<kind>:`` in each kind of payload.
_SHAPES = {
    PayloadKind.ORDER: r"(?P<act>[a-z]{2,4}):(?P<id>\d{1,12})",
    PayloadKind.ASSIGN: r"(?P<id>\d{1,12}):(?P<arg>\d{1,12})",
    PayloadKind.RATE: r"(?P<id>\d{1,12}):(?P<arg>[1-5])",
    PayloadKind.REVISIT: r"(?P<id>\d{1,12})",
    PayloadKind.FLOW: r"(?P<act>[a-z]{1,5})(?::(?P<arg>[A-Za-z0-9_-]{1,32}))?",
    PayloadKind.MENU: r"(?P<act>[a-z]{1,16})",
    PayloadKind.PATROL: r"(?P<act>ci):(?P<id>\d{1,12})",
    PayloadKind.VISIT: r"(?P<act>ok|help):(?P<id>\d{1,12})",
    PayloadKind.WHISTLE: r"(?P<act>on|no):(?P<id>\d{1,12})",
    PayloadKind.NOTICE_CONFIRM: r"(?P<arg>[0-9a-f]{8})",
}
_PATTERNS = {
    kind: re.compile(rf"^{re.escape(kind.value)}:{shape}$") for kind, shape in _SHAPES.items()
}


@dataclass(frozen=True)
class Payload:
    """A parsed button payload."""

    kind: PayloadKind
    action: str = ""
    id: int | None = None
    arg: str | None = None


def parse(raw: str | None) -> Payload | None:
    """Parse a payload; ``None`` for anything malformed or unknown."""
    if not raw or len(raw) > 64:
        return None
    try:
        kind = PayloadKind(raw.split(":", 1)[0])
    except ValueError:
        return None
    # fullmatch: ``$`` alone would accept a trailing newline.
    match = _PATTERNS[kind].fullmatch(raw)
    if match is None:
        return None
    groups = match.groupdict()
    action = groups.get("act") or ""
    if kind is PayloadKind.ORDER and action not in ORDER_ACTIONS:
        return None
    if kind is PayloadKind.FLOW and action not in FLOW_ACTIONS:
        return None
    ident = groups.get("id")
    if ident and int(ident) > MAX_ID:
        return None
    if kind is PayloadKind.ASSIGN and int(groups["arg"]) > MAX_ID:
        return None
    return Payload(kind, action, int(ident) if ident else None, groups.get("arg"))


def order(action: str, order_id: int) -> str:
    """Payload of an order action button."""
    assert action in ORDER_ACTIONS
    return f"{PayloadKind.ORDER.value}:{action}:{order_id}"


def assign(order_id: int, person_id: int) -> str:
    """Payload of 'assign this order to this member'."""
    return f"{PayloadKind.ASSIGN.value}:{order_id}:{person_id}"


def rate(order_id: int, stars: int) -> str:
    """Payload of a star rating."""
    return f"{PayloadKind.RATE.value}:{order_id}:{stars}"


def revisit(revisit_id: int) -> str:
    """Payload of 'revisit done'."""
    return f"{PayloadKind.REVISIT.value}:{revisit_id}"


def flow(action: str, arg: str | None = None) -> str:
    """Payload of a step inside a conversation flow."""
    assert action in FLOW_ACTIONS
    kind = PayloadKind.FLOW.value
    return f"{kind}:{action}:{arg}" if arg else f"{kind}:{action}"


def notice_confirm(code: str) -> str:
    """Payload of 确认发送 under a pending notice."""
    return f"{PayloadKind.NOTICE_CONFIRM.value}:{code}"


def menu(action: str) -> str:
    """Payload of a main-menu shortcut."""
    return f"{PayloadKind.MENU.value}:{action}"


def check_in(run_id: int) -> str:
    """Payload of "check in" on a patrol reminder."""
    return f"{PayloadKind.PATROL.value}:ci:{run_id}"


def visit(action: str, plan_id: int) -> str:
    """Payload of "all fine" (``ok``) / "needs help" (``help``) on a visit reminder."""
    return f"{PayloadKind.VISIT.value}:{action}:{plan_id}"


def whistle(action: str, whistle_id: int) -> str:
    """Payload of "on my way" (``on``) / "cannot" (``no``) on a whistle."""
    return f"{PayloadKind.WHISTLE.value}:{action}:{whistle_id}"
