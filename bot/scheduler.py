"""The duty scheduler: APScheduler 3.11 with a persistent job store in the project's database.

Design (see the APScheduler section of the platform notes for why):

* **Domain tables are the truth.** Patrol and visit plans live in ``patrol_plan`` /
  ``visit_plan``; at start-up (and when plans change, checked on every sweep) the job store is
  reconciled from them. Job ids are plain strings that carry a fingerprint of the trigger
  (``patrol:12:1a2b3c4d``), so reconciling needs only the ids: unchanged jobs keep their stored
  next run time (a reminder missed while the service was down is still due), changed ones are
  replaced, orphans removed.
* **Jobs are module-level coroutines** (``patrol_reminder``, ``visit_reminder``, ``sweep``,
  ``daily_digest``, ``month_end``) stored as ``module:function`` with plain arguments (ids).
  The executor adds ``rt=`` (a :class:`DutyRuntime`: database, catalogs, settings, clock) and
  ``due_at=`` (the run time) as keywords: no globals, nothing unpicklable stored.
* **Misfires.** Every job has ``coalesce=True`` and ``misfire_grace_time`` =
  ``scheduler_misfire_grace`` (default 6 h). After downtime a job whose run times passed fires
  ONCE (coalesced to the latest missed time) if that time is within the grace; later than the
  grace it does not fire, is logged at WARNING and recorded (a patrol run with status
  ``skipped``, shown in the digest): never silently dropped. APScheduler's default grace of 1 s
  would drop a burst of due jobs behind a slow store. Every job also inserts a unique row
  (patrol run or ``duty_fire``) in the transaction that sends the reminder, so a crash between
  sending and storing the next run time cannot send it twice.
* **The sync job store never runs on the event loop.** ``SQLAlchemyJobStore`` is synchronous;
  the scheduler's due-job pass (:meth:`GridScheduler._due_pass`) runs in one dedicated thread.
  It works through the due jobs in chunks (``PASS_CHUNK``): unpickles a chunk, hands its runs
  to :class:`LoopExecutor` as plain tuples, and stores the chunk's next run times (one
  transaction) only once all of its runs have finished, with at most ``IN_FLIGHT`` chunks
  handed over and not stored. A process killed in a burst therefore loses no reminder: what
  was not stored is due again at the next start, and what had already run is skipped by its
  unique row. The executor runs jobs on the loop with bounded concurrency, batching reminders
  into shared transactions written with multi-row statements.
* **The loop stays responsive in a burst** (15,000 patrols + 50,000 visits at 09:00; see
  ``bench/README.md``). No unpickled ``Job`` lives longer than its chunk, and the heap built
  by start-up is frozen out of the garbage collector's scans (:func:`freeze_startup_heap`):
  full collections, which hold the GIL, had stalled the loop for 120-450 ms. The store
  thread hands the GIL over every 0.2 ms of its Python work (:func:`let_loop_run`), and a
  batch of reminders yields to the loop between its statements and every few reminders.
* **One scheduler per database.** A lease row (``scheduler_lease``) with an expiry renewed by
  the leader (SQLite and PostgreSQL alike). On PostgreSQL a second instance stands by and takes
  over when the lease runs out; on SQLite (single instance by design) a second ``gridbot run``
  on the same file is refused with a clear message.
"""

from __future__ import annotations

import asyncio
import calendar
import collections
import contextlib
import functools
import gc
import logging
import pickle
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
)
from apscheduler.executors.base import BaseExecutor, MaxInstancesReachedError
from apscheduler.job import Job
from apscheduler.jobstores.base import BaseJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import STATE_PAUSED, STATE_STOPPED
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import datetime_to_utc_timestamp, ref_to_obj
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from bot.config import Settings
from bot.core.duties import DutyService, parse_hhmm
from bot.core.notify import Notifier
from bot.i18n import Translator
from bot.instance import new_holder
from bot.lease import Lease
from models import PatrolPlan, VisitPlan, utcnow
from models.db import is_sqlite, make_sync_engine

log = logging.getLogger(__name__)

LEASE_NAME = "scheduler"
JOBS_TABLE = "apscheduler_jobs"
#: Due jobs handled at a time by a due-job pass, and jobs built and stored at a time by a
#: reconcile: bounds how many ``Job`` objects (with their triggers) are alive at once.
PASS_CHUNK = 500
RECONCILE_CHUNK = 2000
#: Chunks of a pass handed to the executor and not yet stored, at most.
IN_FLIGHT = 2


#: Freeze the heap built by start-up once the scheduler leads (see :func:`freeze_startup_heap`).
FREEZE_HEAP = True
_heap_frozen = False


def freeze_startup_heap() -> bool:
    """Once per process: collect, then ``gc.freeze()`` what start-up built (modules, ORM
    mappers, catalogs, clients: ~120,000 objects), so that later full collections skip it.

    A full (generation 2) collection holds the GIL while it scans every tracked object, and a
    burst of reminders triggers one every few thousand reminders: over start-up's heap alone
    each took 60-200 ms on the 2-core development machine, the worst loop stalls of a 09:00
    burst. Frozen objects are still freed when their reference count drops; only cycles among
    them would never be collected. ``True`` if it froze now."""
    global _heap_frozen
    if _heap_frozen or not FREEZE_HEAP:
        return False
    gc.collect()
    gc.freeze()
    _heap_frozen = True
    log.info("start-up heap frozen: %s objects left out of collections", gc.get_freeze_count())
    return True


#: The store thread's Python work gives the GIL away after this long (see :func:`let_loop_run`).
GIL_SLICE = 0.0002
_slice = threading.local()


def let_loop_run(n: int = 0) -> None:
    """Called by the store thread after each job of a loop (unpickling, trigger arithmetic,
    pickling): once it has run ``GIL_SLICE`` (0.2 ms) since the last time, it sleeps 0.1 ms.

    A thread running Python keeps the GIL until the switch interval (5 ms) forces it out, each
    time the event loop asks for it back; and the loop asks for it back after every blocking
    call, e.g. after every row SQLite steps through on the loop's thread (the GIL "convoy"). A
    09:00 pass (about 60 µs of Python per job) thus stretched the loop's short statements to
    20-60 ms. Sleeping a little, often, hands the GIL over for certain (``sleep(0)`` does not:
    the thread usually takes it back first)."""
    now = time.perf_counter()
    if now - getattr(_slice, "since", 0.0) > GIL_SLICE:
        time.sleep(0.0001)
        _slice.since = time.perf_counter()


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


# ---- runtime handed to every job ----------------------------------------------------------------


@dataclass
class DutyRuntime:
    """What jobs need: database, catalogs, settings, a clock and the delivery wake-up."""

    sessionmaker: async_sessionmaker[AsyncSession]
    tr: Translator
    settings: Settings
    clock: Callable[[], datetime] = utcnow
    wake: Callable[[], None] = lambda: None
    scheduler: DutyScheduler | None = None

    @contextlib.asynccontextmanager
    async def service(self) -> AsyncIterator[DutyService]:
        """A :class:`DutyService` in one transaction; delivery is woken after the commit."""
        async with self.sessionmaker() as session, session.begin():
            notifier = Notifier(session, self.tr, self.settings.default_locale)
            yield DutyService(session, notifier, self.tr, self.settings, self.clock())
            written = bool(notifier.written)
        if written:
            self.wake()


# ---- the jobs (module-level, stored by reference) -------------------------------------------


async def patrol_reminder(
    plan_id: int, *, rt: DutyRuntime | None = None, due_at: datetime | None = None
) -> None:
    """A patrol starts: open its run and remind the patrol worker."""
    assert rt is not None and due_at is not None, "run by LoopExecutor"
    await patrol_reminders(rt, [(due_at, (plan_id,))])


async def patrol_reminders(rt: DutyRuntime, items: list[tuple[datetime, tuple[Any, ...]]]) -> None:
    """Several patrol reminders in one transaction."""
    async with rt.service() as duties:
        await duties.patrols_due([(plan_id, due_at) for due_at, (plan_id,) in items])


async def visit_reminder(
    plan_id: int, *, rt: DutyRuntime | None = None, due_at: datetime | None = None
) -> None:
    """A visit falls due: remind the paired member (and the head if the last one was missed)."""
    assert rt is not None and due_at is not None, "run by LoopExecutor"
    await visit_reminders(rt, [(due_at, (plan_id,))])


async def visit_reminders(rt: DutyRuntime, items: list[tuple[datetime, tuple[Any, ...]]]) -> None:
    """Several visit reminders in one transaction."""
    async with rt.service() as duties:
        await duties.visits_due([(plan_id, due_at) for due_at, (plan_id,) in items])


async def sweep(*, rt: DutyRuntime | None = None, due_at: datetime | None = None) -> None:
    """Every minute: order clocks, patrol deadlines, whistle reminders, notice reports, and a
    re-sync of the job store when plans changed."""
    assert rt is not None, "run by LoopExecutor"
    async with rt.service() as duties:
        await duties.patrol_deadlines()
    async with rt.service() as duties:
        actions = await duties.order_clocks()
        if actions:
            log.info("order clocks: %s", actions)
    async with rt.service() as duties:
        await duties.whistle_reminders()
        await duties.notice_reports()
    if rt.scheduler is not None:
        await rt.scheduler.resync_if_changed()


async def daily_digest(*, rt: DutyRuntime | None = None, due_at: datetime | None = None) -> None:
    """The daily digest to every grid head."""
    assert rt is not None and due_at is not None, "run by LoopExecutor"
    tomorrow: dict[int, int] = {}
    if rt.scheduler is not None:
        tomorrow = await asyncio.to_thread(rt.scheduler.due_tomorrow, due_at)
    async with rt.service() as duties:
        await duties.daily_digest(tomorrow)


async def month_end(*, rt: DutyRuntime | None = None, due_at: datetime | None = None) -> None:
    """Runs daily; on the pre-reminder day of the month, remind owed visits."""
    assert rt is not None and due_at is not None, "run by LoopExecutor"
    local = due_at.astimezone(rt.settings.tz).date()
    last = calendar.monthrange(local.year, local.month)[1]
    if last - local.day != rt.settings.month_end_days:
        return
    async with rt.service() as duties:
        if await duties.fire_once("month_end", local.strftime("%Y-%m"), due_at):
            await duties.month_end(local)


async def monthly_bulletin(
    *, rt: DutyRuntime | None = None, due_at: datetime | None = None
) -> None:
    """Runs daily at ``bulletin_time``; on day 1 of a month, the bulletin (月初通报) of the
    month before to every admin and head (:func:`bot.reports.bulletin.monthly`)."""
    assert rt is not None and due_at is not None, "run by LoopExecutor"
    if due_at.astimezone(rt.settings.tz).day != 1:
        return
    from bot.reports.bulletin import monthly

    await monthly(rt.service, due_at)


#: Jobs whose occurrences may share a transaction: job function → batch function.
BATCHED: dict[Callable[..., Any], Callable[..., Awaitable[None]]] = {
    patrol_reminder: patrol_reminders,
    visit_reminder: visit_reminders,
}


async def missed(
    rt: DutyRuntime, func: Callable[..., Any], args: tuple[Any, ...], due_at: datetime
) -> None:
    """A run time passed by more than the grace: record it so it is seen (digest, logs)."""
    if func is patrol_reminder:
        async with rt.service() as duties:
            await duties.patrol_skipped(args[0], due_at)


# ---- job store and executor -----------------------------------------------------------------


class DutyJobStore(SQLAlchemyJobStore):
    """``SQLAlchemyJobStore`` plus bulk operations (one transaction for many jobs)."""

    def start(self, scheduler: Any, alias: str) -> None:
        """Start without ``CREATE TABLE``: the table comes with the migrations, and
        ``SQLAlchemyJobStore.start`` (called on the event loop's thread) would wait there for
        SQLite's write lock, which a transaction of ours may hold while it needs the loop to
        finish: a deadlock until the busy timeout."""
        BaseJobStore.start(self, scheduler, alias)

    def due_ids(self, now: datetime) -> list[str]:
        """The ids of the jobs due at ``now``, earliest first (no unpickling)."""
        stmt = (
            select(self.jobs_t.c.id)
            .where(self.jobs_t.c.next_run_time <= datetime_to_utc_timestamp(now))
            .order_by(self.jobs_t.c.next_run_time, self.jobs_t.c.id)
        )
        with self.engine.begin() as conn:
            return list(conn.execute(stmt).scalars())

    def load_due(self, ids: list[str], now: datetime) -> list[Job]:
        """Those of ``ids`` still due at ``now``, unpickled, in the order given. A job that
        cannot be restored is logged and removed (as ``SQLAlchemyJobStore`` does)."""
        stmt = select(self.jobs_t.c.id, self.jobs_t.c.job_state).where(
            self.jobs_t.c.id.in_(ids),
            self.jobs_t.c.next_run_time <= datetime_to_utc_timestamp(now),
        )
        jobs: dict[str, Job] = {}
        failed: set[str] = set()
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        for n, (job_id, state) in enumerate(rows):
            try:
                jobs[job_id] = self._reconstitute_job(state)
            except Exception:
                log.exception("unable to restore job %s: removing it", job_id)
                failed.add(job_id)
            let_loop_run(n)
        self.remove_ids(failed)
        return [jobs[job_id] for job_id in ids if job_id in jobs]

    def ids(self) -> set[str]:
        """Every stored job id (no unpickling)."""
        with self.engine.begin() as conn:
            return set(conn.execute(select(self.jobs_t.c.id)).scalars())

    def states(self, jobs: list[Job]) -> list[tuple[str, float | None, bytes]]:
        """(id, next run time, pickled state) of each job, letting the loop run in between.
        Plain tuples of atomic values: the garbage collector does not track them (the jobs
        themselves can be dropped)."""
        rows = []
        for n, job in enumerate(jobs):
            state = pickle.dumps(job.__getstate__(), self.pickle_protocol)
            rows.append((job.id, datetime_to_utc_timestamp(job.next_run_time), state))
            let_loop_run(n)
        return rows

    def add_jobs(self, jobs: list[Job]) -> None:
        """Insert many new jobs in one transaction (pickled before it opens: SQLite's write
        lock is not held meanwhile)."""
        if not jobs:
            return
        rows = [
            {"id": job_id, "next_run_time": at, "job_state": state}
            for job_id, at, state in self.states(jobs)
        ]
        with self.engine.begin() as conn:
            conn.execute(self.jobs_t.insert(), rows)

    def store_states(self, states: list[tuple[str, float | None, bytes]]) -> None:
        """Store the new state (next run time) of many jobs in one transaction."""
        if not states:
            return
        from sqlalchemy import bindparam

        stmt = (
            self.jobs_t.update()
            .where(self.jobs_t.c.id == bindparam("_id"))
            .values(next_run_time=bindparam("_next"), job_state=bindparam("_state"))
        )
        rows = [{"_id": job_id, "_next": at, "_state": state} for job_id, at, state in states]
        with self.engine.begin() as conn:
            conn.execute(stmt, rows)

    def remove_ids(self, ids: set[str]) -> None:
        """Delete many jobs in one transaction."""
        if ids:
            with self.engine.begin() as conn:
                conn.execute(self.jobs_t.delete().where(self.jobs_t.c.id.in_(list(ids))))


#: A due run as handed from the store thread to the loop: job id, ``module:function``, args,
#: run times, misfire grace (s), job store alias, and the number of the pass's chunk it belongs
#: to. Only strings, numbers and datetimes in plain tuples, which the garbage collector stops
#: tracking: unlike the unpickled ``Job`` objects (about 18 tracked objects each, with their
#: triggers), waiting runs add nothing to the scans of full collections.
DueRun = tuple[str, str, tuple[Any, ...], tuple[datetime, ...], int | None, str, int]


@functools.cache
def job_function(func_ref: str) -> Callable[..., Any]:
    """The job function named ``module:function``."""
    func: Callable[..., Any] = ref_to_obj(func_ref)
    return func


class LoopExecutor(BaseExecutor):
    """Runs due jobs as coroutines on the event loop, ``concurrency`` at a time.

    Due runs are handed over from the scheduler's store thread through a thread-safe deque, as
    :data:`DueRun` tuples (not ``Job`` objects). Occurrences of a batched job (reminders) are
    run up to ``scheduler_batch`` per transaction, each batch written with a few multi-row
    statements; the batch functions yield to the loop between chunks of their work and the
    worker between batches. The misfire check (``misfire_grace_time``) is made here, against
    the runtime's clock.
    """

    def __init__(self, runtime: DutyRuntime, concurrency: int) -> None:
        super().__init__()
        self.runtime = runtime
        self.concurrency = max(1, concurrency)
        self.batch = max(1, runtime.settings.scheduler_batch)
        self.queue: collections.deque[DueRun] = collections.deque()
        self.outstanding = 0
        self._count_lock = threading.Lock()
        #: Chunk number → its runs not finished yet; the store thread waits on ``_finished``.
        self._remaining: dict[int, int] = {}
        self._finished = threading.Condition(self._count_lock)
        #: The chunk being submitted (set by the store thread, the only submitter).
        self.chunk = 0
        self._workers: list[asyncio.Task[None]] = []
        self._kick: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Set by the scheduler's store thread during a pass: submit without waking workers.
        self.deferred = False

    def start(self, scheduler: Any, alias: str) -> None:
        super().start(scheduler, alias)
        self.loop = asyncio.get_running_loop()
        self._kick = asyncio.Event()
        self._workers = [
            asyncio.create_task(self._worker(), name=f"gridbot-duty-{n}")
            for n in range(self.concurrency)
        ]

    def shutdown(self, wait: bool = True) -> None:
        for task in self._workers:
            task.cancel()
        self._workers = []

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        chunk = self.chunk
        with self._count_lock:
            self.outstanding += 1
            self._remaining[chunk] = self._remaining.get(chunk, 0) + 1
        self.queue.append(
            (
                job.id,
                job.func_ref,
                tuple(job.args),
                tuple(run_times),
                job.misfire_grace_time,
                job._jobstore_alias,
                chunk,
            )
        )
        if not self.deferred:
            self.kick()

    def _done(self, group: list[DueRun]) -> None:
        with self._count_lock:
            self.outstanding -= len(group)
            for run in group:
                left = self._remaining.get(run[6], 0) - 1
                if left > 0:
                    self._remaining[run[6]] = left
                else:
                    self._remaining.pop(run[6], None)
                    self._finished.notify_all()

    def wait_chunk(self, chunk: int, stop: Callable[[], bool]) -> bool:
        """Block (store thread) until every run of ``chunk`` has finished; ``False`` if
        ``stop()`` became true first."""
        with self._finished:
            self._finished.wait_for(lambda: chunk not in self._remaining or stop())
            return chunk not in self._remaining

    def wake_waiters(self) -> None:
        """Let :meth:`wait_chunk` look at its ``stop`` again (thread-safe)."""
        with self._finished:
            self._finished.notify_all()

    def abandon(self) -> None:
        """Forget the runs not started (stopping: the pass did not store their next run times,
        so they fire again under the next leader; those already done are skipped there by their
        unique rows)."""
        with self._count_lock:
            self.queue.clear()
            self.outstanding = 0
            self._remaining.clear()
            self._finished.notify_all()

    def kick(self) -> None:
        """Wake the workers (thread-safe). A due-job pass submits a chunk of jobs first and
        kicks once per chunk, so the workers find whole batches in the queue: waking them per
        job made most reminders run alone, one transaction each."""
        assert self.loop is not None and self._kick is not None
        self.loop.call_soon_threadsafe(self._kick.set)

    async def drain(self) -> None:
        """Wait until every submitted job has run (tests, benchmarks)."""
        while self.outstanding:  # noqa: ASYNC110 - counted across threads
            await asyncio.sleep(0.002)

    async def _worker(self) -> None:
        assert self._kick is not None
        while True:
            if not self.queue:
                self._kick.clear()
                await self._kick.wait()
                continue
            run = self.queue.popleft()
            group = [run]
            batch = BATCHED.get(job_function(run[1]))
            while batch and self.queue and len(group) < self.batch and self.queue[0][1] == run[1]:
                group.append(self.queue.popleft())
            try:
                await self._run_group(group, batch)
            finally:
                self._done(group)
            # Let the rest of the service (chat replies, delivery) run between batches.
            await asyncio.sleep(0)

    def _late(self, grace: int | None, run_time: datetime) -> bool:
        return grace is not None and self.runtime.clock() - run_time > timedelta(seconds=grace)

    async def _run_group(
        self, group: list[DueRun], batch: Callable[..., Awaitable[None]] | None
    ) -> None:
        rt = self.runtime
        events: dict[str, list[JobExecutionEvent]] = collections.defaultdict(list)
        items: list[tuple[DueRun, datetime]] = []
        for run in group:
            job_id, func_ref, args, run_times, grace, alias, _ = run
            for run_time in run_times:
                if self._late(grace, run_time):
                    log.warning(
                        "job %s due at %s missed by more than the grace of %ss: not run "
                        "(recorded as skipped)",
                        job_id,
                        run_time.isoformat(),
                        grace,
                    )
                    events[job_id].append(
                        JobExecutionEvent(EVENT_JOB_MISSED, job_id, alias, run_time)
                    )
                    try:
                        await missed(rt, job_function(func_ref), args, run_time)
                    except Exception:
                        log.exception("recording the missed job %s failed", job_id)
                else:
                    items.append((run, run_time))
        ran = False
        if batch is not None and len(items) > 1:
            try:
                await batch(rt, [(t, run[2]) for run, t in items])
                ran = True
            except Exception:
                log.exception("batch of %s reminders failed; running them one by one", len(items))
        for run, run_time in items:
            job_id, func_ref, args, _, _, alias, _ = run
            try:
                if not ran:
                    await job_function(func_ref)(*args, rt=rt, due_at=run_time)
            except Exception as err:
                log.exception("job %s (due %s) failed", job_id, run_time.isoformat())
                events[job_id].append(
                    JobExecutionEvent(EVENT_JOB_ERROR, job_id, alias, run_time, exception=err)
                )
            else:
                events[job_id].append(
                    JobExecutionEvent(EVENT_JOB_EXECUTED, job_id, alias, run_time)
                )
        for run in group:
            self._run_job_success(run[0], events.pop(run[0], []))


class GridScheduler(AsyncIOScheduler):
    """``AsyncIOScheduler`` whose due-job passes run in a dedicated thread (the sync job store
    never blocks the loop), with an injectable clock and one transaction per pass."""

    def __init__(
        self, *, clock: Callable[[], datetime], manual: bool = False, **options: Any
    ) -> None:
        super().__init__(**options)
        self.clock = clock
        self.manual = manual
        self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="gridbot-jobstore")
        self._pass: asyncio.Future[Any] | None = None
        self._again = False
        #: Due jobs read, submitted and stored at a time by a pass.
        self.chunk = PASS_CHUNK
        self._chunks = 0
        self._stopping = False
        self._memo: dict[tuple[Any, ...], tuple[list[datetime], datetime | None]] = {}

    # The pass runs in the store thread; timers and their callbacks on the loop.
    def wakeup(self) -> None:
        loop = self._eventloop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wakeup_on_loop)

    def _wakeup_on_loop(self) -> None:
        if self._eventloop is None or self.state == STATE_STOPPED:
            return
        self._stop_timer()
        if self._pass is not None and not self._pass.done():
            self._again = True
            return
        self._pass = self._eventloop.run_in_executor(self._store_thread, self._process_jobs)
        self._pass.add_done_callback(self._pass_done)

    def _pass_done(self, fut: asyncio.Future[Any]) -> None:
        wait: float | None = self.jobstore_retry_interval
        if not fut.cancelled() and fut.exception() is None:
            wait = fut.result()
        else:
            log.error("scheduler pass failed: %r", None if fut.cancelled() else fut.exception())
        if self._again:
            self._again = False
            self._wakeup_on_loop()
        elif self.state != STATE_STOPPED:
            self._start_timer(wait)

    def _start_timer(self, wait_seconds: float | None) -> None:
        if not self.manual:
            super()._start_timer(wait_seconds)

    async def run_pass(self) -> float | None:
        """One due-job pass now (in the store thread); returns seconds until the next."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store_thread, self._process_jobs)

    def _process_jobs(self) -> float | None:
        if self.state == STATE_PAUSED or self._stopping:
            return None
        now = self.clock().astimezone(self.timezone)
        for executor in self._loop_executors():
            executor.deferred = True
        try:
            return self._due_pass(now)
        finally:
            for executor in self._loop_executors():
                executor.deferred = False

    def _loop_executors(self) -> list[LoopExecutor]:
        return [e for e in self._executors.values() if isinstance(e, LoopExecutor)]

    def stop_passes(self) -> None:
        """A pass in progress stops at once, storing nothing more (thread-safe)."""
        self._stopping = True
        for executor in self._loop_executors():
            executor.wake_waiters()

    def _due_pass(self, now: datetime) -> float | None:
        """Hand every due job to the executors, a chunk at a time, and store a chunk's next
        run times only once all its runs have finished (at most ``IN_FLIGHT`` chunks wait
        to be run or stored). Killed at any point, the process loses no reminder: runs not
        stored are due again at the next start (within the misfire grace), and those that had
        already run are skipped by their unique rows, so each fires exactly once."""
        next_wakeup: datetime | None = None
        self._memo.clear()
        for alias, store in self._jobstores.items():
            assert isinstance(store, DutyJobStore), "only DutyJobStore is configured"
            try:
                with self._jobstores_lock:
                    due = store.due_ids(now)
            except Exception as err:
                log.warning("job store %s failed: %s", alias, err)
                retry = now + timedelta(seconds=self.jobstore_retry_interval)
                next_wakeup = min(next_wakeup or retry, retry)
                continue
            in_flight: collections.deque[_Chunk] = collections.deque()
            for start in range(0, len(due), self.chunk):
                if self._stopping:
                    break
                with self._jobstores_lock:
                    jobs = store.load_due(due[start : start + self.chunk], now)
                in_flight.append(self._submit_chunk(store, jobs, now))
                del jobs
                for executor in self._loop_executors():
                    executor.kick()
                while len(in_flight) >= IN_FLIGHT and not self._stopping:
                    self._store_chunk(store, in_flight.popleft())
            while in_flight and not self._stopping:
                self._store_chunk(store, in_flight.popleft())
            if self._stopping:
                return None
            with self._jobstores_lock:
                upcoming = store.get_next_run_time()
            if upcoming and (next_wakeup is None or upcoming < next_wakeup):
                next_wakeup = upcoming
        if next_wakeup is None:
            return None
        return min(max((next_wakeup - now).total_seconds(), 0.0), 3600.0)

    def _submit_chunk(self, store: DutyJobStore, jobs: list[Job], now: datetime) -> _Chunk:
        """Submit a chunk of due jobs; what to store once they have run."""
        self._chunks += 1
        chunk = _Chunk(self._chunks)
        changed: list[Job] = []
        for executor in self._loop_executors():
            executor.chunk = chunk.number
        for n, job in enumerate(jobs):
            let_loop_run(n)
            run_times, following = self._run_times(job, now)
            run_times = run_times[-1:] if run_times and job.coalesce else run_times
            if not run_times:
                continue
            try:
                self._lookup_executor(job.executor).submit_job(job, run_times)
            except MaxInstancesReachedError:
                log.warning("job %s still running: this run skipped", job.id)
            except Exception:
                log.exception("submitting job %s failed", job.id)
            if following:
                job._modify(next_run_time=following)
                changed.append(job)
            else:
                chunk.finished.add(job.id)
        # What to store later, pickled now: the chunk's Job objects (~18 tracked objects
        # each) need not live until then.
        chunk.changed = store.states(changed)
        return chunk

    def _store_chunk(self, store: DutyJobStore, chunk: _Chunk) -> None:
        """Wait until the chunk's runs have finished, then store their next run times (one
        transaction)."""
        for executor in self._loop_executors():
            if not executor.wait_chunk(chunk.number, lambda: self._stopping):
                return
        with self._jobstores_lock:
            store.store_states(chunk.changed)
            store.remove_ids(chunk.finished)

    def _run_times(self, job: Job, now: datetime) -> tuple[list[datetime], datetime | None]:
        """``job._get_run_times(now)``, and the fire time after them (the job's next run time),
        computed once per schedule and due time in a pass: the 15,000 patrols of one
        ``0 9 * * *`` share one computation (each took ~0.1 ms of cron arithmetic, twice)."""
        key = _schedule_key(job.trigger)
        memo_key = (key, job.next_run_time)
        if key is not None and memo_key in self._memo:
            return self._memo[memo_key]
        run_times = []
        following = job.next_run_time
        while following is not None and following <= now:
            run_times.append(following)
            following = job.trigger.get_next_fire_time(following, now)
        if key is not None:
            self._memo[memo_key] = (run_times, following)
        return run_times, following

    def shutdown_now(self) -> None:
        """Stop at once, from the loop thread (the base class defers it to the loop)."""
        if self.state != STATE_STOPPED:
            super(AsyncIOScheduler, self).shutdown(wait=False)
            self._stop_timer()
        self._store_thread.shutdown(wait=True)


@dataclass
class _Chunk:
    """Jobs of a pass handed to the executor together, and what to store once they have run."""

    number: int
    changed: list[tuple[str, float | None, bytes]] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)


def _schedule_key(trigger: BaseTrigger) -> tuple[Any, ...] | None:
    """What a trigger's fire times depend on (``None``: not known, or random jitter)."""
    if getattr(trigger, "jitter", None):
        return None
    if isinstance(trigger, CronTrigger):
        fields = tuple(str(f) for f in trigger.fields)
        return ("cron", fields, trigger.timezone, trigger.start_date, trigger.end_date)
    if isinstance(trigger, IntervalTrigger):
        return (
            "interval",
            trigger.interval,
            trigger.timezone,
            trigger.start_date,
            trigger.end_date,
        )
    return None


# ---- the lease --------------------------------------------------------------------------------


# ---- the service ----------------------------------------------------------------------------


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
        self.executor = LoopExecutor(self.runtime, concurrency)
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
            if self.scheduler._pass is not None:
                with contextlib.suppress(Exception):
                    await self.scheduler._pass
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
        job = Job(
            self.scheduler,
            id=job_id,
            func=func,
            trigger=trigger,
            executor="default",
            args=args,
            kwargs={},
            name=job_id,
            misfire_grace_time=self.settings.scheduler_misfire_grace,
            coalesce=True,
            max_instances=1,
            next_run_time=first,
        )
        job._jobstore_alias = "default"
        return job

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
        with self.scheduler._jobstores_lock:
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


def patrol_trigger(schedule: str, zone: str) -> CronTrigger:
    """A patrol plan's 5-field cron schedule (minute hour day month day-of-week) in its zone.

    Use day names (``mon,wed,fri``) for days of the week: APScheduler numbers them from
    Monday = 0, unlike crontab."""
    return CronTrigger.from_crontab(schedule, timezone=ZoneInfo(zone))


def visit_trigger(frequency: str, starts_at: datetime, zone: str) -> BaseTrigger:
    """A visit plan's trigger: every 1 or 2 weeks, or monthly on the start's day, from its
    first due time (local wall clock of the plan's zone)."""
    tz = ZoneInfo(zone)
    first = starts_at.astimezone(tz)
    if frequency == "monthly":
        day = str(first.day) if first.day <= 28 else "last"
        return CronTrigger(
            day=day, hour=first.hour, minute=first.minute, timezone=tz, start_date=first
        )
    weeks = 2 if frequency == "fortnightly" else 1
    return IntervalTrigger(weeks=weeks, start_date=first, timezone=tz)


def sweep_trigger(seconds: int, zone: str) -> IntervalTrigger:
    """Every ``seconds``."""
    return IntervalTrigger(seconds=seconds, timezone=ZoneInfo(zone))


def daily_trigger(hour: int, minute: int, zone: str) -> CronTrigger:
    """Every day at ``hour:minute`` in ``zone``."""
    return CronTrigger(hour=hour, minute=minute, timezone=ZoneInfo(zone))


#: Kinds of stored jobs: the job function and its trigger's factory (given the parameters
#: :meth:`DutyScheduler.desired_jobs` reads).
JOB_KINDS: dict[str, tuple[Callable[..., Any], Callable[..., BaseTrigger]]] = {
    "patrol": (patrol_reminder, patrol_trigger),
    "visit": (visit_reminder, visit_trigger),
    "sweep": (sweep, sweep_trigger),
    "digest": (daily_digest, daily_trigger),
    "month_end": (month_end, daily_trigger),
    "bulletin": (monthly_bulletin, daily_trigger),
}
