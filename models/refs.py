"""Outbox refs: the name an outbox row carries so that later code can find it again — to edit
the message (``edit_ref``), count its copies, or tell what it is about (``disp:12`` is order 12's
dispatch card, ``offer:7`` offer 7's message).

A ref is ``<kind>:<key>``. That string is stored in ``outbox_message.ref`` / ``edit_ref`` and
existing databases keep theirs, so the string form of each kind must never change (a test pins
it). It is written here only: refs are built by the functions below and read by
:func:`parse_ref`; SQL that matches refs by prefix takes :meth:`Ref.prefix`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class RefKind(StrEnum):
    """What an outbox row is; the value is the stored prefix (before the colon)."""

    #: The resident's "received" message (its cancel button goes stale); key: order id.
    RECEIPT = "receipt"
    #: A member's offer message (edited to taken/withdrawn); key: offer id.
    OFFER = "offer"
    #: A handler's dispatch card; key: order id.
    DISPATCH = "disp"
    #: A handler's note about an order (new, escalated, …); key: order id.
    NOTE = "note"
    #: A member's news about an order they handle; key: order id.
    NEWS = "news"
    #: The accepting member's task card; key: order id.
    TASK = "task"
    #: The resident's rating card; key: order id.
    RATE = "rate"
    #: The resident's "withdraw this order?" question; key: order id.
    CANCEL_ASK = "cxask"
    #: A handler told that someone cannot be reached by push; key: order id.
    UNREACHABLE = "unreach"
    #: A patrol reminder; key: patrol run id.
    PATROL = "patrol"
    #: A visit reminder; key: visit plan id.
    VISIT = "visit"
    #: The caller's live roll-call of a whistle; key: whistle id.
    WHISTLE = "whistle"
    #: Every copy of a notice (counted for the sender's report); key: notice id.
    NOTICE = "notice"
    #: The sender's "send this notice?" question; key: person id.
    NOTICE_ASK = "notice-ask"
    #: The resident's "submit this order?" confirmation; key: the flow's one-time key.
    CONFIRM = "confirm"
    #: The resident's "is this the same problem?" question; key: the flow's one-time key.
    DUPLICATE_QUESTION = "dupq"


#: Kinds whose key is a flow's one-time key (text) rather than a row id.
TEXT_KEYED = frozenset({RefKind.CONFIRM, RefKind.DUPLICATE_QUESTION})
_TEXT_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ID_KEY = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True)
class Ref:
    """A parsed outbox ref: its kind and its key (a row id, or a text key for
    :data:`TEXT_KEYED` kinds). ``str(ref)`` is the stored form."""

    kind: RefKind
    key: int | str

    def __post_init__(self) -> None:
        if self.kind in TEXT_KEYED:
            if not isinstance(self.key, str) or not _TEXT_KEY.fullmatch(self.key):
                raise ValueError(f"bad key for a {self.kind.value} ref: {self.key!r}")
        elif isinstance(self.key, bool) or not isinstance(self.key, int) or self.key < 0:
            raise ValueError(f"bad id for a {self.kind.value} ref: {self.key!r}")

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.key}"

    @property
    def id(self) -> int:
        """The row id the ref names (not for :data:`TEXT_KEYED` kinds)."""
        if not isinstance(self.key, int):
            raise TypeError(f"a {self.kind.value} ref names no row")
        return self.key

    @staticmethod
    def prefix(kind: RefKind) -> str:
        """What every ref of ``kind`` starts with (for SQL matching by prefix)."""
        return f"{kind.value}:"


def parse_ref(raw: str | None) -> Ref | None:
    """The ref in a stored string; ``None`` for none, an unknown kind, or a malformed key."""
    if not raw:
        return None
    prefix, colon, key = raw.partition(":")
    try:
        kind = RefKind(prefix)
    except ValueError:
        return None
    if not colon:
        return None
    if kind in TEXT_KEYED:
        return Ref(kind, key) if _TEXT_KEY.fullmatch(key) else None
    return Ref(kind, int(key)) if _ID_KEY.fullmatch(key) else None


def make(kind: RefKind, key: int | str) -> str:
    """The stored form of a ref (checked: a malformed key raises ``ValueError``)."""
    return str(Ref(kind, key))


def receipt(order_id: int) -> str:
    """The resident's "received" message of an order."""
    return make(RefKind.RECEIPT, order_id)


def offer(offer_id: int) -> str:
    """The message that carries an offer (so it can be edited later)."""
    return make(RefKind.OFFER, offer_id)


def dispatch(order_id: int) -> str:
    """A handler's dispatch card of an order."""
    return make(RefKind.DISPATCH, order_id)


def note(order_id: int) -> str:
    """A handler's note about an order."""
    return make(RefKind.NOTE, order_id)


def news(order_id: int) -> str:
    """A member's news about an order."""
    return make(RefKind.NEWS, order_id)


def task(order_id: int) -> str:
    """The accepting member's task card."""
    return make(RefKind.TASK, order_id)


def rate(order_id: int) -> str:
    """The resident's rating card."""
    return make(RefKind.RATE, order_id)


def cancel_ask(order_id: int) -> str:
    """The resident's "withdraw this order?" question (edited once answered)."""
    return make(RefKind.CANCEL_ASK, order_id)


def unreachable(order_id: int) -> str:
    """A handler's notice that someone on the order cannot be reached (never reported again)."""
    return make(RefKind.UNREACHABLE, order_id)


def patrol(run_id: int) -> str:
    """A patrol reminder."""
    return make(RefKind.PATROL, run_id)


def visit(plan_id: int) -> str:
    """A visit reminder."""
    return make(RefKind.VISIT, plan_id)


def whistle(whistle_id: int) -> str:
    """The caller's live roll-call message."""
    return make(RefKind.WHISTLE, whistle_id)


def notice(notice_id: int) -> str:
    """Every copy of a notice (counted for the sender's report)."""
    return make(RefKind.NOTICE, notice_id)


def notice_ask(person_id: int) -> str:
    """The sender's "send this notice?" question (edited once answered)."""
    return make(RefKind.NOTICE_ASK, person_id)


def confirm(flow_key: str) -> str:
    """The resident's "submit this order?" confirmation."""
    return make(RefKind.CONFIRM, flow_key)


def duplicate_question(flow_key: str) -> str:
    """The resident's "is this the same problem?" question."""
    return make(RefKind.DUPLICATE_QUESTION, flow_key)
