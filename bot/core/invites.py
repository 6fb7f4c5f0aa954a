"""Signed, expiring invitations to take a role (their pictures: :mod:`bot.printing`).

A token looks like ``i2s_Q9kx0aBcdEfGhIjKlMnOpQrS``: ``i``, the invite id in base 36, ``_``, the
row's nonce (8 characters) and an HMAC-SHA256 signature truncated to 12 bytes (16 characters,
base64url without padding). It fits Telegram's deep link (``/start PAYLOAD``: at most 64
characters of ``A-Z a-z 0-9 _ -``) and WeChat's ``scene_str`` (at most 64 characters).

The signature is recomputed from the database row on redemption, so changing any part of a
token, or the row's role, grid, building or expiry, makes it fail.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
from datetime import datetime
from typing import Any, cast

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from models.messaging import KeyValue
from models.people import ROLES, Invite

log = logging.getLogger(__name__)

SECRET_KV_KEY = "secret_key"
TOKEN_MAX_LENGTH = 64
TOKEN_RE = re.compile(r"i([0-9a-z]{1,13})_([A-Za-z0-9_-]{8})([A-Za-z0-9_-]{16})\Z")
_NONCE_BYTES = 6
_SIG_BYTES = 12
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"

#: Reasons an :class:`InviteError` may carry.
MALFORMED = "malformed"
FORGED = "forged"
EXPIRED = "expired"
USED = "used"
REVOKED = "revoked"


class InviteError(Exception):
    """An invite token was refused; ``reason`` is one of the module's reason codes."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Key and signature.


async def signing_key(session: AsyncSession, settings: Settings) -> bytes:
    """The key that signs invites: the configured secret, else one generated and kept in ``kv``.

    Two processes generating at once both insert; the loser's insert fails on the primary key
    and it reads the winner's key back.
    """
    if settings.secret_key:
        return settings.secret_key.encode()
    stored = await session.get(KeyValue, SECRET_KV_KEY)
    if stored is not None:
        return stored.value.encode()
    value = secrets.token_urlsafe(32)
    try:
        async with session.begin_nested():
            session.add(KeyValue(key=SECRET_KV_KEY, value=value))
    except IntegrityError:
        stored = await session.scalar(select(KeyValue).where(KeyValue.key == SECRET_KV_KEY))
        assert stored is not None
        value = stored.value
    return value.encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _base36(number: int) -> str:
    if number < 0:
        raise ValueError("negative id")
    digits = ""
    while True:
        number, rem = divmod(number, 36)
        digits = _B36[rem] + digits
        if number == 0:
            return digits


def _signature(key: bytes, invite: Invite) -> str:
    canonical = "|".join(
        (
            "gridbot-invite-v1",
            str(invite.id),
            invite.nonce,
            invite.role,
            str(invite.grid_id),
            "" if invite.building_id is None else str(invite.building_id),
            str(int(invite.expires_at.timestamp())),
        )
    )
    digest = hmac.new(key, canonical.encode(), hashlib.sha256).digest()
    return _b64(digest[:_SIG_BYTES])


def invite_token(key: bytes, invite: Invite) -> str:
    """The token of a stored invite (it can be rebuilt at any time from the row and the key)."""
    return f"i{_base36(invite.id)}_{invite.nonce}{_signature(key, invite)}"


# --------------------------------------------------------------------------------------------
# Create and redeem.


async def create_invite(
    session: AsyncSession,
    key: bytes,
    *,
    role: str,
    grid_id: int,
    building_id: int | None = None,
    expires_at: datetime,
    max_uses: int | None,
) -> tuple[Invite, str]:
    """Store a new invite and return it with its token.

    ``max_uses=None`` means any number of uses until it expires (stairwell QR codes).
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    if expires_at.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    if max_uses is not None and max_uses < 1:
        raise ValueError("max_uses must be at least 1")
    nonce = _b64(secrets.token_bytes(_NONCE_BYTES))
    invite = Invite(
        role=role,
        grid_id=grid_id,
        building_id=building_id,
        nonce=nonce,
        max_uses=max_uses,
        uses=0,
        expires_at=expires_at,
        revoked=False,
    )
    session.add(invite)
    await session.flush()
    token = invite_token(key, invite)
    assert len(token) <= TOKEN_MAX_LENGTH
    return invite, token


def parse_token(token: str) -> tuple[int, str, str]:
    """Split a token into (invite id, nonce, signature); :class:`InviteError` if malformed."""
    match = TOKEN_RE.match(token.strip()) if isinstance(token, str) else None
    if match is None:
        raise InviteError(MALFORMED)
    return int(match.group(1), 36), match.group(2), match.group(3)


async def check_invite(session: AsyncSession, key: bytes, token: str, now: datetime) -> Invite:
    """Return the invite a token names if it may be redeemed now, without using it up."""
    invite_id, nonce, sig = parse_token(token)
    invite = await session.get(Invite, invite_id, populate_existing=True)
    if invite is None:
        raise InviteError(FORGED)
    good_nonce = hmac.compare_digest(nonce.encode(), invite.nonce.encode())
    good_sig = hmac.compare_digest(sig.encode(), _signature(key, invite).encode())
    if not (good_nonce and good_sig):
        raise InviteError(FORGED)
    if invite.revoked:
        raise InviteError(REVOKED)
    if now >= invite.expires_at:
        raise InviteError(EXPIRED)
    if invite.max_uses is not None and invite.uses >= invite.max_uses:
        raise InviteError(USED)
    return invite


async def redeem_invite(session: AsyncSession, key: bytes, token: str, now: datetime) -> Invite:
    """Check a token and count one use of its invite; raise :class:`InviteError` if refused.

    The use is counted by a conditional UPDATE (``uses < max_uses``) whose row count decides, so
    two concurrent redemptions of a single-use invite cannot both succeed.
    """
    invite = await check_invite(session, key, token, now)
    stmt = (
        update(Invite)
        .where(Invite.id == invite.id, Invite.revoked.is_(False))
        .values(uses=Invite.uses + 1)
        .execution_options(synchronize_session=False)
    )
    if invite.max_uses is not None:
        stmt = stmt.where(Invite.uses < Invite.max_uses)
    result = cast(CursorResult[Any], await session.execute(stmt))
    await session.refresh(invite)
    if result.rowcount != 1:
        raise InviteError(REVOKED if invite.revoked else USED)
    return invite


async def revoke_invite(session: AsyncSession, invite_id: int) -> bool:
    """Revoke an invite; tell whether it existed."""
    invite = await session.get(Invite, invite_id)
    if invite is None:
        return False
    invite.revoked = True
    await session.flush()
    return True


#: ``kv`` key of the Telegram bot's username, stored as ``<bot id>:<username>`` by the service
#: (or the admin command line) once ``getMe`` told it.
BOT_USERNAME_KV = "telegram_bot_username"
_USERNAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{3,31}\Z")


def valid_bot_username(name: str) -> bool:
    """Whether ``name`` (with or without ``@``) can be a Telegram username."""
    return bool(_USERNAME_RE.match(name.lstrip("@")))


async def remember_bot_username(session: AsyncSession, bot_id: str, username: str) -> None:
    """Keep the bot's username in ``kv`` so that every process of the deployment knows it."""
    value = f"{bot_id}:{username.lstrip('@')}"
    row = await session.get(KeyValue, BOT_USERNAME_KV)
    if row is None:
        try:
            async with session.begin_nested():  # two instances starting at once: one inserts
                session.add(KeyValue(key=BOT_USERNAME_KV, value=value))
            return
        except IntegrityError:
            row = await session.scalar(select(KeyValue).where(KeyValue.key == BOT_USERNAME_KV))
            assert row is not None
    if row.value != value:
        row.value = value
    await session.flush()


async def stored_bot_username(session: AsyncSession, bot_id: str | None) -> str | None:
    """The username kept by :func:`remember_bot_username`; when ``bot_id`` is given, only if it
    was stored for that bot (a new token may name another bot)."""
    row = await session.get(KeyValue, BOT_USERNAME_KV)
    if row is None:
        return None
    stored_id, _, username = row.value.partition(":")
    if not username or (bot_id is not None and stored_id != bot_id):
        return None
    return username


def telegram_link(bot_username: str, token: str) -> str:
    """The Telegram deep link that starts the bot with the token (``/start <token>``)."""
    name = bot_username.lstrip("@")
    if not valid_bot_username(name):
        raise ValueError(f"not a Telegram bot username: {bot_username!r}")
    return f"https://t.me/{name}?start={token}"
