"""Composition root: builds the engine, translator, router, channels, delivery and web server,
and passes each what it needs (no globals)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from bot.admin.importer import default_categories, import_community
from bot.channels.base import Channel
from bot.config import Settings
from bot.delivery import Deliverer
from bot.i18n import Translator
from bot.media import PREFIX as MEDIA_PREFIX
from bot.media import MediaStore
from bot.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from bot.metrics import Metrics
from bot.open311 import PREFIX as OPEN311_PREFIX
from bot.open311 import Open311
from bot.ports import Inbound
from handlers.router import Router
from models import Category, Grid, Identity, OutboxMessage, Person, Role, utcnow
from models.db import make_engine, make_sessionmaker, startup_lock, upgrade

log = logging.getLogger(__name__)

DEMO_FILE = Path(__file__).parent / "demo" / "community.yaml"
#: Demo duty lists (``gridbot duties import`` format), loaded with the demo community.
DEMO_DUTIES = tuple(
    Path(__file__).parent / "demo" / f"duty_{name}.csv"
    for name in ("households", "visits", "patrols")
)
TELEGRAM_WEBHOOK_PATH = "/telegram/webhook"
WECHAT_PATH = "/wechat"
MAX_WEBHOOK_BODY = 1 << 20

#: Seconds each part of :meth:`Gridbot.stop` may take: 8 s in all, 10 s with the web server's
#: 2 s of graceful shutdown, the bound promised for SIGTERM.
STOP_BUDGETS = {
    "set-up": 0.5, "scheduler": 2.5, "telegram": 1.5, "wechat": 1.0, "delivery": 2.0,
    "database": 0.5,
}

#: Seconds between two set-up attempts of a channel in trouble, at the most.
SETUP_RETRY_MAX = 60.0
#: Seconds before the first retry (doubling after each failure).
SETUP_RETRY_FIRST = 1.0
#: Seconds a health check waits for the database.
HEALTH_DB_SECONDS = 3.0

#: Commands shown in Telegram's menu (descriptions come from the catalog at start-up).
BOT_COMMANDS = ("order", "myorders", "tasks", "queue", "mygrid", "me", "lang", "cancel", "help")


async def read_capped(request: Request, limit: int) -> bytes | None:
    """The request body, or ``None`` when it is larger than ``limit`` bytes: a larger
    Content-Length is refused before anything is read, and a body that streams in without one
    (or lies about it) is dropped as soon as it passes the limit, so it is never held whole."""
    declared = request.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class Gridbot:
    """The whole service, wired together."""

    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.clock = clock
        self.engine = make_engine(settings.database_url)
        self.sessionmaker = make_sessionmaker(self.engine)
        self.tr = Translator.load(settings.locales_dir, settings.default_locale)
        self.deliverer = Deliverer(
            self.sessionmaker, {}, clock=clock, on_unreachable=self.report_unreachable
        )
        self.media = MediaStore(settings.media_dir)
        self.router = Router(
            self.sessionmaker,
            settings,
            self.tr,
            clock=clock,
            on_commit=self.deliverer.wake,
            import_photo=self.import_photo,
        )
        self.metrics = Metrics()
        #: What channels call with each inbound update: the router, timed for /metrics.
        self.intake = self.metrics.timed(self.router)
        self.channels: dict[str, Channel] = {}
        #: Channel name → "ready" or "retrying: <why>" (shown by ``/readyz``).
        self.setup_state: dict[str, str] = {}
        self._setup_tasks: dict[str, asyncio.Task[None]] = {}
        self.duties: Any = None  # bot.scheduler.DutyScheduler once started
        self.telegram: Any = None
        self.webchat: Any = None
        self.wechat: Any = None

    def add_channel(self, channel: Channel) -> None:
        """Deliver through ``channel`` from now on."""
        self.channels[channel.name] = channel
        self.deliverer.add_channel(channel)

    async def import_photo(self, event: Inbound) -> str | None:
        """Copy a photo from its platform into the media store; ``None`` if that fails."""
        channel = self.channels.get(event.channel)
        fetch = getattr(channel, "fetch_file", None)
        if fetch is None or not event.photo or event.photo.startswith(MEDIA_PREFIX):
            return None
        try:
            data = await fetch(event.photo)
        except Exception as err:
            log.warning("could not fetch a %s photo: %s", event.channel, type(err).__name__)
            return None
        return await self.media.save(data)

    async def report_unreachable(self, row: OutboxMessage) -> None:
        """A push failed because its person cannot be reached: their other platform, or the
        order's handler, is told (never a silent failure)."""
        from bot.core.reach import report_unreachable

        async with self.sessionmaker() as session, session.begin():
            await report_unreachable(
                session,
                self.tr,
                self.settings.default_locale,
                row,
                channels=set(self.channels),
            )

    async def prepare(self) -> None:
        """Migrate the schema; load the demo community into an empty database when asked.
        Safe when every replica starts at once (one at a time: :func:`startup_lock`)."""
        async with startup_lock(self.engine):
            await self._prepare()

    async def _prepare(self) -> None:
        await upgrade(self.engine)
        async with self.sessionmaker() as session, session.begin():
            grids = await session.scalar(select(func.count()).select_from(Grid))
            if not grids and self.settings.demo:
                report = await import_community(session, DEMO_FILE)
                log.info("demo community loaded: %s", report)
                if self.settings.demo_duties:
                    from bot.admin.duty_import import import_duties

                    for path in DEMO_DUTIES:
                        log.info("demo duties loaded: %s", await import_duties(session, path))
                if self.settings.demo_history:
                    from bot.reports.demo_history import load_demo_history

                    made = await load_demo_history(session, self.clock(), self.settings.tz)
                    log.info("demo history: %d orders of last month", made)
            categories = await session.scalar(select(func.count()).select_from(Category))
            if not categories:
                for sort, spec in enumerate(default_categories()):
                    session.add(
                        Category(
                            code=spec.code,
                            urgent=spec.urgent,
                            deadline_hours=spec.deadline_hours,
                            points=spec.points,
                            sort=sort,
                        )
                    )

    # ---- channels ---------------------------------------------------------------------------

    async def personas(self) -> list[Any]:
        """Everyone the local web chat may play (people with a role). Reads only: a web
        identity is made when a persona first sends something (:meth:`web_identity`)."""
        from bot.channels.webchat import Persona

        async with self.sessionmaker() as session:
            people = (await session.scalars(select(Person).order_by(Person.id))).all()
            roles = (await session.execute(select(Role.person_id, Role.role))).all()
        by_person: dict[int, list[str]] = {}
        for pid, role in roles:
            label = self.tr.t(self.settings.default_locale, f"role.{role}")
            if label not in by_person.setdefault(pid, []):
                by_person[pid].append(label)
        return [
            Persona(f"p{person.id}", person.name, by_person[person.id], person.locale)
            for person in people
            if person.id in by_person
        ]

    async def web_identity(self, chat_id: str) -> None:
        """Make sure the persona ``chat_id`` (``p<person id>``) has its web identity; called
        by the web chat before a persona's first message is handled."""
        if not chat_id.startswith("p") or not chat_id[1:].isdigit():
            return
        person_id = int(chat_id[1:])
        async with self.sessionmaker() as session, session.begin():
            known = await session.scalar(
                select(Identity.id).where(
                    Identity.channel == "web", Identity.external_id == chat_id
                )
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
                    created_at=self.clock(),
                )
                .on_conflict_do_nothing()
            )

    def enable_webchat(self) -> None:
        """Serve the local web chat at /chat."""
        from bot.channels.webchat import WebChatChannel

        self.webchat = WebChatChannel(
            self.sessionmaker,
            self.intake,
            self.personas,
            title="Gridbot 社区网格",
            on_first_use=self.web_identity,
            media_dir=self.settings.media_dir,
        )
        self.add_channel(self.webchat)

    def enable_telegram(self) -> None:
        """Talk to Telegram (polling or webhook) with the configured Bot API server."""
        from bot.channels.telegram import TelegramChannel

        s = self.settings
        assert s.telegram_token
        self.telegram = TelegramChannel(
            s.telegram_token,
            self.intake,
            base_url=s.telegram_api_url,
            base_file_url=s.telegram_file_url,
            mode=s.telegram_mode,
            webhook_url=s.telegram_webhook_url,
            webhook_secret=s.telegram_webhook_secret,
            connections=s.telegram_connections,
            media=self.media,
        )
        self.add_channel(self.telegram)

    def enable_wechat(self) -> None:
        """Serve a WeChat Official Account at /wechat (plain or safe mode)."""
        from bot.channels.wechat import WeChatChannel

        s = self.settings
        assert s.wechat_appid and s.wechat_token
        self.wechat = WeChatChannel(
            appid=s.wechat_appid,
            secret=s.wechat_secret or "",
            token=s.wechat_token,
            aes_key=s.wechat_aes_key or None,
            api_url=s.wechat_api_url,
            intake=self.intake,
            sessionmaker=self.sessionmaker,
            tr=self.tr,
            deliverer=self.deliverer,
            default_locale=s.default_locale,
            media=self.media,
            clock=self.clock,
            reply_deadline=s.wechat_reply_deadline,
            timestamp_skew=s.wechat_timestamp_skew,
            push_quota=s.wechat_push_quota,
            msgmenu=s.wechat_msgmenu,
            templates=s.wechat_templates,
            timezone=s.tz,
        )
        self.add_channel(self.wechat)

    # ---- web server -------------------------------------------------------------------------

    async def _database_answers(self) -> bool:
        try:
            async with asyncio.timeout(HEALTH_DB_SECONDS):
                async with self.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
        except Exception as err:
            log.warning("health check: the database does not answer (%s)", _describe(err))
            return False
        return True

    async def healthz(self, request: Request) -> Response:
        """200 when the database answers (liveness of the service and its database)."""
        if not await self._database_answers():
            return JSONResponse({"status": "database unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """200 when this instance can serve everything: the database answers and every
        channel is set up; 503 otherwise, saying what is missing (for a load balancer)."""
        database = await self._database_answers()
        ready = database and all(v == "ready" for v in self.setup_state.values())
        body = {
            "status": "ready" if ready else "not ready",
            "database": "ok" if database else "unavailable",
            "channels": {name: self.setup_state.get(name, "ready") for name in self.channels},
        }
        if self.duties is not None:
            body["scheduler"] = "leader" if self.duties.is_leader else "standby"
        return JSONResponse(body, status_code=200 if ready else 503)

    async def telegram_webhook(self, request: Request) -> Response:
        """Telegram's webhook: the secret is checked before the body is read, the body is
        capped while it streams in, and the update is stored (handled) before we answer 200."""
        if self.telegram is None or self.settings.telegram_mode != "webhook":
            return Response(status_code=404)
        secret = request.headers.get("x-telegram-bot-api-secret-token")
        if not self.telegram.secret_ok(secret):
            return Response(status_code=403)
        body = await read_capped(request, MAX_WEBHOOK_BODY)
        if body is None:
            return Response(status_code=413)
        status = await self.telegram.process_webhook(body, secret)
        return Response(status_code=status)

    async def wechat_webhook(self, request: Request) -> Response:
        """WeChat's callback URL: GET is the admin console's check, POST a message or event.
        A POST's timestamp and signature are checked before its body is read, and the body is
        capped while it streams in."""
        if self.wechat is None:
            return Response(status_code=404)
        params = dict(request.query_params)
        if request.method == "GET":
            status, body = self.wechat.process_get(params)
            return Response(body, status_code=status, media_type="text/plain")
        if not self.wechat.query_ok(params):
            return Response(status_code=403)
        data = await read_capped(request, MAX_WEBHOOK_BODY)
        if data is None:
            return Response(status_code=413)
        status, body = await self.wechat.process_post(params, data)
        media = "application/xml" if body.startswith("<") else "text/plain"
        return Response(body, status_code=status, media_type=media)

    def open311(self) -> Open311:
        """The Open311 GeoReport v2 endpoints (the city platform), see ``bot.open311``."""
        return Open311(
            self.sessionmaker,
            self.settings,
            self.tr,
            clock=self.clock,
            on_commit=self.deliverer.wake,
        )

    async def metrics_page(self, request: Request) -> Response:
        """Prometheus metrics (see :mod:`bot.metrics`)."""
        body = await self.metrics.render(
            self.sessionmaker,
            now=self.clock(),
            sent=self.deliverer.counts,
            leader=self.duties.is_leader if self.duties is not None else None,
            channels={name: self.setup_state.get(name, "ready") == "ready"
                      for name in self.channels},
        )
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    def web_app(self) -> Starlette:
        """The one web server: health, webhooks, Open311 and (when enabled) the local web chat."""
        routes: list[Any] = [
            Route("/healthz", self.healthz),
            Route("/readyz", self.readyz),
            Route("/metrics", self.metrics_page),
            Route(TELEGRAM_WEBHOOK_PATH, self.telegram_webhook, methods=["POST"]),
            Route(WECHAT_PATH, self.wechat_webhook, methods=["GET", "POST"]),
        ]
        routes.append(Mount(OPEN311_PREFIX, routes=self.open311().routes()))
        if self.webchat is not None:
            routes.append(Mount("/chat", routes=self.webchat.routes()))
            routes.append(
                Route("/", lambda r: Response(status_code=307, headers={"location": "/chat/"}))
            )
        return Starlette(routes=routes)

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start delivery and the platform connections.

        A platform in trouble at start-up does not take the service down: its set-up calls
        (``getMe``, polling or webhook registration, the command menu) are retried in the
        background with back-off while the rest serves, its outbox rows wait, and ``/readyz``
        says what is pending."""
        await self.deliverer.start()
        if self.telegram is not None:
            await self._set_up("telegram", self._start_telegram)

    async def _start_telegram(self) -> None:
        assert self.telegram is not None
        await self.telegram.start()
        await self.remember_bot_username()
        lang = self.settings.default_locale
        await self.telegram.set_commands(
            [(c, self.tr.t(lang, f"command.{c}")) for c in BOT_COMMANDS]
        )

    async def _set_up(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        """Run a channel's set-up now; if it fails, hold the channel's outbox rows and retry
        in the background (1 s, 2 s, 4 s … at most ``SETUP_RETRY_MAX`` apart)."""
        try:
            await step()
        except Exception as err:
            self.setup_state[name] = f"retrying: {_describe(err)}"
            log.warning("%s set-up failed (%s): retrying in the background", name,
                        _describe(err))
            self.deliverer.hold_channel(name)
            self._setup_tasks[name] = asyncio.create_task(
                self._retry_setup(name, step), name=f"gridbot-setup-{name}"
            )
        else:
            self.setup_state[name] = "ready"

    async def _retry_setup(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        delay = SETUP_RETRY_FIRST
        while True:
            await asyncio.sleep(delay)
            try:
                await step()
            except Exception as err:
                self.setup_state[name] = f"retrying: {_describe(err)}"
                log.warning("%s set-up failed again (%s)", name, _describe(err))
                delay = min(delay * 2, SETUP_RETRY_MAX)
            else:
                self.setup_state[name] = "ready"
                self.deliverer.release_channel(name)
                log.warning("%s set up after retrying", name)
                return

    async def hold_poller_lease(self) -> str | None:
        """Polling: take the lease ``telegram-poll:<bot id>`` and keep renewing it; the reason
        to refuse when another live instance polls this bot (two pollers each get some updates
        and Telegram answers them 409 Conflict), None when this one may poll."""
        assert self.telegram is not None
        from bot.lease import Lease

        lease = Lease(
            self.sessionmaker,
            f"telegram-poll:{self.telegram.bot_id}",
            self.deliverer.holder,
            timedelta(seconds=self.settings.scheduler_lease_seconds),
            self.clock,
        )
        if not await lease.acquire():
            row = await lease.current()
            who = f"{row.holder} until {row.expires_at.isoformat()}" if row else "?"
            return (
                f"another gridbot ({who}) polls this Telegram bot already; two pollers lose "
                "and repeat updates. Run one instance in polling mode, or use webhook mode "
                "(GRIDBOT_TELEGRAM_MODE=webhook) for several."
            )

        async def renew() -> None:
            try:
                while True:
                    await asyncio.sleep(max(lease.ttl.total_seconds() / 3, 0.5))
                    try:
                        if not await lease.acquire():
                            log.error("the Telegram polling lease was taken by another "
                                      "instance: two pollers now share this bot")
                    except Exception:
                        log.exception("could not renew the Telegram polling lease")
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(lease.release())

        self._setup_tasks["telegram-poll-lease"] = asyncio.create_task(renew())
        return None

    async def remember_bot_username(self) -> None:
        """Keep the bot's username (from ``getMe``) in the database: the admin command line
        prints ``t.me`` links with it."""
        from bot.core.invites import remember_bot_username

        username = self.telegram.username if self.telegram is not None else None
        if not username:
            return
        try:
            async with self.sessionmaker() as session, session.begin():
                await remember_bot_username(session, self.telegram.bot_id, username)
        except Exception:  # a convenience for the CLI: never a reason to stop Telegram
            log.exception("could not keep the bot's username")

    async def start_duties(self, *, manual: bool = False) -> Any:
        """Start the duty scheduler (patrols, visits, order clocks, digests); one per database,
        see ``bot.scheduler``. Raises ``SchedulerRefused`` on SQLite when another runs."""
        from bot.scheduler import DutyScheduler

        self.duties = DutyScheduler(
            self.sessionmaker,
            self.settings,
            self.tr,
            clock=self.clock,
            wake=self.deliverer.wake,
            manual=manual,
        )
        await self.duties.start()
        return self.duties

    async def stop(self) -> None:
        """Stop everything in bounded time (``STOP_BUDGETS``: 8 s in all, so SIGTERM ends
        the process within 10 s whatever is in flight). The scheduler lease is released and
        the outbox rows this process had claimed are handed back, so another instance or the
        next start carries on at once. A part that overruns its budget is logged and left."""
        for task in self._setup_tasks.values():
            task.cancel()
        if self._setup_tasks:  # the polling lease is released as its task ends
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_BUDGETS["set-up"]):
                    await asyncio.gather(*self._setup_tasks.values(), return_exceptions=True)
            self._setup_tasks.clear()
        parts: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.duties is not None:
            parts.append(("scheduler", self.duties.stop))
        if self.telegram is not None:
            parts.append(("telegram", self.telegram.stop))
        if self.wechat is not None:
            parts.append(("wechat", self.wechat.stop))
        parts += [("delivery", self.deliverer.stop), ("database", self.engine.dispose)]
        for name, step in parts:
            budget = STOP_BUDGETS.get(name, 2.0)
            try:
                async with asyncio.timeout(budget):
                    await step()
            except TimeoutError:
                log.error("stopping %s took more than %.0f s: left behind", name, budget)
            except Exception:
                log.exception("stopping %s failed", name)

    def listen(self) -> socket.socket:
        """Bind the web server's address; :class:`SystemExit` (status 1) with a clear message
        when it is taken or not ours to bind, before anything else has started."""
        host, port = self.settings.web_host, self.settings.web_port
        try:
            infos = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family = infos[0][0] if infos else socket.AF_INET
            return socket.create_server((host, port), family=family, backlog=2048)
        except OSError as err:
            reason = err.strerror or str(err)
            if err.errno == errno.EADDRINUSE:
                reason = "the port is taken by another program (another gridbot?)"
            message = (
                f"cannot listen on {host}:{port}: {reason}. Stop the other program or choose "
                "another port (GRIDBOT_WEB_PORT / GRIDBOT_WEB_HOST)."
            )
            print(f"error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(1) from err

    async def serve(self) -> None:
        """``gridbot run``: bind, prepare, start, serve HTTP until SIGINT/SIGTERM."""
        refusal = self.settings.webchat_refusal()
        if refusal is not None:
            log.error("%s", refusal)
            print(f"error: {refusal}", file=sys.stderr, flush=True)
            raise SystemExit(2)
        sock = self.listen()
        await self.prepare()
        if self.settings.webchat_on:
            self.enable_webchat()
        if self.settings.telegram_token:
            self.enable_telegram()
        if self.settings.wechat_appid and self.settings.wechat_token:
            self.enable_wechat()
        if self.telegram is not None and self.settings.telegram_mode == "polling":
            refusal = await self.hold_poller_lease()
            if refusal:
                print(f"error: {refusal}", file=sys.stderr, flush=True)
                await self.stop()
                sock.close()
                raise SystemExit(1)
        await self.start()
        if self.settings.scheduler_enabled:
            from bot.scheduler import SchedulerRefused

            try:
                await self.start_duties()
            except SchedulerRefused as err:
                log.error("%s", err)
                print(f"error: {err}", file=sys.stderr, flush=True)
                await self.stop()
                sock.close()
                raise SystemExit(1) from err
        config = uvicorn.Config(
            self.web_app(),
            host=self.settings.web_host,
            port=self.settings.web_port,
            log_level="warning",
            timeout_graceful_shutdown=2,
            lifespan="off",
        )
        server = uvicorn.Server(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        where = f"http://{self.settings.web_host}:{self.settings.web_port}"
        if self.webchat is not None:
            print(f"Gridbot is running. Local web chat: {where}/chat/", flush=True)
        else:
            print(f"Gridbot is running on {where}", flush=True)
        if self.telegram is not None:
            print(f"Telegram: {self.settings.telegram_mode} mode", flush=True)
        if self.wechat is not None:
            mode = "safe (AES)" if self.settings.wechat_aes_key else "plain"
            print(f"WeChat: callback URL {where}{WECHAT_PATH}, {mode} mode", flush=True)
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()
            await self.stop()


def _describe(err: BaseException) -> str:
    """An error for logs and /readyz: its type and first line (no request data)."""
    text = str(err).splitlines()[0][:200] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
