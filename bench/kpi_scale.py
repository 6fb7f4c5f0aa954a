"""KPIs at Yunfu scale on PostgreSQL: the order figures read from the ``order_facts`` rows
(migration 0020) against the naive event-log SQL, in the same run on the same database.

The city is generated in SQL (``INSERT … SELECT generate_series``, indexes dropped during the
load and rebuilt after): one root, 64 streets, 996 communities, 6,128 grids and 15,000
micro-grids (``--scale`` shrinks every level), each micro-grid with a building, a resident, a
worker and a member; ``--orders`` orders per micro-grid and month for 2026 with their event
trails (submit, assign, accept, done, rate, close; cancelled 5 %, escalated and handled 5 %,
reopened and done again 5 %, not rated and auto-closed 7 days later 5 %), receipts (the
channel) for 70 %, the points of the done orders and a patrol run per micro-grid and day of
October. Then ``order_facts`` is backfilled by the migration's code (``models.facts.rebuild``).

Measured for October 2026 (its cohort's orders submitted in October, the events up to its end;
the month before too, as the reports show it beside), ``--runs`` times each, p50 and p95:

* ``month_kpis``: :func:`bot.reports.kpi.cohort_figures` of the month alone;
* ``order_kpis``: ``cohort_figures`` of the month and the month before (with
  :func:`~bot.reports.kpi.load_scope`);
* ``report``: the whole :func:`~bot.reports.kpi.build_report` without the ledger's order rows
  (+ duties, members, points, hot spots);

each in the ``--phases`` asked for, in one run on one database: ``naive`` (every order from
its events), ``old`` (the ``order_facts`` rows, one session, the server's JIT: the path before
``jit = off`` and :mod:`bot.reports.snapshot`), ``sequential`` (facts, one session, no JIT)
and ``concurrent`` (facts, the independent parts on up to four connections sharing one
snapshot); the figures and members' work of every phase are asserted equal;

for the whole city and one community (``g2-0``), the process's peak RSS, the machine's load.

    .venv/bin/python bench/kpi_scale.py                     # Yunfu: 1,080,000 orders (≈ 5 + 6 min)
    .venv/bin/python bench/kpi_scale.py --scale 0.1 --runs 5   # a quick one

The database is a fresh one created next to ``--database-url``'s and dropped at the end
(``--keep`` keeps it and prints its URL; ``--reuse URL`` measures an existing one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine  # noqa: E402

from bot.config import load_settings  # noqa: E402
from bot.reports.kpi import (  # noqa: E402
    REPORT_SETTINGS,
    Period,
    build_report,
    cohort_figures,
    load_scope,
)
from bot.reports.snapshot import run_parts  # noqa: E402
from models.db import make_engine, make_sessionmaker, upgrade  # noqa: E402
from models.facts import rebuild  # noqa: E402

SH = ZoneInfo("Asia/Shanghai")
LEVELS = (64, 996, 6128, 15000)
#: Tables whose secondary indexes are dropped during the bulk load and built after it.
BULK = ("orders", "order_event", "outbox", "points_entry", "patrol_run")


def rss_mb() -> float:
    """Peak RSS of this process so far (ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _grids_sql(counts: list[int]) -> list[str]:
    out = ["INSERT INTO community (id, code, name, level_names, timezone, updated_at) VALUES "
           "(1, 'yunfu', '云浮市', '市/街道/社区/网格/微网格', 'Asia/Shanghai', now())",
           "INSERT INTO category (id, code, urgent, deadline_hours, points, sort) "
           "VALUES (1, 'repair', false, 48, 10, 0)",
           "INSERT INTO grid (id, community_id, code, name, parent_id, depth, path)"
           " VALUES (1, 1, 'city', '云浮市', NULL, 0, '/1/')"]
    offset, parent_off, parents = 2, 1, 1
    for depth, n in enumerate(counts, 1):
        name = ("街道", "社区", "网格", "微网格")[depth - 1]
        out.append(
            f"INSERT INTO grid (id, community_id, code, name, parent_id, depth, path)"
            f" SELECT {offset} + i, 1, 'g{depth}-' || i, '{name}' || i, p.id, {depth},"
            f" p.path || ({offset} + i) || '/'"
            f" FROM generate_series(0, {n - 1}) i"
            f" JOIN grid p ON p.id = {parent_off} + (i::bigint * {parents}) / {n}")
        parent_off, parents, offset = offset, n, offset + n
    return out


def _city_sql(micro_off: int, micro: int, per_month: int) -> list[str]:
    """People, buildings, roles, a year of orders with events, receipts, points, patrols."""
    m = f"generate_series(0, {micro - 1}) m"
    return [
        f"INSERT INTO building (id, code, grid_id, name, address) SELECT m + 1, 'b' || m,"
        f" {micro_off} + m, '楼' || m, '' FROM {m}",
        f"INSERT INTO person (id, name, points, created_at) SELECT 3 * m + k,"
        f" (ARRAY['居民', '网格员', '党员'])[k] || m, 0, now() FROM {m},"
        f" generate_series(1, 3) k",
        f"INSERT INTO role (person_id, grid_id, role, building_id, room, created_at)"
        f" SELECT 3 * m + k, {micro_off} + m, (ARRAY['resident', 'worker', 'member'])[k],"
        f" CASE WHEN k = 1 THEN m + 1 END, CASE WHEN k = 1 THEN '1-101' END, now()"
        f" FROM {m}, generate_series(1, 3) k",
        f"INSERT INTO patrol_plan (id, grid_id, person_id, schedule, deadline_minutes, timezone,"
        f" active, created_at, updated_at) SELECT m + 1, {micro_off} + m, 3 * m + 2,"
        f" '0 9 * * *', 120, 'Asia/Shanghai', true, now(), now()"
        f" FROM {m}",
        "SELECT setseed(0.7)",
        # One row per order with its story and step offsets (minutes after submission).
        f"CREATE UNLOGGED TABLE bench_story AS SELECT row_number() OVER () AS id, m,"
        f" make_timestamptz(2026, mo, 1, 0, 0, 0, 'Asia/Shanghai') + random()"
        f" * ((make_timestamptz(2026, mo, 1, 0, 0, 0, 'Asia/Shanghai') + interval '1 month')"
        f" - make_timestamptz(2026, mo, 1, 0, 0, 0, 'Asia/Shanghai')) AS at,"
        f" random() AS story, 5 + floor(random() * 56) AS a, 5 + floor(random() * 116) AS b,"
        f" 60 + floor(random() * 3941) AS c, 60 + floor(random() * 541) AS d,"
        f" 60 + floor(random() * 541) AS e, 30 + floor(random() * 1411) AS f,"
        f" random() AS s FROM generate_series(1, 12) mo, {m},"
        f" generate_series(1, {per_month}) k",
        "CREATE UNLOGGED TABLE bench_step AS SELECT id, m, at, story, a, a + b AS acc,"
        " a + b + c AS done1, a + b + c + d AS reopen, a + b + c + d + e AS done2,"
        " CASE WHEN story > 0.95 THEN a + b + c + d + e ELSE a + b + c END AS done,"
        " CASE WHEN s < 0.6 THEN 5 WHEN s < 0.85 THEN 4 WHEN s < 0.95 THEN 3 ELSE 2 END"
        " AS stars, f FROM bench_story",
        "ALTER TABLE bench_step ADD PRIMARY KEY (id)",
        # Escalated orders are handled by the grid above their micro-grid.
        f"INSERT INTO orders (id, resident_id, building_id, room, grid_id, handling_grid_id,"
        f" category, description, status, source, version, created_at, updated_at)"
        f" SELECT s.id, 3 * s.m + 1, s.m + 1, '1-101', {micro_off} + s.m,"
        f" CASE WHEN s.story >= 0.05 AND s.story < 0.1 THEN g.parent_id"
        f" ELSE {micro_off} + s.m END, 'repair', 'bench',"
        f" CASE WHEN s.story < 0.05 THEN 'cancelled' WHEN s.story >= 0.85 AND s.story < 0.9"
        f" THEN 'auto_closed' WHEN s.stars > 3 THEN 'closed' ELSE 'confirmed' END,"
        f" 'resident', 1, s.at, s.at FROM bench_step s JOIN grid g ON g.id = {micro_off} + s.m",
        # The trails, in the events' order.
        "INSERT INTO order_event (order_id, actor_id, action, from_status, to_status, note,"
        " created_at) SELECT id, actor, action, NULL, to_status, note,"
        " at + t * interval '1 minute' FROM ("
        " SELECT id, at, 0 AS t, 0 AS k, 3 * m + 1 AS actor, 'submit' AS action,"
        " 'submitted' AS to_status, NULL AS note FROM bench_step"
        " UNION ALL SELECT id, at, 1 + floor(a / 2), 1, 3 * m + 1, 'cancel', 'cancelled', NULL"
        " FROM bench_step WHERE story < 0.05"
        " UNION ALL SELECT id, at, a, 1, 3 * m + 2, 'assign', 'dispatched', NULL"
        " FROM bench_step WHERE story >= 0.05"
        " UNION ALL SELECT id, at, acc - 10, 2, NULL, 'auto_escalate', 'escalated', NULL"
        " FROM bench_step WHERE story >= 0.05 AND story < 0.1"
        " UNION ALL SELECT id, at, acc, 3, 3 * m + 2, 'handle', 'accepted', NULL"
        " FROM bench_step WHERE story >= 0.05 AND story < 0.1"
        " UNION ALL SELECT id, at, acc, 3, 3 * m + 3, 'accept', 'accepted', NULL"
        " FROM bench_step WHERE story >= 0.1"
        " UNION ALL SELECT id, at, done1, 4, 3 * m + 3, 'done', 'done', NULL"
        " FROM bench_step WHERE story >= 0.05"
        " UNION ALL SELECT id, at, reopen, 5, 3 * m + 1, 'reopen', 'accepted', NULL"
        " FROM bench_step WHERE story > 0.95"
        " UNION ALL SELECT id, at, done2, 6, 3 * m + 3, 'done', 'done', NULL"
        " FROM bench_step WHERE story > 0.95"
        " UNION ALL SELECT id, at, done + 7 * 1440, 7, NULL, 'auto_close', 'auto_closed', NULL"
        " FROM bench_step WHERE story >= 0.85 AND story < 0.9"
        " UNION ALL SELECT id, at, done + f, 7, 3 * m + 1, 'rate', 'confirmed', stars::text"
        " FROM bench_step WHERE story >= 0.05 AND NOT (story >= 0.85 AND story < 0.9)"
        " UNION ALL SELECT id, at, done + f, 8, 3 * m + 1, 'close', 'closed', NULL"
        " FROM bench_step WHERE story >= 0.05 AND NOT (story >= 0.85 AND story < 0.9)"
        " AND stars > 3"
        ") t ORDER BY id, t, k",
        "INSERT INTO outbox (channel, chat_id, payload, ref, status, attempts,"
        " created_at, not_before) SELECT CASE WHEN id % 10 < 5 THEN 'telegram' ELSE 'wechat'"
        " END, 'c', '{}', 'receipt:' || id, 'sent', 0, at, at FROM bench_step"
        " WHERE id % 10 < 7",
        "INSERT INTO points_entry (person_id, order_id, points, reason, created_at)"
        " SELECT 3 * m + 3, id, 10, 'order_done', at + done * interval '1 minute'"
        " FROM bench_step WHERE story >= 0.05",
        f"INSERT INTO patrol_run (plan_id, grid_id, person_id, due_at, deadline_at, status,"
        f" checked_in_at, created_at) SELECT m + 1, {micro_off} + m, 3 * m + 2, due,"
        f" due + interval '2 hours', CASE WHEN random() < 0.9 THEN 'checked_in'"
        f" ELSE 'missed' END, due + interval '30 minutes', due FROM {m},"
        f" generate_series(make_timestamptz(2026, 10, 1, 9, 0, 0, 'Asia/Shanghai'),"
        f" make_timestamptz(2026, 10, 31, 9, 0, 0, 'Asia/Shanghai'), interval '1 day') due",
        "UPDATE patrol_run SET checked_in_at = NULL WHERE status = 'missed'",
        "DROP TABLE bench_story",
        "DROP TABLE bench_step",
    ]


async def populate(url: str, scale: float, per_month: int) -> dict[str, Any]:
    """Schema by the migrations, the city by SQL, the facts by the migration's backfill."""
    counts = [max(1, round(n * scale)) for n in LEVELS]
    micro_off = 2 + sum(counts[:-1])
    engine = make_engine(url)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    await upgrade(engine)
    async with engine.begin() as conn:
        await conn.execute(text("SET LOCAL synchronous_commit = off"))
        await conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        indexes = (await conn.execute(text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
            " AND tablename = ANY(:t)"
            " AND indexname NOT IN (SELECT conname FROM pg_constraint)"), {"t": list(BULK)})).all()
        for name, _ in indexes:
            await conn.execute(text(f'DROP INDEX "{name}"'))
        for sql in _grids_sql(counts) + _city_sql(micro_off, counts[-1], per_month):
            await conn.execute(text(sql))
        timings["load_s"] = round(time.perf_counter() - t0, 1)
        for _, definition in indexes:
            await conn.execute(text(definition))
        for table in ("orders", "order_event", "outbox", "points_entry", "patrol_run",
                      "grid", "person", "role", "building", "patrol_plan", "category"):
            await conn.execute(text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                f" (SELECT coalesce(max(id), 1) FROM {table}))"))
        timings["indexes_s"] = round(time.perf_counter() - t0 - timings["load_s"], 1)
    t1 = time.perf_counter()
    async with engine.begin() as conn:
        facts = await conn.run_sync(rebuild)
    timings["facts_backfill_s"] = round(time.perf_counter() - t1, 1)
    async with engine.connect() as conn:
        await conn.execute(text("COMMIT"))
        await conn.execute(text("ANALYZE"))
        sizes = {t: (await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one()
                 for t in ("grid", "orders", "order_event", "order_facts", "outbox",
                           "points_entry", "patrol_run")}
    await engine.dispose()
    timings["populate_s"] = round(time.perf_counter() - t0, 1)
    assert facts == sizes["orders"], (facts, sizes)
    return {"sizes": sizes, "micro_grids": counts[-1], **timings}


def _stats(times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered) + 0.5) - 1))]
    return {"p50_s": round(statistics.median(ordered), 4), "p95_s": round(p95, 4),
            "min_s": round(ordered[0], 4), "runs": len(ordered)}


class Bench:
    def __init__(self, url: str, runs: int) -> None:
        self.runs = runs
        self.settings = load_settings(database_url=url, demo=False)
        self.engine: AsyncEngine = make_engine(url)
        self.sessions = make_sessionmaker(self.engine)
        self.period = Period.month(2026, 10, SH)

    async def timed(self, fn: Callable[[AsyncSession], Awaitable[Any]],
                    runs: int) -> tuple[dict[str, Any], Any]:
        times, result = [], None
        for _ in range(runs):
            async with self.sessions() as session:
                t0 = time.perf_counter()
                result = await fn(session)
                times.append(time.perf_counter() - t0)
        return _stats(times), result

    async def measure(self, code: str | None, phase: str, runs: int) -> dict[str, Any]:
        """``phase``: naive (event-log SQL, sequential), old (facts, one session, with the
        server's JIT: the path before bot.reports.snapshot and ``jit = off``), sequential
        (facts, one session, no JIT) or concurrent (facts, the parts on one snapshot)."""
        naive, sequential = phase == "naive", phase != "concurrent"
        jit = REPORT_SETTINGS.pop("jit") if phase in ("naive", "old") else None
        try:
            return await self._measure(code, naive, sequential, runs)
        finally:
            if jit is not None:
                REPORT_SETTINGS["jit"] = jit

    async def _measure(self, code: str | None, naive: bool, sequential: bool,
                       runs: int) -> dict[str, Any]:
        period = self.period

        async def month(session: AsyncSession) -> Any:
            scope = await load_scope(session, code)
            now = await cohort_figures(session, self.settings, scope, period, naive=naive)
            return now.figures["*"].to_json()

        async def kpis(session: AsyncSession) -> Any:
            scope = await load_scope(session, code)
            now, before = await run_parts(session, [
                lambda s: cohort_figures(s, self.settings, scope, period, naive=naive),
                lambda s: cohort_figures(s, self.settings, scope, period.previous(),
                                         naive=naive),
            ], concurrent=not sequential)
            return now.figures["*"].to_json(), before.figures["*"].to_json()

        async def report(session: AsyncSession) -> Any:
            scope = await load_scope(session, code)
            r = await build_report(session, self.settings, scope, period, period.end,
                                   with_orders=False, naive=naive, sequential=sequential)
            return [(row.code, row.figures.to_json(), row.previous.to_json())
                    for row in (r.total, *r.children)], [
                        (m.person_id, m.accepted, m.done, m.ratings, m.points, m.visits_due)
                        for m in r.members]

        out: dict[str, Any] = {}
        out["month_kpis"], _ = await self.timed(month, runs)
        out["order_kpis"], figures = await self.timed(kpis, runs)
        out["report"], rows = await self.timed(report, runs)
        out["received"] = figures[0]["received"]
        return {"timings": out, "figures": figures, "rows": rows}


async def measure(url: str, runs: int, community_runs: int,
                  phases: list[str]) -> dict[str, Any]:
    bench = Bench(url, runs)
    result: dict[str, Any] = {"month": bench.period.label, "phases": phases}
    try:
        for where, code, n in (("community", "g2-0", community_runs), ("city", None, runs)):
            got = {}
            for phase in phases:
                got[phase] = await bench.measure(code, phase, n)
                print(where, phase, json.dumps(got[phase]["timings"]), file=sys.stderr,
                      flush=True)
            # The same figures every way (every rate, count and time, both months, each
            # child, each member's work).
            first = got[phases[0]]
            for phase in phases[1:]:
                assert got[phase]["figures"] == first["figures"], (where, phase)
                assert got[phase]["rows"] == first["rows"], (where, phase)
            result[where] = {phase: got[phase]["timings"] for phase in got}
        result["peak_rss_mb"] = rss_mb()
    finally:
        await bench.engine.dispose()
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    phases = args.phases.split(",")
    if args.reuse:
        before = [round(x, 2) for x in os.getloadavg()]
        out = await measure(args.reuse, args.runs, args.community_runs, phases)
        out["load_average_before"] = before
        out["load_average"] = [round(x, 2) for x in os.getloadavg()]
        return out
    admin_url = args.database_url
    name = f"gridbot_kpi_{uuid.uuid4().hex[:8]}"
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    result: dict[str, Any] = {"scale": args.scale, "orders_per_micro_grid_month": args.orders,
                              "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    keep = args.keep
    try:
        result["populate"] = await populate(url, args.scale, args.orders)
        print("populate", json.dumps(result["populate"]), file=sys.stderr, flush=True)
        result["rss_after_populate_mb"] = rss_mb()
        result.update(await measure(url, args.runs, args.community_runs, phases))
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
        result["goals"] = {"city_s": 10, "community_s": 0.2}
        return result
    except BaseException:
        keep = False
        raise
    finally:
        if keep:
            print("kept:", url, file=sys.stderr)
        else:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of the 64/996/6,128/15,000 grids (default 1: Yunfu)")
    parser.add_argument("--orders", type=int, default=6,
                        help="orders per micro-grid per month, for a year (default 6)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of the city (p50/p95)")
    parser.add_argument("--community-runs", type=int, default=20,
                        help="timed runs of the community (p50/p95)")
    parser.add_argument("--database-url", default=os.environ.get(
        "GRIDBOT_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    parser.add_argument("--reuse", help="measure this existing database (no generation)")
    parser.add_argument("--out", help="also write the JSON report here")
    parser.add_argument("--phases", default="naive,old,sequential,concurrent",
                        help="naive (event-log SQL), old (facts, one session, server's JIT),"
                        " sequential (facts, one session, no JIT) and/or concurrent (facts,"
                        " the report's parts on one snapshot), in order")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    out = json.dumps(result, ensure_ascii=False, indent=2, default=str)
    print(out)
    if args.out:
        Path(args.out).write_text(out + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
