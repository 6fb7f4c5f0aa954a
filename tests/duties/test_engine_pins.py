"""The scheduler's engine (bot/scheduler/engine.py) subclasses APScheduler past its public API.
These tests pin every private name and behaviour it relies on, so that an APScheduler upgrade
that changes one fails here, loudly, instead of silently dropping or repeating reminders.

If one fails after an upgrade: read the engine's docstring, adapt the engine to the new
internals, then move the pin in pyproject.toml."""

from __future__ import annotations

import inspect
import re
import tomllib
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from apscheduler.executors.base import BaseExecutor, MaxInstancesReachedError
from apscheduler.job import Job
from apscheduler.jobstores.base import BaseJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import create_engine

import bot.scheduler.engine as engine
from bot.scheduler import sweep
from bot.scheduler.engine import DutyJobStore, GridScheduler, LoopExecutor, new_job

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2027, 3, 1, 1, 0, tzinfo=UTC)


def params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_the_installed_apscheduler_is_the_pinned_3_11_series() -> None:
    """The engine's docstring names the pin, pyproject.toml keeps it, the installed one fits."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "APScheduler>=3.11,<4" in deps
    assert "pyproject.toml" in (engine.__doc__ or "") and "3.11" in (engine.__doc__ or "")
    major, minor = (int(x) for x in re.findall(r"\d+", version("APScheduler"))[:2])
    assert (major, minor) >= (3, 11) and major < 4


def test_the_private_names_the_engine_uses_are_there() -> None:
    # SQLAlchemyJobStore: CREATE TABLE skipped by calling BaseJobStore.start; the unpickler.
    assert params(BaseJobStore.start) == ["self", "scheduler", "alias"]
    assert params(SQLAlchemyJobStore._reconstitute_job) == ["self", "job_state"]
    # BaseExecutor: the submit hook and the success report.
    assert params(BaseExecutor._do_submit_job) == ["self", "job", "run_times"]
    assert params(BaseExecutor._run_job_success) == ["self", "job_id", "events"]
    # The schedulers: the timer, the pass, the stores and executors, the lookup.
    assert params(AsyncIOScheduler._start_timer) == ["self", "wait_seconds"]
    assert params(AsyncIOScheduler._stop_timer) == ["self"]
    assert params(BaseScheduler._process_jobs) == ["self"]
    assert params(BaseScheduler._lookup_executor) == ["self", "alias"]
    assert "self.wakeup" in inspect.getsource(AsyncIOScheduler._start_timer)
    assert hasattr(AsyncIOScheduler, "_eventloop")
    s = GridScheduler(clock=lambda: T0, manual=True, timezone=UTC)
    assert isinstance(s._executors, dict) and isinstance(s._jobstores, dict)
    assert hasattr(s._jobstores_lock, "__enter__") and s.store_lock() is s._jobstores_lock
    assert isinstance(s.jobstore_retry_interval, int | float)
    # Job: the store alias slot, _modify, the state that is pickled.
    assert "_jobstore_alias" in Job.__slots__
    assert "next_run_time" in inspect.getsource(Job._modify)
    # Triggers: what the pass's memo keys on.
    cron = CronTrigger(hour=9, minute=0, timezone=UTC)
    assert [str(f) for f in cron.fields][5:7] == ["9", "0"]  # hour, minute
    assert cron.jitter is None and cron.start_date is None and cron.end_date is None
    every = IntervalTrigger(minutes=1, timezone=UTC)
    assert every.interval == timedelta(minutes=1) and every.jitter is None
    assert every.timezone is not None and every.end_date is None


def test_jobs_go_through_the_store_by_its_private_table_and_unpickler() -> None:
    """Bulk insert, due ids, unpickling, storing the next run time, removal: the columns of
    ``jobs_t`` and ``_reconstitute_job`` as the engine uses them; the job refers to its function
    as ``bot.scheduler:sweep`` (what stored rows name)."""
    db = create_engine("sqlite://")
    scheduler = GridScheduler(clock=lambda: T0, manual=True, timezone=UTC)
    store = DutyJobStore(engine=db, tablename="apscheduler_jobs")
    store.jobs_t.create(db)
    store.start(scheduler, "default")
    trigger = IntervalTrigger(minutes=1, timezone=UTC)
    job = new_job(scheduler, "sweep:60", sweep, trigger, T0, (), 21600)
    assert job._jobstore_alias == "default" and job.func_ref == "bot.scheduler:sweep"

    store.add_jobs([job])
    assert store.due_ids(T0 - timedelta(seconds=1)) == []
    assert store.due_ids(T0) == ["sweep:60"]
    [loaded] = store.load_due(["sweep:60"], T0)
    assert loaded.func is sweep and loaded.next_run_time == T0
    assert loaded._jobstore_alias == "default" and loaded.misfire_grace_time == 21600

    later = T0 + timedelta(minutes=1)
    loaded._modify(next_run_time=later)
    store.store_states(store.states([loaded]))
    assert store.due_ids(T0) == [] and store.get_next_run_time() == later
    store.remove_ids({"sweep:60"})
    assert store.ids() == set()


def test_submitting_counts_instances_and_success_releases_them() -> None:
    """``BaseExecutor.submit_job`` refuses a second running instance (``max_instances=1``) and
    hands the first to ``_do_submit_job``; ``_run_job_success`` releases it."""
    scheduler = GridScheduler(clock=lambda: T0, manual=True, timezone=UTC)
    runtime: Any = SimpleNamespace(settings=SimpleNamespace(scheduler_batch=10), clock=lambda: T0)
    executor = LoopExecutor(runtime, 1)
    BaseExecutor.start(executor, scheduler, "default")  # no workers: nothing runs
    executor.deferred = True
    job = new_job(scheduler, "sweep:60", sweep, IntervalTrigger(minutes=1), T0, (), 60)

    executor.submit_job(job, [T0])
    assert list(executor.queue) == [
        ("sweep:60", "bot.scheduler:sweep", (), (T0,), 60, "default", 0)
    ]
    with pytest.raises(MaxInstancesReachedError):
        executor.submit_job(job, [T0])
    executor._run_job_success("sweep:60", [])
    executor.submit_job(job, [T0 + timedelta(minutes=1)])
    assert len(executor.queue) == 2
