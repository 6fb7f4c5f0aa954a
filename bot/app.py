"""Composition root: builds the engine, translator, intake, channels, delivery and web server,
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
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from sqlalchemy import func, select, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from bot.admin.importer import default_categories, import_community
from bot.channels import registry
from bot.channels.base import Adapter, ChannelHost, PushPolicy
from bot.config import Settings
from bot.console.web import PREFIX as CONSOLE_PREFIX
from bot.console.web import Console
from bot.delivery import Deliverer
from bot.i18n import Translator
from bot.media import MediaStore
from bot.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from bot.metrics import Metrics
from bot.open311 import PREFIX as OPEN311_PREFIX
from bot.open311 import Open311
from handlers.intake import Intake
from models import Category, Grid, OutboxMessage, utcnow
from models.db import make_engine, make_sessionmaker, startup_lock, upgrade

log = logging.getLogger(__name__)

A = TypeVar("A", bound=Adapter)

DEMO_FILE = Path(__file__).parent / "demo" / "community.yaml"
#: Demo duty lists (``gridbot duties import`` format), loaded with the demo community.
DEMO_DUTIES = tuple(
    Path(__file__).parent / "demo" / f"duty_{name}.csv"
    for name in ("households", "visits", "patrols")
)
#: Seconds each part of :meth:`Gridbot.stop` may take besides the channels (each adapter
#: has its own ``stop_budget``): 8 s in all with Telegram and WeChat, 10 s with the web
#: server's 2 s of graceful shutdown, the bound promised for SIGTERM.
STOP_BUDGETS = {"set-up": 0.5, "scheduler": 2.0, "console": 0.5, "delivery": 2.0,
                "database": 0.5}

#: Seconds between two set-up attempts of a channel in trouble, at the most.
SETUP_RETRY_MAX = 60.0
#: Seconds before the first retry (doubling after each failure).
SETUP_RETRY_FIRST = 1.0
#: Seconds a health check waits for the database.
HEALTH_DB_SECONDS = 3.0



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
        #: Channel name → its push rules (filled as adapters are added).
        self.push_policies: dict[str, PushPolicy] = {}
        #: The core's one entry for inbound events (handlers/intake.py).
        self.handler = Intake(
            self.sessionmaker,
            settings,
            self.tr,
            clock=clock,
            on_commit=self.deliverer.wake,
            push_policies=self.push_policies,
        )
        self.metrics = Metrics()
        #: What channels call with each inbound update: the intake, timed for /metrics.
        self.intake = self.metrics.timed(self.handler)
        #: Channel name → its adapter, in the order they were added.
        self.channels: dict[str, Adapter] = {}
        #: Channel name → "ready" or "retrying: <why>" (shown by ``/readyz``).
        self.setup_state: dict[str, str] = {}
        self._setup_tasks: dict[str, asyncio.Task[None]] = {}
        #: The console the web server serves (its computations are cancelled by :meth:`stop`).
        self._consoles: list[Console] = []
        self.duties: Any = None  # bot.scheduler.DutyScheduler once started

    def add_channel(self, channel: Adapter) -> None:
        """Talk through ``channel`` from now on: deliver through it, serve its routes (when
        added before :meth:`web_app`), start and stop it with the service."""
        self.channels[channel.name] = channel
        self.deliverer.add_channel(channel)
        if isinstance(channel, PushPolicy):
            self.push_policies[channel.name] = channel

    def enable_channels(self) -> None:
        """Build every platform the settings configure (:mod:`bot.channels.registry`)."""
        for spec in registry.configured(self.settings):
            self.enable(spec.name)

    def enable(self, name: str) -> Adapter:
        """Build channel ``name`` (``web``, ``telegram``, ``wechat`` …) from its settings and
        add it."""
        host = ChannelHost(
            settings=self.settings,
            sessionmaker=self.sessionmaker,
            tr=self.tr,
            intake=self.intake,
            media=self.media,
            clock=self.clock,
            holder=self.deliverer.holder,
            deliverer=self.deliverer,
        )
        adapter = registry.spec_named(name).build(host)
        self.add_channel(adapter)
        return adapter

    def channel(self, kind: type[A]) -> A:
        """The adapter of type ``kind`` (for tests and benchmarks that drive one platform)."""
        for adapter in self.channels.values():
            if isinstance(adapter, kind):
                return adapter
        raise LookupError(f"no {kind.__name__} is enabled")

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

    def open311(self) -> Open311:
        """The Open311 GeoReport v2 endpoints (the city platform), see ``bot.open311``."""
        return Open311(
            self.sessionmaker,
            self.settings,
            self.tr,
            clock=self.clock,
            on_commit=self.deliverer.wake,
        )

    def console(self) -> Console:
        """The web console for heads and admins (``GRIDBOT_CONSOLE_ENABLED``), see
        ``bot.console``."""
        return Console(
            self.sessionmaker,
            self.settings,
            self.tr,
            clock=self.clock,
            media=self.media,
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
        """The one web server: health, Open311, the console (when enabled) and every
        channel's routes (webhooks, the local web chat)."""
        routes: list[BaseRoute] = [
            Route("/healthz", self.healthz),
            Route("/readyz", self.readyz),
            Route("/metrics", self.metrics_page),
            Mount(OPEN311_PREFIX, routes=self.open311().routes()),
        ]
        if self.settings.console_on:
            console = self.console()
            self._consoles.append(console)
            routes.append(Mount(CONSOLE_PREFIX, routes=console.routes()))
        for channel in self.channels.values():
            routes += channel.routes()
        return Starlette(routes=routes)

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start delivery and the platform connections.

        A platform in trouble at start-up does not take the service down: its set-up calls
        (``getMe``, polling or webhook registration, the command menu) are retried in the
        background with back-off while the rest serves, its outbox rows wait, and ``/readyz``
        says what is pending."""
        await self.deliverer.start()
        for channel in self.channels.values():
            await self._set_up(channel.name, channel.start)

    async def claim_channels(self) -> str | None:
        """Let every channel take what it needs for itself alone (Telegram's polling lease);
        the first refusal, or ``None``."""
        for channel in self.channels.values():
            refusal = await channel.claim()
            if refusal:
                return refusal
        return None

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
        parts += [("console", c.stop) for c in self._consoles]
        parts += [(c.name, c.stop) for c in self.channels.values()]
        parts += [("delivery", self.deliverer.stop), ("database", self.engine.dispose)]
        budgets = {c.name: c.stop_budget for c in self.channels.values()} | STOP_BUDGETS
        for name, step in parts:
            budget = budgets.get(name, 2.0)
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
        self.enable_channels()
        refusal = await self.claim_channels()
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
        print(f"Gridbot is running on {where}", flush=True)
        for channel in self.channels.values():
            line = channel.banner(where)
            if line:
                print(line, flush=True)
        try:
            await server.serve(sockets=[sock])
        finally:
            sock.close()
            await self.stop()


def _describe(err: BaseException) -> str:
    """An error for logs and /readyz: its type and first line (no request data)."""
    text = str(err).splitlines()[0][:200] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
