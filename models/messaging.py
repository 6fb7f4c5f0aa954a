"""Delivery and conversation plumbing: outbox, processed updates, conversation state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow

OUT_PENDING = "pending"
OUT_SENDING = "sending"
OUT_SENT = "sent"
OUT_FAILED = "failed"


class OutboxMessage(Base):
    """A message to send (or a sent message to edit), written with the state change it reports.

    ``ref`` names a message so that later rows can edit it (``edit_ref``), e.g. ``offer:12``.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_status_due", "status", "not_before"),
        #: A chat's rows: the claim's "nobody else is sending to this chat" test.
        Index("ix_outbox_chat", "channel", "chat_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    chat_id: Mapped[str] = mapped_column(String(128))
    person_id: Mapped[int | None] = mapped_column(ForeignKey("person.id", ondelete="SET NULL"))
    payload: Mapped[dict[str, Any]] = mapped_column()
    ref: Mapped[str | None] = mapped_column(String(64), index=True)
    edit_ref: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=OUT_PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    not_before: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_until: Mapped[datetime | None] = mapped_column()
    #: The deliverer holding the claim (``bot.instance.Holder``): a dead one's rows are freed.
    claimed_by: Mapped[str | None] = mapped_column(String(96))
    platform_message_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column()


class ProcessedUpdate(Base):
    """An inbound platform delivery already handled: a redelivery is recognised and skipped."""

    __tablename__ = "processed_update"
    __table_args__ = (UniqueConstraint("channel", "dedupe_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    dedupe_key: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Conversation(Base):
    """Where one user stands in a multi-step flow (e.g. placing an order), kept across restarts."""

    __tablename__ = "conversation"
    __table_args__ = (UniqueConstraint("identity_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    identity_id: Mapped[int] = mapped_column(ForeignKey("identity.id", ondelete="CASCADE"))
    flow: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class OfferedChoices(Base):
    """The numbered choices last shown to a user on a platform without buttons (WeChat):
    replying "2" means pressing the second one. ``options`` is a list of [label, payload]."""

    __tablename__ = "offered_choices"

    identity_id: Mapped[int] = mapped_column(
        ForeignKey("identity.id", ondelete="CASCADE"), primary_key=True
    )
    options: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebChatMessage(Base):
    """A message shown in the local web chat (that channel's 'platform' storage)."""

    __tablename__ = "webchat_message"

    id: Mapped[int] = mapped_column(primary_key=True)
    chat_id: Mapped[str] = mapped_column(String(128), index=True)
    direction: Mapped[str] = mapped_column(String(3))
    payload: Mapped[dict[str, Any]] = mapped_column()
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class KeyValue(Base):
    """Small service-wide values, e.g. the generated signing secret."""

    __tablename__ = "kv"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


__all__ = [
    "OUT_FAILED",
    "OUT_PENDING",
    "OUT_SENDING",
    "OUT_SENT",
    "Conversation",
    "KeyValue",
    "OfferedChoices",
    "OutboxMessage",
    "ProcessedUpdate",
    "WebChatMessage",
]


class SendBudgetState(Base):
    """A channel's shared send budget (``bot.send_budget.PostgresBudget``): its pause, and the
    row every take locks so that the takes of all instances for one bot go one at a time."""

    __tablename__ = "send_budget"

    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    #: Nobody sends on this channel before this (the platform answered 429 ``retry_after``).
    paused_until: Mapped[datetime | None] = mapped_column()


class SendSlot(Base):
    """One request to a platform, counted against the shared limits until it is old enough
    to count in no window (``bot.send_budget.SLOT_KEEP``)."""

    __tablename__ = "send_slot"
    __table_args__ = (
        Index("ix_send_slot_done", "channel", "done_at"),
        Index("ix_send_slot_chat", "channel", "chat_id", "started_at"),
        Index("ix_send_slot_started", "channel", "started_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    chat_id: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column()
    #: When the request finished (whatever its outcome); NULL while it is in flight.
    done_at: Mapped[datetime | None] = mapped_column()
