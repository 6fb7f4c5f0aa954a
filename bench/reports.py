"""Reports at city scale, old against new in one run: a month's KPIs for the whole city and
for one community (the Python replay of every order's events, as the reports computed them
before, against the aggregate SQL of :func:`bot.reports.kpi.cohort_figures`), the whole
report, the points standings (the city's sums filtered afterwards, as before, against the
subtree's rows only), the bulletins (one per head and admin: report, exit list, chart, xlsx),
the city's xlsx, and the process's peak RSS after each step.

The city and its year of orders come from ``bench/accountability.py``'s generator (Yunfu's
tree scaled by ``--scale``; ``--orders`` per micro-grid and month). The KPIs are measured
without the report indexes of migration 0011 ("naive") and with them ("indexed").

    .venv/bin/python bench/reports.py --scale 0.05            # ≈ 8 min on the shared machine
    .venv/bin/python bench/reports.py --scale 0.01 --bulletins 10

The database is a fresh one created next to ``--database-url``'s and dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from accountability import SH, populate, set_indexes  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine  # noqa: E402

from bot.config import load_settings  # noqa: E402
from bot.core.points import PointsStanding, standings  # noqa: E402
from bot.i18n import Translator  # noqa: E402
from bot.reports.bulletin import compose  # noqa: E402
from bot.reports.kpi import (  # noqa: E402
    Period,
    build_report,
    cohort_figures,
    exit_list,
    load_scope,
)
from bot.reports.ledger import write_xlsx  # noqa: E402
from bot.reports.replay import figures_by_replay  # noqa: E402
from models import Grid, Person, PointsEntry, Role  # noqa: E402
from models.db import make_engine, make_sessionmaker  # noqa: E402
from models.people import ROLE_MEMBER  # noqa: E402


def populate_sync(url: str, scale: float, orders: int) -> dict[str, int]:
    return asyncio.run(populate(url, scale, orders, 2026))


def rss_mb() -> float:
    """Peak RSS of this process so far (ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


async def old_standings(
    session: AsyncSession, grid_ids: list[int], start: datetime, end: datetime
) -> list[PointsStanding]:
    """The standings statement as it was: every person's sum over the period, then joined
    to the people of the grids."""
    eligible = (
        select(Role.person_id)
        .where(Role.grid_id.in_(grid_ids), Role.role.in_((ROLE_MEMBER,)))
        .distinct()
        .subquery()
    )
    totals = (
        select(PointsEntry.person_id, func.sum(PointsEntry.points).label("points"))
        .where(PointsEntry.created_at >= start, PointsEntry.created_at < end)
        .group_by(PointsEntry.person_id)
        .subquery()
    )
    earned = func.coalesce(totals.c.points, 0)
    rows = await session.execute(
        select(Person.id, Person.name, earned)
        .join(eligible, eligible.c.person_id == Person.id)
        .outerjoin(totals, totals.c.person_id == Person.id)
        .order_by(earned.desc(), Person.name, Person.id)
    )
    return [PointsStanding(person_id=p, name=n, points=int(v)) for p, n, v in rows]


class Bench:
    def __init__(self, url: str, repeat: int) -> None:
        self.url, self.repeat = url, repeat
        self.settings = load_settings(database_url=url, demo=False)
        self.engine = make_engine(url)
        self.sessions = make_sessionmaker(self.engine)
        self.period = Period.month(2026, 10, SH)
        self.tr = Translator.load(ROOT / "locales")

    async def best(
        self, fn: Callable[[AsyncSession], Awaitable[Any]], repeat: int | None = None
    ) -> tuple[float, Any]:
        times, result = [], None
        for _ in range(repeat or self.repeat):
            async with self.sessions() as session:
                t0 = time.perf_counter()
                result = await fn(session)
                times.append(time.perf_counter() - t0)
        return round(min(times), 4), result

    async def kpis(self, code: str | None, old: bool) -> dict[str, Any]:
        period, previous = self.period, self.period.previous()
        out: dict[str, Any] = {}

        async def sql(session: AsyncSession) -> int:
            scope = await load_scope(session, code)
            now = await cohort_figures(session, self.settings, scope, period)
            await cohort_figures(session, self.settings, scope, previous)
            return now.figures["*"].received

        async def report(session: AsyncSession) -> int:
            scope = await load_scope(session, code)
            r = await build_report(session, self.settings, scope, period, period.end,
                                   with_orders=False)
            return r.total.figures.received

        async def replay(session: AsyncSession) -> int:
            scope = await load_scope(session, code)
            now = await figures_by_replay(session, self.settings, scope, period)
            await figures_by_replay(session, self.settings, scope, previous)
            return now["*"].received

        out["order_kpis_sql_s"], out["received"] = await self.best(sql)
        out["report_sql_s"], _ = await self.best(report)
        if old:
            out["order_kpis_replay_s"], received = await self.best(replay, 1)
            assert received == out["received"], (received, out["received"])
        return out

    async def points(self, code: str | None) -> dict[str, Any]:
        async with self.sessions() as session:
            scope = await load_scope(session, code)
            ids = sorted(scope.ids())
        p = self.period

        async def new(session: AsyncSession) -> list[PointsStanding]:
            return await standings(session, ids, p.start, p.end, roles=(ROLE_MEMBER,))

        async def old(session: AsyncSession) -> list[PointsStanding]:
            return await old_standings(session, ids, p.start, p.end)

        new_s, a = await self.best(new)
        old_s, b = await self.best(old)
        assert a == b
        return {"new_s": new_s, "old_s": old_s, "people": len(a)}

    async def bulletins(self, per_level: int) -> dict[str, Any]:
        """One bulletin per grid above the micro-grids (their heads) and the root (the
        admin): report, exit list, chart and xlsx, timed for ``per_level`` grids of each
        level and extrapolated to the level's count."""
        async with self.sessions() as session:
            levels = (await session.execute(
                select(Grid.depth, func.count()).group_by(Grid.depth).order_by(Grid.depth)
            )).all()
            deepest = max(d for d, _ in levels)
            out: dict[str, Any] = {}
            total_est = 0.0
            for depth, count in levels:
                if depth == deepest:
                    continue  # micro-grids: no head
                codes = (await session.scalars(
                    select(Grid.code).where(Grid.depth == depth).order_by(Grid.id)
                    .limit(per_level))).all()
                times, parts = [], {"report": 0.0, "exit_list": 0.0, "compose": 0.0}
                for code in codes:
                    t0 = time.perf_counter()
                    scope = await load_scope(session, code)
                    report = await build_report(session, self.settings, scope, self.period,
                                                self.period.end)
                    t1 = time.perf_counter()
                    exits = await exit_list(session, self.settings, scope, self.period.end)
                    t2 = time.perf_counter()
                    compose(report, exits, self.tr, "zh_CN", self.settings)
                    t3 = time.perf_counter()
                    times.append(t3 - t0)
                    parts["report"] += t1 - t0
                    parts["exit_list"] += t2 - t1
                    parts["compose"] += t3 - t2
                mean = sum(times) / len(times)
                total_est += mean * count
                out[f"depth_{depth}"] = {
                    "grids": count, "timed": len(times), "mean_s": round(mean, 3),
                    "parts_mean_s": {k: round(v / len(times), 3) for k, v in parts.items()},
                    "level_estimate_s": round(mean * count, 1),
                }
            out["all_estimate_s"] = round(total_est, 1)
            out["peak_rss_mb"] = rss_mb()
            return out

    async def city_xlsx(self) -> dict[str, Any]:
        async with self.sessions() as session:
            t0 = time.perf_counter()
            scope = await load_scope(session, None)
            report = await build_report(session, self.settings, scope, self.period,
                                        self.period.end)
            t1 = time.perf_counter()
        data = write_xlsx(report, self.tr, "zh_CN")
        t2 = time.perf_counter()
        return {"report_with_orders_s": round(t1 - t0, 2), "xlsx_s": round(t2 - t1, 2),
                "rows": len(report.orders), "bytes": len(data), "peak_rss_mb": rss_mb()}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    admin_url = args.database_url
    name = f"gridbot_bench_{uuid.uuid4().hex[:8]}"
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    result: dict[str, Any] = {"scale": args.scale, "orders_per_micro_grid_month": args.orders}
    try:
        t0 = time.perf_counter()
        # In a child process: the generator holds the whole year in memory, and the peak
        # RSS reported is the reports' own.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            result["sizes"] = await asyncio.get_running_loop().run_in_executor(
                pool, populate_sync, url, args.scale, args.orders)
        result["populate_s"] = round(time.perf_counter() - t0, 1)
        result["rss_at_start_mb"] = rss_mb()
        bench = Bench(url, args.repeat)
        community = "g2-0"
        for phase, on in (("naive", False), ("indexed", True)):
            await set_indexes(url, on)
            result[phase] = {
                "community": await bench.kpis(community, old=on),
                "city": await bench.kpis(None, old=on),
            }
            print(phase, json.dumps(result[phase]), file=sys.stderr, flush=True)
        result["rss_after_kpis_mb"] = rss_mb()
        result["standings"] = {"community": await bench.points(community),
                               "city": await bench.points(None)}
        print("standings", json.dumps(result["standings"]), file=sys.stderr, flush=True)
        if args.bulletins:
            result["bulletins"] = await bench.bulletins(args.bulletins)
            print("bulletins", json.dumps(result["bulletins"]), file=sys.stderr, flush=True)
        result["city_xlsx"] = await bench.city_xlsx()
        result["peak_rss_mb"] = rss_mb()
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
        await bench.engine.dispose()
        return result
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--orders", type=int, default=15,
                        help="orders per micro-grid per month, for a year (default 15)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per SQL timing (best kept)")
    parser.add_argument("--bulletins", type=int, default=8,
                        help="bulletins timed per level (0: none)")
    parser.add_argument("--database-url", default=os.environ.get(
        "GRIDBOT_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--out", help="also write the JSON report here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    out = json.dumps(result, ensure_ascii=False, indent=2)
    print(out)
    if args.out:
        Path(args.out).write_text(out + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
