"""Accountability benchmark: a month's KPIs for a whole city and for one community, on
PostgreSQL, without and with the report indexes (migration 0011), in the same run.

The tree is Yunfu's shape scaled by ``--scale``: 64 streets, 996 communities, 6,128 grids and
14,392 micro-grids at scale 1 (21,580 grids under one city root). Every micro-grid has a
building, a resident, a worker and a member; it gets ``--orders`` orders a month for a year,
each with its event trail (submit, assign, accept, done, rate, close; some cancelled, reopened
or escalated), the points of rated orders, and a patrol run a day in the measured month.

Timed: :func:`bot.reports.kpi.build_report` (the figures of the month and the month before,
per child grid, members, hot spots) for the city (goal < 10 s) and for one community (goal
< 200 ms), first with the seven report indexes dropped ("naive"), then with them created and
the tables analysed ("indexed"). Each is the best of ``--repeat`` runs.

    .venv/bin/python bench/accountability.py --scale 0.02          # a small run (shared machine)
    .venv/bin/python bench/accountability.py --scale 1 --orders 15 # Yunfu scale: not here

The database is a fresh one created next to ``--database-url``'s and dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, text  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from bot.config import load_settings  # noqa: E402
from bot.reports.kpi import Period, build_report, load_scope  # noqa: E402
from models import (  # noqa: E402
    Building,
    Category,
    Community,
    Grid,
    Order,
    OrderEvent,
    PatrolPlan,
    PatrolRun,
    Person,
    PointsEntry,
    Role,
)
from models.db import make_engine, make_sessionmaker, upgrade  # noqa: E402

SH = ZoneInfo("Asia/Shanghai")
LEVELS = (64, 996, 6128, 14392)
REPORT_INDEXES = (
    ("orders", "ix_orders_created_at", "created_at"),
    ("orders", "ix_orders_grid_id_created_at", "grid_id, created_at"),
    ("order_event", "ix_order_event_created_at", "created_at"),
    ("order_event", "ix_order_event_order_id_created_at", "order_id, created_at"),
    ("order_event", "ix_order_event_actor_id_created_at", "actor_id, created_at"),
    ("points_entry", "ix_points_entry_created_at", "created_at"),
    ("visit_log", "ix_visit_log_order_id", "order_id"),
    ("patrol_run", "ix_patrol_run_due_at", "due_at"),
)
BATCH = 5000


async def batched(conn: Any, model: Any, rows: list[dict[str, Any]]) -> None:
    for i in range(0, len(rows), BATCH):
        await conn.execute(insert(model), rows[i : i + BATCH])


async def populate(url: str, scale: float, per_month: int, year: int) -> dict[str, int]:
    """The tree, people, a year of orders with events, points and a month of patrol runs."""
    rng = random.Random(7)
    engine = make_engine(url)
    await upgrade(engine)
    counts = [max(1, round(n * scale)) for n in LEVELS]
    grids: list[dict[str, Any]] = [
        {"id": 1, "community_id": 1, "code": "city", "name": "云浮市", "parent_id": None,
         "depth": 0, "path": "/1/"}
    ]
    parents = [grids[0]]
    for depth, n in enumerate(counts, 1):
        level = []
        for i in range(n):
            parent = parents[i * len(parents) // n]
            gid = len(grids) + 1
            row = {"id": gid, "community_id": 1, "code": f"g{depth}-{i}",
                   "name": f"{('街道', '社区', '网格', '微网格')[depth - 1]}{i}",
                   "parent_id": parent["id"],
                   "depth": depth, "path": f"{parent['path']}{gid}/"}
            grids.append(row)
            level.append(row)
        parents = level
    micro = parents
    people, roles, buildings, plans = [], [], [], []
    for n, g in enumerate(micro):
        base = 3 * n
        people += [{"id": base + k + 1, "name": f"{who}{n}", "points": 0}
                   for k, who in enumerate(("居民", "网格员", "党员"))]
        buildings.append({"id": n + 1, "code": f"b{n}", "grid_id": g["id"], "name": f"楼{n}",
                          "address": ""})
        roles += [
            {"person_id": base + 1, "grid_id": g["id"], "role": "resident",
             "building_id": n + 1, "room": "1-101"},
            {"person_id": base + 2, "grid_id": g["id"], "role": "worker",
             "building_id": None, "room": None},
            {"person_id": base + 3, "grid_id": g["id"], "role": "member",
             "building_id": None, "room": None},
        ]
        plans.append({"id": n + 1, "grid_id": g["id"], "person_id": base + 2,
                      "schedule": "0 9 * * *", "deadline_minutes": 120})
    orders, events, points, runs = [], [], [], []
    oid = eid = 0
    for month in range(1, 13):
        start = datetime(year, month, 1, tzinfo=SH)
        days = ((start + timedelta(days=32)).replace(day=1) - start).days
        for n, g in enumerate(micro):
            resident, worker, member = 3 * n + 1, 3 * n + 2, 3 * n + 3
            for _ in range(per_month):
                oid += 1
                at = start + timedelta(minutes=rng.randrange(days * 24 * 60))
                story = rng.random()
                trail = [(0, resident, "submit", "submitted", None)]
                if story < 0.05:
                    trail.append((rng.randint(1, 30), resident, "cancel", "cancelled", None))
                else:
                    t = rng.randint(5, 60)
                    trail.append((t, worker, "assign", "dispatched", None))
                    if story < 0.1:
                        t += rng.randint(30, 120)
                        trail.append((t, None, "auto_escalate", "escalated", None))
                        t += rng.randint(10, 60)
                        trail.append((t, worker, "handle", "accepted", None))
                    else:
                        t += rng.randint(5, 120)
                        trail.append((t, member, "accept", "accepted", None))
                    t += rng.randint(60, 4000)
                    trail.append((t, member, "done", "done", None))
                    if story > 0.95:
                        t += rng.randint(60, 600)
                        trail.append((t, resident, "reopen", "accepted", None))
                        t += rng.randint(60, 600)
                        trail.append((t, member, "done", "done", None))
                    stars = rng.choices((5, 4, 3, 2), (60, 25, 10, 5))[0]
                    t += rng.randint(30, 1440)
                    trail.append((t, resident, "rate", "confirmed", str(stars)))
                    if stars > 3:
                        trail.append((t, resident, "close", "closed", None))
                    points.append({"person_id": member, "order_id": oid, "points": 10,
                                   "reason": "order_done",
                                   "created_at": at + timedelta(minutes=t)})
                orders.append({"id": oid, "resident_id": resident, "building_id": n + 1,
                               "grid_id": g["id"], "handling_grid_id": g["id"],
                               "category": "repair", "description": "bench",
                               "status": trail[-1][3], "created_at": at,
                               "updated_at": at + timedelta(minutes=trail[-1][0])})
                for minutes, actor, action, to, note in trail:
                    eid += 1
                    events.append({"id": eid, "order_id": oid, "actor_id": actor,
                                   "action": action, "to_status": to, "note": note,
                                   "created_at": at + timedelta(minutes=minutes)})
    measured = datetime(year, 10, 1, tzinfo=SH)
    for n, _g in enumerate(micro):
        for day in range(31):
            due = measured + timedelta(days=day, hours=9)
            ok = rng.random() < 0.9
            runs.append({"plan_id": n + 1, "grid_id": micro[n]["id"], "person_id": 3 * n + 2,
                         "due_at": due, "deadline_at": due + timedelta(hours=2),
                         "status": "checked_in" if ok else "missed",
                         "checked_in_at": due + timedelta(minutes=30) if ok else None})
    async with engine.begin() as conn:
        await conn.execute(insert(Community), [{"id": 1, "code": "yunfu", "name": "云浮市",
                                                "level_names": "市/街道/社区/网格/微网格",
                                                "timezone": "Asia/Shanghai"}])
        await conn.execute(insert(Category), [{"code": "repair", "deadline_hours": 48,
                                               "points": 10}])
        await batched(conn, Grid, grids)
        await batched(conn, Building, buildings)
        await batched(conn, Person, people)
        await batched(conn, Role, roles)
        await batched(conn, PatrolPlan, plans)
        await batched(conn, Order, orders)
        await batched(conn, OrderEvent, events)
        await batched(conn, PointsEntry, points)
        await batched(conn, PatrolRun, runs)
    await engine.dispose()
    return {"grids": len(grids), "micro_grids": len(micro), "orders": len(orders),
            "events": len(events), "points": len(points), "patrol_runs": len(runs)}


async def timed(url: str, code: str | None, period: Period, repeat: int) -> dict[str, Any]:
    """Best and all times of build_report for the subtree ``code`` (None: the city)."""
    settings = load_settings(database_url=url, demo=False)
    engine = make_engine(url)
    times = []
    received = 0
    try:
        for _ in range(repeat):
            async with make_sessionmaker(engine)() as session:
                t0 = time.perf_counter()
                scope = await load_scope(session, code)
                report = await build_report(session, settings, scope, period, period.end)
                times.append(time.perf_counter() - t0)
                received = report.total.figures.received
    finally:
        await engine.dispose()
    return {"best_s": round(min(times), 4), "runs_s": [round(t, 4) for t in times],
            "received": received}


async def set_indexes(url: str, on: bool) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        for table, name, columns in REPORT_INDEXES:
            if on:
                sql = f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({columns})"
                await conn.execute(text(sql))
            else:
                await conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
        await conn.execute(text("ANALYZE"))
    await engine.dispose()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    admin_url = args.database_url
    name = f"gridbot_bench_{uuid.uuid4().hex[:8]}"
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        t0 = time.perf_counter()
        sizes = await populate(url, args.scale, args.orders, 2026)
        populate_s = time.perf_counter() - t0
        period = Period.month(2026, 10, SH)
        community = "g2-0"  # the first community (level 2)
        result: dict[str, Any] = {"scale": args.scale, "orders_per_micro_grid_month": args.orders,
                                  "sizes": sizes, "populate_s": round(populate_s, 1),
                                  "load_average": [round(x, 2) for x in os.getloadavg()]}
        for phase, on in (("naive", False), ("indexed", True)):
            await set_indexes(url, on)
            result[phase] = {
                "city": await timed(url, None, period, args.repeat),
                "community": await timed(url, community, period, args.repeat),
            }
        result["goals"] = {"city_s": 10, "community_s": 0.2}
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            await timed(url, None if args.profile == "city" else community, period, 1)
            prof.disable()
            pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
        return result
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.02,
                        help="fraction of Yunfu's 64/996/6,128/14,392 grids (default 0.02)")
    parser.add_argument("--orders", type=int, default=15,
                        help="orders per micro-grid per month, for a year (default 15)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (best is kept)")
    parser.add_argument("--database-url", default=os.environ.get(
        "GRIDBOT_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--out", help="also write the JSON report here")
    parser.add_argument("--profile", choices=("city", "community"),
                        help="profile one indexed run of the city or the community (stderr)")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    out = json.dumps(result, ensure_ascii=False, indent=2)
    print(out)
    if args.out:
        Path(args.out).write_text(out + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
