"""One row per order with what the reports need from its event log (``order_facts``), kept
equal to its events in the transaction that writes them.

The row is the order's events folded in their order (``created_at``, then ``id``), with every
time in integer microseconds since 1970 UTC: first and last event, first handling by a person
(and who), first dispatch, first acceptance (whether it was "handle myself", and the last offer
before it), the last "done", rating and cancel, the first close, the last word of the resident,
the stars, counts of reopenings and escalations, auto-close, the last event's status; and the
order's submission time and the channel of its receipt (the outbox message ``receipt:<id>``). The
definitions are those of :func:`bot.reports.kpi.order_rows` (the figures are the same whether
read from here or from the events; ``tests/reports/test_order_facts.py`` checks it).

**Kept up to date in one place.** :func:`_after_flush` listens to every ORM session: when a
flush adds, changes or deletes an :class:`~models.orders.OrderEvent`, the rows of those orders
are recomputed from their events (:func:`refresh`) on the same connection, in the same
transaction. Every path that writes events (the order service, the console, Open311 intake,
the clocks, the demo history, tests) goes through a session flush, so none can forget it. A
bulk ``INSERT`` of events outside the ORM (a benchmark's generator, a migration) must call
:func:`refresh` or :func:`rebuild` itself.

The reports use a row for a period only when all the order's events lie inside it
(``first_us`` ≥ the period's start, ``last_us`` < its end): then "the events up to the period's
end" are all of them. An order with events after the period's end is read from its events.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    SmallInteger,
    String,
    delete,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Session, mapped_column

from models import refs
from models.base import Base
from models.messaging import OutboxMessage
from models.orders import (
    ACCEPTED,
    AUTO_CLOSED,
    CANCELLED,
    CLOSED,
    CONFIRMED,
    DISPATCHED,
    DONE,
    ESCALATED,
    SUBMITTED,
    Order,
    OrderEvent,
)

#: A person's first handling of an order (the response): not the clocks' automatic actions.
RESPONSE_ACTIONS = ("assign", "broadcast", "handle", "escalate")
#: The order went out to someone who can do it (starts the accept clock).
DISPATCH_ACTIONS = ("assign", "broadcast", "auto_broadcast", "handle")
OFFER_ACTIONS = ("assign", "broadcast", "auto_broadcast")
ACCEPT_ACTIONS = ("accept", "handle")
ESCALATE_ACTIONS = ("escalate", "auto_escalate")
#: Order statuses by code (code = position + 1; 0: a status not listed).
STATUSES = (SUBMITTED, ESCALATED, DISPATCHED, ACCEPTED, DONE, CONFIRMED, CLOSED, CANCELLED,
            AUTO_CLOSED)
STATUS_CODE = {s: n for n, s in enumerate(STATUSES, 1)}

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_DIGITS = re.compile(r"[0-9]{1,9}")


def epoch_us(when: datetime) -> int:
    """Microseconds since 1970 UTC (exact)."""
    return (when - EPOCH) // _US


class OrderFactsRow(Base):
    """The facts of one order read from all its events (see the module docstring)."""

    __tablename__ = "order_facts"
    #: A period's cohort (orders submitted in it) is a range of ``submitted_us``: the reports
    #: read the period's rows by this index instead of the whole table.
    __table_args__ = (Index("ix_order_facts_submitted_us", "submitted_us"),)

    order_id: Mapped[int] = mapped_column(
        ForeignKey("orders.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    #: The order's submission (``orders.created_at``, which never changes).
    submitted_us: Mapped[int] = mapped_column(BigInteger)
    first_us: Mapped[int] = mapped_column(BigInteger)
    last_us: Mapped[int] = mapped_column(BigInteger)
    #: The last event's status (:data:`STATUS_CODE`; 0 for a status not listed).
    status_code: Mapped[int] = mapped_column(SmallInteger)
    #: First handling by a person (:data:`RESPONSE_ACTIONS` with an actor), and that person.
    responded_us: Mapped[int | None] = mapped_column(BigInteger)
    handler_id: Mapped[int | None] = mapped_column()
    dispatched_us: Mapped[int | None] = mapped_column(BigInteger)
    #: First acceptance; 1 when it was "handle myself"; the last offer before it.
    accepted_us: Mapped[int | None] = mapped_column(BigInteger)
    accepted_by_handle: Mapped[int | None] = mapped_column(SmallInteger)
    offer_us: Mapped[int | None] = mapped_column(BigInteger)
    #: The person of the last acceptance or "done" with a person, + 1 (0: that one had none).
    member_code: Mapped[int | None] = mapped_column()
    done_us: Mapped[int | None] = mapped_column(BigInteger)
    rated_us: Mapped[int | None] = mapped_column(BigInteger)
    #: The last rating's stars (its note as a number; -1 when the note is not one).
    stars: Mapped[int | None] = mapped_column()
    #: The resident's last word: 1 a rating, 0 "not solved".
    verdict: Mapped[int | None] = mapped_column(SmallInteger)
    reopened: Mapped[int] = mapped_column(SmallInteger, default=0)
    closed_us: Mapped[int | None] = mapped_column(BigInteger)
    cancelled_us: Mapped[int | None] = mapped_column(BigInteger)
    escalations: Mapped[int] = mapped_column(SmallInteger, default=0)
    auto_closed: Mapped[int] = mapped_column(SmallInteger, default=0)
    #: The channel of the order's receipt (the outbox message ``receipt:<id>``; the first).
    channel: Mapped[str | None] = mapped_column(String(16))




def fold(order_id: int, submitted_at: datetime, events: Iterable[Any]) -> dict[str, Any] | None:
    """The facts row (column → value) of one order from its events, given in their order
    (rows with ``created_at``, ``action``, ``to_status``, ``actor_id``, ``note``); ``None``
    without events."""
    row: dict[str, Any] = {
        "order_id": order_id, "submitted_us": epoch_us(submitted_at), "first_us": None,
        "last_us": None, "status_code": 0,
        "responded_us": None, "handler_id": None, "dispatched_us": None, "accepted_us": None,
        "accepted_by_handle": None, "offer_us": None, "member_code": None, "done_us": None,
        "rated_us": None, "stars": None, "verdict": None, "reopened": 0, "closed_us": None,
        "cancelled_us": None, "escalations": 0, "auto_closed": 0, "channel": None,
    }
    last_offer = None
    for ev in events:
        t, action, actor = epoch_us(ev.created_at), ev.action, ev.actor_id
        if row["first_us"] is None:
            row["first_us"] = t
        row["last_us"] = t
        row["status_code"] = STATUS_CODE.get(ev.to_status, 0)
        if action in RESPONSE_ACTIONS and actor is not None and row["responded_us"] is None:
            row["responded_us"], row["handler_id"] = t, actor
        if action in DISPATCH_ACTIONS and row["dispatched_us"] is None:
            row["dispatched_us"] = t
        if action in OFFER_ACTIONS:
            last_offer = t if last_offer is None else max(last_offer, t)
        if action in ACCEPT_ACTIONS:
            if row["accepted_us"] is None:
                row["accepted_us"] = t
                row["accepted_by_handle"] = int(action == "handle")
                row["offer_us"] = last_offer
            row["member_code"] = 0 if actor is None else actor + 1
        if action == "done":
            row["done_us"] = t
            if actor is not None:
                row["member_code"] = actor + 1
        if action == "rate":
            row["rated_us"] = t
            note = ev.note or ""
            row["stars"] = int(note) if _DIGITS.fullmatch(note) else -1
            row["verdict"] = 1
        if action == "reopen":
            row["reopened"] += 1
            row["verdict"] = 0
        if ev.to_status in (CLOSED, AUTO_CLOSED) and row["closed_us"] is None:
            row["closed_us"] = t
        if action == "cancel":
            row["cancelled_us"] = t
        if action in ESCALATE_ACTIONS:
            row["escalations"] += 1
        if action == "auto_close":
            row["auto_closed"] = 1
    return row if row["first_us"] is not None else None


def refresh(conn: Connection, order_ids: Iterable[int]) -> int:
    """Recompute the facts rows of these orders from their events; the number written."""
    ids = sorted(set(order_ids))
    written = 0
    for i in range(0, len(ids), 2000):
        chunk = ids[i : i + 2000]
        rows = conn.execute(
            select(OrderEvent.order_id, OrderEvent.created_at, OrderEvent.action,
                   OrderEvent.to_status, OrderEvent.actor_id, OrderEvent.note)
            .where(OrderEvent.order_id.in_(chunk))
            .order_by(OrderEvent.order_id, OrderEvent.created_at, OrderEvent.id)
        ).all()
        written += _write(conn, chunk, rows)
    return written


def _write(conn: Connection, order_ids: Sequence[int], rows: Sequence[Any]) -> int:
    by_order: dict[int, list[Any]] = {}
    for r in rows:
        by_order.setdefault(r.order_id, []).append(r)
    submitted = dict(conn.execute(select(Order.id, Order.created_at)
                                  .where(Order.id.in_(list(by_order)))).all()) if by_order else {}
    facts = [f for oid, evs in by_order.items()
             if oid in submitted and (f := fold(oid, submitted[oid], evs)) is not None]
    if facts:
        channels: dict[str | None, str] = {}
        for ref, channel in conn.execute(
            select(OutboxMessage.ref, OutboxMessage.channel)
            .where(OutboxMessage.ref.in_([refs.receipt(f["order_id"]) for f in facts]))
            .order_by(OutboxMessage.id.desc())
        ).all():
            channels[ref] = channel
        for f in facts:
            f["channel"] = channels.get(refs.receipt(f["order_id"]))
    conn.execute(delete(OrderFactsRow).where(OrderFactsRow.order_id.in_(order_ids)))
    if facts:
        conn.execute(insert(OrderFactsRow), facts)
    return len(facts)


def rebuild(conn: Connection, batch: int = 20000) -> int:
    """Recompute every order's facts row (a migration's backfill, a bulk load); the count."""
    written, after = 0, 0
    while True:
        ids = list(conn.scalars(
            select(Order.id).where(Order.id > after).order_by(Order.id).limit(batch)))
        if not ids:
            return written
        rows = conn.execute(
            select(OrderEvent.order_id, OrderEvent.created_at, OrderEvent.action,
                   OrderEvent.to_status, OrderEvent.actor_id, OrderEvent.note)
            .where(OrderEvent.order_id >= ids[0], OrderEvent.order_id <= ids[-1])
            .order_by(OrderEvent.order_id, OrderEvent.created_at, OrderEvent.id)
        ).all()
        written += _write(conn, ids, rows)
        after = ids[-1]


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, flush_context: Any) -> None:
    """Every flush that adds, changes or deletes order events (or an order's receipt, which
    names its channel) refreshes those orders' rows."""
    touched: set[int] = set()
    for objs in (session.new, session.dirty, session.deleted):
        for obj in objs:
            if isinstance(obj, OrderEvent) and obj.order_id is not None:
                touched.add(obj.order_id)
            elif isinstance(obj, OutboxMessage):
                ref = refs.parse_ref(obj.ref)
                if ref is not None and ref.kind is refs.RefKind.RECEIPT:
                    touched.add(ref.id)
    if touched:
        refresh(session.connection(), touched)
