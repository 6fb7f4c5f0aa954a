"""Console benchmark: the orders page and the overview on PostgreSQL at a city's scale, with
baselines measured in the same run.

The data is the accountability benchmark's (``bench/accountability.py``: Yunfu's tree scaled
by ``--scale``, a resident, worker and member per micro-grid, a year of 2026 orders with their
event trails). A city admin (role on the root) and a community head (role on the first
community) are added, each with a console session; the requests go through the console's
Starlette routes in process (session check, scoped queries, template), over httpx's ASGI
transport, on the clock 2026-10-20 10:00 (Shanghai).

Timed, p50/p95 of ``--requests`` requests each:

- the orders page (50 rows, newest first) for the admin and the head: the first page, a page
  200 pages deep (keyset: ``id < last id``), filtered by category and by overdue;
- baseline: the same deep page with ``OFFSET`` (the usual paging), the id query alone;
- the overview (KPIs of this month and last, grids below floors) for the head and the admin,
  from the kept reports (``bot.console.kept``): "warm" (a kept report of the subtree, as the
  background job leaves it), "stale" (kept but older than the cadence: shown while this
  instance recomputes it) and "cold" (nothing kept: the page waits ``console_report_wait_ms``
  and says the figures are being computed; the computation that follows is timed too, as
  "figures ready", and waited for before the next request);
- baseline, same run: the report computed for the request as the overview did before
  (``Console.report`` after its memory is cleared: the computation alone, no page);
- the background job's run (``bot.console.kept.refresh``) over the two viewers' grids.

    .venv/bin/python bench/console.py --scale 0.01             # a small run (shared machine)
    .venv/bin/python bench/console.py --scale 1 --orders 15    # Yunfu scale: not here

The database is a fresh one created next to ``--database-url``'s and dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.routing import Mount  # noqa: E402

from bench.accountability import populate, set_indexes  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.console import auth, kept  # noqa: E402
from bot.console.web import COOKIE, PREFIX, Console  # noqa: E402
from bot.i18n import Translator  # noqa: E402
from bot.media import MediaStore  # noqa: E402
from bot.reports.kpi import load_scope  # noqa: E402
from models import ConsoleReport, Grid, Order, Person, Role  # noqa: E402
from models.db import make_engine, make_sessionmaker  # noqa: E402

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 10, 20, 10, 0, tzinfo=SH)
PAGE = 50
DEEP = 200  # pages


def quantiles(times: list[float]) -> dict[str, float]:
    """p50 and p95 (nearest rank) in milliseconds."""
    ordered = sorted(times)

    def rank(p: float) -> float:
        return ordered[max(0, min(len(ordered) - 1, int(-(-p * len(ordered) // 1)) - 1))]

    return {"p50_ms": round(rank(0.5) * 1000, 1), "p95_ms": round(rank(0.95) * 1000, 1),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 1)}


async def measure(n: int, call: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    await call()  # warm the connection pool and caches of the database
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t0)
    return quantiles(times)


async def overviews(
    console: Console, settings: Any, client: httpx.AsyncClient, grid_code: str, requests: int
) -> dict[str, Any]:
    """The overview of ``grid_code`` (the viewer's grid): computed for the request as before
    (the baseline), cold (nothing kept), warm (kept) and stale (kept, older than the cadence)."""
    period = kept.month_of(NOW, settings)
    sessionmaker = console.sessionmaker
    async with sessionmaker() as session:
        grid_id = await session.scalar(select(Grid.id).where(Grid.code == grid_code))
    ready: list[float] = []
    times: dict[str, list[float]] = {"cold": [], "stale": []}

    async def settle() -> None:
        """Wait for this instance's background computation (untimed: "figures ready")."""
        t0 = time.perf_counter()
        await asyncio.gather(*console._tasks)
        ready.append(time.perf_counter() - t0)

    async def timed(label: str) -> str:
        t0 = time.perf_counter()
        answer = await client.get("/console/")
        times[label].append(time.perf_counter() - t0)
        assert answer.status_code == 200
        return answer.text

    async def cold() -> None:
        async with sessionmaker() as session, session.begin():
            await session.execute(ConsoleReport.__table__.delete().where(
                ConsoleReport.grid_id == grid_id))
        await timed("cold")
        await settle()

    async def stale() -> None:
        async with sessionmaker() as session, session.begin():
            await session.execute(ConsoleReport.__table__.update().where(
                ConsoleReport.grid_id == grid_id).values(computed_at=NOW - timedelta(hours=1)))
        assert "computed-at" in await timed("stale")
        await settle()

    async def on_request() -> None:
        console._reports.clear()
        async with sessionmaker() as session:
            scope = await load_scope(session, grid_code)
            await console.report(session, scope, period)

    async def warm() -> None:
        answer = await client.get("/console/")
        assert answer.status_code == 200 and "computed-at" in answer.text

    few = max(3, requests // 5)
    out: dict[str, Any] = {
        "baseline_overview_computed_for_the_request": await measure(few, on_request)}
    for _ in range(few + 1):  # the first one warms the pool
        await cold()
    out["overview_cold_nothing_kept"] = quantiles(times["cold"][1:])
    out["figures_ready_after_cold_s"] = round(statistics.median(ready[1:]), 2)
    out["overview_warm_kept"] = await measure(requests, warm)
    for _ in range(few + 1):
        await stale()
    out["overview_stale_kept_recomputing"] = quantiles(times["stale"][1:])
    return out


async def add_viewers(url: str) -> dict[str, str]:
    """A city admin and a community head, each signed in: name → session cookie."""
    engine = make_engine(url)
    cookies = {}
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            root = await session.scalar(select(Grid).where(Grid.code == "city"))
            community = await session.scalar(select(Grid).where(Grid.code == "g2-0"))
            assert root is not None and community is not None
            # populate() gave people explicit ids (the sequence did not move).
            next_id = int(await session.scalar(select(func.max(Person.id))) or 0)
            for name, grid, role in (("admin", root, "admin"), ("head", community, "head")):
                next_id += 1
                person = Person(id=next_id, name=f"bench-{name}")
                session.add(person)
                await session.flush()
                session.add(Role(person_id=person.id, grid_id=grid.id, role=role))
                opened = await auth.open_session(session, person.id, NOW)
                cookies[name] = opened.cookie
    finally:
        await engine.dispose()
    return cookies


async def run(args: argparse.Namespace) -> dict[str, Any]:
    admin_url = args.database_url
    name = args.reuse or f"gridbot_bench_{uuid.uuid4().hex[:8]}"
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    if not args.reuse:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        t0 = time.perf_counter()
        sizes: dict[str, Any] = {"reused": name}
        if not args.reuse:
            sizes = await populate(url, args.scale, args.orders, 2026)
            await set_indexes(url, True)
        cookies = await add_viewers(url)
        populate_s = time.perf_counter() - t0
        settings = load_settings(database_url=url, demo=False, console_enabled=True,
                                 secret_key="bench", console_idle_minutes=24 * 60)
        engine = make_engine(url)
        console = Console(make_sessionmaker(engine), settings,
                          Translator.load(settings.locales_dir), clock=lambda: NOW,
                          media=MediaStore(Path("/nonexistent")))
        app = Starlette(routes=[Mount(PREFIX, routes=console.routes())])
        result: dict[str, Any] = {
            "scale": args.scale, "orders_per_micro_grid_month": args.orders, "sizes": sizes,
            "populate_s": round(populate_s, 1), "requests": args.requests,
        }
        try:
            async with engine.connect() as conn:
                newest = int((await conn.execute(select(Order.id).order_by(
                    Order.id.desc()).offset(DEEP * PAGE).limit(1))).scalar_one())
            for who, cookie in cookies.items():
                client = httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://bench",
                    cookies={COOKIE: cookie},
                )
                async with client:
                    async def get(path: str, client: httpx.AsyncClient = client) -> None:
                        answer = await client.get(path)
                        assert answer.status_code == 200, (path, answer.status_code)

                    pages = {
                        "orders_first_page": lambda: get("/console/orders"),
                        f"orders_page_{DEEP}_keyset": lambda: get(
                            f"/console/orders?before={newest}"),
                        "orders_by_category": lambda: get("/console/orders?category=repair"),
                        "orders_overdue": lambda: get("/console/orders?overdue=1"),
                    }
                    result[who] = {}
                    for label, call in pages.items():
                        result[who][label] = await measure(args.requests, call)
                    result[who].update(await overviews(
                        console, settings, client, "city" if who == "admin" else "g2-0",
                        args.requests))
            # The background job's run over the viewers' grids (nothing kept).
            async with console.sessionmaker() as session, session.begin():
                await session.execute(ConsoleReport.__table__.delete())
            t0 = time.perf_counter()
            computed = await kept.refresh(console.sessionmaker, settings, lambda: NOW)
            result["background_run"] = {"overviews": computed,
                                        "seconds": round(time.perf_counter() - t0, 2)}
            # The baseline: the deep page's ids by OFFSET (the id query alone, the same rows).
            async with engine.connect() as conn:
                async def offset() -> None:
                    await conn.execute(select(Order.id).order_by(Order.id.desc())
                                       .offset(DEEP * PAGE).limit(PAGE + 1))

                async def keyset() -> None:
                    await conn.execute(select(Order.id).where(Order.id < newest)
                                       .order_by(Order.id.desc()).limit(PAGE + 1))

                result["baseline_query"] = {
                    f"page_{DEEP}_offset": await measure(args.requests, offset),
                    f"page_{DEEP}_keyset": await measure(args.requests, keyset),
                }
        finally:
            await engine.dispose()
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
        result["goal_p95_ms"] = 200
        return result
    finally:
        if args.keep or args.reuse:
            print(f"kept database {name}", file=sys.stderr)
        else:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.01,
                        help="fraction of Yunfu's 64/996/6,128/14,392 grids (default 0.01)")
    parser.add_argument("--orders", type=int, default=15,
                        help="orders per micro-grid per month, for a year (default 15)")
    parser.add_argument("--requests", type=int, default=30, help="requests per page timed")
    parser.add_argument("--database-url", default=os.environ.get(
        "GRIDBOT_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--keep", action="store_true",
                        help="keep the database (its name on stderr)")
    parser.add_argument("--reuse", metavar="NAME", help="time a kept database again (no populate)")
    parser.add_argument("--out", help="also write the JSON report here")
    args = parser.parse_args()
    before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    result = asyncio.run(run(args))
    result["uptime_before"] = before
    result["uptime_after"] = subprocess.run(["uptime"], capture_output=True,
                                            text=True).stdout.strip()
    out = json.dumps(result, ensure_ascii=False, indent=2)
    print(out)
    if args.out:
        Path(args.out).write_text(out + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
