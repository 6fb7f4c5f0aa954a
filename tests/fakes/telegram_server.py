"""A fake Telegram Bot API server: real HTTP on 127.0.0.1, driven by the real python-telegram-bot.

Usage::

    async with FakeTelegramServer() as tg:
        app = (ApplicationBuilder().token(tg.token)
               .base_url(tg.base_url).base_file_url(tg.file_url).build())
        alice = tg.user(1001, first_name="Alice")
        await alice.send_text("hello")
        reply = await tg.wait_for(1001, lambda m: "hello" in (m.text or ""))

Semantics follow the Bot API closely enough for adapter tests: updates are queued until a
``getUpdates`` call confirms them with a higher ``offset`` (or, once ``setWebhook`` was called,
POSTed to the webhook), bot messages get per-chat increasing ids, errors come back as
``{"ok": false, "error_code": ..., "description": ...}`` with the matching HTTP status. Sending to
a chat no user or group was registered for answers 400 "chat not found"; ``block`` makes a chat
answer 403. With ``enforce_limits=True`` the flood limits (1 msg/s per private chat, 30 msg/s in
all, 20 msg/min per group) answer 429 with ``retry_after``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import itertools
import json
import math
import re
import socket
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

JSON = dict[str, Any]
Predicate = Callable[["SentMessage"], bool]

#: Parameters that stay strings; everything else sent as a form field is JSON-decoded.
_STRING_PARAMS = frozenset({
    "text", "caption", "photo", "file_id", "url", "secret_token", "callback_query_id",
    "action", "parse_mode", "inline_message_id", "language_code", "ip_address",
})
_TOKEN_RE = re.compile(r"^(\d+):[A-Za-z0-9_-]+$")
_SEND_METHODS = frozenset({"sendmessage", "sendphoto"})


class ApiError(Exception):
    """A Bot API error answer: HTTP status ``code`` and Telegram's description."""

    def __init__(self, code: int, description: str, parameters: JSON | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_asgi(
    app: ASGIApp, *, startup_timeout: float = 5.0, keep_alive: float = 5.0
) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (ephemeral port) in a background task.

    Yields the root URL (``http://127.0.0.1:PORT``); the server stops when the block exits.
    ``keep_alive``: seconds an idle connection stays open (uvicorn's default, 5).
    """
    # IPPROTO_TCP named explicitly: asyncio only turns Nagle's algorithm off for sockets whose
    # proto is TCP, and with it on every answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False,
                            timeout_graceful_shutdown=2, timeout_keep_alive=keep_alive)
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        deadline = asyncio.get_running_loop().time() + startup_timeout
        while not server.started:  # uvicorn offers no event to await
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped during start-up")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("uvicorn did not start")
            await asyncio.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        sock.close()


@dataclass(eq=False)
class SentMessage:
    """A message the bot sent, in its current state (edits update it in place)."""

    chat: JSON
    sender: JSON
    message_id: int
    date: int
    text: str | None = None
    photo: str | None = None
    reply_markup: JSON | None = None
    edited: bool = False
    #: sendDocument: the uploaded file's id and the name it was sent under.
    document: str | None = None
    document_name: str | None = None
    #: sendVoice: the voice message's file id (an upload's, or one the bot passed on).
    voice: str | None = None

    @property
    def chat_id(self) -> int:
        """The chat the message lives in."""
        return int(self.chat["id"])

    @property
    def inline_keyboard(self) -> list[list[JSON]]:
        """Rows of inline buttons (``{"text": ..., "callback_data": ...}``), or []."""
        return list((self.reply_markup or {}).get("inline_keyboard", []))

    @property
    def buttons(self) -> list[tuple[str, str]]:
        """Every inline button as ``(label, callback_data)``, row by row."""
        return [(b["text"], b.get("callback_data", "")) for row in self.inline_keyboard
                for b in row]

    @property
    def keyboard(self) -> list[list[JSON]] | None:
        """The reply keyboard rows sent with this message, if any."""
        rows = (self.reply_markup or {}).get("keyboard")
        return None if rows is None else list(rows)

    def payload_for(self, label: str) -> str:
        """The callback_data of the inline button labelled ``label``."""
        for text, data in self.buttons:
            if text == label:
                return data
        raise KeyError(f"no button {label!r} in message {self.message_id}")

    def to_api(self) -> JSON:
        """The Bot API ``Message`` object (reply keyboards are not echoed, like Telegram)."""
        msg: JSON = {"message_id": self.message_id, "from": self.sender, "chat": self.chat,
                     "date": self.date}
        if self.photo is not None:
            msg["photo"] = _photo_sizes(self.photo)
            if self.text:
                msg["caption"] = self.text
        elif self.voice is not None:
            msg["voice"] = _voice(self.voice)
        else:
            msg["text"] = self.text or ""
        if self.edited:
            msg["edit_date"] = int(time.time())
        if self.inline_keyboard:
            msg["reply_markup"] = {"inline_keyboard": self.inline_keyboard}
        return msg


@dataclass(eq=False)
class _Queued:
    update: JSON
    delivered: bool = False

    @property
    def update_id(self) -> int:
        return int(self.update["update_id"])


@dataclass
class FakeUser:
    """A simulated Telegram user writing to the bot from one chat (private unless a group)."""

    server: FakeTelegramServer
    user_id: int
    first_name: str
    last_name: str | None = None
    username: str | None = None
    language_code: str | None = "zh-hans"
    chat_id: int = 0

    def as_api(self) -> JSON:
        """The Bot API ``User`` object."""
        user: JSON = {"id": self.user_id, "is_bot": False, "first_name": self.first_name}
        for key in ("last_name", "username", "language_code"):
            if getattr(self, key) is not None:
                user[key] = getattr(self, key)
        return user

    def _message(self, **content: Any) -> JSON:
        return {"message_id": self.server._next_message_id(self.chat_id), "from": self.as_api(),
                "chat": self.server._chats[self.chat_id], "date": int(time.time()), **content}

    async def send_text(self, text: str, entities: list[JSON] | None = None) -> JSON:
        """The user sends a text message; returns the Update."""
        msg = self._message(text=text, **({"entities": entities} if entities else {}))
        return await self.server._enqueue({"message": msg})

    async def send_command(self, command: str, payload: str | None = None) -> JSON:
        """The user sends ``/command [payload]`` (with a ``bot_command`` entity)."""
        head = f"/{command.lstrip('/')}"
        entity = {"type": "bot_command", "offset": 0, "length": len(head.encode("utf-16-le")) // 2}
        return await self.send_text(f"{head} {payload}" if payload else head, [entity])

    async def send_photo(self, file_id: str | None = None, caption: str | None = None) -> JSON:
        """The user sends a photo (thumbnail + ``file_id`` as the largest size)."""
        file_id = file_id or f"photo-{next(self.server._ids)}"
        self.server.add_file(file_id, self.server._files.get(file_id, b"\xff\xd8fake-jpeg"))
        extra = {"caption": caption} if caption else {}
        return await self.server._enqueue({"message": self._message(
            photo=_photo_sizes(file_id), **extra)})

    async def send_voice(self, file_id: str, content: bytes) -> JSON:
        """The user sends a voice message (OGG/Opus, as Telegram records them)."""
        self.server.add_file(file_id, content)
        return await self.server._enqueue({"message": self._message(voice=_voice(file_id))})

    async def send_location(self, latitude: float, longitude: float) -> JSON:
        """The user shares a location."""
        loc = {"latitude": latitude, "longitude": longitude}
        return await self.server._enqueue({"message": self._message(location=loc)})

    async def press(self, message: SentMessage | int, callback_data: str) -> JSON:
        """The user presses a button (any ``callback_data``: it is user input)."""
        if isinstance(message, int):
            message = self.server.message(self.chat_id, message)
        query_id = str(next(self.server._ids))
        self.server._open_queries.add(query_id)
        return await self.server._enqueue({"callback_query": {
            "id": query_id, "from": self.as_api(), "message": message.to_api(),
            "chat_instance": f"ci{self.chat_id}", "data": callback_data}})

    async def press_label(self, message: SentMessage | int, label: str) -> JSON:
        """Press the inline button labelled ``label``."""
        if isinstance(message, int):
            message = self.server.message(self.chat_id, message)
        return await self.press(message, message.payload_for(label))


def _voice(file_id: str) -> JSON:
    """Telegram's Voice object."""
    return {"file_id": file_id, "file_unique_id": f"u-{file_id}", "duration": 4,
            "mime_type": "audio/ogg", "file_size": 9000}


def _photo_sizes(file_id: str) -> list[JSON]:
    """Telegram's PhotoSize list, smallest first; the largest carries ``file_id``."""
    return [
        {"file_id": f"{file_id}-thumb", "file_unique_id": f"u-{file_id}-thumb",
         "width": 90, "height": 68, "file_size": 1200},
        {"file_id": file_id, "file_unique_id": f"u-{file_id}", "width": 1280, "height": 960,
         "file_size": 120_000},
    ]


def _parse_multipart(ctype: str, body: bytes) -> list[tuple[str, bytes, str | None]]:
    """``(name, content, filename)`` for each part of a multipart/form-data body (stdlib only)."""
    head = f"Content-Type: {ctype}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.message_from_bytes(head + body, policy=email.policy.HTTP)
    parts = []
    for part in message.iter_parts() if message.is_multipart() else []:
        name = part.get_param("name", header="content-disposition")
        content = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(content, bytes):
            parts.append((name, content, part.get_filename()))
    return parts


def _coerce(name: str, value: Any) -> Any:
    """Turn a form value into what Telegram would parse (JSON for all but plain strings)."""
    if isinstance(value, str) and name not in _STRING_PARAMS:
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    if name == "chat_id" and isinstance(value, str) and value.lstrip("-").isdigit():
        value = int(value)
    return value


class FakeTelegramServer:
    """The fake Bot API; see the module docstring. Use as an async context manager."""

    def __init__(self, *, token: str = "123456:TEST", enforce_limits: bool = False,
                 bot_username: str = "gridbot_test_bot", webhook_attempts: int = 3) -> None:
        self.token = token
        self.enforce_limits = enforce_limits
        self.bot_username = bot_username
        self.webhook_attempts = webhook_attempts
        self.requests: list[tuple[str, JSON]] = []
        self.callback_answers: list[JSON] = []
        self.too_many_requests = 0
        self.commands: list[JSON] = []
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self.webhook_deliveries: list[tuple[int, int]] = []  # (update_id, HTTP status or 0)
        self._root: str | None = None
        self._cond = asyncio.Condition()
        self._closing = False
        self._queue: list[_Queued] = []
        self._allowed_updates: list[str] = []
        self._next_update = 1
        self._ids = itertools.count(1)
        self._chats: dict[int, JSON] = {}
        self._blocked: set[int] = set()
        self._msg_ids: dict[int, int] = defaultdict(int)
        self._messages: dict[int, dict[int, SentMessage]] = defaultdict(dict)
        self._files: dict[str, bytes] = {}
        self._file_names: dict[str, str] = {}
        self._file_paths: dict[str, str] = {}
        self._open_queries: set[str] = set()
        self._last_send: dict[int, float] = {}
        self._group_sends: dict[int, deque[float]] = defaultdict(deque)
        self._all_sends: deque[float] = deque()
        self._stack = contextlib.AsyncExitStack()
        self._webhook_task: asyncio.Task[None] | None = None
        self._failing: dict[str, list[int]] = {}
        self._methods: dict[str, Callable[[JSON], Awaitable[Any]]] = {
            name.lower(): getattr(self, f"_api_{name}") for name in (
                "getMe", "getUpdates", "sendMessage", "sendPhoto", "sendDocument", "sendVoice",
                "editMessageText", "editMessageCaption", "editMessageReplyMarkup",
                "answerCallbackQuery",
                "getFile", "setWebhook", "deleteWebhook", "getWebhookInfo", "setMyCommands",
                "getMyCommands", "deleteMyCommands", "sendChatAction", "close", "logOut")}

    # ----------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> FakeTelegramServer:
        app = Starlette(routes=[
            Route("/bot{token}/{method}", self._handle_api, methods=["GET", "POST"]),
            Route("/file/bot{token}/{path:path}", self._handle_file, methods=["GET"]),
        ])
        # Telegram keeps idle connections open far longer than uvicorn's 5 s; with 5 s a bot
        # reusing a connection just as the fake closes it gets a ReadError (under load the
        # bare echo bot of bench/order_intake.py lost replies that way).
        self._root = await self._stack.enter_async_context(serve_asgi(app, keep_alive=120))
        self._webhook_task = asyncio.create_task(self._webhook_loop())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        async with self._cond:
            self._closing = True  # ends pending long polls and the webhook loop
            self._cond.notify_all()
        if self._webhook_task is not None:
            self._webhook_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._webhook_task
        await self._stack.aclose()

    @property
    def base_url(self) -> str:
        """For ``ApplicationBuilder().base_url(...)`` (the token is appended by PTB)."""
        return f"{self._require_root()}/bot"

    @property
    def file_url(self) -> str:
        """For ``ApplicationBuilder().base_file_url(...)``."""
        return f"{self._require_root()}/file/bot"

    @property
    def bot_id(self) -> int:
        """The bot's user id: the token's part before ':'."""
        return int(self.token.split(":", 1)[0])

    def _require_root(self) -> str:
        if self._root is None:
            raise RuntimeError("FakeTelegramServer is not running (use `async with`)")
        return self._root

    # ----------------------------------------------------------- test-side API
    def user(self, user_id: int, first_name: str = "Test", *, last_name: str | None = None,
             username: str | None = None, language_code: str | None = "zh-hans",
             chat_id: int | None = None, chat_title: str = "Test group") -> FakeUser:
        """A user writing from a private chat (``chat_id`` None) or from a group (< 0)."""
        chat_id = user_id if chat_id is None else chat_id
        if chat_id > 0:
            chat: JSON = {"id": chat_id, "type": "private", "first_name": first_name}
            if last_name:
                chat["last_name"] = last_name
        else:
            chat = self._chats.get(chat_id) or {"id": chat_id, "type": "group",
                                                "title": chat_title}
        self._chats[chat_id] = chat
        return FakeUser(self, user_id, first_name, last_name, username, language_code, chat_id)

    def block(self, chat_id: int) -> None:
        """The user blocks the bot: sends to this chat answer 403."""
        self._blocked.add(chat_id)

    def fail(self, method: str, times: int = 1, code: int = 500) -> None:
        """Answer the next ``times`` calls of ``method`` with HTTP ``code`` (a server in
        trouble), then behave again."""
        self._failing.setdefault(method.lower(), []).extend([code] * times)

    def add_file(self, file_id: str, content: bytes) -> None:
        """Make ``file_id`` known to getFile / sendPhoto with the given content."""
        self._files[file_id] = content
        self._file_paths.setdefault(file_id, f"photos/file_{len(self._file_paths)}.jpg")

    async def inject(self, *updates: JSON) -> list[JSON]:
        """Enqueue raw updates as given (an update is delivered at least once, duplicates too)."""
        async with self._cond:
            for update in updates:
                self._next_update = max(self._next_update, int(update["update_id"]) + 1)
                self._queue.append(_Queued(update))
            self._queue.sort(key=lambda q: q.update_id)
            self._cond.notify_all()
        return list(updates)

    def sent(self, chat_id: int) -> list[SentMessage]:
        """The bot's messages in a chat, oldest first, in their current (edited) state."""
        return sorted(self._messages[int(chat_id)].values(), key=lambda m: m.message_id)

    def message(self, chat_id: int, message_id: int) -> SentMessage:
        """One bot message by id."""
        return self._messages[int(chat_id)][int(message_id)]

    def calls(self, method: str) -> list[JSON]:
        """Parameters of every logged call of one API method (case-insensitive)."""
        return [p for m, p in self.requests if m.lower() == method.lower()]

    @property
    def pending_updates(self) -> int:
        """Updates not yet confirmed (polling) or delivered (webhook)."""
        return len(self._queue)

    async def wait_until(self, condition: Callable[[], bool],
                         timeout: float = 10) -> None:  # noqa: ASYNC109 (test API)
        """Wait until ``condition()`` holds; it is re-checked whenever the fake's state changes."""
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(condition), timeout)

    async def wait_for(self, chat_id: int, predicate: Predicate | None = None,
                       timeout: float = 10) -> SentMessage:  # noqa: ASYNC109 (test API)
        """Wait until a bot message in ``chat_id`` satisfies ``predicate``; return the newest."""
        def found() -> SentMessage | None:
            hits = [m for m in self.sent(chat_id) if predicate is None or predicate(m)]
            return hits[-1] if hits else None

        try:
            await self.wait_until(lambda: found() is not None, timeout)
        except TimeoutError:
            texts = [(m.message_id, m.text) for m in self.sent(chat_id)]
            raise AssertionError(f"no matching message in chat {chat_id}; sent: {texts}") from None
        result = found()
        assert result is not None
        return result

    # --------------------------------------------------------------- internals
    def _next_message_id(self, chat_id: int) -> int:
        self._msg_ids[chat_id] += 1
        return self._msg_ids[chat_id]

    async def _enqueue(self, content: JSON) -> JSON:
        async with self._cond:
            update = {"update_id": self._next_update, **content}
            self._next_update += 1
            self._queue.append(_Queued(update))
            self._cond.notify_all()
        return update

    def _bot_user(self) -> JSON:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Gridbot",
                "username": self.bot_username}

    async def _handle_api(self, request: Request) -> Response:
        token, method = request.path_params["token"], request.path_params["method"]
        try:
            params = await self._read_params(request)
        except ClientDisconnect:  # the bot went away mid-request (a killed process)
            return Response(status_code=499)
        self.requests.append((method, params))
        handler = self._methods.get(method.lower())
        try:
            if not _TOKEN_RE.match(token) or handler is None:
                raise ApiError(404, "Not Found")
            if self._failing.get(method.lower()):
                code = self._failing[method.lower()].pop(0)
                raise ApiError(code, "Internal Server Error" if code >= 500 else "Bad Request")
            async with self._cond:  # state changed (at least the request log)
                self._cond.notify_all()
            result = await handler(params)
        except ApiError as exc:
            if exc.code == 429:
                self.too_many_requests += 1
            body: JSON = {"ok": False, "error_code": exc.code, "description": exc.description}
            if exc.parameters:
                body["parameters"] = exc.parameters
            return JSONResponse(body, status_code=exc.code)
        async with self._cond:
            self._cond.notify_all()
        return JSONResponse({"ok": True, "result": result})

    async def _read_params(self, request: Request) -> JSON:
        params: JSON = {k: _coerce(k, v) for k, v in request.query_params.items()}
        ctype = request.headers.get("content-type", "")
        if request.method != "POST":
            return params
        if ctype.startswith("application/json"):
            with contextlib.suppress(ValueError):
                body = json.loads(await request.body() or b"{}")
                params.update(body if isinstance(body, dict) else {})
        elif ctype.startswith("application/x-www-form-urlencoded"):
            body = (await request.body()).decode()
            params.update({k: _coerce(k, v) for k, v in parse_qsl(body, keep_blank_values=True)})
        elif ctype.startswith("multipart/form-data"):
            for key, value, filename in _parse_multipart(ctype, await request.body()):
                if filename is not None:  # an upload: keep it as a new file_id
                    file_id = f"upload-{next(self._ids)}"
                    self.add_file(file_id, value)
                    self._file_names[file_id] = filename
                    params[key] = file_id
                else:
                    params[key] = _coerce(key, value.decode())
        return params

    async def _handle_file(self, request: Request) -> Response:
        path = request.path_params["path"]
        for file_id, file_path in self._file_paths.items():
            if file_path == path:
                return Response(self._files[file_id], media_type="application/octet-stream")
        return JSONResponse({"ok": False, "error_code": 404, "description": "Not Found"}, 404)

    # ----------------------------------------------------------- delivery
    def _allowed(self, update: JSON) -> bool:
        kind = next((k for k in update if k != "update_id"), "")
        return not self._allowed_updates or kind in self._allowed_updates

    def _confirm(self, offset: int | None) -> None:
        """Drop delivered updates below ``offset`` (negative: keep only the last -offset)."""
        if offset is not None and offset < 0:
            self._queue = self._queue[offset:]
        elif offset:
            self._queue = [q for q in self._queue if not (q.delivered and q.update_id < offset)]
        self._queue = [q for q in self._queue if self._allowed(q.update)]

    async def _api_getUpdates(self, p: JSON) -> list[JSON]:
        if self.webhook_url:
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is active; "
                                "use deleteWebhook to delete the webhook first")
        if "allowed_updates" in p:
            self._allowed_updates = list(p["allowed_updates"] or [])
        limit = max(1, min(100, int(p.get("limit") or 100)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(p.get("timeout") or 0)
        async with self._cond:
            self._confirm(p.get("offset"))
            while not self._queue and not self._closing and loop.time() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._cond.wait(), deadline - loop.time())
                self._confirm(p.get("offset"))
            batch = self._queue[:limit]
            for item in batch:
                item.delivered = True
            return [item.update for item in batch]

    async def _webhook_loop(self) -> None:
        """POST queued updates, in order, to the webhook while one is set."""
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                async with self._cond:
                    await self._cond.wait_for(
                        lambda: self._closing or bool(self.webhook_url and self._queue))
                    if self._closing:
                        return
                    self._confirm(None)
                    if not self._queue:
                        continue
                    item, url, secret = self._queue[0], self.webhook_url, self.webhook_secret
                assert url is not None
                await self._post_update(client, url, secret, item)
                async with self._cond:
                    with contextlib.suppress(ValueError):
                        self._queue.remove(item)
                    self._cond.notify_all()

    async def _post_update(self, client: httpx.AsyncClient, url: str, secret: str | None,
                           item: _Queued) -> None:
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {}
        for attempt in range(self.webhook_attempts):
            try:
                response = await client.post(url, json=item.update, headers=headers)
                status = response.status_code
            except httpx.HTTPError:
                status = 0
            self.webhook_deliveries.append((item.update_id, status))
            if 200 <= status < 300:
                return
            await asyncio.sleep(0.05 * (attempt + 1))  # Telegram backs off between retries

    # ------------------------------------------------------------ sending
    def _check_chat(self, p: JSON) -> int:
        chat_id = p.get("chat_id")
        if not isinstance(chat_id, int) or chat_id not in self._chats:
            raise ApiError(400, "Bad Request: chat not found")
        if chat_id in self._blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        return chat_id

    def _check_limits(self, chat_id: int) -> None:
        """Raise 429 if this send breaks a flood limit; otherwise count it."""
        now = time.monotonic()
        while self._all_sends and now - self._all_sends[0] >= 1:
            self._all_sends.popleft()
        group = self._group_sends[chat_id]
        while group and now - group[0] >= 60:
            group.popleft()
        wait = 0.0
        if chat_id > 0 and chat_id in self._last_send:
            wait = max(wait, 1.0 - (now - self._last_send[chat_id]))
        if chat_id < 0 and len(group) >= 20:
            wait = max(wait, 60 - (now - group[0]))
        if len(self._all_sends) >= 30:
            wait = max(wait, 1 - (now - self._all_sends[0]))
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise ApiError(429, f"Too Many Requests: retry after {seconds}",
                           {"retry_after": seconds})
        self._last_send[chat_id] = now
        self._all_sends.append(now)
        if chat_id < 0:
            group.append(now)

    def _store(self, chat_id: int, p: JSON, *, text: str | None, photo: str | None) -> JSON:
        if self.enforce_limits:
            self._check_limits(chat_id)
        markup = p.get("reply_markup")
        msg = SentMessage(self._chats[chat_id], self._bot_user(), self._next_message_id(chat_id),
                          int(time.time()), text, photo, markup if markup else None)
        self._messages[chat_id][msg.message_id] = msg
        return msg.to_api()

    async def _api_sendMessage(self, p: JSON) -> JSON:
        chat_id = self._check_chat(p)
        text = p.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        return self._store(chat_id, p, text=text, photo=None)

    async def _api_sendPhoto(self, p: JSON) -> JSON:
        chat_id = self._check_chat(p)
        photo = p.get("photo")
        if not isinstance(photo, str) or not (photo in self._files or photo.startswith("http")):
            raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        caption = p.get("caption")
        if caption and len(caption.encode("utf-16-le")) // 2 > 1024:
            raise ApiError(400, "Bad Request: message caption is too long")
        return self._store(chat_id, p, text=caption, photo=photo)

    async def _api_sendDocument(self, p: JSON) -> JSON:
        chat_id = self._check_chat(p)
        document = p.get("document")
        if not isinstance(document, str) or document not in self._files:
            raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        caption = p.get("caption")
        if caption and len(caption.encode("utf-16-le")) // 2 > 1024:
            raise ApiError(400, "Bad Request: message caption is too long")
        result = self._store(chat_id, p, text=caption, photo=None)
        msg = self._messages[chat_id][result["message_id"]]
        msg.document, msg.document_name = document, self._file_names.get(document)
        return result

    async def _api_sendVoice(self, p: JSON) -> JSON:
        chat_id = self._check_chat(p)
        voice = p.get("voice")
        if not isinstance(voice, str) or voice not in self._files:
            raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")
        result = self._store(chat_id, p, text=p.get("caption"), photo=None)
        self._messages[chat_id][result["message_id"]].voice = voice
        return self._messages[chat_id][result["message_id"]].to_api()

    def file(self, file_id: str) -> bytes:
        """The content of a file the bot uploaded (a photo or a document)."""
        return self._files[file_id]

    def _editable(self, p: JSON) -> SentMessage:
        chat_id = self._check_chat(p)
        msg = self._messages[chat_id].get(int(p.get("message_id") or 0))
        if msg is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        return msg

    def _apply_edit(self, msg: SentMessage, text: str | None, p: JSON) -> JSON:
        markup = p.get("reply_markup") or None
        if markup is not None and "inline_keyboard" not in markup:
            raise ApiError(400, "Bad Request: inline keyboard expected")
        if text == msg.text and markup == (msg.reply_markup or None):
            raise ApiError(400, "Bad Request: message is not modified: specified new message "
                                "content and reply markup are exactly the same as a current "
                                "content and reply markup of the message")
        msg.text, msg.reply_markup, msg.edited = text, markup, True
        return msg.to_api()

    async def _api_editMessageText(self, p: JSON) -> JSON:
        msg = self._editable(p)
        if msg.photo is not None:
            raise ApiError(400, "Bad Request: there is no text in the message to edit")
        if not str(p.get("text") or "").strip():
            raise ApiError(400, "Bad Request: message text is empty")
        return self._apply_edit(msg, str(p["text"]), p)

    async def _api_editMessageCaption(self, p: JSON) -> JSON:
        msg = self._editable(p)
        if msg.photo is None:
            raise ApiError(400, "Bad Request: there is no caption in the message to edit")
        return self._apply_edit(msg, p.get("caption"), p)

    async def _api_editMessageReplyMarkup(self, p: JSON) -> JSON:
        msg = self._editable(p)
        return self._apply_edit(msg, msg.text, p)

    async def _api_answerCallbackQuery(self, p: JSON) -> bool:
        query_id = str(p.get("callback_query_id"))
        if query_id not in self._open_queries:
            raise ApiError(400, "Bad Request: query is too old and response timeout expired "
                                "or query ID is invalid")
        self._open_queries.discard(query_id)
        self.callback_answers.append({"callback_query_id": query_id, "text": p.get("text"),
                                      "show_alert": bool(p.get("show_alert"))})
        return True

    # ---------------------------------------------------- everything else
    async def _api_getMe(self, p: JSON) -> JSON:
        return {**self._bot_user(), "can_join_groups": True,
                "can_read_all_group_messages": False, "supports_inline_queries": False}

    async def _api_getFile(self, p: JSON) -> JSON:
        file_id = str(p.get("file_id"))
        if file_id not in self._files:
            raise ApiError(400, "Bad Request: invalid file_id")
        return {"file_id": file_id, "file_unique_id": f"u-{file_id}",
                "file_size": len(self._files[file_id]), "file_path": self._file_paths[file_id]}

    async def _api_setWebhook(self, p: JSON) -> bool:
        url = p.get("url") or None
        async with self._cond:
            self.webhook_url, self.webhook_secret = url, p.get("secret_token") or None
            if "allowed_updates" in p:
                self._allowed_updates = list(p["allowed_updates"] or [])
            if p.get("drop_pending_updates"):
                self._queue.clear()
            self._cond.notify_all()
        return True

    async def _api_deleteWebhook(self, p: JSON) -> bool:
        return await self._api_setWebhook({"drop_pending_updates": p.get("drop_pending_updates")})

    async def _api_getWebhookInfo(self, p: JSON) -> JSON:
        info: JSON = {"url": self.webhook_url or "", "has_custom_certificate": False,
                      "pending_update_count": len(self._queue)}
        if self._allowed_updates:
            info["allowed_updates"] = self._allowed_updates
        return info

    async def _api_setMyCommands(self, p: JSON) -> bool:
        self.commands = list(p.get("commands") or [])
        return True

    async def _api_getMyCommands(self, p: JSON) -> list[JSON]:
        return self.commands

    async def _api_deleteMyCommands(self, p: JSON) -> bool:
        self.commands = []
        return True

    async def _api_sendChatAction(self, p: JSON) -> bool:
        self._check_chat(p)
        return True

    async def _api_close(self, p: JSON) -> bool:
        return True

    async def _api_logOut(self, p: JSON) -> bool:
        return True
