"""The WeChat Official Account (公众号) adapter: the callback, the API client, the push
window and the rendering (the package's other modules) composed into one
:class:`~bot.channels.base.Adapter`.

Inbound: :meth:`WeChatChannel.process_get` answers the URL check (``echostr``);
:meth:`WeChatChannel.process_post` verifies and parses a callback
(:class:`~bot.channels.wechat.callback.CallbackCheck`), refuses a replay
(:class:`~bot.channels.wechat.callback.ReplayGuard`) and awaits the core. A failure that
stored nothing is answered 500 so that WeChat retries (never ``success``). WeChat waits
5 seconds: when the core is done within ``reply_deadline`` the first message it produced for
this user is the passive reply (claimed in the outbox so the deliverer does not send it again);
otherwise the answer is ``success`` and everything goes out through the customer-service API.

Outbound: :meth:`WeChatChannel.deliver_row` follows the push rules
(:class:`~bot.channels.wechat.window.PushWindow`): inside the 48-hour window and under the
quota a customer-service message, else the template configured for that kind of push, else
:class:`~bot.channels.base.Unreachable` (the deliverer tells the order's handler). Buttons
become numbered options (:class:`~bot.channels.wechat.render.Renderer`). WeChat cannot edit a
sent message: edits are dropped (they only refresh what the user already has, and every
message counts against the window's quota).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from bot.channels.base import ChannelHost, ChatHold, DeliveryError, Limits, Unreachable
from bot.channels.wechat.api import DEFAULT_API_URL, QuotaUsed, WeChatApi, WindowClosed
from bot.channels.wechat.api import create_qr as _create_qr
from bot.channels.wechat.callback import CHANNEL, CallbackCheck, ReplayGuard
from bot.channels.wechat.render import Renderer, clip_bytes, msgmenu, template_data
from bot.channels.wechat.uploads import VOICE_UPLOADABLE, MediaUploads
from bot.channels.wechat.window import PushWindow, push_kind
from bot.config import TemplateSpec, template_specs
from bot.i18n import Translator
from bot.media import MAX_BYTES, MediaStore, keep_inbound_files
from bot.ports import HandleResult, Inbound, Intake, Outbound
from bot.request_body import read_capped
from models import Identity, OutboxMessage, Person, utcnow
from models.messaging import OUT_PENDING

log = logging.getLogger(__name__)

#: The callback URL's path (entered in the account's admin console).
CALLBACK_PATH = "/wechat"
#: The message id of what was not sent (a dropped edit, a bare menu, a document).
SKIPPED = "dropped"
#: A handler that missed the reply deadline and then failed is run again this many times,
#: first after this many seconds, each wait four times the one before.
LATE_RETRIES = 3
LATE_RETRY_FIRST = 1.0

Clock = Callable[[], datetime]


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
        self._intake = intake
        self.sessionmaker = sessionmaker
        self.tr = tr
        self.deliverer = deliverer
        self.check = CallbackCheck(
            appid=appid, token=token, aes_key=aes_key, clock=clock,
            timestamp_skew=timestamp_skew,
        )
        self.replays = ReplayGuard(sessionmaker, clock, timestamp_skew)
        self.api = WeChatApi(appid, secret, sessionmaker, base_url=api_url, clock=clock)
        self.uploads = MediaUploads(self.api, media, sessionmaker, clock)
        self.window = PushWindow(sessionmaker, push_quota, clock)
        self.renderer = Renderer(sessionmaker, tr, clock)
        self.default_locale = default_locale
        self.media = media
        self.clock = clock
        self.reply_deadline = reply_deadline
        self.msgmenu = msgmenu
        self.templates = template_specs(templates)
        self.timezone = timezone
        self._background: set[asyncio.Task[Any]] = set()

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
        mode = "safe (AES)" if self.check.crypto is not None else "plain"
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
        if not self.check.query_ok(params):
            return Response(status_code=403)
        data = await read_capped(request)
        if data is None:
            return Response(status_code=413)
        status, body = await self.process_post(params, data)
        media = "application/xml" if body.startswith("<") else "text/plain"
        return Response(body, status_code=status, media_type=media)

    def on_inbound(self, identity: Identity, now: datetime) -> None:
        """A new 48-hour window with its quota of pushes starts with every message."""
        self.window.on_inbound(identity, now)

    async def stop(self) -> None:
        """Let late handlers finish, then close the HTTP client."""
        if self._background:
            await asyncio.wait(self._background, timeout=10)
        await self.api.close()

    # ------------------------------------------------------------- webhook
    def process_get(self, params: Mapping[str, str]) -> tuple[int, str]:
        """The URL check of the admin console: echo ``echostr`` when the signature is ours."""
        return self.check.echo(params)

    async def process_post(self, params: Mapping[str, str], body: bytes) -> tuple[int, str]:
        """Handle one callback; return (HTTP status, body).

        403: bad signature, stale timestamp, a plaintext body in safe mode, or a query string
        seen before with another body (a replay); 400: malformed XML, entities (XXE), bad
        ciphertext (:meth:`CallbackCheck.read`); 500: the core failed and stored nothing
        (WeChat retries); 200 with a passive reply, or ``success``. Nothing touches the
        database before the request is verified and parsed.
        """
        callback = self.check.read(params, body)
        if isinstance(callback, int):
            return callback, ""
        timestamp, nonce = params.get("timestamp", ""), params.get("nonce", "")
        try:
            fresh = await self.replays.remember(
                nonce, timestamp, params.get("signature", ""), body
            )
        except Exception:
            log.exception("wechat callback could not be recorded: WeChat will retry")
            return 500, ""
        if not fresh:
            log.warning("wechat callback refused: its signature was seen with another body")
            return 403, ""
        inbound = callback.inbound
        if inbound is None:
            return 200, "success"
        self.window.stranger_wrote(inbound.user_id)
        try:
            if inbound.text is not None:
                inbound.button, inbound.text = await self.renderer.choice(
                    inbound.user_id, inbound.text, callback.data.get("bizmsgmenuid")
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
        return 200, self.check.reply(params, callback, reply)

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
        rendered = await self.renderer.render(identity, Outbound.from_payload(row.payload), lang)
        if not await self.deliverer.claim_for_passive([row.id]):
            return None
        return clip_bytes(rendered.text)

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
        if identity is None and self.window.stranger_push(row.chat_id, now):
            return await self._send_custom(None, row.chat_id, message, lang)
        window = self.window
        if (
            identity is not None
            and window.is_open(identity, now)
            and await window.reserve(identity.id)
        ):
            reserved = 1
            try:
                media_id = voice_id = None
                # A photo is a second customer-service message: only when the quota has room
                # for both; else the text alone goes out (and says a photo exists). The same
                # for a voice message (the text says one exists).
                if self.uploads.uploadable(message.photo) and await window.reserve(identity.id):
                    reserved += 1
                    media_id = await self.uploads.media_id(message.photo)
                    if media_id is None:
                        reserved -= 1
                        await window.refund(identity.id)
                if self.uploads.uploadable(message.voice, VOICE_UPLOADABLE) and (
                    await window.reserve(identity.id)
                ):
                    reserved += 1
                    voice_id = await self.uploads.media_id(message.voice, "voice")
                    if voice_id is None:
                        reserved -= 1
                        await window.refund(identity.id)
                return await self._send_custom(
                    identity, row.chat_id, message, lang, media_id=media_id, voice_id=voice_id
                )
            except (WindowClosed, QuotaUsed) as err:
                log.info("wechat push to outbox %s refused (%s): trying a template", row.id, err)
                await window.used_up(identity.id)
            except DeliveryError as err:
                if not err.permanent:
                    for _ in range(reserved):
                        await window.refund(identity.id)
                raise
        template = self.templates.get(kind) or self.templates.get("other")
        if template:
            return await self._send_template(identity, row, template, message, lang)
        raise Unreachable(f"wechat: no open window and no template for {kind}")

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
            await self.api.send_custom(openid, "image", {"media_id": media_id})
        if voice_id is not None:
            await self.api.send_custom(openid, "voice", {"media_id": voice_id})
        rendered = await self.renderer.render(
            identity, message, lang, photo_sent=media_id is not None
        )
        if self.msgmenu and rendered.options and not message.ask_location:
            try:
                await self.api.send_custom(openid, "msgmenu", msgmenu(rendered))
                return "msgmenu"
            except DeliveryError as err:
                if not err.permanent or isinstance(err, WindowClosed | QuotaUsed | Unreachable):
                    raise
                log.info("msgmenu refused (%s): sending numbered options", err)
        await self.api.send_custom(openid, "text", {"content": clip_bytes(rendered.text)})
        return "custom"

    async def _send_template(
        self,
        identity: Identity | None,
        row: OutboxMessage,
        template: TemplateSpec,
        message: Outbound,
        lang: str,
    ) -> str:
        rendered = await self.renderer.render(identity, message, lang)
        number = time = ""
        if template.fields is not None:
            number = await self._order_number(row)
            time = self.clock().astimezone(self.timezone).strftime("%Y-%m-%d %H:%M")
        data = template_data(
            rendered, template, self.tr.t(lang, "wechat.template_remark"), number, time
        )
        return f"tpl:{await self.api.send_template(row.chat_id, template.id, data)}"

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
        return await _create_qr(self.api, scene, expire_seconds)


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
