"""The duty scheduler: APScheduler 3.11 with a persistent job store in the project's database.

This module holds the jobs themselves: the job store's rows name them by reference
(``bot.scheduler:patrol_reminder``), so they stay here. The rest, by module:

* :mod:`bot.scheduler.leader`: :class:`DutyScheduler`, the service (lease, reconcile from the
  plans, start and stop);
* :mod:`bot.scheduler.engine`: the job store, executor and scheduler subclasses, the only code
  using APScheduler's private API;
* :mod:`bot.scheduler.triggers`: the schedules; :mod:`bot.scheduler.pacing`: GIL and heap.

Design (see the APScheduler section of the platform notes for why):

* **Domain tables are the truth.** Patrol and visit plans live in ``patrol_plan`` /
  ``visit_plan``; at start-up (and when plans change, checked on every sweep) the job store is
  reconciled from them. Job ids are plain strings that carry a fingerprint of the trigger
  (``patrol:12:1a2b3c4d``), so reconciling needs only the ids: unchanged jobs keep their stored
  next run time (a reminder missed while the service was down is still due), changed ones are
  replaced, orphans removed.
* **Jobs are module-level coroutines** (``patrol_reminder``, ``visit_reminder``, ``sweep``,
  ``daily_digest``, ``month_end``, ``monthly_bulletin``,
  ``console_reports``) stored as ``module:function`` with plain arguments (ids).
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
  the scheduler's due-job pass (:meth:`~bot.scheduler.engine.GridScheduler._due_pass`) runs in
  one dedicated thread. It works through the due jobs in chunks (``PASS_CHUNK``): unpickles a
  chunk, hands its runs to :class:`~bot.scheduler.engine.LoopExecutor` as plain tuples, and
  stores the chunk's next run times (one transaction) only once all of its runs have finished,
  with at most ``IN_FLIGHT`` chunks handed over and not stored. A process killed in a burst
  therefore loses no reminder: what was not stored is due again at the next start, and what had
  already run is skipped by its unique row. The executor runs jobs on the loop with bounded
  concurrency, batching reminders into shared transactions written with multi-row statements.
* **The loop stays responsive in a burst** (15,000 patrols + 50,000 visits at 09:00; see
  ``bench/README.md``). No unpickled ``Job`` lives longer than its chunk, and the heap built by
  start-up is frozen out of the garbage collector's scans
  (:func:`~bot.scheduler.pacing.freeze_startup_heap`): full collections, which hold the GIL,
  had stalled the loop for 120-450 ms. The store thread hands the GIL over every 0.2 ms of its
  Python work (:func:`~bot.scheduler.pacing.let_loop_run`), and a batch of reminders yields to
  the loop between its statements and every few reminders.
* **One scheduler per database.** A lease row (``scheduler_lease``) with an expiry renewed by
  the leader (SQLite and PostgreSQL alike). On PostgreSQL a second instance stands by and takes
  over when the lease runs out; on SQLite (single instance by design) a second ``gridbot run``
  on the same file is refused with a clear message.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from apscheduler.triggers.base import BaseTrigger
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.core.duties.service import DutyService
from bot.core.notify import Notifier
from bot.i18n import Translator
from bot.scheduler.triggers import daily_trigger, patrol_trigger, sweep_trigger, visit_trigger
from models import utcnow

if TYPE_CHECKING:
    from bot.scheduler.leader import DutyScheduler

log = logging.getLogger(__name__)


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


async def console_reports(
    *, rt: DutyRuntime | None = None, due_at: datetime | None = None
) -> None:
    """Every ``console_report_seconds``: this month's console overviews computed ahead of
    anyone asking, kept for every instance (:func:`bot.console.kept.refresh`)."""
    assert rt is not None, "run by LoopExecutor"
    from bot.console.kept import refresh

    await refresh(rt.sessionmaker, rt.settings, rt.clock)


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



#: Kinds of stored jobs: the job function and its trigger's factory (given the parameters
#: :meth:`DutyScheduler.desired_jobs` reads).
JOB_KINDS: dict[str, tuple[Callable[..., Any], Callable[..., BaseTrigger]]] = {
    "patrol": (patrol_reminder, patrol_trigger),
    "visit": (visit_reminder, visit_trigger),
    "sweep": (sweep, sweep_trigger),
    "digest": (daily_digest, daily_trigger),
    "month_end": (month_end, daily_trigger),
    "bulletin": (monthly_bulletin, daily_trigger),
    "console_reports": (console_reports, sweep_trigger),
}


# The service and its refusal, for ``from bot.scheduler import DutyScheduler`` (imported last:
# they use the jobs above).
from bot.scheduler.leader import DutyScheduler, SchedulerRefused  # noqa: E402

__all__ = [
    "BATCHED",
    "JOB_KINDS",
    "DutyRuntime",
    "DutyScheduler",
    "SchedulerRefused",
    "console_reports",
    "daily_digest",
    "daily_trigger",
    "missed",
    "month_end",
    "monthly_bulletin",
    "patrol_reminder",
    "patrol_reminders",
    "patrol_trigger",
    "sweep",
    "sweep_trigger",
    "visit_reminder",
    "visit_reminders",
    "visit_trigger",
]
