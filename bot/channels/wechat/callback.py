"""WeChat's callbacks, from the request to an :class:`~bot.ports.Inbound`.

:class:`CallbackCheck` verifies a callback (plain mode: ``signature``; safe mode:
``msg_signature`` and AES through wechatpy's ``WeChatCrypto``, and nothing but ciphertext;
both compared in constant time, stale timestamps refused), keeps the XML safe (entity
declarations, malformed bodies and bad ciphertext are the sender's fault: 400) and parses it
(:func:`to_inbound`). :class:`ReplayGuard` refuses a query string seen before with another body
(a replay), for every instance through the database. WeCom's callbacks are signed and guarded
the same way (:mod:`bot.channels.wecom` uses :func:`signature`, :func:`same`,
:func:`fresh_timestamp` and :class:`ReplayGuard`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from xml.parsers.expat import ExpatError

import xmltodict
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.replies import TextReply

from bot.channels.wechat.menu import MENU_KEYS
from bot.ports import Inbound
from models import WeChatCallback

log = logging.getLogger(__name__)

CHANNEL = "wechat"

Clock = Callable[[], datetime]


def signature(*parts: str) -> str:
    """WeChat's callback signature: SHA-1 of the sorted parts."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def same(a: str, b: str) -> bool:
    """Compare two signatures in constant time."""
    return hmac.compare_digest(a.encode(), b.encode())


def fresh_timestamp(timestamp: str, now: datetime, skew: int) -> bool:
    """Whether a callback's ``timestamp`` (seconds) is within ``skew`` seconds of ``now``."""
    if not timestamp.isdigit():
        return False
    return abs(now.timestamp() - int(timestamp)) <= skew


def sanitize_cdata(value: str) -> str:
    """Make text safe inside ``<![CDATA[...]]>``: a ``]]>`` is split across two sections."""
    return value.replace("]]>", "]]]]><![CDATA[>")


def to_inbound(message: Any, received_at: datetime) -> Inbound | None:
    """Turn a wechatpy message (:func:`wechatpy.parse_message`) into an :class:`Inbound`;
    ``None`` if it is nothing for the core (unsubscribe, view, automatic location reports...).
    A voice message is kept (``voice``); WeChat's speech recognition, when the account has it
    on, is its text.

    ``subscribe`` with ``qrscene_<token>`` and ``SCAN`` with ``<token>`` are ``/start <token>``;
    a plain ``subscribe`` is ``/start``; a menu ``CLICK`` is its command.
    """
    data: Mapping[str, Any] = message._data
    openid = str(data.get("FromUserName") or "")
    if not openid:
        return None
    msg_type = str(data.get("MsgType") or "").lower()
    msg_id = data.get("MsgId")
    # Events carry no MsgId: the sender and the second they happened name them (plus the event
    # type, so that a subscribe and a menu click within one second stay two events).
    dedupe = (
        f"{msg_id}" if msg_id else f"{openid}:{data.get('CreateTime')}:{data.get('Event')}"
    )
    base: dict[str, Any] = {
        "channel": CHANNEL,
        "user_id": openid,
        "chat_id": openid,
        "dedupe_key": dedupe[:128],
        "received_at": received_at,
    }
    if msg_type == "text":
        return Inbound(text=str(data.get("Content") or ""), **base)
    if msg_type == "image":
        media_id = str(data.get("MediaId") or "")
        pic_url = str(data.get("PicUrl") or "")
        if not media_id and not pic_url:
            return None
        return Inbound(photo=f"wx:{media_id}|{pic_url}", **base)
    if msg_type == "voice":
        media_id = str(data.get("MediaId") or "")
        if not media_id:
            return None
        recognition = str(data.get("Recognition") or "").strip()
        return Inbound(voice=f"wx:{media_id}|", text=recognition or None, **base)
    if msg_type == "location":
        try:
            lat, lon = float(data["Location_X"]), float(data["Location_Y"])
        except (KeyError, TypeError, ValueError):
            return None
        return Inbound(location=(lat, lon), **base)
    if msg_type != "event":
        return None
    event = str(getattr(message, "event", "") or "")
    if event == "subscribe_scan" or event == "scan":
        scene = str(getattr(message, "scene_id", "") or "").strip()
        return Inbound(text=f"/start {scene}" if scene else "/start", **base)
    if event == "subscribe":
        return Inbound(text="/start", **base)
    if event == "click":
        key = str(getattr(message, "key", "") or "")
        if key in MENU_KEYS:
            return Inbound(text=f"/{key}", **base)
    return None


@dataclass(frozen=True)
class Callback:
    """A verified and parsed callback: its fields, what it is for the core (``None``:
    nothing), and whether it came encrypted (the reply then goes back encrypted)."""

    data: Mapping[str, Any]
    inbound: Inbound | None
    encrypted: bool


class CallbackCheck:
    """The callback checks of one account (plain mode, or safe mode with ``aes_key``)."""

    def __init__(
        self, *, appid: str, token: str, aes_key: str | None, clock: Clock, timestamp_skew: int
    ) -> None:
        self.token = token
        self.crypto = WeChatCrypto(token, aes_key, appid) if aes_key else None
        self.clock = clock
        self.timestamp_skew = timestamp_skew

    def query_ok(self, params: Mapping[str, str]) -> bool:
        """Whether a callback's query string is ours: a fresh timestamp and ``signature``
        (token, timestamp, nonce), which WeChat sends in plain and safe mode alike. The web
        server checks it before reading the body; it does not cover the body (see
        :meth:`read` for what does)."""
        timestamp, nonce = params.get("timestamp", ""), params.get("nonce", "")
        if not fresh_timestamp(timestamp, self.clock(), self.timestamp_skew):
            return False
        return same(signature(self.token, timestamp, nonce), params.get("signature", ""))

    def echo(self, params: Mapping[str, str]) -> tuple[int, str]:
        """The URL check of the admin console: echo ``echostr`` when the signature is ours."""
        if not self.query_ok(params):
            return 403, ""
        return 200, params.get("echostr", "")

    def read(self, params: Mapping[str, str], body: bytes) -> Callback | int:
        """The verified, parsed callback, or the HTTP status refusing it: 403 for a bad
        signature, a stale timestamp, or a plaintext body while an AES key is set (safe mode
        takes only encrypted bodies whose ``msg_signature`` covers the ciphertext); 400 for
        malformed XML, entities (XXE), bad ciphertext."""
        if not self.query_ok(params):
            return 403
        timestamp, nonce = params.get("timestamp", ""), params.get("nonce", "")
        encrypted = params.get("encrypt_type", "raw").lower() == "aes"
        if self.crypto is not None and not encrypted:
            # The plain signature does not cover the body: anyone holding a callback URL from
            # a log could post any message under it. In safe mode only ciphertext is taken.
            log.warning("plaintext wechat callback refused: safe mode takes only encrypted ones")
            return 403
        try:
            if encrypted:
                if self.crypto is None:
                    return 400
                outer = xmltodict.parse(body)["xml"]
                cipher = str(outer["Encrypt"])
                given = params.get("msg_signature", "")
                if not same(signature(self.token, timestamp, nonce, cipher), given):
                    return 403
                try:
                    plain = self.crypto.decrypt_message(outer, given, timestamp, nonce)
                except Exception:
                    log.warning("wechat callback could not be decrypted")
                    return 400
            else:
                plain = body.decode()
            message = parse_message(plain)
            data = getattr(message, "_data", None)
            if not isinstance(data, dict):
                return 400
            inbound = to_inbound(message, self.clock())
        except (ValueError, ExpatError, KeyError, TypeError, AttributeError):
            # xmltodict refuses entity declarations with ValueError (XXE); all are the
            # sender's fault, none is ours.
            return 400
        return Callback(data, inbound, encrypted)

    def reply(self, params: Mapping[str, str], callback: Callback, text: str) -> str:
        """The passive reply to ``callback``: ``text`` as XML, encrypted when it came so."""
        xml = TextReply(
            source=str(callback.data.get("ToUserName") or ""),
            target=str(callback.data.get("FromUserName") or ""),
            content=sanitize_cdata(text),
            time=int(time.time()),
        ).render()
        if callback.encrypted and self.crypto is not None:
            xml = self.crypto.encrypt_message(xml, params.get("nonce", ""), str(int(time.time())))
        return str(xml)


class ReplayGuard:
    """The requests seen while their timestamps are fresh, in the ``wechat_callback`` table so
    that every instance behind a load balancer knows them. ``scope`` keeps another platform's
    keys apart (WeCom's); ``purge_also`` runs in the transaction that deletes expired rows."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        clock: Clock,
        timestamp_skew: int,
        *,
        name: str = CHANNEL,
        scope: str = "",
        purge_also: Callable[[AsyncSession], Awaitable[None]] | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.clock = clock
        self.timestamp_skew = timestamp_skew
        self.name = name
        self.scope = scope
        self.purge_also = purge_also
        #: When expired rows were last deleted (monotonic seconds).
        self._purged_at = 0.0

    async def remember(self, nonce: str, timestamp: str, given: str, body: bytes) -> bool:
        """Record this request (nonce, timestamp, signature, and a digest of its body) while
        its timestamp is fresh. ``True`` for a new request and for the same request again
        (the platform's retry after a failed or slow answer: the core's dedupe by MsgId, or
        sender and time for events, makes it change nothing if it was handled); ``False`` when
        the query string was seen with another body: somebody reuses a signature they saw.

        The primary key makes two concurrent copies race to one winner."""
        key = hashlib.sha256(f"{self.scope}{nonce}\n{timestamp}\n{given}".encode()).hexdigest()
        digest = hashlib.sha256(body).hexdigest()
        expires_at = datetime.fromtimestamp(int(timestamp) + self.timestamp_skew + 1, UTC)
        try:
            async with self.sessionmaker() as session, session.begin():
                session.add(WeChatCallback(key=key, body_digest=digest, expires_at=expires_at))
        except IntegrityError:
            async with self.sessionmaker() as session:
                seen = await session.get(WeChatCallback, key)
            if seen is not None and seen.body_digest not in (None, digest):
                return False
            log.info("%s callback seen before with the same body: a retry", self.name)
            return True
        if time.monotonic() - self._purged_at > 60:
            self._purged_at = time.monotonic()
            async with self.sessionmaker() as session, session.begin():
                await session.execute(
                    delete(WeChatCallback).where(WeChatCallback.expires_at < self.clock())
                )
                if self.purge_also is not None:
                    await self.purge_also(session)
        return True
