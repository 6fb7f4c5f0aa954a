"""The 企业微信 (WeCom) adapter: one self-built app (自建应用) of one corp, for grid workers,
heads and party members who work in WeCom while residents stay on the WeChat Official Account.

Inbound (:meth:`WeComChannel.process_get`, :meth:`WeComChannel.process_post`): WeCom only
speaks encrypted callbacks. The URL check (GET) and every message carry ``msg_signature``
(SHA-1 of the token, timestamp, nonce and ciphertext, compared in constant time), a timestamp
that must be fresh, and AES ciphertext that names our corp id (wechatpy's
``wechatpy.enterprise.crypto.WeChatCrypto``). A query string seen before with another body is a
replay (the WeChat adapter's :class:`~bot.channels.wechat.callback.ReplayGuard`, shared by every
instance through the database).
Malformed XML, entity declarations and bad ciphertext are 400, a bad signature 403, and nothing
is stored for either. Texts (``/start <invite>`` typed binds a member), images and locations
become :class:`~bot.ports.Inbound` events deduplicated on ``MsgId`` (events: sender, time, event
and its key); a press on a template card (``template_card_event``) is the button's neutral
payload, its ``ResponseCode`` kept for the card's update.

Outbound: everything goes through the application message API (``message/send``): texts,
images (``media/upload`` first), files, and buttons as interactive template cards
(``button_interaction``, one ``task_id`` per card, each button's ``key`` the neutral payload).
An edit of a card the member pressed becomes ``message/update_template_card`` with the press's
response code (WeCom gives one per press, usable once, for 72 hours); WeCom cannot change any
other sent message, so those edits are dropped (:data:`SKIPPED`), as on WeChat.

The access token (``gettoken``) is cached in the database and shared by every instance, as
WeChat's is; 42001/40014 refresh it once; 45009 (API frequency) is :class:`RetryAfter`;
60020 (server IP not in the app's 企业可信IP) is a permanent error; 81013 (the member is not
in the app's visible range) is :class:`Unreachable`, so that somebody is told.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any
from xml.parsers.expat import ExpatError

import httpx
import xmltodict
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from wechatpy.enterprise import parse_message
from wechatpy.enterprise.crypto import WeChatCrypto

from bot.channels.base import ChannelHost, DeliveryError, Limits, RetryAfter, Unreachable
from bot.channels.shared_token import SharedToken
from bot.channels.wechat import SKIPPED, clip_bytes
from bot.channels.wechat.callback import ReplayGuard, fresh_timestamp, same, signature
from bot.i18n import Translator
from bot.media import MAX_BYTES, MediaStore, keep_inbound_files
from bot.media import PREFIX as MEDIA_PREFIX
from bot.ports import Button, Inbound, Intake, Outbound
from bot.request_body import read_capped
from models import Identity, KeyValue, Person, utcnow

log = logging.getLogger(__name__)

CHANNEL = "wecom"
DEFAULT_API_URL = "https://qyapi.weixin.qq.com/cgi-bin"
#: The callback URL's path (the app's 接收消息 → URL in the admin console).
CALLBACK_PATH = "/wecom"
#: Seconds a callback's timestamp may differ from our clock.
TIMESTAMP_SKEW = 300
#: pg_advisory_xact_lock key of the token refresher ("wctk").
TOKEN_LOCK_KEY = 0x7763746B
#: Errors that mean the access token is no longer valid (expired, invalid).
TOKEN_ERRORS = frozenset({42001, 40014})
#: API call frequency over the limit: wait and send again.
FREQUENCY = 45009
#: Seconds to wait after 45009 (WeCom counts per minute).
FREQUENCY_WAIT = 60.0
BUSY = -1
#: The server's IP is not in the app's 企业可信IP: nothing is sent until the admin adds it.
IP_NOT_TRUSTED = 60020
#: The member is outside the app's visible range (or left): they cannot be reached.
NOT_IN_APP = 81013
#: A text message is at most 2048 bytes.
TEXT_LIMIT_BYTES = 2000
#: Template cards: buttons per card; title and sub-title lengths WeCom shows whole.
CARD_BUTTONS = 6
TITLE_CHARS = 36
SUBTITLE_CHARS = 160
BUTTON_CHARS = 10
#: A press's response code may update the card for this long (WeCom: 72 hours).
RESPONSE_CODE_VALIDITY = timedelta(hours=72)
#: Temporary media stays valid three days; a cached media_id is reused until an hour before.
MEDIA_VALIDITY = timedelta(days=3)
MEDIA_MARGIN = timedelta(hours=1)
UPLOADABLE = frozenset({"jpg", "png", "gif"})
#: Key prefix of a card button that stands for a typed answer (a location step's choices).
SAY_PREFIX = "wecom-say:"
#: Key prefix of the grey button of a card that has nothing left to press.
DONE_PREFIX = "wecom-done:"
#: ``kv`` keys: the shared access token, cards' response codes, uploaded media.
CARD_KV = "wecom_card:"
MEDIA_KV = "wecom_media:"

Clock = Callable[[], datetime]


# ------------------------------------------------------------------------------ API
class WeComApi:
    """A thin async client for the WeCom endpoints Gridbot uses, with one shared token."""

    def __init__(
        self,
        corp_id: str,
        agent_id: int,
        secret: str,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        base_url: str = DEFAULT_API_URL,
        clock: Clock = utcnow,
        timeout: float = 10.0,
    ) -> None:
        self.corp_id = corp_id
        self.agent_id = agent_id
        self.secret = secret
        self.sessionmaker = sessionmaker
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.http = httpx.AsyncClient(timeout=timeout)
        self.token = SharedToken(
            sessionmaker, f"wecom_token:{corp_id}:{agent_id}"[:64], TOKEN_LOCK_KEY,
            self._fetch_token, clock,
        )
        self.token_fetches = 0

    async def close(self) -> None:
        await self.http.aclose()

    async def access_token(self, *, stale: str | None = None) -> str:
        """The app's access token; ``stale`` is one WeCom just refused. Shared by every
        instance (:class:`~bot.channels.shared_token.SharedToken`)."""
        return await self.token.get(stale=stale)

    async def _fetch_token(self, force: bool) -> tuple[str, datetime]:
        """``gettoken``: WeCom hands out the same token until it expires."""
        self.token_fetches += 1
        try:
            response = await self.http.get(
                f"{self.base_url}/gettoken",
                params={"corpid": self.corp_id, "corpsecret": self.secret},
            )
            data = response.json()
        except (httpx.HTTPError, ValueError) as err:
            raise DeliveryError(f"wecom gettoken: {type(err).__name__}") from err
        if not isinstance(data, dict) or not data.get("access_token"):
            code = int(data.get("errcode") or 0) if isinstance(data, dict) else 0
            raise _error("gettoken", code)
        expires_in = int(data.get("expires_in") or 7200)
        return str(data["access_token"]), self.clock() + timedelta(seconds=expires_in)

    async def _with_token(
        self, path: str, attempt: Callable[[str], Any]
    ) -> dict[str, Any] | bytes:
        """Run ``attempt(token)`` (an HTTP call), refreshing the token once if refused."""
        token = await self.access_token()
        for tries in range(2):
            try:
                response: httpx.Response = await attempt(token)
            except httpx.HTTPError as err:
                raise DeliveryError(f"wecom {path}: {type(err).__name__}") from err
            kind = response.headers.get("content-type", "")
            if path == "media/get" and not kind.startswith(("application/json", "text/")):
                return response.content[: MAX_BYTES + 1]
            try:
                data = response.json()
            except ValueError as err:
                raise DeliveryError(f"wecom {path}: not JSON") from err
            code = int(data.get("errcode") or 0) if isinstance(data, dict) else 0
            if code == 0 and isinstance(data, dict):
                return data
            if code in TOKEN_ERRORS and tries == 0:
                token = await self.access_token(stale=token)
                continue
            raise _error(path, code)
        raise DeliveryError(f"wecom {path}: token refused twice")

    async def call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST JSON to ``<base>/<path>``; WeCom's ``errcode`` becomes a delivery error."""
        body = json.dumps(payload, ensure_ascii=False).encode()

        async def attempt(token: str) -> httpx.Response:
            return await self.http.post(
                f"{self.base_url}/{path}", params={"access_token": token}, content=body,
                headers={"content-type": "application/json"},
            )

        data = await self._with_token(path, attempt)
        assert isinstance(data, dict)
        return data

    async def upload(self, data: bytes, filename: str, kind: str) -> str:
        """``media/upload`` (``image`` or ``file``): temporary media; its media_id."""

        async def attempt(token: str) -> httpx.Response:
            return await self.http.post(
                f"{self.base_url}/media/upload",
                params={"access_token": token, "type": kind},
                files={"media": (filename, data, "application/octet-stream")},
            )

        answer = await self._with_token("media/upload", attempt)
        assert isinstance(answer, dict)
        if not answer.get("media_id"):
            raise DeliveryError("wecom media/upload: no media_id", permanent=True)
        return str(answer["media_id"])

    async def get_media(self, media_id: str) -> bytes:
        """``media/get``: a file a member sent (an image)."""

        async def attempt(token: str) -> httpx.Response:
            return await self.http.get(
                f"{self.base_url}/media/get",
                params={"access_token": token, "media_id": media_id},
            )

        data = await self._with_token("media/get", attempt)
        if isinstance(data, bytes):
            return data
        raise DeliveryError("wecom media/get: no file", permanent=True)


def _error(path: str, code: int) -> DeliveryError:
    """WeCom's ``errcode`` as a delivery error (see the module's docstring)."""
    if code == FREQUENCY:
        return RetryAfter(FREQUENCY_WAIT)
    if code == NOT_IN_APP:
        return Unreachable(f"wecom {path}: {code} (member not in the app's visible range)")
    if code == IP_NOT_TRUSTED:
        log.error("wecom refuses this server's IP (60020): add it to the app's 企业可信IP")
        return DeliveryError(f"wecom {path}: {code} (IP not trusted)", permanent=True)
    if code == BUSY or code in TOKEN_ERRORS:
        return DeliveryError(f"wecom {path}: {code} (busy)", permanent=False)
    return DeliveryError(f"wecom {path}: error {code}", permanent=True)


# --------------------------------------------------------------------------- inbound
def to_inbound(data: Mapping[str, Any], received_at: datetime) -> Inbound | None:
    """A decrypted callback (its XML as a dict) as an :class:`Inbound`, or ``None`` when it is
    nothing for the core (entering the app, a view, a press on a grey button...).

    A template card press is the button's key: a neutral button payload, or a typed answer
    (:data:`SAY_PREFIX`), with the card's task id as the pressed message."""
    user = str(data.get("FromUserName") or "")
    if not user:
        return None
    msg_type = str(data.get("MsgType") or "").lower()
    msg_id = data.get("MsgId")
    event = str(data.get("Event") or "")
    dedupe = (
        f"{msg_id}" if msg_id else
        f"{user}:{data.get('CreateTime')}:{event}:{data.get('TaskId') or ''}:"
        f"{data.get('EventKey') or ''}"
    )
    base: dict[str, Any] = {
        "channel": CHANNEL, "user_id": user, "chat_id": user,
        "dedupe_key": hashlib.sha256(dedupe.encode()).hexdigest() if len(dedupe) > 128
        else dedupe,
        "received_at": received_at,
    }
    if msg_type == "text":
        return Inbound(text=str(data.get("Content") or ""), **base)
    if msg_type == "image":
        media_id = str(data.get("MediaId") or "")
        if not media_id:
            return None
        return Inbound(photo=f"wecom:{media_id}", **base)
    if msg_type == "location":
        try:
            lat, lon = float(data["Location_X"]), float(data["Location_Y"])
        except (KeyError, TypeError, ValueError):
            return None
        return Inbound(location=(lat, lon), **base)
    if msg_type == "event" and event == "template_card_event":
        key = str(data.get("EventKey") or "")
        task = str(data.get("TaskId") or "")
        if not key or key.startswith(DONE_PREFIX):
            return None
        if key.startswith(SAY_PREFIX):
            return Inbound(text=key.removeprefix(SAY_PREFIX), **base)
        return Inbound(button=key, button_message_id=f"card:{task}", **base)
    return None


# --------------------------------------------------------------------------- channel
class WeComChannel:
    """A WeCom app as a :class:`~bot.channels.base.Adapter`, plus its callback URL."""

    name = CHANNEL
    # WeCom: an app may send one member at most 30 messages a minute (more are dropped
    # silently), and every API at most 10,000 calls a minute per corp.
    limits = Limits(per_chat_interval=2.0, global_per_second=150, group_per_minute=10**9)
    stop_budget = 1.0

    def __init__(
        self,
        *,
        corp_id: str,
        agent_id: int,
        secret: str,
        token: str,
        aes_key: str,
        intake: Intake,
        sessionmaker: async_sessionmaker[AsyncSession],
        tr: Translator,
        api_url: str = DEFAULT_API_URL,
        default_locale: str = "zh_CN",
        media: MediaStore | None = None,
        clock: Clock = utcnow,
        timestamp_skew: int = TIMESTAMP_SKEW,
    ) -> None:
        self.corp_id = corp_id
        self.agent_id = agent_id
        self.token = token
        self.crypto = WeChatCrypto(token, aes_key, corp_id)
        self.api = WeComApi(corp_id, agent_id, secret, sessionmaker, base_url=api_url,
                            clock=clock)
        self._intake = intake
        self.sessionmaker = sessionmaker
        self.tr = tr
        self.default_locale = default_locale
        self.media = media
        self.clock = clock
        self.timestamp_skew = timestamp_skew
        # The WeChat adapter's replay guard, on the same table (keys of WeCom requests are
        # hashed with the channel's name, so the two never meet); cards' expired response
        # codes are purged with its expired rows.
        self.replays = ReplayGuard(
            sessionmaker, clock, timestamp_skew, name=CHANNEL, scope=f"{CHANNEL}\n",
            purge_also=self._purge_cards,
        )

    # ---- lifecycle ----------------------------------------------------------------------
    def is_group(self, chat_id: str) -> bool:
        """An app talks to members one by one."""
        return False

    async def claim(self) -> str | None:
        """Nothing to take: any number of instances may serve the callback URL."""
        return None

    async def start(self) -> None:
        """Nothing to set up: WeCom calls us; the token is fetched when first needed."""

    async def stop(self) -> None:
        await self.api.close()

    def banner(self, base_url: str) -> str | None:
        return f"WeCom: 接收消息 URL {base_url}{CALLBACK_PATH} (app {self.agent_id})"

    def routes(self) -> list[BaseRoute]:
        return [Route(CALLBACK_PATH, self._endpoint, methods=["GET", "POST"])]

    async def _endpoint(self, request: Request) -> Response:
        params = dict(request.query_params)
        if request.method == "GET":
            status, body = self.process_get(params)
            return Response(body, status_code=status, media_type="text/plain")
        if not self._fresh_timestamp(params.get("timestamp", "")):
            return Response(status_code=403)
        data = await read_capped(request)
        if data is None:
            return Response(status_code=413)
        status, body = await self.process_post(params, data)
        return Response(body, status_code=status, media_type="text/plain")

    # ---- callbacks ----------------------------------------------------------------------
    def _fresh_timestamp(self, timestamp: str) -> bool:
        return fresh_timestamp(timestamp, self.clock(), self.timestamp_skew)

    def _signed(self, params: Mapping[str, str], cipher: str) -> bool:
        timestamp, nonce = params.get("timestamp", ""), params.get("nonce", "")
        if not self._fresh_timestamp(timestamp):
            return False
        expected = signature(self.token, timestamp, nonce, cipher)
        return same(expected, params.get("msg_signature", ""))

    def process_get(self, params: Mapping[str, str]) -> tuple[int, str]:
        """The URL check when the app's 接收消息 settings are saved: ``echostr`` is ciphertext;
        its plaintext is the answer when the signature is ours."""
        echostr = params.get("echostr", "")
        if not echostr or not self._signed(params, echostr):
            return 403, ""
        try:
            plain = self.crypto.check_signature(
                params["msg_signature"], params["timestamp"], params["nonce"], echostr
            )
        except Exception:
            log.warning("wecom URL check: echostr could not be decrypted")
            return 400, ""
        return 200, plain.decode() if isinstance(plain, bytes) else str(plain)

    async def process_post(self, params: Mapping[str, str], body: bytes) -> tuple[int, str]:
        """Handle one callback; (HTTP status, body). 403: bad signature, stale timestamp or a
        replay; 400: malformed XML, entities, ciphertext that is not ours; 500: the core failed
        and stored nothing (WeCom retries); else 200 with an empty body (everything we say
        goes out through ``message/send``). Nothing is stored before the request is
        verified and parsed."""
        try:
            outer = xmltodict.parse(body)["xml"]
            cipher = str(outer["Encrypt"])
        except (ValueError, ExpatError, KeyError, TypeError):
            return 400, ""
        if not self._signed(params, cipher):
            return 403, ""
        timestamp, nonce = params.get("timestamp", ""), params.get("nonce", "")
        try:
            plain = self.crypto.decrypt_message(
                {"Encrypt": cipher}, params.get("msg_signature", ""), timestamp, nonce
            )
        except Exception:
            log.warning("wecom callback could not be decrypted")
            return 400, ""
        try:
            message = parse_message(plain)
            data = getattr(message, "_data", None)
            if not isinstance(data, dict):
                return 400, ""
            inbound = to_inbound(data, self.clock())
        except (ValueError, ExpatError, KeyError, TypeError, AttributeError):
            return 400, ""
        agent = str(data.get("AgentID") or "").strip()
        if agent and agent != str(self.agent_id):
            log.warning("wecom callback for another app (%s) refused", agent)
            return 403, ""
        try:
            fresh = await self.replays.remember(
                nonce, timestamp, params.get("msg_signature", ""), body
            )
        except Exception:
            log.exception("wecom callback could not be recorded: WeCom will retry")
            return 500, ""
        if not fresh:
            log.warning("wecom callback refused: its signature was seen with another body")
            return 403, ""
        if inbound is None:
            return 200, ""
        try:
            code = str(data.get("ResponseCode") or "")
            if inbound.button_message_id and code:
                await self._keep_response_code(
                    inbound.button_message_id.removeprefix("card:"), inbound.user_id, code
                )
            await keep_inbound_files(self.media, inbound, self.fetch_file)
            await self._intake(inbound)
        except Exception:
            log.exception("wecom intake failed: answering 500 so that WeCom retries")
            return 500, ""
        return 200, ""

    # ---- cards' response codes ----------------------------------------------------------
    async def _keep_response_code(self, task_id: str, user: str, code: str) -> None:
        """Keep the press's response code: the card's next edit uses it (once)."""
        value = json.dumps({
            "code": code, "user": user,
            "expires_at": (self.clock() + RESPONSE_CODE_VALIDITY).isoformat(),
        })
        key = f"{CARD_KV}{task_id}"[:64]
        async with self.sessionmaker() as session, session.begin():
            row = await session.get(KeyValue, key, with_for_update=True)
            if row is None:
                session.add(KeyValue(key=key, value=value))
            else:
                row.value = value

    async def _response_code(self, task_id: str, user: str) -> str | None:
        """The unused, unexpired response code of a press on card ``task_id`` by ``user``."""
        async with self.sessionmaker() as session:
            row = await session.get(KeyValue, f"{CARD_KV}{task_id}"[:64])
        if row is None:
            return None
        try:
            kept = json.loads(row.value)
            fresh = datetime.fromisoformat(kept["expires_at"]) > self.clock()
        except (ValueError, KeyError, TypeError):
            return None
        return str(kept["code"]) if fresh and kept.get("user") == user else None

    async def _forget_response_code(self, task_id: str, code: str) -> None:
        """The code was used (or refused for good): forget it, unless a newer press's code
        took its place meanwhile."""
        async with self.sessionmaker() as session, session.begin():
            row = await session.get(KeyValue, f"{CARD_KV}{task_id}"[:64], with_for_update=True)
            if row is None:
                return
            try:
                same = json.loads(row.value).get("code") == code
            except (ValueError, AttributeError):
                same = True
            if same:
                await session.delete(row)

    async def _purge_cards(self, session: AsyncSession) -> None:
        rows = await session.scalars(select(KeyValue).where(KeyValue.key.like(f"{CARD_KV}%")))
        now = self.clock()
        for row in rows:
            try:
                expired = datetime.fromisoformat(json.loads(row.value)["expires_at"]) < now
            except (ValueError, KeyError, TypeError):
                expired = True
            if expired:
                await session.delete(row)

    # ---- outbound -----------------------------------------------------------------------
    async def send(self, chat_id: str, message: Outbound) -> str:
        """Send through ``message/send``: the photo (as an image), the text, the buttons as
        template cards, then a document (as a file). The id of the (first) card, else of
        the text. A bare menu (a reply keyboard alone) is dropped: the app's menu covers it."""
        if message.kind == "menu" and not message.buttons and not message.photo:
            return SKIPPED
        lang = await self._lang(chat_id)
        photo_sent = False
        if message.photo and message.photo.startswith(MEDIA_PREFIX):
            media_id = await self._media_id(message.photo, "image")
            if media_id is not None:
                await self._send(chat_id, "image", {"media_id": media_id})
                photo_sent = True
        body = message.text
        if message.photo and not photo_sent:
            note = self.tr.t(lang, "card.has_photo")
            if note not in body:
                body = f"{body}\n{note}" if body.strip() else note
        buttons = self._buttons(message)
        sent_id = ""
        first, _, rest = body.strip().partition("\n")
        fits = len(first) <= TITLE_CHARS and len(rest.strip()) <= SUBTITLE_CHARS
        if body.strip() and (not buttons or not fits):
            extra = ""
            if message.ask_location:
                extra = "\n\n" + self.tr.t(lang, "wecom.send_location")
            answer = await self._send(chat_id, "text", {"content": clip_bytes(body + extra)})
            sent_id = f"msg:{answer.get('msgid', '')}"
        if buttons:
            title = first if len(first) <= TITLE_CHARS else first[: TITLE_CHARS - 1] + "…"
            subtitle = rest.strip() if fits else ""
            for start in range(0, len(buttons), CARD_BUTTONS):
                card_id = await self._send_card(
                    chat_id, title or "…", subtitle, buttons[start:start + CARD_BUTTONS], lang
                )
                if start == 0:
                    sent_id = card_id
        if message.document:
            media_id = await self._media_id(message.document, "file")
            if media_id is not None:
                await self._send(chat_id, "file", {"media_id": media_id})
        return sent_id or SKIPPED

    def _buttons(self, message: Outbound) -> list[Button]:
        """The card's buttons: the message's, and a location step's answers as typed text."""
        buttons = message.all_buttons()
        if message.ask_location:
            buttons += [
                Button(label, f"{SAY_PREFIX}{label}"[:64])
                for row in message.menu or [] for label in row
            ]
        return buttons

    def _card(
        self, task_id: str, title: str, subtitle: str, buttons: list[Button], lang: str
    ) -> dict[str, Any]:
        card: dict[str, Any] = {
            "card_type": "button_interaction",
            "main_title": {"title": title},
            "task_id": task_id,
            "button_list": [
                {"text": b.label[:BUTTON_CHARS], "style": 1, "key": b.payload} for b in buttons
            ],
            # Shown as a grey button as soon as one is pressed: no second press while the
            # press is handled.
            "replace_text": self.tr.t(lang, "wecom.pressed"),
        }
        if subtitle:
            card["sub_title_text"] = subtitle
        return card

    async def _send_card(
        self, user: str, title: str, subtitle: str, buttons: list[Button], lang: str
    ) -> str:
        task_id = f"gb{self.clock():%Y%m%d}{uuid.uuid4().hex}"
        await self._send(
            user, "template_card", self._card(task_id, title, subtitle, buttons, lang)
        )
        return f"card:{task_id}"

    async def _send(self, user: str, msgtype: str, content: dict[str, Any]) -> dict[str, Any]:
        answer = await self.api.call("message/send", {
            "touser": user, "msgtype": msgtype, "agentid": self.agent_id, msgtype: content,
        })
        if str(answer.get("invaliduser") or "").strip():
            # WeCom answers 0 and names the members it could not send to.
            raise Unreachable(f"wecom message/send: {user} is not in the app's visible range")
        return answer

    async def edit(self, chat_id: str, message_id: str, message: Outbound) -> str:
        """Update a card the member pressed (``message/update_template_card`` with the press's
        response code): its text, and its buttons or a grey one saying it is done. Any other
        message (a text, a card nobody pressed) cannot be changed: the edit is dropped."""
        if not message_id.startswith("card:"):
            return SKIPPED
        task_id = message_id.removeprefix("card:")
        code = await self._response_code(task_id, chat_id)
        if code is None:
            return SKIPPED
        lang = await self._lang(chat_id)
        first, _, rest = message.text.strip().partition("\n")
        buttons = self._buttons(message)[:CARD_BUTTONS]
        title = first if len(first) <= TITLE_CHARS else first[: TITLE_CHARS - 1] + "…"
        subtitle = rest.strip()
        if len(subtitle) > SUBTITLE_CHARS:
            subtitle = subtitle[: SUBTITLE_CHARS - 1] + "…"
        done = self.tr.t(lang, "wecom.card_done")
        card = self._card(
            task_id, title or "…", subtitle,
            buttons or [Button(done, f"{DONE_PREFIX}{task_id}"[:64])], lang,
        )
        if not buttons:
            card["replace_text"] = done
        try:
            await self.api.call("message/update_template_card", {
                "userids": [chat_id], "agentid": self.agent_id, "response_code": code,
                "template_card": card,
            })
        except DeliveryError as err:
            if err.permanent:  # a code WeCom refuses now will not be taken later
                await self._forget_response_code(task_id, code)
            raise
        # WeCom takes a response code once: the next edit needs the next press.
        await self._forget_response_code(task_id, code)
        return message_id

    async def fetch_file(self, ref: str) -> bytes:
        """A photo a member sent (``media/get``)."""
        media_id = ref.removeprefix("wecom:")
        if not media_id or media_id == ref:
            raise DeliveryError("not a wecom file", permanent=True)
        return await self.api.get_media(media_id)

    async def _media_id(self, ref: str, kind: str) -> str | None:
        """The WeCom media_id of a media-store file, cached (three days, shared through the
        database), else uploaded now; ``None`` when it cannot be."""
        if self.media is None:
            return None
        path = self.media.path(ref)
        if path is None:
            return None
        ext = path.suffix.lstrip(".").lower()
        if kind == "image" and ext not in UPLOADABLE:
            return None
        key = f"{MEDIA_KV}{ref}"[:64]
        now = self.clock()
        async with self.sessionmaker() as session:
            cached = await session.get(KeyValue, key)
        if cached is not None:
            try:
                kept = json.loads(cached.value)
                if datetime.fromisoformat(kept["expires_at"]) - MEDIA_MARGIN > now:
                    return str(kept["media_id"])
            except (ValueError, KeyError, TypeError):
                pass
        try:
            data = await asyncio.to_thread(path.read_bytes)
            media_id = await self.api.upload(data, path.name, kind)
        except OSError as err:
            log.warning("file %s could not be read (%s)", ref, err)
            return None
        except DeliveryError as err:
            if not err.permanent:
                raise
            log.warning("file %s refused by media/upload (%s)", ref, err)
            return None
        value = json.dumps(
            {"media_id": media_id, "expires_at": (now + MEDIA_VALIDITY).isoformat()}
        )
        async with self.sessionmaker() as session, session.begin():
            row = await session.get(KeyValue, key, with_for_update=True)
            if row is None:
                session.add(KeyValue(key=key, value=value))
            else:
                row.value = value
        return media_id

    async def _lang(self, user: str) -> str:
        async with self.sessionmaker() as session:
            identity = await session.scalar(
                select(Identity).where(Identity.channel == CHANNEL, Identity.external_id == user)
            )
            if identity is None:
                return self.default_locale
            person = await session.get(Person, identity.person_id)
            return (person.locale if person else None) or identity.locale or self.default_locale


def build(host: ChannelHost) -> WeComChannel:
    """A WeCom app from the ``wecom_*`` settings."""
    s = host.settings
    assert s.wecom_corp_id and s.wecom_agent_id is not None and s.wecom_secret
    assert s.wecom_token and s.wecom_aes_key
    return WeComChannel(
        corp_id=s.wecom_corp_id,
        agent_id=s.wecom_agent_id,
        secret=s.wecom_secret,
        token=s.wecom_token,
        aes_key=s.wecom_aes_key,
        api_url=s.wecom_api_url,
        intake=host.intake,
        sessionmaker=host.sessionmaker,
        tr=host.tr,
        default_locale=s.default_locale,
        media=host.media,
        clock=host.clock,
    )


__all__ = ["WeComApi", "WeComChannel", "build", "to_inbound"]
