"""Signed, expiring invitations to take a role, and their QR codes.

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
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
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


# --------------------------------------------------------------------------------------------
# Pictures.

_CJK_FONT_PATTERNS = (
    "NotoSansCJK*",
    "NotoSansSC*",
    "NotoSerifCJK*",
    "SourceHanSans*",
    "wqy-microhei*",
    "wqy-zenhei*",
    "wqy*",
    "DroidSansFallback*",
    "msyh*",
    "simhei*",
    "simsun*",
    "PingFang*",
    "Hiragino Sans GB*",
)
_FONT_DIRS = (
    Path("/usr/share/fonts"),
    Path("/usr/local/share/fonts"),
    Path.home() / ".fonts",
    Path.home() / ".local/share/fonts",
    Path("/System/Library/Fonts"),
    Path("/Library/Fonts"),
    Path("C:/Windows/Fonts"),
)
_LATIN_FONT_PATTERNS = ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf", "arial.ttf")


def _find_font(patterns: Sequence[str]) -> Path | None:
    for pattern in patterns:
        for folder in _FONT_DIRS:
            try:
                if not folder.is_dir():
                    continue
                found = sorted(folder.rglob(pattern))
            except OSError:
                continue
            for candidate in found:
                if candidate.suffix.lower() in (".ttf", ".ttc", ".otf"):
                    return candidate
    return None


@lru_cache(maxsize=1)
def find_cjk_font() -> Path | None:
    """A font file that can draw Chinese, if the system has one."""
    return _find_font(_CJK_FONT_PATTERNS)


@lru_cache(maxsize=1)
def _find_latin_font() -> Path | None:
    return _find_font(_LATIN_FONT_PATTERNS)


def _is_latin(text: str) -> bool:
    return all(ord(ch) < 0x2E80 for ch in text)


@dataclass
class _Fonts:
    cjk: Any
    latin: Any


@lru_cache(maxsize=16)
def _fonts(size: int) -> _Fonts:
    from PIL import ImageFont

    cjk = None
    path = find_cjk_font()
    if path is not None:
        try:
            cjk = ImageFont.truetype(str(path), size)
        except OSError:
            log.warning("cannot load font %s", path)
    latin: Any = cjk
    if latin is None:
        latin_path = _find_latin_font()
        try:
            latin = (
                ImageFont.truetype(str(latin_path), size)
                if latin_path
                else ImageFont.load_default(size)
            )
        except (OSError, TypeError):
            latin = ImageFont.load_default()
    return _Fonts(cjk=cjk, latin=latin)


def _font_for(text: str, size: int) -> Any | None:
    """The font to draw ``text`` with, or None when no installed font can draw it."""
    fonts = _fonts(size)
    if fonts.cjk is not None:
        return fonts.cjk
    return fonts.latin if _is_latin(text) else None


def _drawable_lines(text: str | None, size: int, width_chars: int) -> list[tuple[str, Any]]:
    """Split text into lines that fit, keeping only the lines some font can draw."""
    out: list[tuple[str, Any]] = []
    for raw in (text or "").splitlines():
        raw = raw.strip()
        if not raw:
            continue
        font = _font_for(raw, size)
        if font is None:
            log.info("no CJK font installed: a caption line is left out")
            continue
        # CJK glyphs are about twice as wide as Latin ones.
        limit = width_chars if _is_latin(raw) else max(1, width_chars // 2)
        for part in textwrap.wrap(raw, limit) or [raw]:
            out.append((part, font))
    return out


def _qr_image(data: str, box_size: int = 10, border: int = 4) -> Any:
    import qrcode
    from qrcode.constants import ERROR_CORRECT_M

    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_M, box_size=box_size, border=border)
    qr.add_data(data)
    qr.make(fit=True)
    return qr.make_image(fill_color="black", back_color="white").get_image().convert("RGB")


def _text_width(draw: Any, text: str, font: Any) -> int:
    left, _top, right, _bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left)


def qr_png(data: str, path: Path, caption: str | None = None) -> Path:
    """Write a QR code of ``data`` as a PNG, with ``caption`` lines below it when drawable.

    Lines in Chinese need a CJK font (Noto Sans CJK, WenQuanYi, ...); without one they are left
    out rather than drawn as boxes. Returns ``path``.
    """
    from PIL import Image, ImageDraw

    img = _qr_image(data)
    size = max(18, img.width // 18)
    lines = _drawable_lines(caption, size, max(8, img.width * 2 // size - 2))
    if lines:
        line_h = int(size * 1.35)
        canvas = Image.new("RGB", (img.width, img.height + line_h * len(lines) + size), "white")
        canvas.paste(img, (0, 0))
        draw = ImageDraw.Draw(canvas)
        y = img.height - size // 2
        for text, font in lines:
            x = max(0, (img.width - _text_width(draw, text, font)) // 2)
            draw.text((x, y), text, fill="black", font=font)
            y += line_h
        img = canvas
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


#: A4 at 150 dpi.
SHEET_SIZE = (1240, 1754)
SHEET_COLUMNS = 3
SHEET_ROWS = 4


def building_sheet(entries: list[tuple[str, str]], path: Path, title: str) -> list[Path]:
    """Print-ready A4 PNG page(s) of labelled QR codes, one per ``(label, data)`` entry.

    Twelve codes fit a page; more entries continue on ``<stem>-2.png``, ``<stem>-3.png``, ...
    Returns the written paths. Labels may hold several lines (e.g. a name and a code): a line
    no installed font can draw is left out.
    """
    from PIL import Image, ImageDraw

    per_page = SHEET_COLUMNS * SHEET_ROWS
    pages = [entries[i : i + per_page] for i in range(0, len(entries), per_page)] or [[]]
    width, height = SHEET_SIZE
    margin = 60
    title_size, label_size = 44, 26
    cell_w = (width - 2 * margin) // SHEET_COLUMNS
    written: list[Path] = []
    path.parent.mkdir(parents=True, exist_ok=True)
    for number, page in enumerate(pages, start=1):
        sheet = Image.new("RGB", SHEET_SIZE, "white")
        draw = ImageDraw.Draw(sheet)
        heading = title if len(pages) == 1 else f"{title} ({number}/{len(pages)})"
        y = margin
        for text, font in _drawable_lines(heading, title_size, 2 * width // title_size - 4):
            draw.text(((width - _text_width(draw, text, font)) // 2, y), text, "black", font)
            y += int(title_size * 1.4)
        top = max(y + 20, margin + 80)
        cell_h = (height - top - margin) // SHEET_ROWS
        for index, (label, data) in enumerate(page):
            col, row = index % SHEET_COLUMNS, index // SHEET_COLUMNS
            x0, y0 = margin + col * cell_w, top + row * cell_h
            lines = _drawable_lines(label, label_size, 2 * cell_w // label_size - 2)[:3]
            text_h = int(label_size * 1.3) * len(lines)
            side = min(cell_w - 20, cell_h - text_h - 30)
            qr = _qr_image(data, box_size=4, border=2).resize(
                (side, side), Image.Resampling.NEAREST
            )
            sheet.paste(qr, (x0 + (cell_w - side) // 2, y0 + 10))
            ty = y0 + 10 + side + 4
            for text, font in lines:
                draw.text(
                    (x0 + (cell_w - _text_width(draw, text, font)) // 2, ty), text, "black", font
                )
                ty += int(label_size * 1.3)
            # Light cut lines between the codes.
            draw.rectangle((x0, y0, x0 + cell_w - 1, y0 + cell_h - 1), outline=(200, 200, 200))
        target = path if number == 1 else path.with_name(f"{path.stem}-{number}{path.suffix}")
        sheet.save(target, format="PNG", dpi=(150, 150))
        written.append(target)
    return written
