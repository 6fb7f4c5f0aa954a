"""The Telegram adapter: the only module that imports ``telegram`` (python-telegram-bot 22).

Inbound: every update becomes a neutral :class:`~bot.ports.Inbound` (:func:`to_inbound`) and
the core's ``intake`` is awaited; button presses are answered with the core's toast. Either way
an update is acknowledged to Telegram only once the core has handled (stored) it: webhook mode
expects the web app to hand each request to :meth:`TelegramChannel.process_webhook` (secret
header checked; 200 after the core, 500 when it failed, so Telegram delivers it again); polling
mode runs its own ``getUpdates`` loop (:meth:`TelegramChannel._poll`) that confirms an update
only after it was handled — PTB's Updater confirms a batch before handling it.

Outbound: :meth:`TelegramChannel.send` / :meth:`TelegramChannel.edit` render an
:class:`~bot.ports.Outbound` and map PTB errors to the delivery worker's
:class:`~bot.channels.base.DeliveryError` / :class:`~bot.channels.base.RetryAfter`. Flood limits
are the delivery worker's job (:attr:`TelegramChannel.limits`); PTB's rate limiter is not used and
PTB does not retry sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from telegram import (
    Bot,
    BotCommand,
    Chat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    Message,
    MessageEntity,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
    Update,
)
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    TelegramError,
)
from telegram.error import RetryAfter as TelegramRetryAfter
from telegram.ext import Application, ApplicationBuilder, ExtBot
from telegram.request import HTTPXRequest

from bot.channels.base import ChannelHost, DeliveryError, Limits, RetryAfter
from bot.media import PREFIX as MEDIA_PREFIX
from bot.media import MediaStore, keep_inbound_files
from bot.ports import HandleResult, Inbound, Intake, IntakeUnavailable, Outbound
from bot.request_body import read_capped

log = logging.getLogger(__name__)

#: Telegram's limits, counted in UTF-16 code units after entity parsing.
TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
#: Update types the bot asks for (polling and webhook alike).
ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY]
#: Seconds between getUpdates attempts after a failure: first, and at the most (doubling).
POLL_BACKOFF_FIRST = 1.0
POLL_BACKOFF_MAX = 30.0
DEFAULT_BASE_URL = "https://api.telegram.org/bot"
#: Where Telegram posts updates in webhook mode.
WEBHOOK_PATH = "/telegram/webhook"
#: Commands shown in Telegram's menu (descriptions come from the catalog at start-up).
BOT_COMMANDS = ("order", "myorders", "tasks", "queue", "mygrid", "me", "lang", "cancel", "help")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
#: Attempts for the 2nd.. parts of a split message (the first part's errors go to the caller).
_CONTINUATION_ATTEMPTS = 3

Markup = InlineKeyboardMarkup | ReplyKeyboardMarkup | ReplyKeyboardRemove
T = TypeVar("T")


# --------------------------------------------------------------------------- getMe
async def fetch_bot_username(token: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """Ask the Bot API who the bot is (``getMe``) and return its username, without ``@``.

    Used by the admin command line, which prints ``t.me`` links without running the service.
    Raises :class:`ValueError` with a reason fit for an operator when Telegram refuses the token
    or cannot be reached.
    """
    request = HTTPXRequest(connection_pool_size=1, connect_timeout=10.0, read_timeout=10.0)
    try:
        bot = Bot(token, base_url=base_url, request=request)
        async with bot:  # initialize() calls getMe
            username = bot.username
    except InvalidToken as exc:
        raise ValueError(f"Telegram refused the bot token ({exc.message})") from None
    except TelegramError as exc:
        raise ValueError(f"Telegram could not be asked (getMe: {exc.message})") from None
    if not username:
        raise ValueError("Telegram's getMe answer carries no username")
    return username


# --------------------------------------------------------------------------- inbound
def to_inbound(
    update: Update, bot_id: int | str, bot_username: str | None = None
) -> Inbound | None:
    """Convert a PTB update into an :class:`Inbound`, or ``None`` if it is nothing for the core.

    Ignored: update types other than messages and button presses, messages without a sender,
    messages without text, caption, photo or location (service messages, stickers...), and
    commands addressed to another bot (``/cmd@other_bot``). ``/cmd@this_bot args`` becomes
    ``/cmd args``.
    """
    dedupe_key = f"{bot_id}:{update.update_id}"
    query = update.callback_query
    if query is not None:
        user = query.from_user
        chat = query.message.chat if query.message is not None else None
        chat_id = chat.id if chat is not None else user.id
        return Inbound(
            channel="telegram",
            user_id=str(user.id),
            chat_id=str(chat_id),
            dedupe_key=dedupe_key,
            button=query.data,
            button_message_id=(
                str(query.message.message_id) if query.message is not None else None
            ),
            locale=user.language_code,
            display_name=user.full_name,
            received_at=datetime.now(UTC),
            group=chat is not None and chat.type != Chat.PRIVATE,
        )
    message = update.message
    if message is None or message.from_user is None:
        return None
    text = message.text if message.text is not None else message.caption
    if text is not None and message.text is not None:
        text = _strip_bot_mention(message, text, bot_username)
        if text is None:
            return None
    photo = max(message.photo, key=lambda p: p.width * p.height).file_id if message.photo else None
    location = (
        (message.location.latitude, message.location.longitude)
        if message.location is not None
        else None
    )
    # A voice message (or an audio file sent as one): kept with the order like a photo.
    recording = message.voice or message.audio
    voice = recording.file_id if recording is not None else None
    if text is None and photo is None and location is None and voice is None:
        return None
    user = message.from_user
    received = message.date
    if received.tzinfo is None:
        received = received.replace(tzinfo=UTC)
    return Inbound(
        channel="telegram",
        user_id=str(user.id),
        chat_id=str(message.chat.id),
        dedupe_key=dedupe_key,
        text=text,
        photo=photo,
        voice=voice,
        location=location,
        locale=user.language_code,
        display_name=user.full_name,
        received_at=received,
        group=message.chat.type != Chat.PRIVATE,
    )


def _strip_bot_mention(message: Message, text: str, bot_username: str | None) -> str | None:
    """Turn ``/cmd@bot rest`` into ``/cmd rest``; ``None`` if addressed to another bot."""
    entity = next(
        (e for e in message.entities if e.type == MessageEntity.BOT_COMMAND and e.offset == 0),
        None,
    )
    if entity is None:
        return text
    command = message.parse_entity(entity)
    if "@" not in command:
        return text
    name, _, target = command.partition("@")
    if bot_username is not None and target.lower() != bot_username.lower():
        return None
    return name + text[len(command) :]


# -------------------------------------------------------------------------- outbound
def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _fit(text: str, limit: int) -> int:
    """The longest prefix length (in code points) of ``text`` that fits ``limit`` units."""
    cut = min(len(text), limit)
    while _utf16_len(text[:cut]) > limit:
        cut -= max(1, (_utf16_len(text[:cut]) - limit) // 2)
    return cut


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` UTF-16 units.

    Cuts at the last line break in the second half of a part, else at the last space there,
    else hard; the separator is dropped and empty parts are skipped.
    """
    parts: list[str] = []
    rest = text
    while _utf16_len(rest) > limit:
        cut = _fit(rest, limit)
        window = rest[:cut]
        sep = window.rfind("\n")
        if sep < cut // 2:
            sep = max(window.rfind(" "), window.rfind("\u3000"))
        if sep >= cut // 2 and sep > 0:
            part, rest = window[:sep], rest[sep + 1 :]
        else:
            part, rest = window, rest[cut:]
        if part.strip():
            parts.append(part)
    if rest.strip() or not parts:
        parts.append(rest)
    return parts


def _truncate(text: str, limit: int) -> str:
    """Shorten to ``limit`` UTF-16 units, marking the cut with an ellipsis."""
    if _utf16_len(text) <= limit:
        return text
    return text[: _fit(text, limit - 1)] + "…"


def _inline_markup(message: Outbound) -> InlineKeyboardMarkup | None:
    if not message.buttons:
        return None
    return InlineKeyboardMarkup(
        [
            [InlineKeyboardButton(b.label, callback_data=b.payload) for b in row]
            for row in message.buttons
        ]
    )


def render_markup(message: Outbound) -> Markup | None:
    """The one ``reply_markup`` a Telegram message can carry.

    Inline buttons win; otherwise the location request (with the menu's labels under it, e.g.
    "skip"), the menu, or the menu's removal.
    """
    inline = _inline_markup(message)
    if inline is not None:
        if (message.menu and not message.menu_note) or message.remove_menu or message.ask_location:
            log.warning("message has inline buttons and a reply keyboard; keyboard not sent")
        return inline
    if message.ask_location:
        extra = [[KeyboardButton(label) for label in row] for row in message.menu or []]
        return ReplyKeyboardMarkup(
            [[KeyboardButton(message.ask_location, request_location=True)], *extra],
            resize_keyboard=True,
            one_time_keyboard=True,
        )
    if message.menu:
        return ReplyKeyboardMarkup(
            [[KeyboardButton(label) for label in row] for row in message.menu],
            resize_keyboard=True,
            is_persistent=True,
        )
    if message.remove_menu:
        return ReplyKeyboardRemove()
    return None


def _retry_seconds(exc: TelegramRetryAfter) -> float:
    # The public ``retry_after`` warns about its coming type change; PTB reads this too.
    return exc._retry_after.total_seconds()


def map_error(exc: TelegramError) -> DeliveryError:
    """Map a PTB error to the delivery worker's errors."""
    if isinstance(exc, TelegramRetryAfter):
        return RetryAfter(_retry_seconds(exc))
    if isinstance(exc, Forbidden):  # blocked by the user, kicked from the group
        return DeliveryError(f"forbidden: {exc.message}", permanent=True)
    if isinstance(exc, ChatMigrated):
        return DeliveryError(f"chat migrated to {exc.new_chat_id}", permanent=True)
    if isinstance(exc, BadRequest):  # chat not found, bad markup...: a retry fails the same way
        return DeliveryError(f"bad request: {exc.message}", permanent=True)
    if isinstance(exc, NetworkError):  # includes TimedOut
        return DeliveryError(f"network: {exc.message}", permanent=False)
    if isinstance(exc, InvalidToken):
        return DeliveryError("invalid bot token", permanent=False)
    return DeliveryError(f"telegram: {exc.message}", permanent=False)


#: Of the Bot API connections, how many the delivery worker leaves for answering button presses
#: and fetching photos.
RESERVED_CONNECTIONS = 4


class _BoundedRequest(HTTPXRequest):
    """PTB's HTTP client with at most ``connections`` requests at once; the others wait here.

    PTB's default pool allows 256 connections while httpx keeps only 20 alive, and httpcore's
    pool does work proportional to (waiting requests × connections) on every request it starts
    or finishes: under a burst that bookkeeping cost more CPU than handling the updates. Here
    every request finds a free connection (no queue inside httpcore), and the pool stays small
    enough to be kept alive whole (no reconnecting).
    """

    def __init__(self, connections: int) -> None:
        super().__init__(connection_pool_size=connections)
        self._slots = asyncio.Semaphore(connections)

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        async with self._slots:
            return await super().do_request(*args, **kwargs)


# --------------------------------------------------------------------------- channel
class TelegramChannel:
    """Telegram as a :class:`~bot.channels.base.Channel`, plus its inbound side."""

    name = "telegram"
    limits = Limits(per_chat_interval=1.0, global_per_second=30, group_per_minute=20)
    stop_budget = 1.5

    def __init__(
        self,
        token: str,
        intake: Intake,
        *,
        base_url: str = DEFAULT_BASE_URL,
        base_file_url: str | None = None,
        mode: Literal["polling", "webhook"] = "polling",
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        poll_timeout: float = 10.0,
        connections: int = 12,
        media: MediaStore | None = None,
        host: ChannelHost | None = None,
    ) -> None:
        if mode not in ("polling", "webhook"):
            raise ValueError(f"unknown Telegram mode {mode!r}")
        if webhook_secret is not None and not _SECRET_RE.match(webhook_secret):
            raise ValueError("webhook secret must be 1-256 characters of A-Za-z0-9_-")
        if connections <= RESERVED_CONNECTIONS:
            raise ValueError(f"need more than {RESERVED_CONNECTIONS} Bot API connections")
        self.mode = mode
        self.limits = dataclasses.replace(
            self.limits, max_in_flight=connections - RESERVED_CONNECTIONS
        )
        self.bot_id = token.split(":", 1)[0]
        self._intake = intake
        self._webhook_url = webhook_url
        self._webhook_secret = webhook_secret
        self._poll_timeout = poll_timeout
        self._media = media
        self._host = host
        self._bot_username: str | None = None
        self._lease_keeper: asyncio.Task[None] | None = None
        if base_file_url is None:
            base_file_url = (
                base_url[: -len("/bot")] + "/file/bot"
                if base_url.endswith("/bot")
                else "https://api.telegram.org/file/bot"
            )
        builder = (
            ApplicationBuilder()
            .token(token)
            .base_url(base_url)
            .base_file_url(base_file_url)
            .concurrent_updates(True)
            .request(_BoundedRequest(connections))
        )
        # No PTB Updater in either mode: its polling confirms a batch of updates (the next
        # getUpdates offset) before they are handled, so a crash lost them. See _poll.
        builder = builder.updater(None)
        self.application: Application[ExtBot[None], Any, Any, Any, Any, Any] = builder.build()
        self._poll_task: asyncio.Task[None] | None = None
        #: Polling: the next getUpdates offset (every update below it is handled), and the
        #: offset Telegram has been told (confirmed) so far.
        self._offset: int | None = None
        self._confirmed: int | None = None

    def is_group(self, chat_id: str) -> bool:
        """Groups and channels have negative ids."""
        return chat_id.lstrip().startswith("-")

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Initialise PTB (``getMe``), then poll or register the webhook. Safe to call again
        after a failure (the service retries it while the Bot API is in trouble): each step
        already done is skipped. Platform errors are raised as :class:`DeliveryError`."""
        try:
            await self._start()
        except TelegramError as exc:
            raise map_error(exc) from exc
        if self._host is not None:
            await self._remember_username(self._host)
            lang = self._host.settings.default_locale
            await self.set_commands(
                [(c, self._host.tr.t(lang, f"command.{c}")) for c in BOT_COMMANDS]
            )

    async def _start(self) -> None:
        app = self.application
        await app.initialize()
        self._bot_username = app.bot.username
        if not app.running:
            await app.start()
        if self.mode == "polling":
            if self._poll_task is None:
                await app.bot.delete_webhook(drop_pending_updates=False)
                self._poll_task = asyncio.create_task(self._poll(), name="gridbot-telegram-poll")
        elif self._webhook_url:
            if self._webhook_secret is None:
                log.warning("webhook without a secret token: anyone can post updates")
            await app.bot.set_webhook(
                self._webhook_url,
                secret_token=self._webhook_secret,
                allowed_updates=ALLOWED_UPDATES,
            )
        log.info("telegram channel started (%s)", self.mode)

    async def _remember_username(self, host: ChannelHost) -> None:
        """Keep the bot's username (from ``getMe``) in the database: the admin command line
        prints ``t.me`` links with it."""
        from bot.core.invites import remember_bot_username

        if not self._bot_username:
            return
        try:
            async with host.sessionmaker() as session, session.begin():
                await remember_bot_username(session, self.bot_id, self._bot_username)
        except Exception:  # a convenience for the CLI: never a reason to stop Telegram
            log.exception("could not keep the bot's username")

    async def claim(self) -> str | None:
        """Polling: take the lease ``telegram-poll:<bot id>`` and keep renewing it; the reason
        to refuse when another live instance polls this bot (two pollers each get some updates
        and Telegram answers them 409 Conflict). Webhook mode takes nothing: any number of
        instances may serve the webhook."""
        if self.mode != "polling" or self._host is None or self._lease_keeper is not None:
            return None
        from bot.lease import Lease

        host = self._host
        lease = Lease(
            host.sessionmaker,
            f"telegram-poll:{self.bot_id}",
            host.holder,
            timedelta(seconds=host.settings.scheduler_lease_seconds),
            host.clock,
        )
        if not await lease.acquire():
            row = await lease.current()
            who = f"{row.holder} until {row.expires_at.isoformat()}" if row else "?"
            return (
                f"another gridbot ({who}) polls this Telegram bot already; two pollers lose "
                "and repeat updates. Run one instance in polling mode, or use webhook mode "
                "(GRIDBOT_TELEGRAM_MODE=webhook) for several."
            )
        self._lease_keeper = lease.keep(
            on_lost=lambda: log.error(
                "the Telegram polling lease was taken by another instance: two pollers now "
                "share this bot"
            ),
            name="gridbot-telegram-poll-lease",
        )
        return None

    def banner(self, base_url: str) -> str | None:
        """The mode, for the operator."""
        return f"Telegram: {self.mode} mode"

    def routes(self) -> list[BaseRoute]:
        """The webhook (``POST /telegram/webhook``); in polling mode it answers 404."""
        return [Route(WEBHOOK_PATH, self._webhook_endpoint, methods=["POST"])]

    async def _webhook_endpoint(self, request: Request) -> Response:
        """The secret is checked before the body is read, the body is capped while it streams
        in, and the update is stored (handled) before we answer 200."""
        if self.mode != "webhook":
            return Response(status_code=404)
        secret = request.headers.get("x-telegram-bot-api-secret-token")
        if not self.secret_ok(secret):
            return Response(status_code=403)
        body = await read_capped(request)
        if body is None:
            return Response(status_code=413)
        return Response(status_code=await self.process_webhook(body, secret))

    @property
    def username(self) -> str | None:
        """The bot's username (without ``@``) as ``getMe`` told it at start-up."""
        return self._bot_username

    async def stop(self) -> None:
        """Stop polling and PTB; the webhook stays registered (other instances may serve it).
        The polling lease is released last thing before PTB stops."""
        app = self.application
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
            self._poll_task = None
            if self._offset != self._confirmed:  # tell Telegram what was handled
                try:
                    await app.bot.get_updates(offset=self._offset, timeout=0, limit=1)
                    self._confirmed = self._offset
                except TelegramError as exc:
                    log.warning("could not confirm handled updates at stop: %s",
                                type(exc).__name__)
        if self._lease_keeper is not None:
            self._lease_keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_keeper
            self._lease_keeper = None
        if app.running:
            await app.stop()
        await app.shutdown()

    async def set_commands(self, commands: list[tuple[str, str]]) -> None:
        """Set the bot's command menu: ``[(command, description), ...]``."""
        await self._call(
            self.application.bot.set_my_commands(
                [BotCommand(command.lstrip("/"), description) for command, description in commands]
            )
        )

    # ------------------------------------------------------------- inbound
    def secret_ok(self, secret_header: str | None) -> bool:
        """Whether a webhook request carries our ``X-Telegram-Bot-Api-Secret-Token`` (always
        true when no secret is set); checked before the request's body is read."""
        if self._webhook_secret is None:
            return True
        return hmac.compare_digest((secret_header or "").encode(), self._webhook_secret.encode())

    async def process_webhook(
        self, body: bytes | dict[str, Any], secret_header: str | None
    ) -> int:
        """Handle one webhook request; return the HTTP status to answer.

        403: wrong or missing ``X-Telegram-Bot-Api-Secret-Token`` (when a secret is set);
        400: not an update; 500: the core failed (Telegram will deliver it again);
        200: handled and stored.
        """
        if not self.secret_ok(secret_header):
            return 403
        try:
            data = json.loads(body) if isinstance(body, bytes | bytearray) else body
        except ValueError:  # includes UnicodeDecodeError
            return 400
        if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
            return 400
        try:
            update = Update.de_json(data, self.application.bot)
        except Exception:
            log.warning("malformed webhook update %s", data.get("update_id"))
            return 400
        return 200 if await self._to_intake(update) else 500

    async def _poll(self) -> None:
        """Long-poll ``getUpdates``; confirm an update (the next call's ``offset``) only once
        it is handled and stored, so a crash or a failing database loses nothing: what was not
        confirmed comes again, and the dedupe key (``update_id``) makes a repeat a no-op.

        Updates of one chat are handled in order, chats at the same time. An update whose
        handling failed (the core could not store it) is confirmed neither, nor is anything
        after it: the batch is fetched again after a back-off. ``409 Conflict`` means that
        another process polls this bot (or a webhook is set): said loudly, retried.
        """
        bot = self.application.bot
        backoff = POLL_BACKOFF_FIRST
        while True:
            try:
                updates = await bot.get_updates(
                    offset=self._offset,
                    timeout=int(self._poll_timeout),
                    allowed_updates=ALLOWED_UPDATES,
                    read_timeout=self._poll_timeout + 10,
                )
            except Conflict as exc:
                log.error(
                    "Telegram refused getUpdates: another process polls this bot token, or a "
                    "webhook is set (%s). Run one poller per bot, or use webhook mode.",
                    exc.message,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, POLL_BACKOFF_MAX)
                continue
            except (NetworkError, InvalidToken) as exc:
                log.warning("getUpdates failed (%s): retrying in %.0f s",
                            type(exc).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, POLL_BACKOFF_MAX)
                continue
            if not updates:
                backoff = POLL_BACKOFF_FIRST
                continue
            self._confirmed = self._offset  # the call just made confirmed what came before
            failed = await self._handle_batch(updates)
            if failed is None:
                self._offset = updates[-1].update_id + 1
                backoff = POLL_BACKOFF_FIRST
            else:
                self._offset = failed  # it and what follows come again
                log.warning("update %s not stored: fetching it again in %.0f s", failed, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, POLL_BACKOFF_MAX)

    async def _handle_batch(self, updates: Sequence[Update]) -> int | None:
        """Handle a batch, chat by chat in order; the lowest ``update_id`` that failed (and
        was not handled), or None when every update is stored."""
        chats: dict[object, list[Update]] = {}
        for update in updates:
            chat = update.effective_chat.id if update.effective_chat else update.update_id
            chats.setdefault(chat, []).append(update)

        async def one_chat(chat_updates: list[Update]) -> int | None:
            for update in chat_updates:
                if not await self._to_intake(update):
                    return update.update_id  # later ones of this chat wait for it
            return None

        results = await asyncio.gather(*(one_chat(u) for u in chats.values()))
        failed = [r for r in results if r is not None]
        return min(failed) if failed else None

    async def _to_intake(self, update: Update) -> bool:
        """Hand one update to the core; answer a button press. False if the core failed."""
        inbound = to_inbound(update, self.bot_id, self._bot_username)
        result: HandleResult | None = None
        ok = True
        if inbound is not None:
            try:
                await keep_inbound_files(self._media, inbound, self.fetch_file)
                result = await self._intake(inbound)
            except IntakeUnavailable as err:
                ok = False
                log.warning("update %s not stored (%s): to be delivered again",
                            inbound.dedupe_key, err)
            except Exception:
                ok = False
                log.exception("intake failed for update %s", inbound.dedupe_key)
        if update.callback_query is not None:
            try:
                await update.callback_query.answer(text=result.toast if result else None)
            except TelegramError as exc:  # too old, already answered, network
                log.warning(
                    "answerCallbackQuery failed for update %s: %s",
                    update.update_id,
                    type(exc).__name__,
                )
        return ok

    async def fetch_file(self, file_id: str) -> bytes:
        """Download a file (e.g. an :attr:`Inbound.photo`) by its file_id."""

        async def download() -> bytes:
            file = await self.application.bot.get_file(file_id)
            return bytes(await file.download_as_bytearray())

        return await self._call(download())

    # ------------------------------------------------------------ outbound
    async def _photo(self, ref: str | None) -> str | bytes | None:
        """What to hand sendPhoto: a stored image's bytes, or a Telegram file_id.

        A reference from another platform that was never copied into the media store cannot be
        shown here; the text (which says a photo exists) goes out alone.
        """
        if not ref:
            return None
        if ref.startswith(MEDIA_PREFIX):
            path = self._media.path(ref) if self._media else None
            if path is None:
                log.warning("photo %s is not in the media store; sending text only", ref)
                return None
            return await asyncio.to_thread(path.read_bytes)
        if ":" in ref:
            return None
        return ref

    async def send(self, chat_id: str, message: Outbound) -> str:
        """Send a message; return the id of the last part (the one carrying the markup).

        Texts over 4096 units go out in parts, paced by ``limits.per_chat_interval``; a photo
        whose caption exceeds 1024 units is sent bare, followed by the text. A message with
        inline buttons and a menu (which Telegram cannot show on one message) is followed by
        its ``menu_note`` carrying the menu keyboard.
        """
        sent_id = await self._send_one(chat_id, message)
        if message.buttons and message.menu and message.menu_note:
            keyboard = Outbound(message.menu_note, menu=message.menu)
            try:
                await self._continue(
                    lambda: self.application.bot.send_message(
                        _chat_ref(chat_id), keyboard.text, reply_markup=render_markup(keyboard)
                    )
                )
            except DeliveryError as exc:
                # The message itself is out: a retry would repeat it. The keyboard is still
                # the last one the chat had; the next menu brings it back.
                log.warning("menu keyboard after message %s not sent: %s", sent_id, exc)
        return sent_id

    async def _send_one(self, chat_id: str, message: Outbound) -> str:
        if not message.text.strip() and not message.photo and not message.document:
            raise DeliveryError("empty message", permanent=True)
        bot = self.application.bot
        target = _chat_ref(chat_id)
        markup = render_markup(message)
        if message.document:
            return await self._send_document(target, message, markup)
        # A voice message goes first (as a photo does): if it fails, nothing is out yet and
        # the retry starts clean; the message with the buttons comes last.
        started = await self._send_voice(target, message.voice)

        async def first(request: Callable[[], Awaitable[T]]) -> T:
            return await (self._continue(request) if started else self._call(request()))

        photo = await self._photo(message.photo)
        if photo is not None and _utf16_len(message.text) <= CAPTION_LIMIT:
            sent = await first(
                lambda: bot.send_photo(
                    target, photo, caption=message.text or None, reply_markup=markup
                )
            )
            return str(sent.message_id)
        parts = split_text(message.text)

        def send_part(number: int) -> Awaitable[Message]:
            last = number == len(parts) - 1
            return bot.send_message(target, parts[number], reply_markup=markup if last else None)

        if photo is not None:
            await first(lambda: bot.send_photo(target, photo))
            sent = await self._continue(lambda: send_part(0))
        else:
            sent = await first(lambda: send_part(0))
        for number in range(1, len(parts)):
            # Something is out already: finish rather than fail, or a retry would repeat it.
            sent = await self._continue(functools.partial(send_part, number))
        return str(sent.message_id)

    async def _send_voice(self, target: int | str, ref: str | None) -> bool:
        """sendVoice of a stored recording (OGG/Opus, MP3, M4A: what Telegram plays), or of a
        Telegram file_id; other recordings (WeChat's AMR) go as a file the handler can open.
        False when there is nothing to send here (the text says a voice message exists)."""
        if not ref:
            return False
        bot = self.application.bot
        if not ref.startswith(MEDIA_PREFIX):
            if ":" in ref:  # another platform's reference, never copied into the store
                return False
            await self._call(bot.send_voice(target, ref))
            return True
        path = self._media.path(ref) if self._media else None
        if path is None:
            log.warning("voice %s is not in the media store; sending text only", ref)
            return False
        data = await asyncio.to_thread(path.read_bytes)
        ext = path.suffix.lstrip(".").lower()
        if ext in VOICE_PLAYABLE:
            await self._call(bot.send_voice(target, data, filename=f"voice.{ext}"))
        else:
            await self._call(bot.send_document(target, data, filename=f"voice.{ext}"))
        return True

    async def _send_document(self, target: int | str, message: Outbound, markup: Any) -> str:
        """sendDocument of a media-store file, the text as its caption (cut to the limit)."""
        assert message.document is not None
        path = self._media.path(message.document) if self._media else None
        if path is None:
            raise DeliveryError(f"document {message.document} is not in the media store",
                                permanent=True)
        data = await asyncio.to_thread(path.read_bytes)
        sent = await self._call(
            self.application.bot.send_document(
                target,
                data,
                filename=message.document_name or path.name,
                caption=_truncate(message.text, CAPTION_LIMIT) or None,
                reply_markup=markup,
            )
        )
        return str(sent.message_id)

    async def edit(self, chat_id: str, message_id: str, message: Outbound) -> str:
        """Replace a sent message's text (or caption) and inline buttons.

        Only inline buttons can change in an edit; too long texts are cut. "Not modified"
        counts as success. A message that can no longer be edited is sent anew (new id).
        """
        bot = self.application.bot
        target, mid = _chat_ref(chat_id), int(message_id)
        markup = _inline_markup(message)
        try:
            if message.photo:
                try:
                    await bot.edit_message_caption(
                        target,
                        mid,
                        caption=_truncate(message.text, CAPTION_LIMIT),
                        reply_markup=markup,
                    )
                except BadRequest as exc:
                    # The photo could not go out with it (not in the media store, from
                    # another platform, caption too long): the message is text.
                    if "no caption in the message" not in exc.message.lower():
                        raise
                    await bot.edit_message_text(
                        _truncate(message.text, TEXT_LIMIT), target, mid, reply_markup=markup
                    )
            else:
                try:
                    await bot.edit_message_text(
                        _truncate(message.text, TEXT_LIMIT), target, mid, reply_markup=markup
                    )
                except BadRequest as exc:
                    if "no text in the message" not in exc.message.lower():
                        raise
                    await bot.edit_message_caption(
                        target,
                        mid,
                        caption=_truncate(message.text, CAPTION_LIMIT),
                        reply_markup=markup,
                    )
        except BadRequest as exc:
            reason = exc.message.lower()
            if "message is not modified" in reason:
                return message_id
            if (
                "message to edit not found" in reason
                or "message can't be edited" in reason
                or "message_id_invalid" in reason
            ):
                return await self.send(chat_id, message)
            raise map_error(exc) from exc
        except TelegramError as exc:
            raise map_error(exc) from exc
        return message_id

    # ------------------------------------------------------------- helpers
    @staticmethod
    async def _call(request: Awaitable[T]) -> T:
        """Await one Bot API call, mapping PTB errors to delivery errors."""
        try:
            return await request
        except TelegramError as exc:
            raise map_error(exc) from exc

    async def _continue(self, request: Callable[[], Awaitable[T]]) -> T:
        """Send a continuation part, waiting out flood limits a few times."""
        await asyncio.sleep(self.limits.per_chat_interval)
        for attempt in range(_CONTINUATION_ATTEMPTS):
            try:
                return await self._call(request())
            except RetryAfter as exc:
                if attempt == _CONTINUATION_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(exc.seconds)
        raise AssertionError("unreachable")


#: Recordings Telegram plays as a voice message (sendVoice).
VOICE_PLAYABLE = ("ogg", "mp3", "m4a")


def _chat_ref(chat_id: str) -> int | str:
    """Numeric chat ids as ints; ``@channelname`` stays a string."""
    stripped = chat_id.strip()
    return int(stripped) if stripped.lstrip("-").isdigit() else stripped


def build(host: ChannelHost) -> TelegramChannel:
    """Telegram from the ``telegram_*`` settings (polling or webhook)."""
    s = host.settings
    assert s.telegram_token
    return TelegramChannel(
        s.telegram_token,
        host.intake,
        base_url=s.telegram_api_url,
        base_file_url=s.telegram_file_url,
        mode=s.telegram_mode,
        webhook_url=s.telegram_webhook_url,
        webhook_secret=s.telegram_webhook_secret,
        connections=s.telegram_connections,
        media=host.media,
        host=host,
    )
