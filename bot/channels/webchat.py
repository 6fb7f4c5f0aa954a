"""The local web chat: a channel adapter whose "platform" is a page served by our own web server.

A developer (or a new user trying the product) opens ``/chat/``, picks who to be — a resident, a
party member, a grid worker, or a new visitor who binds with ``/start <invite>`` — and talks to
the same core as on Telegram. Several panes side by side play several roles in one window.

Messages live in the ``webchat_message`` table: :meth:`WebChatChannel.send` and
:meth:`WebChatChannel.edit` write rows, and the page long-polls ``/api/messages`` with an opaque
cursor. The cursor is based on ``updated_at`` (so that edits come back) with a short overlap
window plus the ``id.version`` pairs already seen in it, so a row whose transaction committed a
little later than a newer one (another process, another connection) is still delivered once.
In-process pollers are woken at once by an :class:`asyncio.Event` per chat; pollers in other
processes notice new rows within ``poll_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import functools
import html
import importlib.util
import json
import logging
import re
import secrets
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from bot.aio import wait_event
from bot.channels.base import ChannelHost, DeliveryError, Limits
from bot.media import DOCUMENT_TYPES, sniff_image
from bot.ports import MAX_PAYLOAD_BYTES, Inbound, Intake, Outbound
from models import Identity, Person, Role
from models.base import utcnow
from models.messaging import WebChatMessage

log = logging.getLogger(__name__)

#: Longest text accepted from the page; the core applies its own, smaller and polite limit.
MAX_TEXT_CHARS = 4000
#: Largest photo accepted from the page.
MAX_PHOTO_BYTES = 5 * 1024 * 1024
#: Longest long poll.
MAX_WAIT_SECONDS = 25.0
#: How many messages a first poll (no cursor) returns: the end of the transcript.
HISTORY_LIMIT = 200
#: Rows this recent are re-read on every poll so that a late commit is not skipped.
CURSOR_OVERLAP = timedelta(seconds=5)
#: The demo coordinate the page sends for "share location" (Dazhou, Sichuan).
DEMO_LOCATION = (31.2096, 107.4680)

_MAX_JSON_BYTES = 64 * 1024
_VISITOR_ID = re.compile(r"v[0-9a-f]{10}")
_CLIENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_MEDIA_NAME = re.compile(r"[0-9a-f]{32}\.(?:jpg|png|gif|webp|xlsx)")
_MEDIA_TYPES = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "gif": "image/gif",
    "webp": "image/webp",
    **DOCUMENT_TYPES,
}
_LANG_TAG = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?")
_SHOWABLE_PHOTO_PREFIXES = ("https://", "http://", "data:image/")
_STATIC = Path(__file__).parent / "static" / "chat.html"


@dataclass(frozen=True)
class Persona:
    """An identity the page offers: ``chat_id`` is also the identity's external id on "web".

    ``roles`` are display labels (e.g. ``["居民"]``), shown next to the name in the picker.
    """

    chat_id: str
    name: str
    roles: list[str]
    locale: str | None = None


class BadRequest(Exception):
    """A request the page should not have sent; answered with ``status`` and no side effect."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _Cursor:
    """Where a poller stands: the newest ``updated_at`` seen and the rows seen near it."""

    at: datetime | None
    seen: frozenset[tuple[int, int]]

    def encode(self) -> str:
        if self.at is None:
            return ""
        pairs = ",".join(f"{i}.{v}" for i, v in sorted(self.seen))
        return f"{self.at.isoformat()}|{pairs}"

    @classmethod
    def decode(cls, raw: str) -> _Cursor:
        if not raw:
            return cls(None, frozenset())
        try:
            stamp, _, pairs = raw.partition("|")
            at = datetime.fromisoformat(stamp)
            if at.tzinfo is None:
                raise ValueError("naive cursor")
            seen = frozenset(
                (int(i), int(v)) for i, _, v in (p.partition(".") for p in pairs.split(",") if p)
            )
        except ValueError as exc:
            raise BadRequest("bad cursor") from exc
        return cls(at, seen)


def _locale_from_header(header: str | None) -> str | None:
    """The first language of an Accept-Language header, as a catalog name (``zh-CN`` → zh_CN)."""
    if not header:
        return None
    first = header.split(",")[0].split(";")[0].strip()
    if not _LANG_TAG.fullmatch(first):
        return None
    lang, _, region = first.replace("_", "-").partition("-")
    return f"{lang.lower()}_{region.upper()}" if region else lang.lower()


class WebChatChannel:
    """The local web chat as a channel (for the delivery worker) and a set of web routes."""

    name = "web"
    limits = Limits(per_chat_interval=0.0, global_per_second=1000.0, group_per_minute=10**6)

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        intake: Intake,
        personas: Callable[[], Awaitable[list[Persona]]],
        title: str = "Gridbot",
        *,
        media_dir: Path | None = None,
        poll_interval: float = 1.0,
        on_first_use: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """Build the channel.

        ``personas`` lists the identities the page offers, and must write nothing (anyone can
        ask for the list). ``on_first_use`` is awaited with a persona's ``chat_id`` before each
        message it sends is handled, so that the caller can make its identity on channel "web"
        (``external_id == chat_id``) when it first acts. Photos are written to ``media_dir``
        (default: a fresh temporary directory, gone with the machine's temp files).
        ``poll_interval`` bounds how late a long poll notices rows written by another process.
        """
        self._sessionmaker = sessionmaker
        self._intake = intake
        self._personas = personas
        self._on_first_use = on_first_use
        self._title = title
        self._poll_interval = poll_interval
        self.media_dir = media_dir or Path(tempfile.mkdtemp(prefix="gridbot-webchat-"))
        self.media_dir.mkdir(parents=True, exist_ok=True)
        self._events: dict[str, asyncio.Event] = {}
        self._page = _STATIC.read_text(encoding="utf-8")

    # -- the Adapter protocol -------------------------------------------------------------------

    stop_budget = 0.5

    async def claim(self) -> str | None:
        """Nothing to take: any number of instances may serve the page."""
        return None

    async def start(self) -> None:
        """Nothing to set up: the page is served by the service's web server."""

    async def stop(self) -> None:
        """Nothing to stop: long polls end with the web server's graceful shutdown."""

    def banner(self, base_url: str) -> str | None:
        """Where to open the page."""
        return f"Local web chat: {base_url}/chat/"

    def is_group(self, chat_id: str) -> bool:
        """Web chats are always one person's."""
        return False

    async def send(self, chat_id: str, message: Outbound) -> str:
        """Store a bot message for ``chat_id`` and wake its pollers; return the row id."""
        row = WebChatMessage(chat_id=chat_id, direction="out", payload=message.to_payload())
        async with self._sessionmaker() as session, session.begin():
            session.add(row)
        self._notify(chat_id)
        return str(row.id)

    async def edit(self, chat_id: str, message_id: str, message: Outbound) -> str:
        """Replace a bot message (a new version); an unknown message is sent anew instead."""
        try:
            row_id = int(message_id)
        except ValueError:
            row_id = 0
        async with self._sessionmaker() as session, session.begin():
            result = await session.execute(
                update(WebChatMessage)
                .where(
                    WebChatMessage.id == row_id,
                    WebChatMessage.chat_id == chat_id,
                    WebChatMessage.direction == "out",
                )
                .values(
                    payload=message.to_payload(),
                    version=WebChatMessage.version + 1,
                    updated_at=utcnow(),
                )
                .returning(WebChatMessage.id)
            )
            found = result.scalar_one_or_none()
        if found is None:
            log.info("web chat: message %s not found in %s, sending anew", message_id, chat_id)
            return await self.send(chat_id, message)
        self._notify(chat_id)
        return str(found)

    # -- media ----------------------------------------------------------------------------------

    async def save_media(self, data: bytes) -> str:
        """Store an image (JPEG, PNG, GIF or WebP); return its ``media:<name>`` reference."""
        ext = sniff_image(data)
        if ext is None:
            raise BadRequest("not a JPEG, PNG, GIF or WebP image", status=415)
        if len(data) > MAX_PHOTO_BYTES:
            raise BadRequest("photo too large", status=413)
        name = f"{secrets.token_hex(16)}.{ext}"
        await asyncio.to_thread((self.media_dir / name).write_bytes, data)
        return f"media:{name}"

    def media_path(self, ref: str) -> Path | None:
        """The file behind a ``media:<name>`` reference (:mod:`bot.media`), or None."""
        name = ref.removeprefix("media:")
        if not ref.startswith("media:") or not _MEDIA_NAME.fullmatch(name):
            return None
        path = self.media_dir / name
        return path if path.is_file() else None

    async def fetch_file(self, ref: str) -> bytes:
        """The bytes of a ``media:<name>`` reference (e.g. an :attr:`Inbound.photo`)."""
        path = self.media_path(ref)
        if path is None:
            raise DeliveryError(f"unknown web chat media {ref!r}", permanent=True)
        return await asyncio.to_thread(path.read_bytes)

    # -- web routes -----------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        """The page and its API at ``/chat``, and ``/`` sending a visitor there."""
        return [
            Mount("/chat", routes=self.chat_routes()),
            Route("/", lambda r: Response(status_code=307, headers={"location": "/chat/"})),
        ]

    def chat_routes(self) -> list[BaseRoute]:
        """The page and its API, relative to ``/chat``."""
        return [
            Route("/", self._page_endpoint, methods=["GET"]),
            Route("/api/personas", self._personas_endpoint, methods=["GET"]),
            Route("/api/open", self._open_endpoint, methods=["POST"]),
            Route("/api/send", self._send_endpoint, methods=["POST"]),
            Route("/api/messages", self._messages_endpoint, methods=["GET"]),
            Route("/media/{name}", self._media_endpoint, methods=["GET"]),
        ]

    async def _page_endpoint(self, request: Request) -> Response:
        page = self._page.replace("{{title}}", html.escape(self._title))
        return HTMLResponse(
            page,
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": (
                    "default-src 'self'; script-src 'self' 'unsafe-inline'; "
                    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob: https:"
                ),
            },
        )

    async def _personas_endpoint(self, request: Request) -> Response:
        listed: list[dict[str, Any]] = [asdict(p) for p in await self._personas()]
        listed.append(
            {
                "chat_id": None,
                "name": "新访客 New visitor",
                "roles": [],
                "locale": None,
                "visitor": True,
            }
        )
        return JSONResponse(listed)

    async def _open_endpoint(self, request: Request) -> Response:
        """A pane took a persona: from now on it can be reached (``on_first_use``), so that
        a worker picked in one pane gets the cards of an order placed in another. Listing the
        personas (a GET) writes nothing; this POST is the pick."""
        try:
            raw = await self._read_body(request, _MAX_JSON_BYTES, "request too large")
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadRequest("bad JSON") from exc
            chat_id = body.get("chat_id") if isinstance(body, dict) else None
            if not isinstance(chat_id, str) or not chat_id:
                raise BadRequest("chat_id missing")
            persona = await self._check_chat(chat_id)
        except BadRequest as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=exc.status)
        if persona is not None and self._on_first_use is not None:
            await self._on_first_use(chat_id)
        return JSONResponse({"ok": True})

    async def _media_endpoint(self, request: Request) -> Response:
        name = request.path_params["name"]
        path = self.media_path(f"media:{name}")
        if path is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return FileResponse(
            path,
            media_type=_MEDIA_TYPES[path.suffix.lstrip(".")],
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=86400"},
        )

    async def _send_endpoint(self, request: Request) -> Response:
        try:
            inbound, shown = await self._parse_send(request)
        except BadRequest as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=exc.status)
        inbound.locale = inbound.locale or _locale_from_header(
            request.headers.get("accept-language")
        )
        inbound.received_at = utcnow()
        try:
            if self._on_first_use is not None and not _VISITOR_ID.fullmatch(inbound.chat_id):
                await self._on_first_use(inbound.chat_id)
            await self._record_inbound(inbound, shown)
            result = await self._intake(inbound)
        except Exception:
            log.exception("web chat: intake failed for %s", inbound.chat_id)
            return JSONResponse({"ok": False, "error": "internal error"}, status_code=500)
        return JSONResponse({"ok": True, "toast": result.toast})

    async def _messages_endpoint(self, request: Request) -> Response:
        params = request.query_params
        try:
            chat_id = params.get("chat_id", "")
            await self._check_chat(chat_id)
            cursor = _Cursor.decode(params.get("after", ""))
            try:
                wait = min(max(float(params.get("wait", "0")), 0.0), MAX_WAIT_SECONDS)
            except ValueError as exc:
                raise BadRequest("bad wait") from exc
        except BadRequest as exc:
            return JSONResponse({"ok": False, "error": str(exc)}, status_code=exc.status)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            # Take the event before reading so that a send between the read and the wait wakes us.
            event = self._events.setdefault(chat_id, asyncio.Event())
            rows, next_cursor = await self._changes(chat_id, cursor)
            remaining = deadline - loop.time()
            if rows or remaining <= 0 or await request.is_disconnected():
                break
            await wait_event(event, min(remaining, self._poll_interval))
        return JSONResponse(
            {"messages": [self._render(r) for r in rows], "cursor": next_cursor.encode()}
        )

    # -- helpers --------------------------------------------------------------------------------

    def _notify(self, chat_id: str) -> None:
        """Wake the long polls of one chat in this process."""
        event = self._events.pop(chat_id, None)
        if event is not None:
            event.set()

    async def _check_chat(self, chat_id: str) -> Persona | None:
        """The persona behind ``chat_id``; None for a visitor; BadRequest for anything else."""
        if _VISITOR_ID.fullmatch(chat_id):
            return None
        for persona in await self._personas():
            if persona.chat_id == chat_id:
                return persona
        raise BadRequest("unknown chat_id")

    async def _parse_send(self, request: Request) -> tuple[Inbound, dict[str, Any]]:
        """Validate a send request into an Inbound and the payload shown in the transcript."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype.startswith("image/"):
            # A raw image body: chat_id and id travel in the query string.
            params = request.query_params
            data = await self._read_body(request, MAX_PHOTO_BYTES, "photo too large")
            return await self._photo_inbound(params.get("chat_id"), params.get("id"), data)
        if ctype == "multipart/form-data":
            if importlib.util.find_spec("python_multipart") is None:
                raise BadRequest("multipart needs python-multipart; post image/* instead", 415)
            if int(request.headers.get("content-length") or 0) > MAX_PHOTO_BYTES + 64 * 1024:
                raise BadRequest("photo too large", status=413)
            async with request.form(max_files=1, max_fields=8) as form:
                upload = form.get("photo")
                if not isinstance(upload, UploadFile):
                    raise BadRequest("photo missing")
                data = await upload.read(MAX_PHOTO_BYTES + 1)
                if len(data) > MAX_PHOTO_BYTES:
                    raise BadRequest("photo too large", status=413)
                chat_id, client_id = form.get("chat_id"), form.get("id")
                return await self._photo_inbound(
                    chat_id if isinstance(chat_id, str) else None,
                    client_id if isinstance(client_id, str) else None,
                    data,
                )

        raw = await self._read_body(request, _MAX_JSON_BYTES, "request too large")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest("bad JSON") from exc
        if not isinstance(body, dict):
            raise BadRequest("bad JSON")
        inbound = await self._new_inbound(body.get("chat_id"), body.get("id"))
        chat_id = inbound.chat_id
        text, button, location = body.get("text"), body.get("button"), body.get("location")
        if sum(x is not None for x in (text, button, location)) != 1:
            raise BadRequest("send exactly one of text, button, location")
        if text is not None:
            if not isinstance(text, str) or not text.strip():
                raise BadRequest("empty text")
            if len(text) > MAX_TEXT_CHARS:
                raise BadRequest("text too long", status=413)
            inbound.text = text
            return inbound, {"kind": "text", "text": text}
        if button is not None:
            if not isinstance(button, str) or not button:
                raise BadRequest("bad button")
            if len(button.encode()) > MAX_PAYLOAD_BYTES:
                raise BadRequest("button payload too long")
            message_id = body.get("message_id")
            if message_id is not None:
                if isinstance(message_id, bool) or not isinstance(message_id, (str, int)):
                    raise BadRequest("bad message_id")
                if not str(message_id).isdigit() or len(str(message_id)) > 18:
                    raise BadRequest("bad message_id")
                inbound.button_message_id = str(message_id)
            inbound.button = button
            label = await self._button_label(chat_id, inbound.button_message_id, button)
            return inbound, {"kind": "button", "text": label, "button": button}
        if (
            not isinstance(location, list)
            or len(location) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in location)
            or not (-90 <= location[0] <= 90 and -180 <= location[1] <= 180)
        ):
            raise BadRequest("location must be [lat, lon]")
        inbound.location = (float(location[0]), float(location[1]))
        return inbound, {
            "kind": "location",
            "text": f"📍 {inbound.location[0]:.4f}, {inbound.location[1]:.4f}",
            "location": list(inbound.location),
        }

    async def _photo_inbound(
        self, chat_id: str | None, client_id: str | None, data: bytes
    ) -> tuple[Inbound, dict[str, Any]]:
        inbound = await self._new_inbound(chat_id, client_id)  # before writing a file for nobody
        try:
            inbound.photo = await self.save_media(data)
        except OSError:  # an unwritable media folder: the intake tells the user
            log.exception("could not store a web chat photo")
            inbound.photo_lost = True
        text = "📷" if inbound.photo_lost else ""  # the transcript shows a photo was sent
        return inbound, {"kind": "photo", "text": text, "photo": inbound.photo}

    async def _new_inbound(self, chat_id: object, client_id: object) -> Inbound:
        """An Inbound for a known chat and a well-formed client id, with the persona's locale."""
        if not isinstance(chat_id, str) or not chat_id:
            raise BadRequest("chat_id missing")
        if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
            raise BadRequest("id (a client-generated uuid) missing or malformed")
        persona = await self._check_chat(chat_id)
        return Inbound(
            channel=self.name,
            user_id=chat_id,
            chat_id=chat_id,
            dedupe_key=client_id,
            locale=persona.locale if persona else None,
            display_name=persona.name if persona else None,
        )

    @staticmethod
    async def _read_body(request: Request, limit: int, too_large: str) -> bytes:
        """Read at most ``limit`` bytes of body; more is refused with 413."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise BadRequest(too_large, status=413)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadRequest(too_large, status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _button_label(self, chat_id: str, message_id: str | None, payload: str) -> str:
        """The label of a pressed button, for the transcript (the payload itself stays hidden)."""
        if message_id is not None:
            async with self._sessionmaker() as session:
                row = await session.get(WebChatMessage, int(message_id))
            if row is not None and row.chat_id == chat_id:
                for button_row in row.payload.get("buttons", []):
                    for label, button_payload in button_row:
                        if button_payload == payload:
                            return str(label)
        return "▸"

    async def _record_inbound(self, inbound: Inbound, shown: dict[str, Any]) -> None:
        """Store what the user did so the transcript shows it; a retried request is stored once."""
        shown = {**shown, "cid": inbound.dedupe_key}
        async with self._sessionmaker() as session, session.begin():
            recent = await session.scalars(
                select(WebChatMessage)
                .where(WebChatMessage.chat_id == inbound.chat_id, WebChatMessage.direction == "in")
                .order_by(WebChatMessage.id.desc())
                .limit(20)
            )
            if any(r.payload.get("cid") == inbound.dedupe_key for r in recent):
                return
            session.add(WebChatMessage(chat_id=inbound.chat_id, direction="in", payload=shown))
        self._notify(inbound.chat_id)

    async def _changes(
        self, chat_id: str, cursor: _Cursor
    ) -> tuple[list[WebChatMessage], _Cursor]:
        """Rows new or edited since ``cursor``, oldest first, and the cursor after them."""
        query = select(WebChatMessage).where(WebChatMessage.chat_id == chat_id)
        async with self._sessionmaker() as session:
            if cursor.at is None:
                latest = await session.scalars(
                    query.order_by(WebChatMessage.id.desc()).limit(HISTORY_LIMIT)
                )
                window = list(latest)
            else:
                recent = await session.scalars(
                    query.where(WebChatMessage.updated_at > cursor.at - CURSOR_OVERLAP)
                )
                window = list(recent)
        fresh = sorted(
            (r for r in window if (r.id, r.version) not in cursor.seen),
            key=lambda r: r.id,
        )
        if not fresh:
            return [], cursor
        at = max([r.updated_at for r in fresh] + ([cursor.at] if cursor.at else []))
        seen = frozenset((r.id, r.version) for r in window if r.updated_at > at - CURSOR_OVERLAP)
        return fresh, _Cursor(at, seen)

    def _render(self, row: WebChatMessage) -> dict[str, Any]:
        """A row as the page draws it."""
        payload = row.payload
        photo = payload.get("photo")
        if isinstance(photo, str) and photo.startswith("media:"):
            photo = "media/" + photo.removeprefix("media:")
        elif isinstance(photo, str) and not photo.startswith(_SHOWABLE_PHOTO_PREFIXES):
            photo = None  # a reference only another platform can resolve
        return {
            "id": str(row.id),
            "direction": row.direction,
            "kind": payload.get("kind", "text"),
            "text": payload.get("text", ""),
            "buttons": [
                [{"label": label, "payload": data} for label, data in button_row]
                for button_row in payload.get("buttons", [])
            ],
            "menu": payload.get("menu"),
            "remove_menu": bool(payload.get("remove_menu")),
            "photo": photo,
            "document": (
                "media/" + str(payload["document"]).removeprefix("media:")
                if str(payload.get("document") or "").startswith("media:")
                else None
            ),
            "document_name": payload.get("document_name"),
            "ask_location": payload.get("ask_location"),
            "version": row.version,
            "created_at": row.created_at.isoformat(),
        }


__all__ = ["DEMO_LOCATION", "MAX_PHOTO_BYTES", "MAX_TEXT_CHARS", "Persona", "WebChatChannel"]


# -- built by the composition root ------------------------------------------------------------


def build(host: ChannelHost) -> WebChatChannel:
    """The local web chat, offering every person with a role as a persona."""
    return WebChatChannel(
        host.sessionmaker,
        host.intake,
        functools.partial(personas, host),
        title="Gridbot 社区网格",
        on_first_use=functools.partial(web_identity, host),
        media_dir=host.settings.media_dir,
    )


async def personas(host: ChannelHost) -> list[Persona]:
    """Everyone the local web chat may play (people with a role). Reads only: a web identity
    is made when a persona first sends something (:func:`web_identity`)."""
    async with host.sessionmaker() as session:
        people = (await session.scalars(select(Person).order_by(Person.id))).all()
        roles = (await session.execute(select(Role.person_id, Role.role))).all()
    lang = host.settings.default_locale
    by_person: dict[int, list[str]] = {}
    for pid, role in roles:
        label = host.tr.t(lang, f"role.{role}")
        if label not in by_person.setdefault(pid, []):
            by_person[pid].append(label)
    return [
        Persona(f"p{person.id}", person.name, by_person[person.id], person.locale)
        for person in people
        if person.id in by_person
    ]


async def web_identity(host: ChannelHost, chat_id: str) -> None:
    """Make sure the persona ``chat_id`` (``p<person id>``) has its web identity; awaited
    before a persona's first message is handled."""
    if not chat_id.startswith("p") or not chat_id[1:].isdigit():
        return
    person_id = int(chat_id[1:])
    async with host.sessionmaker() as session, session.begin():
        known = await session.scalar(
            select(Identity.id).where(Identity.channel == "web", Identity.external_id == chat_id)
        )
        if known is not None or await session.get(Person, person_id) is None:
            return
        dialect = session.bind.dialect.name if session.bind else "sqlite"
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        await session.execute(
            insert(Identity)
            .values(
                person_id=person_id,
                channel="web",
                external_id=chat_id,
                chat_id=chat_id,
                created_at=host.clock(),
            )
            .on_conflict_do_nothing()
        )
