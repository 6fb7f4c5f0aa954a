"""The scheduler's engine: APScheduler 3.11 subclassed where its public API does not reach.

**This module is the only one that uses APScheduler's private API.** ``pyproject.toml`` pins
``APScheduler>=3.11,<4``; the installed 3.11.x is what this was written against, and
``tests/duties/test_engine_pins.py`` pins each private name below (and the behaviour relied
on), so that an upgrade that changes them fails loudly there rather than misfiring reminders.

What it relies on, by class:

* :class:`DutyJobStore` (``SQLAlchemyJobStore``): the table object ``jobs_t`` (columns ``id``,
  ``next_run_time`` as a UTC timestamp, ``job_state`` as a pickle), ``engine``,
  ``pickle_protocol``, ``_reconstitute_job(state)``, and ``BaseJobStore.start`` called to skip
  ``SQLAlchemyJobStore.start``'s ``CREATE TABLE``.
* :class:`LoopExecutor` (``BaseExecutor``): ``submit_job`` checks ``max_instances`` and calls
  the overridden ``_do_submit_job(job, run_times)``; ``_run_job_success(job_id, events)``
  dispatches the events and lowers the instance count.
* :class:`GridScheduler` (``AsyncIOScheduler``): ``_eventloop``, ``_start_timer`` /
  ``_stop_timer``, ``_process_jobs`` (overridden: the due-job pass), ``_executors``,
  ``_jobstores``, ``_jobstores_lock``, ``_lookup_executor``, ``jobstore_retry_interval``, and
  ``BaseScheduler.shutdown`` called past ``AsyncIOScheduler.shutdown``.
* ``Job``: built directly (:func:`new_job`) with ``_jobstore_alias`` set, ``_modify(
  next_run_time=...)``, ``__getstate__``, ``func_ref``; ``CronTrigger.fields`` and the
  ``interval`` / ``start_date`` / ``end_date`` / ``timezone`` / ``jitter`` of triggers (the
  memo of :meth:`GridScheduler._run_times`).

The jobs it runs, their batching and the record of a missed run are :mod:`bot.scheduler`'s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import pickle
import threading
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

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
from sqlalchemy import select

from bot.scheduler.pacing import let_loop_run

if TYPE_CHECKING:
    from bot.scheduler import DutyRuntime

log = logging.getLogger(__name__)

#: Records a run of ``func`` with ``args`` due at a time missed by more than the grace.
MissedRecorder = Callable[
    ["DutyRuntime", Callable[..., Any], tuple[Any, ...], datetime], Awaitable[None]
]

#: Due jobs handled at a time by a due-job pass, and jobs built and stored at a time by a
#: reconcile: bounds how many ``Job`` objects (with their triggers) are alive at once.
PASS_CHUNK = 500
#: Chunks of a pass handed to the executor and not yet stored, at most.
IN_FLIGHT = 2


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

    def __init__(
        self,
        runtime: DutyRuntime,
        concurrency: int,
        *,
        batched: Mapping[Callable[..., Any], Callable[..., Awaitable[None]]] | None = None,
        on_missed: MissedRecorder | None = None,
    ) -> None:
        super().__init__()
        self.runtime = runtime
        #: Jobs whose occurrences may share a transaction: job function → batch function.
        self.batched = dict(batched or {})
        #: Records a run time missed by more than the grace.
        self.on_missed = on_missed
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
            batch = self.batched.get(job_function(run[1]))
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
                        if self.on_missed is not None:
                            await self.on_missed(rt, job_function(func_ref), args, run_time)
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

    def store_lock(self) -> Any:
        """The lock held around job store access (the store thread's passes hold it too)."""
        return self._jobstores_lock

    async def pass_finished(self) -> None:
        """Wait for a pass in progress to end (its errors are the pass's own, logged)."""
        if self._pass is not None:
            with contextlib.suppress(Exception):
                await self._pass

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


def new_job(
    scheduler: GridScheduler,
    job_id: str,
    func: Callable[..., Any],
    trigger: BaseTrigger,
    first: datetime,
    args: tuple[Any, ...],
    misfire_grace_time: int,
) -> Job:
    """A job for ``DutyJobStore.add_jobs``, built without the scheduler's ``add_job`` (which
    stores one job per transaction): as ``add_job`` would make it, in the ``default`` store."""
    job = Job(
        scheduler,
        id=job_id,
        func=func,
        trigger=trigger,
        executor="default",
        args=args,
        kwargs={},
        name=job_id,
        misfire_grace_time=misfire_grace_time,
        coalesce=True,
        max_instances=1,
        next_run_time=first,
    )
    job._jobstore_alias = "default"
    return job
