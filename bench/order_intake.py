"""Order-intake benchmark: Gridbot on Telegram against a bare python-telegram-bot echo bot.

Run from the repository root::

    .venv/bin/python bench/order_intake.py [--residents N] [--db sqlite|postgresql]

Every phase gets a fresh fake Bot API server (``tests/fakes/telegram_server.py``) in this
process, which also plays the users, and a fresh bot in a child process (this same file with
``--child``), so each bot's memory and CPU figures are its own:

1. ``echo``: a bare PTB ``Application`` (``concurrent_updates(True)``, polling) answering every
   text with ``reply_text(text)``; N users each send K texts, each waiting for its echo.
2. ``gridbot-lifted``: Gridbot (demo community, fresh database) with the delivery limits
   lifted; N residents at once bind with a building invite, give a name, skip room and phone,
   and place an order (category, description, skip photo, skip location, submit), each waiting
   for the bot's answer before the next step. A grid worker of xh-g1-m1 is bound first and
   gets a dispatch card per order.
3. ``gridbot-paced``: the same with Telegram's limits as configured (1 msg/s per chat, 30 msg/s
   overall), the fake enforcing them too (429 + retry_after).

``--heap`` runs every phase once more with tracemalloc on (it costs the bots 3-4x CPU, so the
timed runs go without it). Prints a report and writes it as JSON to ``bench/results/``. See
``bench/README.md`` for how to read it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import json
import math
import os
import platform
import pstats
import re
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from tests.fakes.telegram_server import FakeTelegramServer, FakeUser, SentMessage

JSON = dict[str, Any]
RESULTS_DIR = ROOT / "bench" / "results"
#: Buildings of micro-grid xh-g1-m1 in the demo community (their orders go to its worker).
BUILDINGS = ("xh-b01", "xh-b02", "xh-b03")
WORKER_GRID = "xh-g1-m1"
WORKER_UID = 900_001
RESIDENT_UID0 = 100_001
ECHO_UID0 = 200_001
#: Updates one resident sends from /start to the order's confirmation.
ORDER_UPDATES = 10
TAG_RE = re.compile(r"(?<![A-Za-z0-9])R\d{5}(?!\d)")


# =========================================================================== child: the bots
def _emit(tag: str, data: JSON) -> None:
    """One protocol line on stdout for the parent."""
    sys.stdout.write(f"{tag} {json.dumps(data)}\n")
    sys.stdout.flush()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _Meter:
    """CPU and heap accounting of the child between the parent's ``begin`` and ``stop``."""

    def __init__(self, profile_path: str | None) -> None:
        self.heap0 = 0
        self.cpu0 = 0.0
        self.thread0 = 0.0
        self.wall0 = 0.0
        self.profile_path = profile_path
        self.profiler: cProfile.Profile | None = None

    def begin(self) -> None:
        if tracemalloc.is_tracing():
            self.heap0 = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
        self.cpu0 = _cpu_seconds()
        self.thread0 = time.thread_time()  # the event loop's thread
        self.wall0 = time.perf_counter()
        if self.profile_path:
            # CPU time of the event loop thread, not wall time: robust on a busy machine.
            self.profiler = cProfile.Profile(time.thread_time)
            self.profiler.enable()

    def end(self) -> JSON:
        if self.profiler is not None:
            self.profiler.disable()
            assert self.profile_path is not None
            self.profiler.dump_stats(self.profile_path)
        stats: JSON = {
            "cpu_s": _cpu_seconds() - self.cpu0,
            "loop_thread_cpu_s": time.thread_time() - self.thread0,
            "wall_s": time.perf_counter() - self.wall0,
            "max_rss_mb": _max_rss_mb(),
        }
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            stats["heap_at_begin_mb"] = self.heap0 / 2**20
            stats["heap_at_end_mb"] = current / 2**20
            stats["heap_peak_load_mb"] = peak / 2**20
        return stats


async def _commands() -> AsyncIterator[str]:
    """Lines from the parent on stdin; EOF (the parent died) counts as ``stop``."""
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        yield line.strip() or "stop"
        if not line:
            return


async def _serve_until_stopped(meter: _Meter) -> None:
    async for command in _commands():
        if command == "begin":
            meter.begin()
        elif command == "stop":
            return


async def child_echo(cfg: JSON) -> None:
    """The baseline: a bare PTB echo bot, polling."""
    from telegram import Update
    from telegram.ext import ApplicationBuilder, ContextTypes, MessageHandler, filters

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None and update.message.text is not None
        await update.message.reply_text(update.message.text)

    app = (
        ApplicationBuilder()
        .token(cfg["token"])
        .base_url(cfg["base_url"])
        .base_file_url(cfg["file_url"])
        .concurrent_updates(True)
        .build()
    )
    app.add_handler(MessageHandler(filters.TEXT, echo))
    await app.initialize()
    await app.start()
    assert app.updater is not None
    await app.updater.start_polling(
        timeout=timedelta(seconds=10),
        drop_pending_updates=False,
        allowed_updates=[Update.MESSAGE, Update.CALLBACK_QUERY],
    )
    meter = _Meter(cfg.get("profile"))
    _emit("READY", {"startup_rss_mb": _max_rss_mb()})
    try:
        await _serve_until_stopped(meter)
        stats = meter.end()
    finally:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()
    _emit("STATS", stats)


async def _invites(app: Any) -> JSON:
    """A single-use worker invite for xh-g1-m1 and a multi-use invite per building."""
    from sqlalchemy import select

    from bot.core.invites import create_invite, signing_key
    from models import Building, Grid

    expires = datetime.now(UTC) + timedelta(days=1)
    async with app.sessionmaker() as session, session.begin():
        key = await signing_key(session, app.settings)
        grid = await session.scalar(select(Grid).where(Grid.code == WORKER_GRID))
        assert grid is not None
        _, worker = await create_invite(
            session, key, role="worker", grid_id=grid.id, expires_at=expires, max_uses=1
        )
        residents = []
        for code in BUILDINGS:
            building = await session.scalar(select(Building).where(Building.code == code))
            assert building is not None and building.grid_id == grid.id
            _, token = await create_invite(
                session,
                key,
                role="resident",
                grid_id=grid.id,
                building_id=building.id,
                expires_at=expires,
                max_uses=None,
            )
            residents.append(token)
    return {"worker": worker, "residents": residents}


async def _db_counts(app: Any) -> JSON:
    from sqlalchemy import func, select

    from models import Order, OutboxMessage, ProcessedUpdate

    async with app.sessionmaker() as session:
        orders = await session.scalar(select(func.count()).select_from(Order))
        updates = await session.scalar(select(func.count()).select_from(ProcessedUpdate))
        outbox = (
            await session.execute(
                select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)
            )
        ).all()
    return {
        "orders": int(orders or 0),
        "processed_updates": int(updates or 0),
        "outbox": {str(status): int(n) for status, n in outbox},
    }


async def child_gridbot(cfg: JSON) -> None:
    """Gridbot as ``gridbot run`` would wire it for Telegram polling, minus the web server."""
    from bot.app import Gridbot
    from bot.channels.telegram import TelegramChannel
    from bot.config import Settings, load_settings

    with tempfile.TemporaryDirectory(prefix="gridbot-bench-") as tmp:
        url = cfg.get("database_url") or f"sqlite+aiosqlite:///{tmp}/gridbot.db"
        extra: JSON = {}
        if "quiet_hours" in Settings.model_fields:
            # No quiet hours: at night they would (rightly) hold the worker's cards till 07:00.
            extra["quiet_hours"] = "00:00-00:00"
        settings = load_settings(
            database_url=url,
            demo=True,
            secret_key="bench-secret",
            telegram_token=cfg["token"],
            telegram_api_url=cfg["base_url"],
            telegram_file_url=cfg["file_url"],
            media_dir=Path(tmp) / "media",
            **extra,
        )
        app = Gridbot(settings)
        started = False
        try:
            await app.prepare()
            invites = await _invites(app)
            app.enable("telegram")
            if cfg["limits"] == "lifted":
                # The platform's rate limits are lifted; the channel's own cap on requests in
                # flight (an HTTP client setting, not a Telegram limit) stays.
                app.channel(TelegramChannel).limits = dataclasses.replace(
                    app.channel(TelegramChannel).limits,
                    per_chat_interval=0.0,
                    global_per_second=100000,
                    group_per_minute=10**9,
                )
            limits = app.channel(TelegramChannel).limits
            await app.start()
            started = True
            meter = _Meter(cfg.get("profile"))
            _emit(
                "READY",
                {
                    "invites": invites,
                    "startup_rss_mb": _max_rss_mb(),
                    "limits": {
                        "per_chat_interval": limits.per_chat_interval,
                        "global_per_second": limits.global_per_second,
                    },
                },
            )
            await _serve_until_stopped(meter)
            stats = meter.end()
            stats["db"] = await _db_counts(app)
            stats["delivered"] = app.deliverer.sent_count
            stats["delivery_failed"] = app.deliverer.failed_count
        finally:
            if started:
                await app.stop()
            else:
                await app.engine.dispose()
    _emit("STATS", stats)


def child_main(kind: str, cfg: JSON) -> None:
    """Entry point of a bot process."""
    import logging

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if cfg.get("tracemalloc"):
        tracemalloc.start()
    runner = child_echo if kind == "echo" else child_gridbot
    asyncio.run(runner(cfg))


# ====================================================================== parent: users and fake
def _fake_class() -> type[FakeTelegramServer]:
    """The fake Bot API server, timestamping every message the bot sends as it is stored."""
    from tests.fakes.telegram_server import JSON as FakeJSON
    from tests.fakes.telegram_server import FakeTelegramServer

    class TimedFake(FakeTelegramServer):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.arrivals: dict[int, list[tuple[float, SentMessage]]] = defaultdict(list)
            self.signals: dict[int, asyncio.Event] = {}

        def _store(
            self, chat_id: int, p: FakeJSON, *, text: str | None, photo: str | None
        ) -> FakeJSON:
            result = super()._store(chat_id, p, text=text, photo=photo)
            message = self._messages[chat_id][int(result["message_id"])]
            self.arrivals[chat_id].append((time.perf_counter(), message))
            signal = self.signals.get(chat_id)
            if signal is not None:
                signal.set()
            return result

    return TimedFake


async def next_message(
    tg: Any, chat_id: int, start: int, predicate: Callable[[SentMessage], bool], within: float
) -> tuple[int, float, SentMessage]:
    """The first message to ``chat_id`` at position >= ``start`` matching ``predicate``.

    Returns (position after it, arrival time, message). Waits on a per-chat event set by the
    fake's store hook, so thousands of waiting users cost nothing while nothing arrives.
    """
    arrivals: list[tuple[float, SentMessage]] = tg.arrivals[chat_id]
    signal: asyncio.Event = tg.signals.setdefault(chat_id, asyncio.Event())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    index = start
    while True:
        while index < len(arrivals):
            stamp, message = arrivals[index]
            index += 1
            if predicate(message):
                return index, stamp, message
        signal.clear()
        remaining = deadline - loop.time()
        if remaining <= 0:
            seen = [m.text for _, m in arrivals[start:]]
            raise TimeoutError(f"chat {chat_id}: no matching message in {within:.0f}s; {seen}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await signal.wait()


def has(fragment: str) -> Callable[[SentMessage], bool]:
    return lambda m: m.text is not None and fragment in m.text


def is_menu(message: SentMessage) -> bool:
    """The message that brings the main menu back (a reply keyboard, not a location request):
    the end of an answer that asks nothing, whether the menu rides on its own message or not."""
    rows = message.keyboard
    return bool(rows) and not any(
        isinstance(key, dict) and key.get("request_location") for row in rows or [] for key in row
    )


@dataclass
class Conversation:
    """One simulated person: sends, then waits for the answer, timing each step."""

    tg: Any
    user: FakeUser
    timeout: float
    position: int = 0
    latencies: list[float] = field(default_factory=list)

    async def step(
        self, action: Awaitable[Any], predicate: Callable[[SentMessage], bool]
    ) -> tuple[float, SentMessage]:
        sent_at = time.perf_counter()
        await action
        self.position, stamp, message = await next_message(
            self.tg, self.user.chat_id, self.position, predicate, self.timeout
        )
        self.latencies.append(stamp - sent_at)
        return stamp, message


def equals(text: str) -> Callable[[SentMessage], bool]:
    return lambda m: m.text == text


async def echo_user(tg: Any, user: FakeUser, texts: int, within: float) -> Conversation:
    conv = Conversation(tg, user, within)
    for k in range(texts):
        text = f"回声 {user.user_id} #{k}"
        await conv.step(user.send_text(text), equals(text))
    return conv


@dataclass
class Resident(Conversation):
    tag: str = ""
    submitted_at: float = 0.0
    confirmed_at: float = 0.0


async def resident_flow(resident: Resident, invite: str) -> Resident:
    """/start <invite> → a name → skip room → skip phone → /order → … → submit; 10 updates."""
    user, step = resident.user, resident.step
    await step(user.send_command("start", invite), has("怎么称呼"))
    _, q = await step(user.send_text("张阿姨"), has("房号"))
    _, q = await step(user.press_label(q, "跳过"), has("电话"))
    await step(user.press_label(q, "跳过"), is_menu)
    _, ask = await step(user.send_command("order"), has("问题类别"))
    await step(user.press_label(ask, "维修报修"), has("描述"))
    _, q = await step(user.send_text(f"{resident.tag} 3单元楼道灯坏了，晚上看不见"), has("照片"))
    await step(user.press_label(q, "跳过"), has("位置"))
    _, confirm = await step(user.send_text("跳过"), has("请确认"))
    resident.submitted_at = time.perf_counter()
    await user.press_label(confirm, "✅ 提交")
    resident.position, resident.confirmed_at, _ = await next_message(
        resident.tg, user.chat_id, resident.position, has("工单号"), resident.timeout
    )
    resident.position, stamp, _ = await next_message(
        resident.tg, user.chat_id, resident.position, is_menu, resident.timeout
    )
    resident.latencies.append(stamp - resident.submitted_at)
    return resident


async def collect_cards(tg: Any, chat_id: int, tags: set[str], within: float) -> dict[str, float]:
    """Arrival time of the worker's dispatch card for each order tag (as many as arrive, each
    within ``within`` seconds of the previous one)."""
    found: dict[str, float] = {}
    position = 0

    def is_card(m: SentMessage) -> bool:
        return m.text is not None and "新工单" in m.text

    with contextlib.suppress(TimeoutError):
        while len(found) < len(tags):
            position, stamp, message = await next_message(tg, chat_id, position, is_card, within)
            match = TAG_RE.search(message.text or "")
            if match and match.group(0) in tags:
                found.setdefault(match.group(0), stamp)
    return found


# ------------------------------------------------------------------------- child processes
class Child:
    """A bot process speaking the READY/STATS line protocol."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str, log_path: Path) -> None:
        self.proc = proc
        self.name = name
        self.log_path = log_path

    @classmethod
    async def spawn(cls, kind: str, name: str, cfg: JSON, log_path: Path) -> Child:
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(SCRIPT),
                "--child",
                kind,
                "--config",
                json.dumps(cfg),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                cwd=str(ROOT),
            )
        return cls(proc, name, log_path)

    async def read(self, tag: str, within: float) -> JSON:
        assert self.proc.stdout is not None
        async with asyncio.timeout(within):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"{self.name} bot exited; see {self.log_path}")
                head, _, body = line.decode().strip().partition(" ")
                if head == tag:
                    data: JSON = json.loads(body)
                    return data

    async def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())
        await self.proc.stdin.drain()

    async def close(self) -> None:
        """Wait for the process to end; kill it (this process only) if it hangs."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def database(kind: str, label: str) -> Any:
    """None for SQLite (the bot makes its own in a temp dir); a fresh PostgreSQL database."""
    if kind == "sqlite":
        yield None
        return
    from tests.support.pg import fresh_database

    async with fresh_database(f"gridbot_bench_{label}") as url:
        yield url


# --------------------------------------------------------------------------------- phases
PHASES = ("echo", "gridbot-lifted", "gridbot-paced")


@dataclass
class Options:
    residents: int
    paced_residents: int
    texts: int
    db: str
    heap: bool
    profile: Sequence[str]
    step_timeout: float
    stamp: str
    phases: Sequence[str]
    pairs: int = 1
    database_url: str | None = None


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def _latency(values: Sequence[float]) -> JSON:
    if not values:
        return {"n": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "n": len(values),
        "p50_ms": 1000 * _percentile(values, 50),
        "p99_ms": 1000 * _percentile(values, 99),
        "max_ms": 1000 * max(values),
    }


async def run_phase(name: str, opts: Options, *, traced: bool = False) -> JSON:
    """One phase: fresh fake, fresh database, fresh bot process."""
    kind = "echo" if name == "echo" else "gridbot"
    paced = name == "gridbot-paced"
    users = opts.paced_residents if paced else opts.residents
    label = f"{name}-heap" if traced else name
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS_DIR / f"order_intake-{opts.stamp}-{label}.log"
    profile_path = (
        RESULTS_DIR / f"order_intake-{opts.stamp}-{name}.pstats"
        if name in opts.profile and not traced
        else None
    )
    result: JSON = {"phase": name, "users": users, "tracemalloc": traced}
    fake: Any = _fake_class()(enforce_limits=paced)
    async with (
        fake as tg,
        database(
            opts.db if kind == "gridbot" and not opts.database_url else "sqlite",
            label.replace("-", "_"),
        ) as fresh_url,
    ):
        db_url = opts.database_url if kind == "gridbot" else fresh_url
        cfg: JSON = {
            "token": tg.token,
            "base_url": tg.base_url,
            "file_url": tg.file_url,
            "database_url": db_url,
            "limits": "paced" if paced else "lifted",
            "tracemalloc": traced,
            "profile": str(profile_path) if profile_path else None,
        }
        child = await Child.spawn(kind, label, cfg, log_path)
        try:
            ready = await child.read("READY", within=120)
            result["startup_rss_mb"] = ready["startup_rss_mb"]
            if kind == "echo":
                result.update(await drive_echo(tg, child, users, opts))
            else:
                result["limits"] = ready["limits"]
                result.update(await drive_gridbot(tg, child, users, ready["invites"], opts))
            await asyncio.sleep(0.3)  # let the last "sent" marks commit before counting
            await child.send("stop")
            result["bot"] = await child.read("STATS", within=60)
        finally:
            await child.close()
        result["fake"] = {
            "requests": len(tg.requests),
            "too_many_requests": tg.too_many_requests,
            "messages": sum(len(v) for v in tg.arrivals.values()),
        }
    lines = log_path.read_text(errors="replace").splitlines()
    noisy = [line for line in lines if " WARNING " in line or " ERROR " in line]
    result["log"] = {"path": str(log_path.relative_to(ROOT)), "warnings_or_errors": len(noisy)}
    if not lines:
        log_path.unlink()
        result["log"]["path"] = None
    if profile_path is not None:
        result["profile"] = {"path": str(profile_path.relative_to(ROOT))}
        result["profile"]["top"] = _profile_summary(profile_path)
    return result


async def _load(coroutines: Sequence[Awaitable[Any]]) -> tuple[list[Any], list[str], JSON]:
    """Run all users at once; return results, errors and the load window's timings."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    outcomes = await asyncio.gather(*coroutines, return_exceptions=True)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    done = [o for o in outcomes if not isinstance(o, BaseException)]
    errors = [f"{type(o).__name__}: {o}"[:300] for o in outcomes if isinstance(o, BaseException)]
    return done, errors, {"start": wall0, "elapsed_s": wall, "loadgen_cpu_s": cpu}


async def drive_echo(tg: Any, child: Child, users: int, opts: Options) -> JSON:
    people = [tg.user(ECHO_UID0 + i, f"用户{i}") for i in range(users)]
    await child.send("begin")
    done, errors, window = await _load(
        [echo_user(tg, u, opts.texts, opts.step_timeout) for u in people]
    )
    updates = sum(len(c.latencies) for c in done)
    return {
        "updates": updates,
        "failed_users": len(errors),
        "errors": errors[:5],
        **window,
        "updates_per_s": updates / window["elapsed_s"],
        "step_latency": _latency([x for c in done for x in c.latencies]),
    }


async def drive_gridbot(tg: Any, child: Child, users: int, invites: JSON, opts: Options) -> JSON:
    worker = tg.user(WORKER_UID, "王网格员")
    await worker.send_command("start", invites["worker"])
    await next_message(tg, worker.chat_id, 0, has("怎么称呼"), opts.step_timeout)
    await worker.send_text("王网格员")
    at, _, ask = await next_message(tg, worker.chat_id, 0, has("手机号码"), opts.step_timeout)
    await worker.press_label(ask, "跳过")
    await next_message(tg, worker.chat_id, at, is_menu, opts.step_timeout)
    before = sum(len(v) for v in tg.arrivals.values())
    tokens = invites["residents"]
    residents = [
        Resident(tg, tg.user(RESIDENT_UID0 + i, f"居民{i}"), opts.step_timeout, tag=f"R{i:05d}")
        for i in range(users)
    ]
    await child.send("begin")
    done, errors, window = await _load(
        [resident_flow(r, tokens[i % len(tokens)]) for i, r in enumerate(residents)]
    )
    placed = [r for r in done if r.confirmed_at]
    # Under per-chat pacing the cards trail the residents (1/s to the worker): wait for them,
    # giving up when none came for a step's timeout.
    cards = await collect_cards(tg, worker.chat_id, {r.tag for r in placed}, opts.step_timeout)
    updates = sum(len(r.latencies) for r in done)
    elapsed = window["elapsed_s"]
    last_card = max(cards.values(), default=window["start"])
    per_chat = [len(tg.arrivals[r.user.chat_id]) for r in residents]
    return {
        "updates": updates,
        "orders": len(placed),
        "failed_users": len(errors),
        "errors": errors[:5],
        **window,
        "updates_per_s": updates / elapsed,
        "orders_per_s": len(placed) / elapsed,
        "step_latency": _latency([x for r in done for x in r.latencies]),
        "submit_to_confirmed": _latency([r.confirmed_at - r.submitted_at for r in placed]),
        "submit_to_worker_card": _latency(
            [cards[r.tag] - r.submitted_at for r in placed if r.tag in cards]
        ),
        "cards_received": len(cards),
        "until_last_card_s": last_card - window["start"],
        "messages_in_window": sum(len(v) for v in tg.arrivals.values()) - before,
        "messages_per_resident_max": max(per_chat, default=0),
    }


def _platform_bounds(r: JSON) -> JSON:
    """Lower bounds Telegram's limits put on the paced phase (the bot taking no time at all).

    Residents: their messages at 1/s per chat, all messages at 30/s. Last card: no card before
    the first resident's confirmation question (a resident's last message but two: "received"
    and the menu follow the card), then the cards at 1/s to the one worker chat.
    """
    per_chat = r["limits"]["per_chat_interval"]
    overall = r["limits"]["global_per_second"]
    per_resident = r["messages_per_resident_max"]
    resident_msgs = r["messages_in_window"] - r["cards_received"]
    return {
        "residents_done_s": max(resident_msgs / overall, (per_resident - 1) * per_chat),
        "last_card_s": max(
            r["messages_in_window"] / overall,
            (per_resident - 3) * per_chat + (r["cards_received"] - 1) * per_chat,
        ),
    }


def _profile_summary(path: Path, top: int = 30) -> list[JSON]:
    stats: Any = pstats.Stats(str(path))
    rows: list[JSON] = []
    for (filename, line, fname), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():
        rows.append(
            {
                "function": f"{_short(filename)}:{line}({fname})",
                "calls": calls,
                "tottime_s": round(tottime, 3),
                "cumtime_s": round(cumtime, 3),
            }
        )
    rows.sort(key=lambda r: r["tottime_s"], reverse=True)
    return rows[:top]


def _short(filename: str) -> str:
    for marker in ("site-packages/", f"{ROOT}/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


# --------------------------------------------------------------------------------- report
def _fmt(value: Any, spec: str = ".0f") -> str:
    return "–" if value is None else format(value, spec)


def _pair(latency: JSON | None) -> str:
    latency = latency or {}
    return f"{_fmt(latency.get('p50_ms'))} / {_fmt(latency.get('p99_ms'))}"


def summarise(results: list[JSON]) -> JSON:
    ok = {r["phase"]: r for r in results if "updates_per_s" in r and not r["tracemalloc"]}
    summary: JSON = {}
    echo, lifted, paced = ok.get("echo"), ok.get("gridbot-lifted"), ok.get("gridbot-paced")
    if echo and lifted:
        summary["ratio_lifted_vs_echo"] = lifted["updates_per_s"] / echo["updates_per_s"]
    for r in results:
        if "updates_per_s" not in r or r["tracemalloc"]:
            continue
        r["cpu_ms_per_update"] = 1000 * r["bot"]["cpu_s"] / max(1, r["updates"])
        r["loop_thread_busy"] = r["bot"]["loop_thread_cpu_s"] / max(1e-9, r["bot"]["wall_s"])
    if paced:
        paced["platform_bound"] = _platform_bounds(paced)
        paced["send_rate_msg_per_s"] = paced["messages_in_window"] / max(
            1e-9, paced["until_last_card_s"]
        )
    heap = {r["phase"]: r["bot"] for r in results if r["tracemalloc"] and "bot" in r}
    for name, stats in heap.items():
        if name in ok:
            ok[name]["heap_pass"] = {
                "heap_at_begin_mb": stats.get("heap_at_begin_mb"),
                "heap_peak_load_mb": stats.get("heap_peak_load_mb"),
                "max_rss_mb": stats["max_rss_mb"],
            }
    return summary


def report(results: list[JSON], summary: JSON, opts: Options, load: JSON) -> None:
    timed = [r for r in results if not r.get("tracemalloc")]
    print()
    db = "given database" if opts.database_url else opts.db
    print(
        f"Order intake benchmark {opts.stamp}: {os.cpu_count()} CPUs, db={db}, "
        f"load average before/after {load['before']:.2f}/{load['after']:.2f}"
    )
    if max(load["before"], load["after"]) > 0.5:
        print("  ! the machine was busy with other work: figures are noisy")
    header = (
        f"{'phase':<16}{'users':>6}{'updates':>8}{'secs':>7}{'upd/s':>8}{'orders/s':>9}"
        f"{'step p50 / p99 ms':>19}{'submit→card p50 / p99 ms':>26}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in timed:
        if "updates_per_s" not in r:
            print(f"{r['phase']:<16} FAILED: {r.get('error')}")
            continue
        print(
            f"{r['phase']:<16}{r['users']:>6}{r['updates']:>8}{r['elapsed_s']:>7.1f}"
            f"{r['updates_per_s']:>8.1f}{_fmt(r.get('orders_per_s'), '.2f'):>9}"
            f"{_pair(r['step_latency']):>19}{_pair(r.get('submit_to_worker_card')):>26}"
        )
    header = (
        f"{'phase':<16}{'bot CPU s':>10}{'ms/update':>10}{'loop busy':>10}{'RSS MB':>8}"
        f"{'heap idle→peak MB':>19}{'RSS traced MB':>14}{'loadgen CPU':>12}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in timed:
        if "updates_per_s" not in r:
            continue
        heap = r.get("heap_pass", {})
        heap_mb = (
            f"{_fmt(heap.get('heap_at_begin_mb'), '.1f')} → "
            f"{_fmt(heap.get('heap_peak_load_mb'), '.1f')}"
        )
        print(
            f"{r['phase']:<16}{r['bot']['cpu_s']:>10.1f}{r['cpu_ms_per_update']:>10.1f}"
            f"{100 * r['loop_thread_busy']:>9.0f}%{r['bot']['max_rss_mb']:>8.0f}"
            f"{heap_mb:>19}"
            f"{_fmt(heap.get('max_rss_mb')):>14}"
            f"{100 * r['loadgen_cpu_s'] / r['elapsed_s']:>11.0f}%"
        )
    print()
    for r in results:
        notes = []
        if "error" in r:
            notes.append(f"FAILED: {r['error']}")
        if r.get("failed_users"):
            notes.append(f"{r['failed_users']} users failed, e.g. {r['errors'][0]}")
        if r.get("fake", {}).get("too_many_requests"):
            notes.append(f"{r['fake']['too_many_requests']} × 429 from the fake")
        if "db" in r.get("bot", {}) and not r["tracemalloc"]:
            db = r["bot"]["db"]
            notes.append(f"orders stored {db['orders']}, outbox {db['outbox']}")
        if r.get("cards_received") is not None and not r["tracemalloc"]:
            notes.append(f"worker cards {r['cards_received']}/{r.get('orders')}")
        if r.get("log", {}).get("warnings_or_errors"):
            notes.append(f"{r['log']['warnings_or_errors']} log warnings: {r['log']['path']}")
        if r.get("profile"):
            notes.append(f"cProfile on (throughput not comparable): {r['profile']['path']}")
        if notes:
            suffix = " (tracemalloc pass)" if r.get("tracemalloc") else ""
            print(f"{r['phase']}{suffix}: " + "; ".join(notes))
    if "ratio_lifted_vs_echo" in summary:
        print(
            f"\nratio gridbot-lifted ÷ echo, updates/s: {summary['ratio_lifted_vs_echo']:.2f}"
            "  (goal ≥ 0.5)"
        )
    if summary.get("pair_ratios"):
        ratios = summary["pair_ratios"]
        print(
            f"ratio over {len(ratios)} alternating pairs: median {statistics.median(ratios):.2f}"
            f" (min {min(ratios):.2f}, max {max(ratios):.2f}): "
            + ", ".join(f"{x:.2f}" for x in ratios)
        )
    paced = next((r for r in timed if "platform_bound" in r and r["cards_received"]), None)
    if paced is not None:
        bound = paced["platform_bound"]
        print(
            f"gridbot-paced: residents done after {paced['elapsed_s']:.1f}s (Telegram's limits "
            f"allow {bound['residents_done_s']:.1f}s), last worker card after "
            f"{paced['until_last_card_s']:.1f}s (allow {bound['last_card_s']:.1f}s: 1 msg/s to "
            f"one chat); {paced['send_rate_msg_per_s']:.1f} msg/s sent of 30/s allowed"
        )
    for r in timed:
        if r.get("profile"):
            print(f"\ncProfile of {r['phase']} (bot process, event loop thread), top own time:")
            for row in r["profile"]["top"][:15]:
                print(
                    f"  {row['tottime_s']:>7.2f}s own {row['cumtime_s']:>8.2f}s cum "
                    f"{row['calls']:>9}  {row['function']}"
                )


async def parent_main(opts: Options) -> int:
    runs = [(name, False) for name in opts.phases]
    if opts.heap:
        runs += [(name, True) for name in opts.phases]
    # More echo / gridbot-lifted pairs, alternating: the ratio's spread on a shared machine.
    runs += [(name, False) for _ in range(opts.pairs - 1) for name in ("echo", "gridbot-lifted")]
    results: list[JSON] = []
    load_before = os.getloadavg()[0]
    for name, traced in runs:
        label = f"{name} (tracemalloc)" if traced else name
        print(f"… {label}", flush=True)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(600):
                results.append(await run_phase(name, opts, traced=traced))
        except Exception as err:
            message = f"{type(err).__name__}: {err}"[:500]
            results.append({"phase": name, "tracemalloc": traced, "error": message})
        print(f"  {time.perf_counter() - started:.1f}s", flush=True)
    load = {"before": load_before, "after": os.getloadavg()[0]}
    summary = summarise(results)
    pair_ratios = _pair_ratios(results)
    if len(pair_ratios) > 1:
        summary["pair_ratios"] = pair_ratios
    report(results, summary, opts, load)
    import sqlite3

    import telegram

    meta = {
        "stamp": opts.stamp,
        "commit": _git("rev-parse", "HEAD"),
        "dirty_files": len(_git("status", "--porcelain").splitlines()),
        "cpus": os.cpu_count(),
        "load_average": load,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "python_telegram_bot": telegram.__version__,
        "sqlite": sqlite3.sqlite_version,
        "options": {k: v for k, v in vars(opts).items()},
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"order_intake-{opts.stamp}.json"
    out.write_text(json.dumps({**meta, "summary": summary, "results": results}, indent=2))
    print(f"\nJSON: {out.relative_to(ROOT)}")
    return 0 if all("updates_per_s" in r and not r["failed_users"] for r in results) else 1


def _pair_ratios(results: Sequence[JSON]) -> list[float]:
    """gridbot-lifted ÷ echo updates/s for each lifted run and the echo run just before it."""
    ratios = []
    echo: JSON | None = None
    for r in results:
        if r.get("tracemalloc") or "updates_per_s" not in r:
            continue
        if r["phase"] == "echo":
            echo = r
        elif r["phase"] == "gridbot-lifted" and echo is not None:
            ratios.append(r["updates_per_s"] / echo["updates_per_s"])
            echo = None
    return ratios


def _git(*args: str) -> str:
    """Read-only git facts for the record ("" when git is unavailable)."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Gridbot order intake vs a bare python-telegram-bot echo bot "
        "(see bench/README.md)."
    )
    parser.add_argument(
        "--residents", type=int, default=200, help="users of echo and gridbot-lifted (200)"
    )
    parser.add_argument(
        "--paced-residents", type=int, default=20, help="residents of gridbot-paced (20)"
    )
    parser.add_argument(
        "--texts", type=int, default=ORDER_UPDATES, help="texts per echo user (10, as the flow)"
    )
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--phases", default=",".join(PHASES), help="comma-separated subset of " + ",".join(PHASES)
    )
    parser.add_argument(
        "--heap",
        action="store_true",
        help="run every phase once more under tracemalloc for the Python heap peak (slow)",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=1,
        help="after the phases, run echo and gridbot-lifted N-1 more times, alternating, and "
        "report each pair's ratio with the median (the machine is shared: one pair is noisy)",
    )
    parser.add_argument(
        "--profile", default="", help="comma-separated phases whose bot runs under cProfile"
    )
    parser.add_argument("--step-timeout", type=float, default=60.0, help="seconds per answer")
    parser.add_argument(
        "--database-url",
        help="run the gridbot phases on this existing database (kept; it must hold the demo "
        "community, e.g. bench/city_scale.py --intake imports it next to a generated city)",
    )
    parser.add_argument("--child", choices=("echo", "gridbot"), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, json.loads(args.config))
        return 0
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    profile = [p.strip() for p in args.profile.split(",") if p.strip()]
    unknown = set(phases + profile) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    opts = Options(
        residents=args.residents,
        paced_residents=args.paced_residents,
        texts=args.texts,
        db=args.db,
        heap=args.heap,
        profile=profile,
        step_timeout=args.step_timeout,
        stamp=datetime.now().strftime("%Y%m%d-%H%M%S"),
        phases=phases,
        pairs=args.pairs,
        database_url=args.database_url,
    )
    return asyncio.run(parent_main(opts))


if __name__ == "__main__":
    sys.exit(main())
