"""Duty scheduler benchmark at Yunfu scale (see bench/README.md, section "Duties").

15,000 micro-grids, each with a 09:00 patrol plan and a worker on Telegram; 50,000 visit plans
(households paired with 10,000 members), all due at the same 09:00. Reports:

* scheduler start-up (reconcile of every job into the job store) time and RSS growth;
* time from 09:00 until every reminder is in the outbox;
* the event loop's worst stall during that burst, against a baseline (idle loop, same run),
  with what explains the late ticks: garbage collections (``gc.callbacks``), the loop thread's
  time waiting for a CPU (``/proc/.../schedstat``: other processes on the machine), and, with
  ``--stall-stacks``, the stacks of every thread sampled while the loop is late;
* delivery rate of those reminders through the real python-telegram-bot to the fake Bot API
  server with ``enforce_limits=True``, against the configured limit, and its 429 count.

    .venv/bin/python bench/duties.py [--grids 15000] [--visits 50000] [--deliver-seconds 20]
    .venv/bin/python bench/duties.py --grids 1500 --visits 5000 --compare DIR   # DIR: older tree
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import resource
import sys
import tempfile
import threading
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
#: The code under test: this tree, or another one (``--code DIR``, set by ``--compare``).
CODE = Path(sys.argv[sys.argv.index("--code") + 1]).resolve() if "--code" in sys.argv else ROOT
sys.path.insert(0, str(CODE))

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


def load_average() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (shared machine: read figures with it)."""
    return [round(x, 2) for x in os.getloadavg()]


def rss_now_mb() -> float:
    """Resident set size of this process now, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_mb() -> float:
    """Peak resident set size of this process, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class GcLog:
    """Every garbage collection while installed: generation, pause, thread (``gc.callbacks``).

    A collection holds the GIL from start to end, whichever thread triggered it: the event loop
    cannot run during it."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, int, float, str]] = []  # (start, generation, secs, thread)
        self._start: dict[int, float] = {}

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        tid = threading.get_ident()
        if phase == "start":
            self._start[tid] = now
        elif tid in self._start:
            began = self._start.pop(tid)
            self.pauses.append(
                (began, info["generation"], now - began, threading.current_thread().name)
            )

    def __enter__(self) -> GcLog:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self, since: float, until: float) -> dict[str, object]:
        """Collections that started in ``[since, until]``: count and worst pause by generation."""
        out: dict[str, object] = {}
        for gen in (0, 1, 2):
            pauses = [p for s, g, p, _ in self.pauses if g == gen and since <= s <= until]
            if pauses:
                out[f"gen{gen}"] = {
                    "count": len(pauses),
                    "worst_ms": round(max(pauses) * 1000, 1),
                    "total_ms": round(sum(pauses) * 1000, 1),
                }
        return out


GC_LOG = GcLog()


class StallMonitor:
    """Measures how late a 5 ms ticker wakes up: the loop's worst stall.

    With ``stacks=True`` a watchdog thread also samples, every 2 ms, the stacks of the loop's
    thread and of every other thread while the ticker is more than ``threshold`` late (the
    stall's cause: the loop running something long, or another thread holding the GIL)."""

    def __init__(self, stacks: bool = False, threshold: float = 0.02) -> None:
        self.worst = 0.0
        self.worst_own = 0.0  # lateness less the loop thread's wait for a CPU (run queue)
        self.late = 0  # ticks later than the threshold
        self.late_ticks: list[tuple[float, float, float, float, float]] = []
        self.stacks = stacks
        self.threshold = threshold
        self.samples: collections.Counter[str] = collections.Counter()
        self.started = self.ended = 0.0
        self._task: asyncio.Task[None] | None = None
        self._beat = 0.0
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._loop_thread = threading.get_ident()

    async def _run(self) -> None:
        fd = _schedstat_fd()
        try:
            while True:
                cpu0, wait0 = _schedstat(fd)
                before = self._beat = time.perf_counter()
                await asyncio.sleep(0.005)
                after = time.perf_counter()
                lateness = after - before - 0.005
                self.worst = max(self.worst, lateness)
                if lateness > self.threshold:
                    self.late += 1
                    cpu1, wait1 = _schedstat(fd)
                    self.late_ticks.append((before, after, lateness, cpu1 - cpu0, wait1 - wait0))
                    # The part of the lateness the loop's thread spent runnable but waiting
                    # for a CPU (other processes on the machine) is not the loop's own stall.
                    own = lateness - (wait1 - wait0)
                    self.worst_own = max(self.worst_own, own)
        finally:
            if fd is not None:
                os.close(fd)

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            if time.perf_counter() - self._beat - 0.005 <= self.threshold:
                continue
            frames = sys._current_frames()
            parts = []
            for tid, frame in frames.items():
                if tid == threading.get_ident():
                    continue
                name = "LOOP" if tid == self._loop_thread else _thread_name(tid)
                stack = traceback.extract_stack(frame)[-6:]
                where = " < ".join(
                    f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(stack)
                )
                parts.append(f"[{name}] {where}")
            self.samples["\n".join(sorted(parts))] += 1

    def __enter__(self) -> StallMonitor:
        self.started = time.perf_counter()
        self._beat = self.started
        self._task = asyncio.get_running_loop().create_task(self._run())
        if self.stacks:
            self._watchdog = threading.Thread(target=self._watch, name="stall-watchdog")
            self._watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.ended = time.perf_counter()
        # The tick in flight: a stall just before the window closes is not missed.
        self.worst = max(self.worst, self.ended - self._beat - 0.005)
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join()

    def report(self) -> dict[str, object]:
        """Worst stall, late ticks, the GC pauses in the window, the commonest stall stacks."""
        worst = sorted(self.late_ticks, key=lambda t: -t[2])[:5]
        out: dict[str, object] = {
            "worst_ms": round(self.worst * 1000, 1),
            "worst_less_cpu_wait_ms": round(max(self.worst_own, 0.0) * 1000, 1),
            f"ticks_late_over_{self.threshold * 1000:.0f}ms": self.late,
            "worst_ticks": [
                {
                    "late_ms": round(late * 1000, 1),
                    "loop_on_cpu_ms": round(cpu * 1000, 1),
                    "loop_waiting_for_cpu_ms": round(wait * 1000, 1),
                    "gc_ms": [
                        f"gen{g} {p * 1000:.0f} ({name})"
                        for s0, g, p, name in GC_LOG.pauses
                        if s0 < t1 and s0 + p > t0 and p > 0.002
                    ],
                }
                for t0, t1, late, cpu, wait in worst
            ],
            "gc": GC_LOG.summary(self.started, self.ended),
        }
        if self.stacks:
            out["stall_samples"] = sum(self.samples.values())
            out["stall_stacks"] = [
                {"samples": n, "threads": stack.split("\n")}
                for stack, n in self.samples.most_common(8)
            ]
        return out


def _schedstat_fd() -> int | None:
    """This thread's scheduler statistics (Linux), or ``None``."""
    try:
        return os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
    except OSError:
        return None


def _schedstat(fd: int | None) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of the thread so far."""
    if fd is None:
        return 0.0, 0.0
    on_cpu, waiting, _ = os.pread(fd, 128, 0).split()
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def _thread_name(tid: int) -> str:
    for thread in threading.enumerate():
        if thread.ident == tid:
            return thread.name
    return str(tid)


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


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grids", type=int, default=15000)
    parser.add_argument("--visits", type=int, default=50000)
    parser.add_argument("--deliver-seconds", type=float, default=20.0)
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--batch", type=int, default=None, help="scheduler_batch (default: the setting's default)"
    )
    parser.add_argument(
        "--compare",
        metavar="DIR",
        help="first run this benchmark, with the same options, on the code of another source "
        "tree (e.g. `git archive HEAD | tar -x -C DIR`) in a child process: before and after "
        "in one run",
    )
    parser.add_argument("--code", metavar="DIR", help=argparse.SUPPRESS)  # set by --compare
    parser.add_argument("--out", metavar="FILE", help="also write the JSON report here")
    parser.add_argument(
        "--no-freeze",
        action="store_true",
        help="do not gc.freeze() the start-up heap (bot.scheduler.pacing.FREEZE_HEAP = False)",
    )
    parser.add_argument(
        "--stall-stacks",
        action="store_true",
        help="sample every thread's stack while the loop is stalled (watchdog thread)",
    )
    parser.add_argument(
        "--stall-ms",
        type=float,
        default=20.0,
        help="a tick this late counts as a stall (and is sampled with --stall-stacks)",
    )
    args = parser.parse_args()
    if args.no_freeze:
        import bot.scheduler

        # bot.scheduler.pacing since the scheduler became a package; bot.scheduler before
        # (--compare may run an older checkout).
        pacing = getattr(bot.scheduler, "pacing", bot.scheduler)
        pacing.FREEZE_HEAP = False
    before: dict[str, Any] | None = None
    if args.compare:
        before = await run_child(args.compare)
    with GC_LOG:
        results = await run(args)
    if before is not None:
        results = {"before": before, "after": results}
        print(compare_table(before, results["after"]))
    out = ROOT / "bench" / "results" / f"duties-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    for path in (out, Path(args.out) if args.out else None):
        if path is not None:
            path.write_text(json.dumps(results, ensure_ascii=False, indent=2))


async def run_child(code: str) -> dict[str, Any]:
    """This benchmark with the same options on the code of another tree, in a child process."""
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip or arg == "--compare":
            skip = not skip
            continue
        if arg.startswith("--compare="):
            continue
        argv.append(arg)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "before.json"
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, *argv, "--code", code, "--out", str(out)
        )
        if await child.wait() != 0:
            raise SystemExit(f"the run on {code} failed")
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def compare_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The headline figures of both runs side by side."""
    keys = [
        "load_average",
        "startup_s",
        "startup_rss_growth_mb",
        "startup_loop_stall_ms",
        "baseline_loop_stall_ms",
        "burst_to_outbox_s",
        "reminders_per_s",
        "burst_loop_stall_ms",
        "burst_stall_vs_baseline",
        "delivered_per_s",
        "telegram_429s",
    ]
    lines = [f"{'':28} {'before':>28} {'after':>28}"]
    for key in keys:
        lines.append(f"{key:28} {before.get(key)!s:>28} {after.get(key)!s:>28}")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="gridbot-bench-"))
    url = args.database_url or f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    clock_now = [datetime(2027, 3, 1, 8, 0, tzinfo=SH)]
    results: dict[str, object] = {
        "grids": args.grids,
        "visit_plans": args.visits,
        "db": url.split(":")[0],
        "code": str(Path(sys.modules[DutyScheduler.__module__].__file__ or "?").parents[1]),
        "load_average": {"start": load_average()},
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
            **({"scheduler_batch": args.batch} if args.batch else {}),
        )
        app = Gridbot(settings, clock=lambda: clock_now[0])
        await app.prepare()
        t0 = time.perf_counter()
        await populate(app, args.grids, args.visits, clock_now[0])
        results["populate_s"] = round(time.perf_counter() - t0, 1)

        with StallMonitor(threshold=args.stall_ms / 1000) as idle:
            await asyncio.sleep(2.0)
        results["baseline_loop_stall_ms"] = round(idle.worst * 1000, 1)
        results["baseline_stalls"] = idle.report()

        rss0, peak0 = rss_now_mb(), rss_mb()
        duties = DutyScheduler(
            app.sessionmaker, settings, app.tr, clock=lambda: clock_now[0], manual=True
        )
        with StallMonitor(args.stall_stacks, args.stall_ms / 1000) as start_mon:
            t0 = time.perf_counter()
            await duties.start()
            results["startup_s"] = round(time.perf_counter() - t0, 2)
        results["startup_loop_stall_ms"] = round(start_mon.worst * 1000, 1)
        results["startup_stalls"] = start_mon.report()
        results["startup_rss_growth_mb"] = round(rss_now_mb() - rss0, 1)
        results["startup_peak_rss_growth_mb"] = round(max(rss_mb() - peak0, 0.0), 1)
        results["rss_mb"] = round(rss_now_mb(), 1)
        results["jobs_stored"] = len(await asyncio.to_thread(duties.store.ids))  # type: ignore[union-attr]

        results["gc_frozen_objects"] = gc.get_freeze_count()
        results["gc_tracked_objects"] = len(gc.get_objects())
        clock_now[0] = datetime(2027, 3, 1, 9, 0, tzinfo=SH)
        results["load_average"]["burst_start"] = load_average()  # type: ignore[index]
        assert duties.scheduler is not None and duties.executor is not None
        with StallMonitor(args.stall_stacks, args.stall_ms / 1000) as burst:
            t0 = time.perf_counter()
            # = duties.tick(): one due-job pass (store thread), then until every job has run
            await duties.scheduler.run_pass()
            results["due_pass_s"] = round(time.perf_counter() - t0, 2)
            await duties.executor.drain()
            results["burst_to_outbox_s"] = round(time.perf_counter() - t0, 2)
        results["burst_loop_stall_ms"] = round(burst.worst * 1000, 1)
        results["burst_stall_vs_baseline"] = round(burst.worst / max(idle.worst, 1e-4), 1)
        results["burst_stalls"] = burst.report()
        results["load_average"]["burst_end"] = load_average()  # type: ignore[index]
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
        limit = app.enable("telegram").limits.global_per_second
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
        results["load_average"]["end"] = load_average()  # type: ignore[index]
    print(json.dumps(results, ensure_ascii=False, indent=2), flush=True)
    return results


if __name__ == "__main__":
    asyncio.run(main())
