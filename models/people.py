"""People, their platform identities, roles in the grid tree and invites."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow

ROLE_RESIDENT = "resident"
ROLE_MEMBER = "member"
ROLE_WORKER = "worker"
ROLE_HEAD = "head"
ROLE_ADMIN = "admin"
ROLES = (ROLE_RESIDENT, ROLE_MEMBER, ROLE_WORKER, ROLE_HEAD, ROLE_ADMIN)


class Person(Base):
    """A human being, whatever platforms they use. ``key`` is the import's stable id."""

    __tablename__ = "person"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str | None] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    phone: Mapped[str | None] = mapped_column(String(32))
    locale: Mapped[str | None] = mapped_column(String(16))
    points: Mapped[int] = mapped_column(default=0)
    #: The channel pushes go to when the person chose one; else the one they used last.
    preferred_channel: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Identity(Base):
    """A person's account on one channel (telegram user id, web chat id, WeChat openid)."""

    __tablename__ = "identity"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(128))
    chat_id: Mapped[str] = mapped_column(String(128))
    locale: Mapped[str | None] = mapped_column(String(16))
    last_inbound_at: Mapped[datetime | None] = mapped_column()
    #: Pushes sent since ``last_inbound_at`` (WeChat allows a handful per 48 h window).
    window_pushes: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LinkCode(Base):
    """A one-time code that links a second platform identity to a person."""

    __tablename__ = "link_code"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(16), unique=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Role(Base):
    """A person's role on a grid; residents also carry their building and room."""

    __tablename__ = "role"
    __table_args__ = (UniqueConstraint("person_id", "grid_id", "role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), index=True)
    grid_id: Mapped[int] = mapped_column(ForeignKey("grid.id"), index=True)
    role: Mapped[str] = mapped_column(String(16), index=True)
    building_id: Mapped[int | None] = mapped_column(ForeignKey("building.id"))
    room: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Invite(Base):
    """A signed, expiring invitation to take a role (the signature itself is not stored)."""

    __tablename__ = "invite"

    id: Mapped[int] = mapped_column(primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    grid_id: Mapped[int] = mapped_column(ForeignKey("grid.id"))
    building_id: Mapped[int | None] = mapped_column(ForeignKey("building.id"))
    nonce: Mapped[str] = mapped_column(String(16))
    max_uses: Mapped[int | None] = mapped_column()
    uses: Mapped[int] = mapped_column(default=0)
    expires_at: Mapped[datetime] = mapped_column()
    revoked: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
