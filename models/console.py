"""The web console's sign-in links, sessions and the audit trail of what was done there."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow


class ConsoleLink(Base):
    """A one-time sign-in link sent in chat to a head or admin (only its hash is kept).

    Used once: the sign-in is a conditional ``UPDATE … WHERE used_at IS NULL`` checked by row
    count, so two requests racing with the same link open at most one session."""

    __tablename__ = "console_link"

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConsoleSession(Base):
    """A signed-in browser: the cookie's hash, the person, its CSRF token and last activity."""

    __tablename__ = "console_session"

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column()


class ConsoleAction(Base):
    """One action taken in the console (escalate, assign, points, notice): who, what, when."""

    __tablename__ = "console_action"

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(32))
    #: What it was done to: ``order:42``, ``person:7``, ``grid:xh-g1``.
    target: Mapped[str] = mapped_column(String(100))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ConsoleReport(Base):
    """The overview report of one grid's subtree for one month, kept for every instance of the
    console (computed in the background, see ``bot.console.kept``): when it was computed and
    the figures as JSON (this month and the one before, per child grid)."""

    __tablename__ = "console_report"

    grid_id: Mapped[int] = mapped_column(
        ForeignKey("grid.id", ondelete="CASCADE"), primary_key=True
    )
    #: ``YYYY-MM``
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    computed_at: Mapped[datetime] = mapped_column()
    #: When someone last opened this overview in the console (recently viewed scopes are
    #: recomputed first); ``None``: only computed for a head's or admin's own grid.
    viewed_at: Mapped[datetime | None] = mapped_column(index=True)
    report: Mapped[str] = mapped_column(Text)
    #: How long computing it took (milliseconds): whether a viewer of a subtree with nothing
    #: kept for a month is worth keeping waiting for its computation; ``None``: not measured.
    took_ms: Mapped[int | None] = mapped_column()
