"""The duty scheduler service: one leader per database by a lease, the job store reconciled from
the plans (the truth), and the engine (:mod:`bot.scheduler.engine`) started and stopped with the
lease.

* **Domain tables are the truth.** Patrol and visit plans live in ``patrol_plan`` /
  ``visit_plan``; at start-up (and when plans change, checked on every sweep) the job store is
  reconciled from them. Job ids are plain strings that carry a fingerprint of the trigger
  (``patrol:12:1a2b3c4d``), so reconciling needs only the ids: unchanged jobs keep their stored
  next run time (a reminder missed while the service was down is still due), changed ones are
  replaced, orphans removed.
* **One scheduler per database.** A lease row (``scheduler_lease``) with an expiry renewed by
  the leader (SQLite and PostgreSQL alike). On PostgreSQL a second instance stands by and takes
  over when the lease runs out; on SQLite (single instance by design) a second ``gridbot run``
  on the same file is refused with a clear message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from apscheduler.job import Job
from apscheduler.triggers.base import BaseTrigger
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from bot.config import Settings
from bot.core.quiet_hours import parse_hhmm
from bot.i18n import Translator
from bot.instance import new_holder
from bot.lease import Lease
from bot.scheduler import BATCHED, JOB_KINDS, DutyRuntime, missed
from bot.scheduler.engine import DutyJobStore, GridScheduler, LoopExecutor, new_job
from bot.scheduler.pacing import freeze_startup_heap, let_loop_run
from bot.scheduler.triggers import patrol_trigger, visit_trigger
from models import PatrolPlan, VisitPlan, utcnow
from models.db import is_sqlite, make_sync_engine

log = logging.getLogger(__name__)

LEASE_NAME = "scheduler"
JOBS_TABLE = "apscheduler_jobs"
#: Jobs built and stored at a time by a
#: reconcile: bounds how many ``Job`` objects (with their triggers) are alive at once.
RECONCILE_CHUNK = 2000


class SchedulerRefused(RuntimeError):
    """Another process runs the scheduler on this (SQLite) database."""


def sync_url(url: str) -> str:
    """The synchronous URL of the same database for the job store (sqlite / psycopg)."""
    if url.startswith("sqlite+aiosqlite"):
        return "sqlite" + url[len("sqlite+aiosqlite") :]
    if url.startswith("postgresql+asyncpg"):
        return "postgresql+psycopg" + url[len("postgresql+asyncpg") :]
    return url


def _fingerprint(*parts: object) -> str:
    return format(zlib.crc32("|".join(map(str, parts)).encode()), "08x")


@dataclass
class _PlanState:
    version: tuple[Any, ...] | None = None
    reconciled: dict[str, int] = field(default_factory=dict)


class DutyScheduler:
    """Lease, APScheduler, reconcile-from-plans, and the runtime for jobs, wired together."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        tr: Translator,
        *,
        clock: Callable[[], datetime] = utcnow,
        wake: Callable[[], None] = lambda: None,
        manual: bool = False,
        holder: str | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.manual = manual
        self.runtime = DutyRuntime(sessionmaker, tr, settings, clock, wake, self)
        self.holder = holder or str(new_holder())
        self.lease = Lease(
            sessionmaker,
            LEASE_NAME,
            self.holder,
            timedelta(seconds=settings.scheduler_lease_seconds),
            clock,
        )
        self.engine: Engine | None = None
        self.store: DutyJobStore | None = None
        self.scheduler: GridScheduler | None = None
        self.executor: LoopExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._plans = _PlanState()
        self.is_leader = False

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> bool:
        """Become the leader, or stand by (PostgreSQL) / refuse (SQLite). ``True`` if leading."""
        if await self.lease.acquire():
            await self._lead()
        else:
            row = await self.lease.current()
            who = f"{row.holder} until {row.expires_at.isoformat()}" if row else "?"
            if is_sqlite(self.settings.database_url):
                raise SchedulerRefused(
                    f"another gridbot ({who}) runs the scheduler on this SQLite database; "
                    "SQLite is single-instance: refusing to start a second one"
                )
            log.warning("scheduler lease held by %s: standing by", who)
        if not self.manual:
            self._task = asyncio.create_task(self._keep_lease(), name="gridbot-lease")
        return self.is_leader

    async def _lead(self) -> None:
        tz = self.settings.tz
        self.engine = make_sync_engine(sync_url(self.settings.database_url))
        self.store = DutyJobStore(engine=self.engine, tablename=JOBS_TABLE)
        # SQLite has one writer: concurrent duty transactions only queue on its lock (busy
        # waits measured at ~7 ms a reminder in a burst), so jobs run one at a time there.
        concurrency = (
            1 if is_sqlite(self.settings.database_url) else self.settings.scheduler_concurrency
        )
        self.executor = LoopExecutor(
            self.runtime, concurrency, batched=BATCHED, on_missed=missed
        )
        self.scheduler = GridScheduler(
            clock=self.clock,
            manual=self.manual,
            timezone=tz,
            jobstores={"default": self.store},
            executors={"default": self.executor},
            job_defaults={
                "coalesce": True,
                "misfire_grace_time": self.settings.scheduler_misfire_grace,
                "max_instances": 1,
            },
        )
        self.scheduler.start(paused=True)
        freeze_startup_heap()  # before the reconcile: its collections then skip start-up's heap
        report = await asyncio.to_thread(self.reconcile)
        self.is_leader = True
        log.info("duty scheduler leading as %s; job store reconciled: %s", self.holder, report)
        self.scheduler.resume()

    async def _keep_lease(self) -> None:
        period = max(self.settings.scheduler_lease_seconds / 3, 0.5)
        while True:
            await asyncio.sleep(period)
            try:
                held = await self.lease.acquire()
            except Exception:
                log.exception("could not renew the scheduler lease")
                held = False
            if held and not self.is_leader:
                log.warning("scheduler lease acquired by %s: taking over", self.holder)
                await self._lead()
            elif not held and self.is_leader:
                log.error("scheduler lease lost: stopping this scheduler")
                await self._stop_scheduler()

    async def _stop_scheduler(self) -> None:
        self.is_leader = False
        if self.scheduler is not None:
            # A pass in progress stores nothing more: what it handed over and did not store
            # fires again under the next leader (each reminder once: unique rows).
            self.scheduler.stop_passes()
            await self.scheduler.pass_finished()
            self.scheduler.shutdown_now()
            self.scheduler = None
        if self.executor is not None:
            self.executor.abandon()
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    async def stop(self) -> None:
        """Stop; release the lease so that a standby takes over at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        was_leader = self.is_leader
        await self._stop_scheduler()
        if was_leader:
            with contextlib.suppress(Exception):
                await self.lease.release()

    async def tick(self) -> None:
        """Run one due-job pass now and wait for the jobs it started (tests, benchmarks)."""
        if self.scheduler is None:
            return
        await self.scheduler.run_pass()
        assert self.executor is not None
        await self.executor.drain()

    # ---- reconcile (runs in a thread: synchronous database access) ---------------------------

    def _job(
        self,
        job_id: str,
        func: Callable[..., Any],
        trigger: BaseTrigger,
        first: datetime | None,
        args: tuple[Any, ...],
    ) -> Job | None:
        assert self.scheduler is not None
        if first is None:
            return None
        return new_job(
            self.scheduler,
            job_id,
            func,
            trigger,
            first,
            args,
            self.settings.scheduler_misfire_grace,
        )

    def desired_jobs(
        self, session: Session
    ) -> dict[str, tuple[str, tuple[Any, ...], tuple[Any, ...]]]:
        """Job id → (kind, trigger parameters, job args), read from the plans (the truth).

        Plain tuples of strings, numbers and datetimes (kinds: :data:`JOB_KINDS`): at Yunfu
        scale this holds 65,000 entries while the store is reconciled, and such tuples cost the
        garbage collector nothing."""
        tz = self.settings.tz
        wanted: dict[str, tuple[str, tuple[Any, ...], tuple[Any, ...]]] = {}
        for pid, schedule, zone in session.execute(
            select(PatrolPlan.id, PatrolPlan.schedule, PatrolPlan.timezone).where(
                PatrolPlan.active.is_(True)
            )
        ):
            job_id = f"patrol:{pid}:{_fingerprint(schedule, zone)}"
            wanted[job_id] = ("patrol", (schedule, zone), (pid,))
        for vid, freq, starts, zone in session.execute(
            select(
                VisitPlan.id, VisitPlan.frequency, VisitPlan.starts_at, VisitPlan.timezone
            ).where(VisitPlan.active.is_(True))
        ):
            job_id = f"visit:{vid}:{_fingerprint(freq, starts.isoformat(), zone)}"
            wanted[job_id] = ("visit", (freq, starts, zone), (vid,))
        every = self.settings.scheduler_sweep_seconds
        wanted[f"sweep:{every}"] = ("sweep", (every, tz.key), ())
        at = parse_hhmm(self.settings.digest_time)
        wanted[f"digest:{at.hour:02d}{at.minute:02d}:{tz.key}"] = (
            "digest",
            (at.hour, at.minute, tz.key),
            (),
        )
        wanted[f"month-end:{tz.key}"] = ("month_end", (10, 0, tz.key), ())
        at = parse_hhmm(self.settings.bulletin_time)
        wanted[f"bulletin:{at.hour:02d}{at.minute:02d}:{tz.key}"] = (
            "bulletin",
            (at.hour, at.minute, tz.key),
            (),
        )
        if self.settings.console_on:
            every = self.settings.console_report_seconds
            wanted[f"console-reports:{every}"] = ("console_reports", (every, tz.key), ())
        return wanted

    def _plan_version(self, session: Session) -> tuple[Any, ...]:
        row_p = session.execute(
            select(func.count(), func.max(PatrolPlan.updated_at)).select_from(PatrolPlan)
        ).one()
        row_v = session.execute(
            select(func.count(), func.max(VisitPlan.updated_at)).select_from(VisitPlan)
        ).one()
        return (*row_p, *row_v)

    def reconcile(self) -> dict[str, int]:
        """Make the job store match the plans: add missing jobs, drop orphans, keep the rest
        (with their stored next run times). Synchronous: call it in a thread."""
        assert self.engine is not None and self.store is not None
        now = self.clock()
        with Session(self.engine) as session:
            version = self._plan_version(session)
            wanted = self.desired_jobs(session)
        assert self.scheduler is not None
        with self.scheduler.store_lock():
            have = self.store.ids()
            stale = have - wanted.keys()
            self.store.remove_ids(stale)
            missing = sorted(wanted.keys() - have)
            triggers: dict[tuple[Any, ...], tuple[BaseTrigger, datetime | None]] = {}
            added = 0
            # Built and stored a chunk at a time: only that many Job objects alive at once.
            for start in range(0, len(missing), RECONCILE_CHUNK):
                new = []
                for n, job_id in enumerate(missing[start : start + RECONCILE_CHUNK]):
                    let_loop_run(n)
                    kind, params, args = wanted[job_id]
                    func, make_trigger = JOB_KINDS[kind]
                    # Plans with the same schedule share one trigger (built once).
                    key = (kind, *params)
                    if key not in triggers:
                        trigger = make_trigger(*params)
                        triggers[key] = (trigger, trigger.get_next_fire_time(None, now))
                    trigger, first = triggers[key]
                    job = self._job(job_id, func, trigger, first, args)
                    if job is not None:
                        new.append(job)
                self.store.add_jobs(new)
                added += len(new)
        self._plans = _PlanState(
            version, {"kept": len(have & wanted.keys()), "added": added, "removed": len(stale)}
        )
        if self.scheduler.running:
            self.scheduler.wakeup()
        return self._plans.reconciled

    async def resync_if_changed(self) -> None:
        """Reconcile again when plans were added or edited (chat command, CSV import)."""
        if self.engine is None:
            return

        def check() -> bool:
            assert self.engine is not None
            with Session(self.engine) as session:
                return self._plan_version(session) != self._plans.version

        if await asyncio.to_thread(check):
            report = await asyncio.to_thread(self.reconcile)
            log.info("plans changed; job store reconciled: %s", report)

    def due_tomorrow(self, now: datetime) -> dict[int, int]:
        """Grid id → duties (patrols and visits) falling due tomorrow, local time."""
        assert self.engine is not None
        from models import Household

        tz = self.settings.tz
        local = now.astimezone(tz)
        start = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tz)
        end = start + timedelta(days=1)
        counts: dict[int, int] = collections.defaultdict(int)
        # Runs in a thread over every plan (65,000 at Yunfu scale): plans with the same
        # schedule share one computation, and the loop gets the GIL back often.
        tomorrow: dict[tuple[Any, ...], bool] = {}

        def due(kind: str, *params: Any) -> bool:
            key = (kind, *params)
            if key not in tomorrow:
                trigger = patrol_trigger(*params) if kind == "patrol" else visit_trigger(*params)
                nxt = trigger.get_next_fire_time(None, start)
                tomorrow[key] = nxt is not None and nxt < end
            let_loop_run()
            return tomorrow[key]

        with Session(self.engine) as session:
            for gid, schedule, zone in session.execute(
                select(PatrolPlan.grid_id, PatrolPlan.schedule, PatrolPlan.timezone).where(
                    PatrolPlan.active.is_(True)
                )
            ):
                counts[gid] += due("patrol", schedule, zone)
            for gid, freq, starts, zone in session.execute(
                select(
                    Household.grid_id, VisitPlan.frequency, VisitPlan.starts_at, VisitPlan.timezone
                )
                .join(Household, Household.id == VisitPlan.household_id)
                .where(VisitPlan.active.is_(True))
            ):
                counts[gid] += due("visit", freq, starts, zone)
        return {gid: n for gid, n in counts.items() if n}
