"""The WeChat Official Account (公众号) adapter: the only module that imports ``wechatpy``.

Inbound: :meth:`WeChatChannel.process_get` answers the URL check (``echostr``);
:meth:`WeChatChannel.process_post` verifies a callback (plain mode: ``signature``; safe mode:
``msg_signature`` and AES through wechatpy's ``WeChatCrypto``, and nothing but ciphertext; both
compared in constant time, stale timestamps refused; a query string seen before with another
body refused as a replay), parses it (:func:`to_inbound`) and awaits the core. A failure that
stored nothing is answered 500 so that WeChat retries (never ``success``). WeChat waits
5 seconds: when the core is done within ``reply_deadline`` the first message it produced for
this user is the passive reply (claimed in the outbox so the deliverer does not send it again);
otherwise the answer is ``success`` and everything goes out through the customer-service API.

Outbound: :meth:`WeChatChannel.deliver_row` knows each user's 48-hour window
(``Identity.last_inbound_at``) and pushes used (``Identity.window_pushes``): inside the window
and under the quota a customer-service message, else the template configured for that kind of
push, else :class:`~bot.channels.base.Unreachable` (the deliverer tells the order's handler).
Buttons become numbered options ("回复 1 接单", or a ``msgmenu``) remembered in
``offered_choices``; a reply "1" (or a msgmenu tap's ``bizmsgmenuid``) comes back as the same
neutral button payload. WeChat cannot edit a sent message: edits are dropped (they only refresh
what the user already has, and every message counts against the window's quota).

wechatpy's HTTP client is synchronous; the few endpoints used are called through a small async
httpx client (:class:`WeChatApi`) whose access token is shared by every process through the
database (the ``stable_token`` endpoint, refreshed under a lock).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from xml.parsers.expat import ExpatError

import httpx
import xmltodict
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.replies import TextReply

from bot.channels.base import ChannelHost, ChatHold, DeliveryError, Limits, Unreachable
from bot.channels.shared_token import SharedToken
from bot.config import TemplateSpec, template_specs
from bot.core.refs import RefKind, parse_ref
from bot.i18n import Translator
from bot.media import MAX_BYTES, MediaStore, keep_inbound_files
from bot.media import PREFIX as MEDIA_PREFIX
from bot.ports import HandleResult, Inbound, Intake, Outbound
from bot.request_body import read_capped
from models import (
    Identity,
    OfferedChoices,
    OutboxMessage,
    Person,
    WeChatCallback,
    WeChatMedia,
    utcnow,
)
from models.messaging import OUT_PENDING

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.weixin.qq.com"
CHANNEL = "wechat"
#: The callback URL's path (entered in the account's admin console).
CALLBACK_PATH = "/wechat"
TOKEN_KV_KEY = "wechat_access_token"
#: pg_advisory_xact_lock key of the token refresher ("wxtk").
TOKEN_LOCK_KEY = 0x7778746B
#: Refresh this long before WeChat says the token expires.
WINDOW = timedelta(hours=48)
#: WeChat refuses texts over 2048 bytes (passive and customer-service alike).
TEXT_LIMIT_BYTES = 2000
#: Numbered options remembered per user; numbering starts again after the user's next message.
OPTION_LIMIT = 40
#: Errors that mean the access token is no longer valid.
TOKEN_ERRORS = frozenset({40001, 40014, 42001})
#: Errors that mean the user cannot get customer-service messages now.
WINDOW_CLOSED = 45015
QUOTA_USED = 45047
#: Errors that mean the user cannot be reached at all (unsubscribed, unknown openid).
GONE = frozenset({43004, 40003})
BUSY = -1
#: Menu click keys and the commands they run (anything else is ignored).
MENU_KEYS = ("order", "myorders", "tasks", "queue", "mygrid", "me", "link", "help")
#: Push kind of an outbox row by the kind of its ``ref`` (when the payload names none).
KIND_BY_REF = {
    RefKind.OFFER: "offer",
    RefKind.DISPATCH: "offer",
    RefKind.TASK: "accepted",
    RefKind.RATE: "rate",
}
SKIPPED = "dropped"
#: Temporary media stays valid three days; a cached media_id is reused until an hour before.
MEDIA_VALIDITY = timedelta(days=3)
MEDIA_MARGIN = timedelta(hours=1)
#: Image types WeChat accepts as ``image`` media (WebP is not one of them).
UPLOADABLE = frozenset({"jpg", "png", "gif"})
#: Recordings WeChat accepts as ``voice`` media (a Telegram OGG is only mentioned in the text).
VOICE_UPLOADABLE = frozenset({"amr", "mp3"})
_MIME = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "amr": "audio/amr",
         "mp3": "audio/mpeg"}
#: A handler that missed the reply deadline and then failed is run again this many times,
#: first after this many seconds, each wait four times the one before.
LATE_RETRIES = 3
LATE_RETRY_FIRST = 1.0
#: Longest value put into one template field (bytes).
TEMPLATE_FIELD_BYTES = 600

Clock = Callable[[], datetime]


class WindowClosed(DeliveryError):
    """45015: the user's 48-hour window is closed."""

    def __init__(self) -> None:
        super().__init__("wechat 45015: outside the 48-hour window", permanent=True)


class QuotaUsed(DeliveryError):
    """45047: the customer-service messages of this window are used up."""

    def __init__(self) -> None:
        super().__init__("wechat 45047: push quota of the window used", permanent=True)


def push_kind(row: OutboxMessage) -> str:
    """What kind of push a row is: from its payload's ``kind``, else its ref's prefix."""
    kind = (row.payload or {}).get("kind")
    if kind:
        return str(kind)
    ref = parse_ref(row.ref)
    return KIND_BY_REF.get(ref.kind, "other") if ref is not None else "other"


def sanitize_cdata(value: str) -> str:
    """Make text safe inside ``<![CDATA[...]]>``: a ``]]>`` is split across two sections."""
    return value.replace("]]>", "]]]]><![CDATA[>")


def clip_bytes(value: str, limit: int = TEXT_LIMIT_BYTES) -> str:
    """Shorten to at most ``limit`` UTF-8 bytes, marking a cut with an ellipsis."""
    data = value.encode()
    if len(data) <= limit:
        return value
    return data[: limit - 3].decode(errors="ignore") + "…"


def signature(*parts: str) -> str:
    """WeChat's callback signature: SHA-1 of the sorted parts."""
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# --------------------------------------------------------------------------- inbound
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


# ------------------------------------------------------------------------------ API
class WeChatApi:
    """A thin async client for the endpoints Gridbot uses, with one shared access token."""

    def __init__(
        self,
        appid: str,
        secret: str,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        base_url: str = DEFAULT_API_URL,
        clock: Clock = utcnow,
        timeout: float = 10.0,
    ) -> None:
        self.appid = appid
        self.secret = secret
        self.sessionmaker = sessionmaker
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.http = httpx.AsyncClient(timeout=timeout)
        self.token = SharedToken(
            sessionmaker, TOKEN_KV_KEY, TOKEN_LOCK_KEY, self._fetch_token, clock
        )
        self.token_fetches = 0

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.http.aclose()

    # ---- access token --------------------------------------------------------------------
    async def access_token(self, *, stale: str | None = None) -> str:
        """The current access token; ``stale`` is one WeChat just refused. Shared by every
        instance (:class:`~bot.channels.shared_token.SharedToken`); fetched from the
        ``stable_token`` endpoint, which hands every caller the same token instead of
        invalidating the previous one."""
        return await self.token.get(stale=stale)

    async def _fetch_token(self, force: bool) -> tuple[str, datetime]:
        self.token_fetches += 1
        try:
            response = await self.http.post(
                f"{self.base_url}/cgi-bin/stable_token",
                json={
                    "grant_type": "client_credential",
                    "appid": self.appid,
                    "secret": self.secret,
                    "force_refresh": force,
                },
            )
            data = response.json()
        except (httpx.HTTPError, ValueError) as err:
            raise DeliveryError(f"wechat token: {type(err).__name__}") from err
        if not isinstance(data, dict) or "access_token" not in data:
            code = data.get("errcode") if isinstance(data, dict) else None
            raise DeliveryError(f"wechat token refused: {code}")
        expires_in = int(data.get("expires_in") or 7200)
        return str(data["access_token"]), self.clock() + timedelta(seconds=expires_in)

    # ---- calls -------------------------------------------------------------------------------
    async def call(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST JSON to ``/cgi-bin/<path>``; map WeChat's ``errcode`` to delivery errors.

        An expired token (40001/42001/40014) is refreshed and the call made once more; ``-1``
        (busy) and network errors are worth a retry; 45015/45047 have their own errors.
        """
        token = await self.access_token()
        for attempt in range(2):
            try:
                response = await self.http.post(
                    f"{self.base_url}/cgi-bin/{path}",
                    params={"access_token": token},
                    content=json.dumps(payload or {}, ensure_ascii=False).encode(),
                    headers={"content-type": "application/json"},
                )
                data = response.json()
            except (httpx.HTTPError, ValueError) as err:
                raise DeliveryError(f"wechat {path}: {type(err).__name__}") from err
            code = int(data.get("errcode") or 0) if isinstance(data, dict) else 0
            if code == 0:
                return data if isinstance(data, dict) else {}
            if code in TOKEN_ERRORS and attempt == 0:
                token = await self.access_token(stale=token)
                continue
            raise _error(path, code)
        raise DeliveryError(f"wechat {path}: token refused twice")

    async def get_media(self, media_id: str) -> bytes:
        """Download a user's temporary media (an image they sent)."""
        token = await self.access_token()
        for attempt in range(2):
            try:
                response = await self.http.get(
                    f"{self.base_url}/cgi-bin/media/get",
                    params={"access_token": token, "media_id": media_id},
                )
            except httpx.HTTPError as err:
                raise DeliveryError(f"wechat media: {type(err).__name__}") from err
            if not response.headers.get("content-type", "").startswith(("application/json",
                                                                           "text/")):
                return response.content[: MAX_BYTES + 1]
            try:
                code = int(response.json().get("errcode") or 0)
            except (ValueError, AttributeError):
                code = 0
            if code in TOKEN_ERRORS and attempt == 0:
                token = await self.access_token(stale=token)
                continue
            raise _error("media/get", code)
        raise DeliveryError("wechat media: token refused twice")

    async def upload_image(self, data: bytes, filename: str) -> str:
        """``media/upload`` (type image): temporary media, valid three days; its media_id."""
        return await self.upload_media(data, filename, "image")

    async def upload_media(self, data: bytes, filename: str, kind: str) -> str:
        """``media/upload`` of an ``image`` or a ``voice``: temporary media, valid three days;
        its media_id."""
        token = await self.access_token()
        ext = filename.rsplit(".", 1)[-1].lower()
        mime = _MIME.get(ext, "image/jpeg" if kind == "image" else "audio/amr")
        for attempt in range(2):
            try:
                response = await self.http.post(
                    f"{self.base_url}/cgi-bin/media/upload",
                    params={"access_token": token, "type": kind},
                    files={"media": (filename, data, mime)},
                )
                answer = response.json()
            except (httpx.HTTPError, ValueError) as err:
                raise DeliveryError(f"wechat media/upload: {type(err).__name__}") from err
            if not isinstance(answer, dict):
                raise DeliveryError("wechat media/upload: unexpected answer")
            code = int(answer.get("errcode") or 0)
            if code == 0 and answer.get("media_id"):
                return str(answer["media_id"])
            if code in TOKEN_ERRORS and attempt == 0:
                token = await self.access_token(stale=token)
                continue
            raise _error("media/upload", code or 40007)
        raise DeliveryError("wechat media/upload: token refused twice")


def _error(path: str, code: int) -> DeliveryError:
    if code == WINDOW_CLOSED:
        return WindowClosed()
    if code == QUOTA_USED:
        return QuotaUsed()
    if code in GONE:
        return Unreachable(f"wechat {path}: {code}")
    if code == BUSY or code in TOKEN_ERRORS or code == 45009:
        return DeliveryError(f"wechat {path}: {code} (busy)", permanent=False)
    return DeliveryError(f"wechat {path}: error {code}", permanent=True)


# --------------------------------------------------------------------------- channel
@dataclass
class _Rendered:
    text: str
    head: str
    options: list[tuple[int, str]]


class WeChatChannel:
    """A WeChat Official Account as a :class:`~bot.channels.base.Channel`, plus its webhook."""

    name = CHANNEL
    limits = Limits(per_chat_interval=0.0, global_per_second=100, group_per_minute=10**9)
    stop_budget = 1.0

    def __init__(
        self,
        *,
        appid: str,
        secret: str,
        token: str,
        intake: Intake,
        sessionmaker: async_sessionmaker[AsyncSession],
        tr: Translator,
        deliverer: ChatHold,
        aes_key: str | None = None,
        api_url: str = DEFAULT_API_URL,
        default_locale: str = "zh_CN",
        media: MediaStore | None = None,
        clock: Clock = utcnow,
        reply_deadline: float = 4.0,
        timestamp_skew: int = 300,
        push_quota: int = 5,
        msgmenu: bool = False,
        templates: Mapping[str, Any] | None = None,
        timezone: tzinfo = UTC,
    ) -> None:
        self.appid = appid
        self.token = token
        self._intake = intake
        self.sessionmaker = sessionmaker
        self.tr = tr
        self.deliverer = deliverer
        self.crypto = WeChatCrypto(token, aes_key, appid) if aes_key else None
        self.api = WeChatApi(appid, secret, sessionmaker, base_url=api_url, clock=clock)
        self.default_locale = default_locale
        self.media = media
        self.clock = clock
        self.reply_deadline = reply_deadline
        self.timestamp_skew = timestamp_skew
        self.push_quota = push_quota
        self.msgmenu = msgmenu
        self.templates = template_specs(templates)
        self.timezone = timezone
        #: When expired replay-guard rows were last deleted (monotonic seconds).
        self._purged_at = 0.0
        self._background: set[asyncio.Task[Any]] = set()
        #: Last message time and pushes of users we have no identity for yet (strangers who
        #: have not scanned a code): they are owed the answer to what they wrote.
        self._strangers: dict[str, tuple[datetime, int]] = {}

    def is_group(self, chat_id: str) -> bool:
        """Official Accounts talk to people one by one."""
        return False

    async def claim(self) -> str | None:
        """Nothing to take: any number of instances may serve the callback URL."""
        return None

    async def start(self) -> None:
        """Nothing to set up: WeChat calls us; the access token is fetched when first needed."""

    def banner(self, base_url: str) -> str | None:
        """The callback URL to enter in the account's admin console."""
        mode = "safe (AES)" if self.crypto is not None else "plain"
        return f"WeChat: callback URL {base_url}{CALLBACK_PATH}, {mode} mode"

    def routes(self) -> list[BaseRoute]:
        """The callback URL: GET is the admin console's check, POST a message or event."""
        return [Route(CALLBACK_PATH, self._callback_endpoint, methods=["GET", "POST"])]

    async def _callback_endpoint(self, request: Request) -> Response:
        """A POST's timestamp and signature are checked before its body is read, and the body
        is capped while it streams in."""
        params = dict(request.query_params)
        if request.method == "GET":
            status, body = self.process_get(params)
            return Response(body, status_code=status, media_type="text/plain")
        if not self.query_ok(params):
            return Response(status_code=403)
        data = await read_capped(request)
        if data is None:
            return Response(status_code=413)
        status, body = await self.process_post(params, data)
        media = "application/xml" if body.startswith("<") else "text/plain"
        return Response(body, status_code=status, media_type=media)

    def on_inbound(self, identity: Identity, now: datetime) -> None:
        """A new 48-hour window with its quota of pushes starts with every message."""
        identity.window_pushes = 0

    async def stop(self) -> None:
        """Let late handlers finish, then close the HTTP client."""
        if self._background:
            await asyncio.wait(self._background, timeout=10)
        await self.api.close()

    # ------------------------------------------------------------- webhook
    def _fresh_timestamp(self, timestamp: str) -> bool:
        if not timestamp.isdigit():
            return False
        return abs(self.clock().timestamp() - int(timestamp)) <= self.timestamp_skew

    def process_get(self, params: Mapping[str, str]) -> tuple[int, str]:
        """The URL check of the admin console: echo ``echostr`` when the signature is ours."""
        if not self.query_ok(params):
            return 403, ""
        return 200, params.get("echostr", "")

    def query_ok(self, params: Mapping[str, str]) -> bool:
        """Whether a callback's query string is ours: a fresh timestamp and ``signature``
        (token, timestamp, nonce), which WeChat sends in plain and safe mode alike. The web
        server checks it before reading the body; it does not cover the body (see
        :meth:`process_post` for what does)."""
        timestamp, nonce = params.get("timestamp", ""), params.get("nonce", "")
        if not self._fresh_timestamp(timestamp):
            return False
        return _same(signature(self.token, timestamp, nonce), params.get("signature", ""))

    async def process_post(self, params: Mapping[str, str], body: bytes) -> tuple[int, str]:
        """Handle one callback; return (HTTP status, body).

        403: bad signature, stale timestamp, a plaintext body while an AES key is set (safe
        mode takes only encrypted bodies whose ``msg_signature`` covers the ciphertext), or a
        query string seen before with another body (a replay); 400: malformed XML, entities
        (XXE), bad ciphertext; 500: the core failed and stored nothing (WeChat retries);
        200 with a passive reply, or ``success``. Nothing touches the database before the
        request is verified and parsed.
        """
        if not self.query_ok(params):
            return 403, ""
        timestamp, nonce = params.get("timestamp", ""), params.get("nonce", "")
        encrypted = params.get("encrypt_type", "raw").lower() == "aes"
        if self.crypto is not None and not encrypted:
            # The plain signature does not cover the body: anyone holding a callback URL from
            # a log could post any message under it. In safe mode only ciphertext is taken.
            log.warning("plaintext wechat callback refused: safe mode takes only encrypted ones")
            return 403, ""
        try:
            if encrypted:
                if self.crypto is None:
                    return 400, ""
                outer = xmltodict.parse(body)["xml"]
                cipher = str(outer["Encrypt"])
                given = params.get("msg_signature", "")
                if not _same(signature(self.token, timestamp, nonce, cipher), given):
                    return 403, ""
                try:
                    plain = self.crypto.decrypt_message(outer, given, timestamp, nonce)
                except Exception:
                    log.warning("wechat callback could not be decrypted")
                    return 400, ""
            else:
                plain = body.decode()
            message = parse_message(plain)
            data = getattr(message, "_data", None)
            if not isinstance(data, dict):
                return 400, ""
            inbound = to_inbound(message, self.clock())
        except (ValueError, ExpatError, KeyError, TypeError, AttributeError):
            # xmltodict refuses entity declarations with ValueError (XXE); all are the
            # sender's fault, none is ours.
            return 400, ""
        try:
            fresh = await self._remember(nonce, timestamp, params.get("signature", ""), body)
        except Exception:
            log.exception("wechat callback could not be recorded: WeChat will retry")
            return 500, ""
        if not fresh:
            log.warning("wechat callback refused: its signature was seen with another body")
            return 403, ""
        if inbound is None:
            return 200, "success"
        self._strangers[inbound.user_id] = (self.clock(), 0)
        if len(self._strangers) > 10_000:
            self._strangers.pop(next(iter(self._strangers)))
        try:
            if inbound.text is not None:
                inbound.button, inbound.text = await self._map_choice(
                    inbound.user_id, inbound.text, data.get("bizmsgmenuid")
                )
            reply = await self._answer(inbound)
        except Exception:
            # Nothing of this message was stored (the core's one transaction rolled back):
            # "success" would lose it. WeChat retries the same request, which is handled then
            # (the request record above lets a same-body retry through; MsgId dedupes).
            log.exception("wechat intake failed: answering 500 so that WeChat retries")
            return 500, ""
        if reply is None:
            return 200, "success"
        xml = TextReply(
            source=str(data.get("ToUserName") or ""),
            target=inbound.user_id,
            content=sanitize_cdata(reply),
            time=int(time.time()),
        ).render()
        if encrypted and self.crypto is not None:
            xml = self.crypto.encrypt_message(xml, nonce, str(int(time.time())))
        return 200, xml

    async def _remember(self, nonce: str, timestamp: str, given: str, body: bytes) -> bool:
        """Record this request (nonce, timestamp, signature, and a digest of its body) while
        its timestamp is fresh. ``True`` for a new request and for the same request again
        (WeChat's retry after a failed or slow answer: the core's dedupe by MsgId, or sender
        and time for events, makes it change nothing if it was handled); ``False`` when the
        query string was seen with another body: somebody reuses a signature they saw.

        Kept in the database so that every instance behind a load balancer knows it; the
        primary key makes two concurrent copies race to one winner."""
        key = hashlib.sha256(f"{nonce}\n{timestamp}\n{given}".encode()).hexdigest()
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
            log.info("wechat callback seen before with the same body: a retry")
            return True
        if time.monotonic() - self._purged_at > 60:
            self._purged_at = time.monotonic()
            async with self.sessionmaker() as session, session.begin():
                await session.execute(
                    delete(WeChatCallback).where(WeChatCallback.expires_at < self.clock())
                )
        return True

    async def _answer(self, inbound: Inbound) -> str | None:
        """Run the core within the deadline; the text of the passive reply, if any. Raises
        when the core failed within the deadline (the caller answers 500)."""
        chat = inbound.chat_id
        self.deliverer.hold(CHANNEL, chat)
        async def run() -> HandleResult:
            await keep_inbound_files(self.media, inbound, self.fetch_file)
            return await self._intake(inbound)

        task = asyncio.create_task(run())
        try:
            done, _ = await asyncio.wait({task}, timeout=self.reply_deadline)
        except BaseException:
            self.deliverer.release(CHANNEL, chat)
            raise
        if not done:
            # Too late for a passive reply: WeChat gets "success" and the deliverer sends
            # everything through the customer-service API once the core is done. Having
            # answered "success", we owe WeChat the message: a failure is retried here.
            log.info("wechat handler slower than %.1fs: replying through the API",
                     self.reply_deadline)
            late = asyncio.create_task(self._finish_late(task, inbound))
            self._background.add(late)

            def finished(t: asyncio.Task[None]) -> None:
                self._background.discard(t)
                self.deliverer.release(CHANNEL, chat)

            late.add_done_callback(finished)
            return None
        try:
            result = task.result()  # raises when the core failed: the caller answers 500
            if result.duplicate or not result.outbox_ids:
                return None
            try:
                return await self._passive(chat, result.outbox_ids)
            except Exception:
                # Stored already: the deliverer sends the rows through the API.
                log.exception("wechat passive reply failed; the API sends it")
                return None
        finally:
            self.deliverer.release(CHANNEL, chat)

    async def _finish_late(self, task: asyncio.Task[HandleResult], inbound: Inbound) -> None:
        """Wait for a handler that missed the reply deadline; if it failed (after WeChat was
        answered "success"), run it again a few times, backing off (the core's dedupe makes a
        second run of a stored event change nothing)."""
        delay = LATE_RETRY_FIRST
        for attempt in range(LATE_RETRIES + 1):
            try:
                if attempt == 0:
                    await task
                else:
                    await self._intake(inbound)
                return
            except Exception:
                if attempt == LATE_RETRIES:
                    log.exception("wechat message %s lost after %d attempts",
                                  inbound.dedupe_key, attempt + 1)
                    return
                log.warning("late wechat handler failed; retrying in %.0fs", delay,
                            exc_info=True)
                await asyncio.sleep(delay)
                delay *= 4

    async def _passive(self, openid: str, ids: list[int]) -> str | None:
        """Claim the first message this event produced for the sender as the passive reply."""
        async with self.sessionmaker() as session:
            rows = (
                await session.scalars(
                    select(OutboxMessage)
                    .where(
                        OutboxMessage.id.in_(ids),
                        OutboxMessage.channel == CHANNEL,
                        OutboxMessage.chat_id == openid,
                        OutboxMessage.status == OUT_PENDING,
                        OutboxMessage.edit_ref.is_(None),
                    )
                    .order_by(OutboxMessage.id)
                )
            ).all()
        row = next((r for r in rows if push_kind(r) != "menu"), None)
        if row is None:
            return None
        identity, lang = await self._identity(openid)
        rendered = await self._render(identity, Outbound.from_payload(row.payload), lang)
        if not await self.deliverer.claim_for_passive([row.id]):
            return None
        return clip_bytes(rendered.text)

    # ------------------------------------------------------------- choices
    async def _map_choice(
        self, openid: str, text_in: str, menu_id: Any
    ) -> tuple[str | None, str | None]:
        """A reply that is just the number of an offered option (or a msgmenu tap) becomes
        that option: its button payload, or its label as text (location-step keys)."""
        raw = str(menu_id).strip() if menu_id else text_in.strip()
        if not raw.isdigit() or len(raw) > 3:
            return None, text_in
        number = int(raw)
        async with self.sessionmaker() as session:
            choices = await session.scalar(
                select(OfferedChoices)
                .join(Identity, Identity.id == OfferedChoices.identity_id)
                .where(Identity.channel == CHANNEL, Identity.external_id == openid)
            )
        options = list(choices.options) if choices is not None else []
        if not 1 <= number <= len(options):
            return None, text_in
        label, payload = options[number - 1]
        if payload:
            return str(payload), None
        return None, str(label)

    async def _identity(self, openid: str) -> tuple[Identity | None, str]:
        async with self.sessionmaker() as session:
            identity = await session.scalar(
                select(Identity).where(
                    Identity.channel == CHANNEL, Identity.external_id == openid
                )
            )
            lang = self.default_locale
            if identity is not None:
                person = await session.get(Person, identity.person_id)
                lang = (person.locale if person else None) or identity.locale or lang
        return identity, lang

    async def _render(
        self,
        identity: Identity | None,
        message: Outbound,
        lang: str,
        *,
        photo_sent: bool = False,
    ) -> _Rendered:
        """The text with numbered options; the options are remembered for the user's reply.

        Numbers continue across messages until the user writes again, so that "3" still
        means the third option shown since their last message. A photo that does not go out
        as an image (``photo_sent``) is at least mentioned."""
        options: list[tuple[str, str | None]] = [
            (b.label, b.payload) for b in message.all_buttons()
        ]
        if message.ask_location:
            options += [(label, None) for row in message.menu or [] for label in row]
        head = message.text
        if message.photo and not photo_sent:
            note = self.tr.t(lang, "card.has_photo")
            if note not in head:
                head = f"{head}\n{note}" if head.strip() else note
        if not options:
            text_out = head
            if message.ask_location:
                text_out += "\n\n" + self.tr.t(lang, "wechat.send_location")
            return _Rendered(text_out, head, [])
        first = 1
        if identity is not None:
            now = self.clock()
            async with self.sessionmaker() as session, session.begin():
                stored = await session.get(OfferedChoices, identity.id, with_for_update=True)
                fresh = await session.get(Identity, identity.id, populate_existing=True)
                last_in = fresh.last_inbound_at if fresh else None
                old: list[Any] = []
                if stored is not None and (last_in is None or stored.created_at >= last_in):
                    old = list(stored.options)
                if len(old) + len(options) > OPTION_LIMIT:
                    old = []
                first = len(old) + 1
                value = old + [[label, payload] for label, payload in options]
                if stored is None:
                    session.add(
                        OfferedChoices(identity_id=identity.id, options=value, created_at=now)
                    )
                else:
                    stored.options, stored.created_at = value, now
        numbered = [(first + i, label) for i, (label, _) in enumerate(options)]
        lines = [head, ""] + [
            self.tr.t(lang, "wechat.option", number=str(n), label=label) for n, label in numbered
        ]
        if message.ask_location:
            lines.append(self.tr.t(lang, "wechat.send_location"))
        return _Rendered("\n".join(lines), head, numbered)

    # ------------------------------------------------------------ outbound
    async def deliver_row(self, row: OutboxMessage, message: Outbound) -> str:
        """Send one outbox row under WeChat's push rules; return a message id.

        Bare menus (the account menu covers them) and edits (WeChat cannot edit) are dropped.
        Inside the 48-hour window and under the quota: a customer-service message; else the
        template for this kind of push; else :class:`Unreachable`.
        """
        kind = push_kind(row)
        if kind == "menu" or row.edit_ref:
            return SKIPPED
        if message.document:
            # WeChat cannot send files: what went before (the picture and the text) stands.
            log.info("outbox %s carries a document; WeChat cannot send files: skipped", row.id)
            return SKIPPED
        identity, lang = await self._identity(row.chat_id)
        now = self.clock()
        stranger = self._strangers.get(row.chat_id)
        if identity is None and stranger is not None:
            seen, pushes = stranger
            if now - seen < WINDOW and pushes < self.push_quota:
                self._strangers[row.chat_id] = (seen, pushes + 1)
                return await self._send_custom(None, row.chat_id, message, lang)
        if (
            identity is not None
            and identity.last_inbound_at is not None
            and now - identity.last_inbound_at < WINDOW
            and await self._reserve_push(identity.id)
        ):
            reserved = 1
            try:
                media_id = voice_id = None
                # A photo is a second customer-service message: only when the quota has room
                # for both; else the text alone goes out (and says a photo exists). The same
                # for a voice message (the text says one exists).
                if self._uploadable(message.photo) and await self._reserve_push(identity.id):
                    reserved += 1
                    media_id = await self._photo_media_id(message.photo)
                    if media_id is None:
                        reserved -= 1
                        await self._refund_push(identity.id)
                if self._uploadable(message.voice, VOICE_UPLOADABLE) and await self._reserve_push(
                    identity.id
                ):
                    reserved += 1
                    voice_id = await self._photo_media_id(message.voice, "voice")
                    if voice_id is None:
                        reserved -= 1
                        await self._refund_push(identity.id)
                return await self._send_custom(
                    identity, row.chat_id, message, lang, media_id=media_id, voice_id=voice_id
                )
            except (WindowClosed, QuotaUsed) as err:
                log.info("wechat push to outbox %s refused (%s): trying a template", row.id, err)
                await self._window_used(identity.id)
            except DeliveryError as err:
                if not err.permanent:
                    for _ in range(reserved):
                        await self._refund_push(identity.id)
                raise
        template = self.templates.get(kind) or self.templates.get("other")
        if template:
            return await self._send_template(identity, row, template, message, lang)
        raise Unreachable(f"wechat: no open window and no template for {kind}")

    def _uploadable(self, ref: str | None, types: frozenset[str] = UPLOADABLE) -> bool:
        """Whether ``ref`` is a file of the media store that WeChat takes (an image, or with
        ``types`` :data:`VOICE_UPLOADABLE`, a voice)."""
        if not ref or self.media is None or not ref.startswith(MEDIA_PREFIX):
            return False
        path = self.media.path(ref)
        return path is not None and path.suffix.lstrip(".").lower() in types

    async def _photo_media_id(self, ref: str | None, kind: str = "image") -> str | None:
        """The WeChat media_id of a media-store photo (or voice, ``kind``): cached (three
        days, shared by every instance through the database), else uploaded now. ``None`` if
        it cannot be."""
        if not ref or self.media is None:
            return None
        now = self.clock()
        async with self.sessionmaker() as session:
            cached = await session.get(WeChatMedia, ref)
            if cached is not None and cached.expires_at - MEDIA_MARGIN > now:
                return cached.media_id
        path = self.media.path(ref)
        if path is None:
            return None
        try:
            data = await asyncio.to_thread(path.read_bytes)
            media_id = await self.api.upload_media(data, path.name, kind)
        except OSError as err:
            log.warning("photo %s could not be read (%s): sending text only", ref, err)
            return None
        except DeliveryError as err:
            if not err.permanent:
                raise
            log.warning("photo %s refused by media/upload (%s): sending text only", ref, err)
            return None
        async with self.sessionmaker() as session, session.begin():
            row = await session.get(WeChatMedia, ref, with_for_update=True)
            if row is None:
                session.add(
                    WeChatMedia(ref=ref, media_id=media_id, expires_at=now + MEDIA_VALIDITY)
                )
            else:
                row.media_id, row.expires_at = media_id, now + MEDIA_VALIDITY
        return media_id

    async def _reserve_push(self, identity_id: int) -> bool:
        """Count one customer-service message against the window's quota, if one is left."""
        async with self.sessionmaker() as session, session.begin():
            result = await session.execute(
                update(Identity)
                .where(Identity.id == identity_id, Identity.window_pushes < self.push_quota)
                .values(window_pushes=Identity.window_pushes + 1)
                .returning(Identity.id)
            )
            return result.first() is not None

    async def _refund_push(self, identity_id: int) -> None:
        async with self.sessionmaker() as session, session.begin():
            await session.execute(
                update(Identity)
                .where(Identity.id == identity_id, Identity.window_pushes > 0)
                .values(window_pushes=Identity.window_pushes - 1)
            )

    async def _window_used(self, identity_id: int) -> None:
        """WeChat says no more customer-service messages now: stop trying until they write."""
        async with self.sessionmaker() as session, session.begin():
            await session.execute(
                update(Identity)
                .where(Identity.id == identity_id)
                .values(window_pushes=self.push_quota)
            )

    async def _send_custom(
        self,
        identity: Identity | None,
        openid: str,
        message: Outbound,
        lang: str,
        *,
        media_id: str | None = None,
        voice_id: str | None = None,
    ) -> str:
        if media_id is not None:
            # The photo first (an image message), then the text with its options.
            await self.api.call(
                "message/custom/send",
                {"touser": openid, "msgtype": "image", "image": {"media_id": media_id}},
            )
        if voice_id is not None:
            await self.api.call(
                "message/custom/send",
                {"touser": openid, "msgtype": "voice", "voice": {"media_id": voice_id}},
            )
        rendered = await self._render(identity, message, lang, photo_sent=media_id is not None)
        if self.msgmenu and rendered.options and not message.ask_location:
            try:
                await self.api.call(
                    "message/custom/send",
                    {
                        "touser": openid,
                        "msgtype": "msgmenu",
                        "msgmenu": {
                            "head_content": clip_bytes(rendered.head, 1000),
                            "list": [
                                {"id": str(n), "content": label[:30]}
                                for n, label in rendered.options
                            ],
                            "tail_content": "",
                        },
                    },
                )
                return "msgmenu"
            except DeliveryError as err:
                if not err.permanent or isinstance(err, WindowClosed | QuotaUsed | Unreachable):
                    raise
                log.info("msgmenu refused (%s): sending numbered options", err)
        await self.api.call(
            "message/custom/send",
            {"touser": openid, "msgtype": "text", "text": {"content": clip_bytes(rendered.text)}},
        )
        return "custom"

    async def _send_template(
        self,
        identity: Identity | None,
        row: OutboxMessage,
        template: TemplateSpec,
        message: Outbound,
        lang: str,
    ) -> str:
        rendered = await self._render(identity, message, lang)
        first, _, rest = rendered.text.partition("\n")
        data: dict[str, dict[str, str]]
        if template.fields is None:
            data = {
                "first": {"value": clip_bytes(first, 200)},
                "keyword1": {"value": clip_bytes(rest.strip() or first, 600)},
                "remark": {"value": self.tr.t(lang, "wechat.template_remark")},
            }
        else:
            values = {
                "title": first.strip(),
                "text": rest.strip() or first.strip(),
                "number": await self._order_number(row),
                "time": self.clock().astimezone(self.timezone).strftime("%Y-%m-%d %H:%M"),
            }
            data = {
                name: {"value": clip_bytes(fmt.format(**values), TEMPLATE_FIELD_BYTES)}
                for name, fmt in template.fields.items()
            }
        result = await self.api.call(
            "message/template/send",
            {"touser": row.chat_id, "template_id": template.id, "data": data},
        )
        return f"tpl:{result.get('msgid', '')}"

    async def _order_number(self, row: OutboxMessage) -> str:
        """The number of the order a push is about (for a template's ``{number}``), or ""."""
        from bot.core.cards import number
        from bot.core.reach import order_of

        async with self.sessionmaker() as session:
            order = await order_of(session, row.ref)
            return number(order) if order is not None else ""

    async def send(self, chat_id: str, message: Outbound) -> str:
        """Send a customer-service message (no window bookkeeping: see :meth:`deliver_row`)."""
        identity, lang = await self._identity(chat_id)
        return await self._send_custom(identity, chat_id, message, lang)

    async def edit(self, chat_id: str, message_id: str, message: Outbound) -> str:
        """WeChat cannot edit a sent message; the refresh is dropped."""
        return SKIPPED

    async def fetch_file(self, ref: str) -> bytes:
        """Download a photo a user sent: through the media API, else from its ``PicUrl``."""
        media_id, _, pic_url = ref.removeprefix("wx:").partition("|")
        if media_id:
            try:
                return await self.api.get_media(media_id)
            except DeliveryError as err:
                log.info("wechat media/get failed (%s); trying PicUrl", err)
        if not pic_url.startswith(("http://", "https://")):
            raise DeliveryError("no way to fetch this photo", permanent=True)
        response = await self.api.http.get(pic_url)
        response.raise_for_status()
        return response.content[: MAX_BYTES + 1]

    # ---------------------------------------------------------- admin calls
    async def create_qr(self, scene: str, expire_seconds: int | None) -> dict[str, Any]:
        """A parametric QR code for ``scene`` (an invite token): temporary when
        ``expire_seconds`` is given (at most 30 days), else permanent."""
        return await create_qr(self.api, scene, expire_seconds)


async def create_qr(api: WeChatApi, scene: str, expire_seconds: int | None) -> dict[str, Any]:
    """``qrcode/create`` with ``scene_str``; returns WeChat's answer (ticket, url)."""
    if not scene or len(scene) > 64:
        raise ValueError("scene_str must be 1-64 characters")
    payload: dict[str, Any] = {"action_info": {"scene": {"scene_str": scene}}}
    if expire_seconds is None:
        payload["action_name"] = "QR_LIMIT_STR_SCENE"
    else:
        payload["action_name"] = "QR_STR_SCENE"
        payload["expire_seconds"] = max(60, min(expire_seconds, 30 * 24 * 3600))
    return await api.call("qrcode/create", payload)


def menu_definition(tr: Translator, lang: str) -> dict[str, Any]:
    """The account's custom menu: 报事 / 我的工单 (orders, tasks, queue) / 我的网格 (grid,
    my details, link, help). Each click arrives as the matching command."""

    def click(key: str, label_key: str) -> dict[str, str]:
        return {"type": "click", "name": tr.t(lang, label_key), "key": key}

    return {
        "button": [
            click("order", "wechat.menu_order"),
            {
                "name": tr.t(lang, "wechat.menu_orders"),
                "sub_button": [
                    click("myorders", "wechat.menu_myorders"),
                    click("tasks", "wechat.menu_tasks"),
                    click("queue", "wechat.menu_queue"),
                ],
            },
            {
                "name": tr.t(lang, "wechat.menu_grid"),
                "sub_button": [
                    click("mygrid", "wechat.menu_mygrid"),
                    click("me", "wechat.menu_me"),
                    click("link", "wechat.menu_link"),
                    click("help", "wechat.menu_help"),
                ],
            },
        ]
    }


async def install_menu(api: WeChatApi, tr: Translator, lang: str) -> dict[str, Any]:
    """``menu/create`` with :func:`menu_definition`."""
    return await api.call("menu/create", menu_definition(tr, lang))


__all__ = [
    "WeChatApi",
    "WeChatChannel",
    "create_qr",
    "install_menu",
    "menu_definition",
    "push_kind",
    "sanitize_cdata",
    "to_inbound",
]


def build(host: ChannelHost) -> WeChatChannel:
    """A WeChat Official Account from the ``wechat_*`` settings (plain or safe mode)."""
    s = host.settings
    assert s.wechat_appid and s.wechat_token
    return WeChatChannel(
        appid=s.wechat_appid,
        secret=s.wechat_secret or "",
        token=s.wechat_token,
        aes_key=s.wechat_aes_key or None,
        api_url=s.wechat_api_url,
        intake=host.intake,
        sessionmaker=host.sessionmaker,
        tr=host.tr,
        deliverer=host.deliverer,
        default_locale=s.default_locale,
        media=host.media,
        clock=host.clock,
        reply_deadline=s.wechat_reply_deadline,
        timestamp_skew=s.wechat_timestamp_skew,
        push_quota=s.wechat_push_quota,
        msgmenu=s.wechat_msgmenu,
        templates=s.wechat_templates,
        timezone=s.tz,
    )
