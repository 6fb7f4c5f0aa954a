"""Duty scheduler benchmark at Yunfu scale (see bench/README.md, section "Duties").

15,000 micro-grids, each with a 09:00 patrol plan and a worker on Telegram; 50,000 visit plans
(households paired with 10,000 members), all due at the same 09:00. Reports:

* scheduler start-up (reconcile of every job into the job store) time and RSS growth;
* time from 09:00 until every reminder is in the outbox;
* the event loop's worst stall during that burst, against a baseline (idle loop, same run);
* delivery rate of those reminders through the real python-telegram-bot to the fake Bot API
  server with ``enforce_limits=True``, against the configured limit, and its 429 count.

    .venv/bin/python bench/duties.py [--grids 15000] [--visits 50000] [--deliver-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, insert, select  # noqa: E402

from bot.app import Gridbot  # noqa: E402
from bot.config import load_settings  # noqa: E402
from bot.scheduler import DutyScheduler  # noqa: E402
from models import (  # noqa: E402
    Building,
    Community,
    Grid,
    Household,
    Identity,
    OutboxMessage,
    PatrolPlan,
    Person,
    Role,
    VisitPlan,
)
from tests.fakes.telegram_server import FakeTelegramServer  # noqa: E402

SH = ZoneInfo("Asia/Shanghai")


def rss_mb() -> float:
    """Peak resident set size of this process, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StallMonitor:
    """Measures how late a 5 ms ticker wakes up: the loop's worst stall."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, time.perf_counter() - before - 0.005)

    def __enter__(self) -> StallMonitor:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def populate(app: Gridbot, grids: int, visits: int, now: datetime) -> None:
    """Bulk rows: one community, micro-grids, a building and a worker each, members, plans."""
    nine = datetime(now.year, now.month, now.day, 9, 0, tzinfo=SH)
    async with app.sessionmaker() as session, session.begin():
        community = Community(code="yunfu", name="云浮市", timezone="Asia/Shanghai")
        session.add(community)
        await session.flush()
        root = Grid(community_id=community.id, code="yf", name="云浮", depth=0, path="/")
        session.add(root)
        await session.flush()
        root.path = f"/{root.id}/"
        cid, rid = community.id, root.id
    chunk = 5000
    async with app.sessionmaker() as session, session.begin():
        for start in range(0, grids, chunk):
            n = range(start, min(grids, start + chunk))
            await session.execute(
                insert(Grid),
                [
                    {
                        "community_id": cid,
                        "code": f"m{i}",
                        "name": f"微网格{i}",
                        "parent_id": rid,
                        "depth": 1,
                        "path": "",
                    }
                    for i in n
                ],
            )
        ids = dict(
            (await session.execute(select(Grid.code, Grid.id).where(Grid.depth == 1))).all()
        )
        await session.execute(
            Grid.__table__.update()
            .where(Grid.depth == 1)
            .values(
                path=func.concat(f"/{rid}/", Grid.id, "/")
                if app.engine.dialect.name == "postgresql"
                else f"/{rid}/" + func.cast(Grid.id, Grid.path.type) + "/"
            )
        )
        for start in range(0, grids, chunk):
            n = range(start, min(grids, start + chunk))
            await session.execute(
                insert(Building),
                [
                    {"code": f"b{i}", "grid_id": ids[f"m{i}"], "name": f"楼{i}", "address": ""}
                    for i in n
                ],
            )
        people = grids + visits // 5
        for start in range(0, people, chunk):
            n = range(start, min(people, start + chunk))
            await session.execute(
                insert(Person),
                [{"key": f"p{i}", "name": f"人{i}", "locale": "zh_CN", "points": 0} for i in n],
            )
        pids = dict((await session.execute(select(Person.key, Person.id))).all())
        bids = dict((await session.execute(select(Building.code, Building.id))).all())
        for start in range(0, people, chunk):
            n = range(start, min(people, start + chunk))
            await session.execute(
                insert(Identity),
                [
                    {
                        "person_id": pids[f"p{i}"],
                        "channel": "telegram",
                        "external_id": str(10**6 + i),
                        "chat_id": str(10**6 + i),
                        "window_pushes": 0,
                    }
                    for i in n
                ],
            )
            await session.execute(
                insert(Role),
                [
                    {
                        "person_id": pids[f"p{i}"],
                        "grid_id": ids[f"m{i % grids}"],
                        "role": "worker" if i < grids else "member",
                    }
                    for i in n
                ],
            )
        for start in range(0, grids, chunk):
            n = range(start, min(grids, start + chunk))
            await session.execute(
                insert(PatrolPlan),
                [
                    {
                        "code": f"pp{i}",
                        "grid_id": ids[f"m{i}"],
                        "person_id": pids[f"p{i}"],
                        "schedule": "0 9 * * *",
                        "deadline_minutes": 240,
                        "timezone": "Asia/Shanghai",
                        "active": True,
                    }
                    for i in n
                ],
            )
        for start in range(0, visits, chunk):
            n = range(start, min(visits, start + chunk))
            await session.execute(
                insert(Household),
                [
                    {
                        "code": f"h{i}",
                        "grid_id": ids[f"m{i % grids}"],
                        "building_id": bids[f"b{i % grids}"],
                        "kind": "elderly_alone",
                        "name": f"户{i}",
                        "address": "",
                        "notes": "",
                        "private": True,
                    }
                    for i in n
                ],
            )
        hids = dict((await session.execute(select(Household.code, Household.id))).all())
        for start in range(0, visits, chunk):
            n = range(start, min(visits, start + chunk))
            await session.execute(
                insert(VisitPlan),
                [
                    {
                        "household_id": hids[f"h{i}"],
                        "member_id": pids[f"p{grids + i // 5}"],
                        "frequency": ("weekly", "fortnightly", "monthly")[i % 3],
                        "starts_at": nine,
                        "timezone": "Asia/Shanghai",
                        "active": True,
                    }
                    for i in n
                ],
            )


async def legacy_burst(args: argparse.Namespace, tmp: Path, start: datetime) -> dict[str, object]:
    """The 09:00 burst as first built (100 reminders per transaction, one query per lookup,
    no yield between batches), on its own SQLite database, measured like the real one."""
    from bot.core.duties import DutyService

    async def no_prefetch(self: DutyService, plan_ids: list[int]) -> None:
        return None

    from bot.scheduler import LoopExecutor

    def submit_and_kick(self: LoopExecutor, job: Any, run_times: list[datetime]) -> None:
        with self._count_lock:
            self.outstanding += 1
        self.queue.append((job, run_times))
        self.kick()  # woken per job, as first built

    saved = (DutyService.prefetch_patrols, DutyService.prefetch_visits)
    saved_submit = LoopExecutor._do_submit_job
    DutyService.prefetch_patrols = no_prefetch  # type: ignore[method-assign]
    DutyService.prefetch_visits = no_prefetch  # type: ignore[method-assign]
    LoopExecutor._do_submit_job = submit_and_kick  # type: ignore[method-assign]
    now = [start]
    try:
        settings = load_settings(
            database_url=f"sqlite+aiosqlite:///{tmp / 'before.db'}",
            demo=False,
            secret_key="bench",
            media_dir=tmp / "media",
            scheduler_batch=100,
            scheduler_concurrency=8,
        )
        app = Gridbot(settings, clock=lambda: now[0])
        await app.prepare()
        await populate(app, args.grids, args.visits, now[0])
        duties = DutyScheduler(
            app.sessionmaker, settings, app.tr, clock=lambda: now[0], manual=True
        )
        await duties.start()
        with StallMonitor() as idle:
            await asyncio.sleep(1.0)
        now[0] = datetime(2027, 3, 1, 9, 0, tzinfo=SH)
        with StallMonitor() as burst:
            t0 = time.perf_counter()
            await duties.tick()
            took = time.perf_counter() - t0
        await duties.stop()
        await app.stop()
    finally:
        DutyService.prefetch_patrols, DutyService.prefetch_visits = saved  # type: ignore[method-assign]
        LoopExecutor._do_submit_job = saved_submit  # type: ignore[method-assign]
    return {
        "scheduler_batch": 100,
        "prefetch": False,
        "workers_woken": "per job",
        "baseline_loop_stall_ms": round(idle.worst * 1000, 1),
        "burst_to_outbox_s": round(took, 2),
        "burst_loop_stall_ms": round(burst.worst * 1000, 1),
        "burst_stall_vs_baseline": round(burst.worst / max(idle.worst, 1e-4), 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grids", type=int, default=15000)
    parser.add_argument("--visits", type=int, default=50000)
    parser.add_argument("--deliver-seconds", type=float, default=20.0)
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--compare",
        action="store_true",
        help="first run the same burst on a second database the way it was before the "
        "batch/prefetch work (batches of 100, no prefetch), for before/after in one run",
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gridbot-bench-"))
    url = args.database_url or f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    clock_now = [datetime(2027, 3, 1, 8, 0, tzinfo=SH)]
    results: dict[str, object] = {
        "grids": args.grids,
        "visit_plans": args.visits,
        "db": url.split(":")[0],
    }

    async with FakeTelegramServer(enforce_limits=True) as tg:
        settings = load_settings(
            database_url=url,
            demo=False,
            secret_key="bench",
            telegram_token=tg.token,
            telegram_api_url=tg.base_url,
            telegram_file_url=tg.file_url,
            media_dir=tmp / "media",
        )
        app = Gridbot(settings, clock=lambda: clock_now[0])
        await app.prepare()
        t0 = time.perf_counter()
        await populate(app, args.grids, args.visits, clock_now[0])
        results["populate_s"] = round(time.perf_counter() - t0, 1)

        with StallMonitor() as idle:
            await asyncio.sleep(1.0)
        results["baseline_loop_stall_ms"] = round(idle.worst * 1000, 1)

        rss0 = rss_mb()
        duties = DutyScheduler(
            app.sessionmaker, settings, app.tr, clock=lambda: clock_now[0], manual=True
        )
        with StallMonitor() as start_mon:
            t0 = time.perf_counter()
            await duties.start()
            results["startup_s"] = round(time.perf_counter() - t0, 2)
        results["startup_loop_stall_ms"] = round(start_mon.worst * 1000, 1)
        results["startup_rss_growth_mb"] = round(rss_mb() - rss0, 1)
        results["jobs_stored"] = len(await asyncio.to_thread(duties.store.ids))  # type: ignore[union-attr]

        if args.compare:
            results["before"] = await legacy_burst(args, tmp, clock_now[0])
        clock_now[0] = datetime(2027, 3, 1, 9, 0, tzinfo=SH)
        with StallMonitor() as burst:
            t0 = time.perf_counter()
            await duties.tick()
            results["burst_to_outbox_s"] = round(time.perf_counter() - t0, 2)
        results["burst_loop_stall_ms"] = round(burst.worst * 1000, 1)
        results["burst_stall_vs_baseline"] = round(burst.worst / max(idle.worst, 1e-4), 1)
        results["scheduler_batch"] = settings.scheduler_batch
        async with app.sessionmaker() as session:
            queued = await session.scalar(select(func.count()).select_from(OutboxMessage))
        results["reminders_in_outbox"] = queued
        results["reminders_expected"] = args.grids + args.visits
        results["reminders_per_s"] = round(int(queued or 0) / results["burst_to_outbox_s"], 0)  # type: ignore[operator]
        await duties.stop()

        # Delivery under Telegram's limits (real PTB against the fake server).
        for i in range(args.grids + args.visits // 5):
            tg.user(10**6 + i, f"u{i}")
        app.enable_telegram()
        limit = app.telegram.limits.global_per_second
        await app.start()
        t0 = time.perf_counter()
        await asyncio.sleep(args.deliver_seconds)
        elapsed = time.perf_counter() - t0
        sent = app.deliverer.sent_count
        await app.stop()
        results["delivery_limit_per_s"] = limit
        results["delivered_per_s"] = round(sent / elapsed, 2)
        results["delivery_vs_limit"] = round(sent / elapsed / limit, 3)
        results["telegram_429s"] = tg.too_many_requests
    print(json.dumps(results, ensure_ascii=False, indent=2))
    out = ROOT / "bench" / "results" / f"duties-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
