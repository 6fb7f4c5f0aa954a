"""Orders (residents' requests), their event trail, offers, revisits and points."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow

SUBMITTED = "submitted"
ESCALATED = "escalated"
DISPATCHED = "dispatched"
ACCEPTED = "accepted"
DONE = "done"
CONFIRMED = "confirmed"
CLOSED = "closed"
CANCELLED = "cancelled"
AUTO_CLOSED = "auto_closed"

#: States in which the order waits for its handler (worker/head) to dispatch it.
AWAITING_DISPATCH = (SUBMITTED, ESCALATED)
#: States in which the resident may still cancel (nobody has accepted yet).
CANCELLABLE = (SUBMITTED, ESCALATED, DISPATCHED)
OPEN_STATES = (SUBMITTED, ESCALATED, DISPATCHED, ACCEPTED, DONE)
FINAL_STATES = (CLOSED, CANCELLED, AUTO_CLOSED)

#: Where an order came from: a resident in chat, a member's home visit ("needs help"), or the
#: city platform (12345, through Open311).
SOURCE_RESIDENT = "resident"
SOURCE_VISIT = "visit"
SOURCE_CITY = "city"
SOURCES = (SOURCE_RESIDENT, SOURCE_VISIT, SOURCE_CITY)


class Order(Base):
    """A resident's request for help and where it stands."""

    __tablename__ = "orders"
    #: Reports read a period's orders of a subtree (bot/reports/kpi.py).
    #: ``submit_key`` names the confirmation a resident pressed: one order per key and
    #: resident, whoever presses it how often (a second press is told the first's number).
    __table_args__ = (
        Index("ix_orders_grid_id_created_at", "grid_id", "created_at"),
        Index("uq_orders_resident_submit_key", "resident_id", "submit_key", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    resident_id: Mapped[int] = mapped_column(ForeignKey("person.id"), index=True)
    building_id: Mapped[int] = mapped_column(ForeignKey("building.id"))
    room: Mapped[str | None] = mapped_column(String(32))
    grid_id: Mapped[int] = mapped_column(ForeignKey("grid.id"), index=True)
    handling_grid_id: Mapped[int] = mapped_column(ForeignKey("grid.id"), index=True)
    category: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text)
    photo: Mapped[str | None] = mapped_column(String(300))
    #: A voice message the resident sent (a media-store reference), forwarded to the handler.
    voice: Mapped[str | None] = mapped_column(String(300))
    submit_key: Mapped[str | None] = mapped_column(String(32))
    latitude: Mapped[float | None] = mapped_column()
    longitude: Mapped[float | None] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default=SUBMITTED, index=True)
    #: ``resident``, ``visit`` or ``city`` (see :data:`SOURCES`).
    source: Mapped[str] = mapped_column(
        String(16), default=SOURCE_RESIDENT, server_default=SOURCE_RESIDENT
    )
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("person.id"), index=True)
    rating: Mapped[int | None] = mapped_column()
    done_note: Mapped[str | None] = mapped_column(Text)
    done_photo: Mapped[str | None] = mapped_column(String(300))
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class OrderEvent(Base):
    """One transition of an order: who, when, from which state to which, and a note."""

    __tablename__ = "order_event"
    #: Reports replay an order's events up to a period's end, and find a period's work.
    __table_args__ = (
        Index("ix_order_event_order_id_created_at", "order_id", "created_at"),
        Index("ix_order_event_actor_id_created_at", "actor_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("person.id"))
    action: Mapped[str] = mapped_column(String(24))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


OFFER_OPEN = "open"
OFFER_ACCEPTED = "accepted"
OFFER_TAKEN = "taken"
OFFER_DECLINED = "declined"
OFFER_WITHDRAWN = "withdrawn"


class Offer(Base):
    """An order offered to one member (by assignment or broadcast)."""

    __tablename__ = "offer"
    __table_args__ = (
        UniqueConstraint("order_id", "person_id", "round"),
        Index("ix_offer_order_status", "order_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id"), index=True)
    round: Mapped[int] = mapped_column(default=1)
    status: Mapped[str] = mapped_column(String(16), default=OFFER_OPEN)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Revisit(Base):
    """A follow-up call (回访) the grid head owes on a low-rated order."""

    __tablename__ = "revisit"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    grid_id: Mapped[int] = mapped_column(ForeignKey("grid.id"))
    head_id: Mapped[int | None] = mapped_column(ForeignKey("person.id"))
    status: Mapped[str] = mapped_column(String(16), default="open")
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column()


class PointsEntry(Base):
    """One line of the points (积分) ledger: an award or an admin's adjustment, with its reason.

    The ledger is the truth: a person's points are the sum of their rows (``Person.points`` is
    kept equal to that sum by :func:`bot.core.points.award` and :func:`bot.core.points.adjust`,
    the only writers). ``award_key`` names the event an award is for (``order_done:42``,
    ``patrol:7`` …) and is unique, so an event credits once however often it is handled.
    Adjustments have no key and record who made them and why.
    """

    __tablename__ = "points_entry"
    __table_args__ = (UniqueConstraint("person_id", "order_id", "reason"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id"), index=True)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id", ondelete="SET NULL"))
    points: Mapped[int] = mapped_column()
    reason: Mapped[str] = mapped_column(String(32))
    award_key: Mapped[str | None] = mapped_column(String(100), unique=True)
    #: The adjusting admin's words (why).
    note: Mapped[str | None] = mapped_column(Text)
    #: Who adjusted: the admin's person row (chat) and a display name (also for the CLI user).
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("person.id", ondelete="SET NULL"))
    actor_name: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
