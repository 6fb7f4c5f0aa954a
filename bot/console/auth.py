"""Sign-in without passwords: one-time links sent in chat, and server-side sessions.

A link is ``<nonce>.<signature>``: the nonce is 32 random bytes, the signature an HMAC (the
service's signing key, as for invites) over the nonce, the person and the expiry. Only the
SHA-256 of the nonce is stored. Signing in is a conditional UPDATE (``used_at IS NULL`` and
not expired) checked by row count, so a link opens at most one session even when two requests
race with it. A session cookie is likewise only a hash in the database; each session has its
own CSRF token, and ends after ``GRIDBOT_CONSOLE_IDLE_MINUTES`` without a request or on
sign-out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from models import ConsoleLink, ConsoleSession

#: How long a sign-in link may be used.
LINK_VALID = timedelta(minutes=10)
#: A session's last activity is written at most this often (the idle clock's resolution).
TOUCH_EVERY = timedelta(minutes=1)
#: Longest token we look at (anything longer is not ours).
MAX_TOKEN = 200


def digest(secret: str) -> str:
    """What the database keeps of a link's nonce or a session cookie."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _signature(key: bytes, nonce: str, person_id: int, expires_at: datetime) -> str:
    message = f"console|{nonce}|{person_id}|{int(expires_at.timestamp())}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


async def issue_link(
    session: AsyncSession, key: bytes, person_id: int, now: datetime
) -> str:
    """A new sign-in token for ``person_id``, valid :data:`LINK_VALID` (stored in the caller's
    transaction, so it is committed before the chat message carrying it goes out)."""
    nonce = secrets.token_urlsafe(32)
    expires = (now + LINK_VALID).replace(microsecond=0)
    session.add(
        ConsoleLink(
            person_id=person_id, token_hash=digest(nonce), expires_at=expires, created_at=now
        )
    )
    await session.flush()
    return f"{nonce}.{_signature(key, nonce, person_id, expires)}"


async def consume_link(
    session: AsyncSession, key: bytes, token: str, now: datetime
) -> int | None:
    """The person a valid, unused, unexpired link is for, marking it used; ``None`` otherwise
    (a reused, expired, forged or unknown link). One winner under concurrent use."""
    if len(token) > MAX_TOKEN or token.count(".") != 1:
        return None
    nonce, signature = token.split(".")
    link = await session.scalar(
        select(ConsoleLink).where(ConsoleLink.token_hash == digest(nonce))
    )
    if link is None:
        return None
    expected = _signature(key, nonce, link.person_id, link.expires_at)
    if not hmac.compare_digest(expected, signature):
        return None
    won = await session.execute(
        update(ConsoleLink)
        .where(
            ConsoleLink.id == link.id,
            ConsoleLink.used_at.is_(None),
            ConsoleLink.expires_at > now,
        )
        .values(used_at=now)
        .returning(ConsoleLink.person_id)
    )
    row = won.first()
    return int(row[0]) if row is not None else None


async def link_owner(session: AsyncSession, token: str) -> int | None:
    """Whom a link was made for (to greet them in their language), without using it."""
    if len(token) > MAX_TOKEN or token.count(".") != 1:
        return None
    owner = await session.scalar(
        select(ConsoleLink.person_id).where(ConsoleLink.token_hash == digest(token.split(".")[0]))
    )
    return int(owner) if owner is not None else None


@dataclass(frozen=True)
class Opened:
    """A new session: the cookie value (given to the browser once) and its CSRF token."""

    cookie: str
    csrf: str


async def open_session(session: AsyncSession, person_id: int, now: datetime) -> Opened:
    """Start a session for ``person_id``."""
    cookie = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    session.add(
        ConsoleSession(
            person_id=person_id,
            token_hash=digest(cookie),
            csrf=csrf,
            created_at=now,
            last_seen_at=now,
        )
    )
    await session.flush()
    return Opened(cookie, csrf)


async def current_session(
    session: AsyncSession, cookie: str | None, now: datetime, idle: timedelta
) -> ConsoleSession | None:
    """The live session of this cookie, its last activity moved to ``now``; ``None`` when
    there is none, it was ended, or it was idle longer than ``idle`` (then it is ended)."""
    if not cookie or len(cookie) > MAX_TOKEN:
        return None
    row = await session.scalar(
        select(ConsoleSession).where(ConsoleSession.token_hash == digest(cookie))
    )
    if row is None or row.ended_at is not None:
        return None
    if row.last_seen_at + idle <= now:
        row.ended_at = now
        return None
    if now - row.last_seen_at >= TOUCH_EVERY:  # not a write on every page view
        row.last_seen_at = now
    return row


async def end_session(session: AsyncSession, cookie: str | None, now: datetime) -> None:
    """Sign out: the session is ended on the server (the cookie is worth nothing after)."""
    if not cookie or len(cookie) > MAX_TOKEN:
        return
    await session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.token_hash == digest(cookie), ConsoleSession.ended_at.is_(None))
        .values(ended_at=now)
    )
