"""Gridbot at city scale on PostgreSQL (see bench/README.md, section "City scale").

On a generated Yunfu-sized tree (``bench/citygen.py``) in a fresh database (dropped after):

* generation time per table (COPY), and the real importer (``gridbot import``) timed on the
  same kind of files at one or two small scales, extrapolated;
* routing of a new order: ``new_order_target`` alone and the whole ``OrderService.submit``
  transaction (as the handler runs it: role, building, submit, commit) for N random residents,
  cold (new engine, first touch) and warm (the same residents again); the slowest statements;
* the database's size and its largest tables;
* the memory of one ``gridbot run`` (production settings, scheduler on) after start-up and
  after 1,000 more orders placed through the core;
* optionally ``bench/order_intake.py`` (echo and gridbot-lifted) against that database.

    .venv/bin/python bench/city_scale.py --scale 0.05                  # a few minutes
    nice -n 10 .venv/bin/python bench/city_scale.py --scale 1 --intake  # the full city
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import event, func, select, text, update  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from bench.citygen import CityKeys, fresh_database, generate, plan_city, write_files  # noqa: E402
from bot.core.notify import Notifier  # noqa: E402
from bot.core.orders import NewOrder, OrderService  # noqa: E402
from bot.core.responsibility import new_order_target  # noqa: E402
from bot.i18n import Translator  # noqa: E402
from models import Building, Grid, Order, OrderEvent, Person, Role  # noqa: E402
from models.db import make_engine, make_sessionmaker  # noqa: E402
from models.orders import CLOSED, OPEN_STATES  # noqa: E402
from models.people import ROLE_RESIDENT  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
GRIDBOT = ROOT / ".venv" / "bin" / "gridbot"
JSON = dict[str, Any]


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary_ms(values: Sequence[float]) -> JSON:
    """min / p50 / p90 / p99 / max of durations given in seconds, in milliseconds."""
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "min": round(min(ms), 2),
        "p50": round(statistics.median(ms), 2),
        "p90": round(pct(ms, 90), 2),
        "p99": round(pct(ms, 99), 2),
        "max": round(max(ms), 2),
    }


class StatementLog:
    """Times every statement the engine runs (while ``on``), by SQL text."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.on = False
        self.times: dict[str, list[float]] = defaultdict(list)
        self.count = 0
        #: Seconds spent in statements (sent, executed, answered) while ``on``.
        self.elapsed = 0.0
        sync = engine.sync_engine

        @event.listens_for(sync, "before_cursor_execute")
        def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            conn.info["t0"] = time.perf_counter()

        @event.listens_for(sync, "after_cursor_execute")
        def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if self.on:
                spent = time.perf_counter() - conn.info.pop("t0")
                self.times[statement].append(spent)
                self.elapsed += spent
                self.count += 1

    def slowest(self, top: int = 6) -> list[JSON]:
        """The statements with the highest p99."""
        rows = [
            {"sql": " ".join(sql.split())[:220], **summary_ms(ts)}
            for sql, ts in self.times.items()
        ]
        return sorted(rows, key=lambda r: r["p99"], reverse=True)[:top]


async def _members_one(maker: Any, keys: CityKeys, resident: tuple[int, int, str]) -> float:
    """``members_in_subtree`` of a resident's micro-grid (the assign list, the clocks'
    broadcast), in a fresh session (seconds)."""
    from bot.core.responsibility import members_in_subtree

    async with maker() as session:
        grid = await session.get(Grid, keys.building_grid[resident[1]])
        assert grid is not None
        t0 = time.perf_counter()
        await members_in_subtree(session, grid)
        return time.perf_counter() - t0


async def _route_one(maker: Any, keys: CityKeys, resident: tuple[int, int, str]) -> float:
    """``new_order_target`` for a resident's micro-grid, in a fresh session (seconds)."""
    async with maker() as session:
        grid = await session.get(Grid, keys.building_grid[resident[1]])
        assert grid is not None
        t0 = time.perf_counter()
        target = await new_order_target(session, grid)
        spent = time.perf_counter() - t0
        assert target is not None
    return spent


async def _submit_pass(
    engine: AsyncEngine,
    tr: Translator,
    sample: list[tuple[int, int, str]],
    tag: str,
    log: StatementLog | None = None,
    parts: dict[str, list[float]] | None = None,
    age: timedelta = timedelta(0),
) -> tuple[list[float], list[int]]:
    """One order per resident, each in its own transaction as the intake handler runs it.

    With ``log`` and ``parts``: per order, the time in statements (``db``, from sending to the
    answer, commit included) and this process's CPU time (``cpu``)."""
    maker = make_sessionmaker(engine)
    times, handlers = [], []
    for i, (person_id, _, _) in enumerate(sample):
        db0 = log.elapsed if log else 0.0
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        async with maker() as session, session.begin():
            person = await session.get(Person, person_id)
            role = await session.scalar(
                select(Role).where(Role.person_id == person_id, Role.role == ROLE_RESIDENT)
            )
            assert person is not None and role is not None and role.building_id is not None
            building = await session.get(Building, role.building_id)
            assert building is not None
            now = datetime.now(UTC) - age
            notifier = Notifier(session, tr, "zh_CN")
            order = await OrderService(session, notifier, tr, now).submit(
                person,
                building,
                role.room,
                NewOrder(category="repair", description=f"楼道灯不亮了 {tag}{i}"),
            )
            handlers.append(order.handling_grid_id)
        times.append(time.perf_counter() - t0)
        if log is not None and parts is not None:
            parts["db"].append(log.elapsed - db0)
            parts["cpu"].append(time.process_time() - cpu0)
    return times, handlers


async def explain(engine: AsyncEngine, keys: CityKeys) -> list[JSON]:
    """EXPLAIN (ANALYZE, BUFFERS) of the statements that routing a new order and listing the
    members who can take it run, as the product sends them (same SQL, same parameters): on a
    micro-grid, and the member list of a whole top-level grid (the largest subtree)."""
    from bot.core.responsibility import members_in_subtree

    captured: list[tuple[str, str, Any]] = []
    what = ""

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if what and statement.lstrip().upper().startswith("SELECT"):
            captured.append((what, statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    micro = keys.grid_ids[-1][len(keys.grid_ids[-1]) // 2]
    try:
        async with make_sessionmaker(engine)() as session:
            grid = await session.get(Grid, micro)
            top = await session.get(Grid, keys.grid_ids[0][0])
            assert grid is not None and top is not None
            what = "new_order_target(micro-grid)"
            await new_order_target(session, grid)
            what = "members_in_subtree(micro-grid)"
            await members_in_subtree(session, grid)
            what = "members_in_subtree(top grid)"
            await members_in_subtree(session, top)
            what = ""
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    out = []
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        for label, sql, params in captured:
            rows = await driver.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *(params or ()))
            out.append(
                {"what": label, "sql": " ".join(sql.split())[:300], "plan": [r[0] for r in rows]}
            )
    return out


#: The index ``--compare-index`` measures without, then with (migration 0015).
INDEX_NAME = "ix_grid_path_prefix"
INDEX_SQL = "CREATE INDEX ix_grid_path_prefix ON grid (path varchar_pattern_ops)"


async def set_index(url: str, present: bool) -> None:
    """Drop or (re)create the index under test, and refresh the statistics."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text(f"DROP INDEX IF EXISTS {INDEX_NAME}"))
            if present:
                await conn.execute(text(INDEX_SQL))
            await conn.execute(text("ANALYZE grid"))
    finally:
        await engine.dispose()


class Subject:
    """One database under test, with its statement log and its figures."""

    def __init__(self, label: str, url: str, keys: CityKeys, sample: list[Any]) -> None:
        self.label = label
        self.keys = keys
        self.sample = sample
        self.engine = make_engine(url)
        self.maker = make_sessionmaker(self.engine)
        self.log = StatementLog(self.engine)
        self.log.on = True
        self.figures: dict[str, list[float]] = defaultdict(list)
        self.handlers: list[int] = []


async def routing(
    url: str, keys: CityKeys, samples: int, seed: int, baseline: tuple[str, CityKeys] | None
) -> JSON:
    """(a): new_order_target and the whole submit transaction, cold then warm.

    With ``baseline`` (a tiny city in a database of its own), every step is run on it right
    after the same step on the city, resident by resident: both see the same machine load,
    so the difference is what the city's size costs."""
    rng = random.Random(seed)
    tr = Translator.load(ROOT / "locales", "zh_CN")
    n = min(samples, len(keys.residents))
    subjects = [Subject("city", url, keys, rng.sample(keys.residents, n))]
    if baseline is not None:
        small = baseline[1]
        subjects.append(
            Subject("tiny", baseline[0], small, [rng.choice(small.residents) for _ in range(n)])
        )
    result: JSON = {"residents": n}
    try:
        for phase in ("cold", "warm"):  # cold: new engine, first touch of each resident's rows
            for i in range(n):
                for sub in subjects:
                    sub.figures[f"route_{phase}"].append(
                        await _route_one(sub.maker, sub.keys, sub.sample[i])
                    )
                    sub.figures[f"members_{phase}"].append(
                        await _members_one(sub.maker, sub.keys, sub.sample[i])
                    )
        for sub in subjects:
            sub.log.times.clear()
            sub.figures["statements0"] = [sub.log.count]
        for phase in ("cold", "warm"):
            for i in range(n):
                for sub in subjects:
                    parts: dict[str, list[float]] = defaultdict(list)
                    wall, handlers = await _submit_pass(
                        sub.engine, tr, [sub.sample[i]], f"{phase[0]}{i}-", sub.log, parts
                    )
                    sub.figures[f"submit_{phase}"] += wall
                    sub.figures[f"submit_{phase}_in_statements"] += parts["db"]
                    sub.figures[f"submit_{phase}_client_cpu"] += parts["cpu"]
                    sub.handlers += handlers
            if phase == "cold":
                for sub in subjects:
                    sub.figures["statements_per_submit"] = [
                        (sub.log.count - sub.figures["statements0"][0]) / n
                    ]
                    sub.log.times.clear()
        for sub in subjects:
            out: JSON = {
                k: summary_ms(v)
                for k, v in sub.figures.items()
                if k not in ("statements0", "statements_per_submit")
            }
            out["statements_per_submit"] = round(sub.figures["statements_per_submit"][0], 1)
            out["slowest_statements_warm_submit"] = sub.log.slowest()
            micro = set(sub.keys.grid_ids[-1])
            out["handled_at_micro_grid_share"] = round(
                sum(1 for h in sub.handlers if h in micro) / len(sub.handlers), 3
            )
            out["explain"] = await explain(sub.engine, sub.keys)
            result[sub.label] = out
    finally:
        for sub in subjects:
            await sub.engine.dispose()
    return result


async def db_size(url: str) -> JSON:
    """(b): the database's size and its largest tables (with their indexes)."""
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("CHECKPOINT"))
            total = await conn.scalar(text("SELECT pg_database_size(current_database())"))
            rows = (
                await conn.execute(
                    text(
                        "SELECT c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid),"
                        " c.reltuples::bigint FROM pg_class c JOIN pg_namespace n"
                        " ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'"
                        " ORDER BY 2 DESC LIMIT 8"
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    mb = 2**20
    return {
        "database_mb": round(int(total or 0) / mb, 1),
        "tables": [
            {
                "table": name,
                "total_mb": round(t / mb, 1),
                "heap_mb": round(h / mb, 1),
                "rows": int(n),
            }
            for name, t, h, n in rows
        ],
    }


async def scans(url: str) -> dict[str, tuple[int, int, int]]:
    """Per table: sequential scans, rows they read, index scans (``pg_stat_user_tables``)."""
    await asyncio.sleep(1.5)  # backends flush their counters about once a second
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0)"
                        " FROM pg_stat_user_tables"
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    return {name: (int(a), int(b), int(c)) for name, a, b, c in rows}


def scan_delta(
    before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]
) -> list[JSON]:
    """Tables read sequentially between two :func:`scans`, most rows read first."""
    out: list[JSON] = []
    for name, (seq, tup, idx) in after.items():
        s0, t0, i0 = before.get(name, (0, 0, 0))
        if tup - t0 > 0:
            out.append(
                {
                    "table": name,
                    "seq_scans": seq - s0,
                    "rows_read": tup - t0,
                    "idx_scans": idx - i0,
                }
            )
    return sorted(out, key=lambda r: r["rows_read"], reverse=True)[:8]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss(pid: int) -> JSON:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": fields.get("VmRSS"), "peak_rss_mb": fields.get("VmHWM")}


async def instance_memory(url: str, keys: CityKeys, orders: int, seed: int) -> JSON:
    """(c): RSS of one ``gridbot run`` after start-up and after ``orders`` more orders."""
    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="gridbot-city-"))
    env = {
        **os.environ,
        "GRIDBOT_DATABASE_URL": url,
        "GRIDBOT_DEMO": "false",
        "GRIDBOT_WEBCHAT_ENABLED": "false",
        "GRIDBOT_SCHEDULER_ENABLED": "true",
        "GRIDBOT_WEB_PORT": str(port),
        "GRIDBOT_SECRET_KEY": "city-bench",
        "GRIDBOT_MEDIA_DIR": str(tmp / "media"),
        "GRIDBOT_QR_DIR": str(tmp / "qr"),
        "GRIDBOT_LOG_LEVEL": "WARNING",
        # The order clocks act within the run: a sweep every 10 s, broadcast after a minute.
        "GRIDBOT_SCHEDULER_SWEEP_SECONDS": "10",
        "GRIDBOT_ORDER_DISPATCH_MINUTES": "1",
        "GRIDBOT_QUIET_HOURS": "00:00-00:00",
    }
    for name in ("GRIDBOT_TELEGRAM_TOKEN", "GRIDBOT_WECHAT_APPID", "GRIDBOT_WECHAT_TOKEN"):
        env.pop(name, None)
    log_path = tmp / "gridbot.log"
    result: JSON = {
        "settings": "GRIDBOT_DEMO=false, web chat off, scheduler on (sweep 10 s, orders "
        "broadcast after 1 min, no quiet hours), no tokens"
    }
    # The earlier steps' orders are closed: the clocks would broadcast those too.
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                update(Order).where(Order.status.in_(OPEN_STATES)).values(status=CLOSED)
            )
    finally:
        await engine.dispose()
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            str(GRIDBOT), "run", env=env, stdout=log, stderr=log
        )
    try:
        t0 = time.perf_counter()
        async with httpx.AsyncClient() as client:
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"gridbot run exited: {log_path.read_text()[-2000:]}")
                try:
                    r = await client.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() - t0 > 300:
                    raise RuntimeError("gridbot run not healthy after 300 s")
                await asyncio.sleep(0.25)
        result["healthy_after_s"] = round(time.perf_counter() - t0, 2)
        await asyncio.sleep(10)  # let the scheduler's first passes settle
        result["after_startup"] = _rss(proc.pid)
        rng = random.Random(seed + 1)
        sample = [rng.choice(keys.residents) for _ in range(orders)]
        tr = Translator.load(ROOT / "locales", "zh_CN")
        engine = make_engine(url)
        try:
            # Placed two minutes ago: the instance's next sweep broadcasts every one of them
            # to the members of its micro-grid (members_in_subtree, offers, outbox rows).
            times, _ = await _submit_pass(engine, tr, sample, "m", age=timedelta(minutes=2))
            result["orders_placed"] = len(times)
            result["after_orders"] = _rss(proc.pid)
            t1 = time.perf_counter()
            broadcast = 0
            while time.perf_counter() - t1 < 600:
                await asyncio.sleep(2)
                async with engine.connect() as conn:
                    broadcast = int(
                        await conn.scalar(
                            select(func.count())
                            .select_from(OrderEvent)
                            .where(OrderEvent.action.in_(("auto_broadcast", "auto_escalate")))
                        )
                        or 0
                    )
                if broadcast >= len(times):
                    break
            result["clocks_acted_on"] = broadcast
            result["clocks_seconds"] = round(time.perf_counter() - t1, 1)
        finally:
            await engine.dispose()
        result["after_clocks"] = _rss(proc.pid)
        warnings = [
            line
            for line in log_path.read_text(errors="replace").splitlines()
            if " ERROR " in line or "Traceback" in line
        ]
        result["log_errors"] = warnings[:5]
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    return result


async def importer_timing(scale: float, seed: int) -> JSON:
    """The real importer (``gridbot import``) on generated files, in a fresh database."""
    plan = plan_city(scale, seed=seed)
    tmp = Path(tempfile.mkdtemp(prefix="gridbot-city-files-"))
    files = write_files(plan, tmp)
    result: JSON = {
        "scale": scale,
        "grids": len(plan.grids),
        "buildings": len(plan.buildings),
        "people": len(plan.people),
        "files_mb": round(sum(f.stat().st_size for f in files) / 2**20, 2),
    }
    async with fresh_database(label="cityimp") as url:
        env = {**os.environ, "GRIDBOT_DATABASE_URL": url, "GRIDBOT_DEMO": "false"}
        await asyncio.to_thread(
            subprocess.run, [str(GRIDBOT), "migrate"], env=env, check=True, capture_output=True
        )
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = await asyncio.to_thread(
            subprocess.run,
            [str(GRIDBOT), "import", *map(str, files)],
            env=env,
            capture_output=True,
            text=True,
        )
        result["seconds"] = round(time.perf_counter() - t0, 2)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        result["cpu_s"] = round(
            after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2
        )
        result["peak_rss_mb_children"] = round(after.ru_maxrss / 1024, 1)
        if done.returncode != 0:
            result["error"] = (done.stderr or done.stdout)[-1000:]
        # The same plan through the generator, in a database of its own, for comparison.
    async with fresh_database(label="citygen") as url:
        engine = make_engine(url)
        try:
            keys = await generate(engine, plan)
        finally:
            await engine.dispose()
        result["generator_seconds"] = keys.timings["total"] - keys.timings.get("migrate", 0)
    shutil.rmtree(tmp)
    return result


async def import_demo(url: str) -> None:
    """The demo community (xh-g1-m1 …) next to the city, for ``bench/order_intake.py``.

    The earlier steps' orders left their cards pending in the outbox, addressed to generated
    Telegram users: they are marked sent, or the intake's bot would spend its time sending
    them to the fake Bot API (which knows none of those chats)."""
    from bot.admin.importer import import_community
    from models.messaging import OUT_PENDING, OUT_SENT, OutboxMessage

    engine = make_engine(url)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.status == OUT_PENDING)
                .values(status=OUT_SENT)
            )
            demo = ROOT / "bot" / "demo"
            for name in ("community.yaml", "buildings.csv", "members.csv"):
                await import_community(session, demo / name)
    finally:
        await engine.dispose()


def order_intake(url: str | None, residents: int) -> JSON:
    """(d): ``bench/order_intake.py`` (echo, gridbot-lifted) with the bot on ``url`` (``None``:
    a fresh PostgreSQL database with the demo community only, the benchmark's own setting)."""
    before = set(RESULTS_DIR.glob("order_intake-*.json")) if RESULTS_DIR.exists() else set()
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "order_intake.py"),
            "--phases",
            "echo,gridbot-lifted",
            "--residents",
            str(residents),
            *(["--database-url", url] if url else ["--db", "postgresql"]),
        ],
        capture_output=True,
        text=True,
    )
    new = sorted(set(RESULTS_DIR.glob("order_intake-*.json")) - before)
    out: JSON = {"exit": done.returncode, "report": done.stdout[-3000:]}
    if new:
        data = json.loads(new[-1].read_text())
        out["json"] = str(new[-1].relative_to(ROOT))
        out["summary"] = data.get("summary")
        out["phases"] = [
            {
                k: r.get(k)
                for k in ("phase", "updates_per_s", "step_latency_ms", "cpu_ms_per_update")
            }
            | {"rss_mb": (r.get("bot") or {}).get("max_rss_mb")}
            for r in data.get("results", [])
        ]
    return out


async def run(args: argparse.Namespace) -> JSON:
    """Every part, in order; the database is dropped at the end unless ``--keep``."""
    out: JSON = {
        "stamp": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "scale": args.scale,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "load_average": {"start": list(os.getloadavg())},
    }
    for s in args.importer_scales:
        print(f"… importer at scale {s}", flush=True)
        out.setdefault("importer", []).append(await importer_timing(s, args.seed))
    async with fresh_database(keep=args.keep) as url:
        print(f"… generating scale {args.scale} into {url}", flush=True)
        t0 = time.perf_counter()
        plan = plan_city(args.scale, seed=args.seed)
        plan_s = time.perf_counter() - t0
        engine = make_engine(url)
        try:
            keys = await generate(engine, plan)
        finally:
            await engine.dispose()
        keys.timings["plan"] = round(plan_s, 2)
        del plan
        out["generate"] = {"counts": keys.counts, "seconds": keys.timings}
        out["db_size_generated"] = await db_size(url)
        print("… routing", flush=True)
        seen = await scans(url)
        async with fresh_database(label="citytiny") as tiny_url:
            tiny_engine = make_engine(tiny_url)
            try:
                tiny = await generate(tiny_engine, plan_city(0.001, seed=args.seed))
            finally:
                await tiny_engine.dispose()
            if args.compare_index:
                print(f"… routing without {INDEX_NAME}", flush=True)
                for u in (url, tiny_url):
                    await set_index(u, False)
                out["routing_without_index"] = await routing(
                    url, keys, max(1, args.samples // 4), args.seed + 7, (tiny_url, tiny)
                )
                for u in (url, tiny_url):
                    await set_index(u, True)
                print(f"… routing with {INDEX_NAME}", flush=True)
            out["routing"] = await routing(url, keys, args.samples, args.seed, (tiny_url, tiny))
        out["load_average"]["after_routing"] = list(os.getloadavg())
        seen, before = await scans(url), seen
        out["seq_scans_routing"] = scan_delta(before, seen)
        print("… instance memory", flush=True)
        out["memory"] = await instance_memory(url, keys, args.orders, args.seed)
        seen, before = await scans(url), seen
        out["seq_scans_instance"] = scan_delta(before, seen)
        if args.intake:
            print("… order intake on this database", flush=True)
            await import_demo(url)
            seen = await scans(url)
            out["intake"] = order_intake(url, args.intake_residents)
            out["seq_scans_intake"] = scan_delta(seen, await scans(url))
            print("… order intake on a fresh demo database", flush=True)
            out["intake_demo_only"] = order_intake(None, args.intake_residents)
        out["db_size_end"] = await db_size(url)
        engine = make_engine(url)
        try:
            async with make_sessionmaker(engine)() as session:
                out["orders_in_db"] = int(
                    await session.scalar(select(func.count()).select_from(Order)) or 0
                )
        finally:
            await engine.dispose()
    out["load_average"]["end"] = list(os.getloadavg())
    return out


def report(out: JSON) -> None:
    """A short human summary of ``out``."""
    g = out["generate"]
    print(f"\nscale {out['scale']}: " + ", ".join(f"{k} {v:,}" for k, v in g["counts"].items()))
    print("generate s: " + ", ".join(f"{k} {v}" for k, v in g["seconds"].items()))
    for imp in out.get("importer", []):
        print(
            f"importer at {imp['scale']}: {imp['people']:,} people, {imp['grids']:,} grids, "
            f"{imp['buildings']:,} buildings: {imp.get('seconds')} s "
            f"(cpu {imp.get('cpu_s')} s, generator {imp.get('generator_seconds'):.2f} s)"
            + (f" ERROR {imp['error']}" if imp.get("error") else "")
        )
    for label in ("city-index", "tiny-index", "city", "tiny"):
        section = "routing_without_index" if "-" in label else "routing"
        r = out.get(section, {}).get(label.split("-")[0])
        if r is None:
            continue
        print(f"{label}: (ms)")
        for k in (
            "route_cold",
            "route_warm",
            "members_cold",
            "members_warm",
            "submit_cold",
            "submit_cold_in_statements",
            "submit_cold_client_cpu",
            "submit_warm",
            "submit_warm_in_statements",
            "submit_warm_client_cpu",
        ):
            v = r[k]
            print(
                f"  {k:<26} min {v['min']:>6} p50 {v['p50']:>6} p90 {v['p90']:>6} "
                f"p99 {v['p99']:>6} max {v['max']:>7}"
            )
        print(f"  statements per submit: {r['statements_per_submit']}")
        for s in r["slowest_statements_warm_submit"][:3]:
            print(f"  p99 {s['p99']} ms ×{s['n']}: {s['sql'][:110]}")
    for label in ("db_size_generated", "db_size_end"):
        d = out[label]
        tables = ", ".join(f"{t['table']} {t['total_mb']}" for t in d["tables"][:5])
        print(f"{label}: {d['database_mb']} MB ({tables})")
    m = out["memory"]
    print(
        f"gridbot run: healthy after {m.get('healthy_after_s')} s, {m.get('after_startup')}, "
        f"after {m.get('orders_placed')} orders {m.get('after_orders')}, after the clocks "
        f"acted on {m.get('clocks_acted_on')} ({m.get('clocks_seconds')} s) "
        f"{m.get('after_clocks')}"
    )
    for label in ("intake", "intake_demo_only"):
        if label in out:
            print(f"{label}:")
            for ph in out[label].get("phases", []):
                print(f"  {json.dumps(ph, ensure_ascii=False)[:300]}")
            print(f"  {json.dumps(out[label].get('summary'), ensure_ascii=False)[:300]}")
    for label in ("seq_scans_routing", "seq_scans_instance", "seq_scans_intake"):
        if out.get(label):
            print(f"{label}: {out[label]}")
    print("load average:", out["load_average"])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description="Gridbot at city scale on PostgreSQL.")
    parser.add_argument("--scale", type=float, default=0.05, help="fraction of Yunfu (0.05)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--samples", type=int, default=2000, help="residents routed (2000)")
    parser.add_argument("--orders", type=int, default=1000, help="orders for the memory step")
    parser.add_argument(
        "--importer-scales",
        default="",
        help="comma-separated scales to time `gridbot import` at (e.g. 0.01,0.05); none default",
    )
    parser.add_argument("--intake", action="store_true", help="also run bench/order_intake.py")
    parser.add_argument("--intake-residents", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument(
        "--compare-index",
        action="store_true",
        help=f"measure routing without {INDEX_NAME} first (a quarter of --samples), then with",
    )
    args = parser.parse_args(argv)
    try:
        args.importer_scales = [float(s) for s in args.importer_scales.split(",") if s.strip()]
    except ValueError:
        parser.error("--importer-scales: numbers separated by commas")
    if not 0 < args.scale <= 10 or any(not 0 < s <= 1 for s in args.importer_scales):
        parser.error("scales must be in (0, 10] (importer: (0, 1])")
    if args.samples < 1 or args.orders < 0:
        parser.error("--samples must be positive, --orders not negative")
    out = asyncio.run(run(args))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"city_scale-{out['stamp']}.json"
    path.write_text(json.dumps(out, indent=2, ensure_ascii=False))
    report(out)
    print(f"\nJSON: {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
