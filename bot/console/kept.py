"""Overview reports kept ready for every console instance, so that no viewer waits for one.

A city's month takes seconds to compute (:func:`bot.reports.kpi.build_report`); the overview
should not. So the overview of a subtree and month is computed **in the background** and kept
in the table ``console_report`` (grid + month → when it was computed, the figures as JSON):
every instance reads the same rows, and a restart does not start cold.

* **Ahead of anyone asking.** The scheduler's leader runs :func:`refresh` every
  ``console_report_seconds`` (``bot.scheduler:console_reports``): this month's overview of every
  grid where someone is head or admin (what the console opens first) and of every grid whose
  overview was opened in the last :data:`RECENT` — the recently viewed first, then the top of
  the tree, at most ``console_report_batch`` per run and never longer than the cadence.
* **On a view.** The console reads the kept row (one primary-key lookup); one older than the
  cadence is still shown, with its time, while this instance recomputes it. With no row at all
  (a subtree nobody opened this month) it waits ``console_report_wait_ms`` for the computation
  it starts when that computation is expected in time (:func:`quick`), then shows what it has
  and says the figures are being computed; one not expected in time (a city's) is started
  after the page, so that the page does not share the machine with it.
* **Not forever.** A run deletes the kept rows of months older than :data:`KEEP_MONTHS`.

On PostgreSQL a computation runs in a thread of its own with its own event loop and
connection (:func:`compute_apart`), on one core (:func:`compute`), so the pages this process
serves meanwhile are not held up behind it; two instances may compute the same new subtree
at once (the newer result is kept).

What is kept is what the overview and its chart show: the subtree's row and its child grids'
rows (figures of the month and of the month before, score, rank, rates below a floor), never
orders or people.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import NullPool

from bot.config import Settings
from bot.reports.kpi import (
    Figures,
    GridRow,
    Period,
    Ratio,
    Report,
    Scope,
    build_report,
    load_scope,
)
from models import ConsoleReport, Grid, Role
from models.db import make_engine, make_sessionmaker
from models.people import ROLE_ADMIN, ROLE_HEAD

log = logging.getLogger(__name__)

#: The shape of the JSON kept; a row of another version is computed again.
VERSION = 1
#: An overview opened within this long is kept fresh by the background runs.
RECENT = timedelta(days=7)
#: Opened within this long: refreshed before the top of the tree.
HOT = timedelta(days=1)
#: ``viewed_at`` is written at most this often per row (a reload is not a write).
VIEW_MARK = timedelta(minutes=1)
#: A subtree never computed is waited for (up to ``console_report_wait_ms``) only when it has
#: fewer grids than this: a community or smaller. A Yunfu community (about 22 grids, a thousand
#: orders a month) computes in about 80 ms on PostgreSQL; a city of 223 grids and 10,800
#: orders took 0.43 s (``bench/console.py --scale 0.01``), not worth keeping anyone waiting.
QUICK_GRIDS = 50
#: Kept rows of this many months (this one included) stay; older ones are deleted by a run.
KEEP_MONTHS = 13


@dataclass
class Overview:
    """The kept overview of one subtree and month."""

    grid_id: int
    period: str
    computed_at: datetime
    total: GridRow
    children: list[GridRow]
    #: How long the computation took (milliseconds); ``None``: not measured.
    took_ms: int | None = None

    def as_report(self, period: Period) -> Report:
        """A :class:`Report` carrying only these rows (what the bulletin's chart reads)."""
        return Report(
            scope=Scope(None, {}, {}), period=period, previous=period.previous(),
            total=self.total, children=self.children, orders=[], members=[], visits=[],
            patrols=[], categories=[], buildings=[], names={}, buildings_by_id={},
            made_at=self.computed_at,
        )


# ---- JSON ---------------------------------------------------------------------------------------


def _figures_json(f: Figures) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fld in fields(Figures):
        value = getattr(f, fld.name)
        out[fld.name] = [value.num, value.den] if isinstance(value, Ratio) else value
    return out


def _figures(data: dict[str, Any]) -> Figures:
    blank = Figures()
    values: dict[str, Any] = {}
    for fld in fields(Figures):
        if fld.name in data:
            raw = data[fld.name]
            values[fld.name] = Ratio(*raw) if isinstance(getattr(blank, fld.name), Ratio) else raw
    return Figures(**values)


def _row_json(row: GridRow) -> dict[str, Any]:
    return {
        "grid_id": row.grid_id, "code": row.code, "name": row.name,
        "figures": _figures_json(row.figures), "previous": _figures_json(row.previous),
        "score": row.score, "rank": row.rank,
        "below": [[name, r.num, r.den, floor] for name, r, floor in row.below],
    }


def _row(data: dict[str, Any]) -> GridRow:
    return GridRow(
        data["grid_id"], data["code"], data["name"], _figures(data["figures"]),
        _figures(data["previous"]), data["score"], data["rank"],
        [(name, Ratio(num, den), floor) for name, num, den, floor in data["below"]],
    )


def encode(overview: Overview) -> str:
    """The JSON kept in ``console_report.report``."""
    return json.dumps(
        {"v": VERSION, "total": _row_json(overview.total),
         "children": [_row_json(r) for r in overview.children]},
        ensure_ascii=False, separators=(",", ":"),
    )


def decode(row: ConsoleReport) -> Overview | None:
    """The kept overview, ``None`` when it was written in another shape."""
    try:
        data = json.loads(row.report)
        if data.get("v") != VERSION:
            return None
        return Overview(row.grid_id, row.period, row.computed_at, _row(data["total"]),
                        [_row(r) for r in data["children"]], row.took_ms)
    except (ValueError, KeyError, TypeError):
        log.warning("console: a kept report of grid %s %s could not be read", row.grid_id,
                    row.period)
        return None


# ---- computing and keeping ----------------------------------------------------------------------


def month_of(now: datetime, settings: Settings) -> Period:
    """The local calendar month ``now`` falls in."""
    local = now.astimezone(settings.tz)
    return Period.month(local.year, local.month, settings.tz)


async def compute(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    code: str,
    period: Period,
    now: datetime,
) -> Overview:
    """The overview of grid ``code``'s subtree for ``period``, from the one KPI module. Its
    time is ``now``, taken before anything is read: whatever was committed before it counts.

    On one core: its parts one after another on one connection, and on PostgreSQL without
    parallel workers. Nobody waits on it as on a page, and the pages served meanwhile need the
    other core: at Yunfu scale on 2 cores, a head's orders page during the background run was
    p95 508–772 ms with the city's month computed on every core, 146–153 ms on one (the city's
    figures ready after 14.8 s instead of 11.2 s; ``bench/console.py``)."""
    started = time.monotonic()
    async with sessionmaker() as session:
        if session.get_bind().dialect.name == "postgresql":
            await session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
        scope = await load_scope(session, code)
        assert scope.root is not None
        made = await build_report(session, settings, scope, period, now, with_orders=False,
                                  sequential=True)
    took_ms = round((time.monotonic() - started) * 1000)
    return Overview(scope.root.id, period.label, now, made.total, made.children, took_ms)


async def compute_apart(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    code: str,
    period: Period,
    now: datetime,
) -> Overview:
    """:func:`compute` in a thread of its own (its own event loop and connection) on
    PostgreSQL: a city's month is seconds of work, which on this process's loop would hold up
    every page it serves meanwhile. On SQLite (one process, small) on this loop.

    Cancelling the caller cancels the computation in its thread too (its statement is
    cancelled on the server, its connection closed), so stopping the service does not wait
    for a city's month to finish."""
    bind = sessionmaker.kw.get("bind")
    if not isinstance(bind, AsyncEngine) or bind.dialect.name == "sqlite":
        return await compute(sessionmaker, settings, code, period, now)
    url = bind.url.render_as_string(hide_password=False)

    async def apart() -> Overview:
        engine = make_engine(url, poolclass=NullPool)
        try:
            return await compute(make_sessionmaker(engine), settings, code, period, now)
        finally:
            await engine.dispose()

    apart_loop = asyncio.new_event_loop()
    work = apart_loop.create_task(apart())

    def run() -> Overview:
        try:
            return apart_loop.run_until_complete(work)
        finally:
            apart_loop.run_until_complete(apart_loop.shutdown_asyncgens())
            apart_loop.close()

    thread = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        if not apart_loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile: nothing left to stop
                apart_loop.call_soon_threadsafe(work.cancel)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await thread  # the thread ends once its computation has unwound
        raise


async def store(
    sessionmaker: async_sessionmaker[AsyncSession],
    overview: Overview,
    viewed_at: datetime | None = None,
) -> None:
    """Keep ``overview`` (an older computation never replaces a newer one)."""
    async with sessionmaker() as session, session.begin():
        dialect = session.bind.dialect.name if session.bind else "sqlite"
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        statement = insert(ConsoleReport).values(
            grid_id=overview.grid_id, period=overview.period, computed_at=overview.computed_at,
            viewed_at=viewed_at, report=encode(overview), took_ms=overview.took_ms,
        )
        changes: dict[str, Any] = {
            "computed_at": statement.excluded.computed_at,
            "report": statement.excluded.report,
            "took_ms": statement.excluded.took_ms,
        }
        if viewed_at is not None:
            changes["viewed_at"] = statement.excluded.viewed_at
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[ConsoleReport.grid_id, ConsoleReport.period],
                set_=changes,
                where=ConsoleReport.computed_at <= statement.excluded.computed_at,
            )
        )


async def read(session: AsyncSession, grid_id: int, period: str) -> Overview | None:
    """The kept overview of ``grid_id``'s subtree and month ``period``, if any."""
    row = await session.get(ConsoleReport, (grid_id, period))
    return decode(row) if row is not None else None


async def quick(session: AsyncSession, grid: Grid, wait_ms: int) -> bool:
    """Whether an overview of ``grid``'s subtree is expected to be computed within
    ``wait_ms`` (so a viewer with nothing kept is worth keeping waiting for it): its latest
    measured computation, of any month, took no longer; never measured, the subtree has fewer
    than :data:`QUICK_GRIDS` grids."""
    if wait_ms <= 0:
        return False
    took = await session.scalar(
        select(ConsoleReport.took_ms)
        .where(ConsoleReport.grid_id == grid.id, ConsoleReport.took_ms.is_not(None))
        .order_by(ConsoleReport.computed_at.desc())
        .limit(1)
    )
    if took is not None:
        return took <= wait_ms
    size = await session.scalar(
        select(func.count()).select_from(
            select(Grid.id)
            .where(Grid.path.startswith(grid.path, autoescape=True))
            .limit(QUICK_GRIDS)
            .subquery()
        )
    )
    return (size or 0) < QUICK_GRIDS


async def mark_viewed(session: AsyncSession, grid_id: int, period: str, now: datetime) -> None:
    """Someone opened this overview (written at most every :data:`VIEW_MARK`)."""
    await session.execute(
        update(ConsoleReport)
        .where(
            ConsoleReport.grid_id == grid_id,
            ConsoleReport.period == period,
            (ConsoleReport.viewed_at.is_(None)) | (ConsoleReport.viewed_at < now - VIEW_MARK),
        )
        .values(viewed_at=now)
    )


# ---- the background run -------------------------------------------------------------------------


async def due(
    session: AsyncSession, settings: Settings, period: Period, now: datetime
) -> list[str]:
    """The grids (codes) whose overview of ``period`` should be computed now, most wanted
    first: missing or older than the cadence; of the grids of heads and admins and the
    recently viewed ones; those viewed in the last :data:`HOT` first, then by depth (the top
    of the tree first), then the oldest."""
    fresh_after = now - timedelta(seconds=settings.console_report_seconds)
    kept = {
        gid: (computed, viewed)
        for gid, computed, viewed in (
            await session.execute(
                select(ConsoleReport.grid_id, ConsoleReport.computed_at, ConsoleReport.viewed_at)
                .where(ConsoleReport.period == period.label)
            )
        ).all()
    }
    role_grids = select(Role.grid_id).where(Role.role.in_((ROLE_HEAD, ROLE_ADMIN)))
    recent = select(ConsoleReport.grid_id).where(ConsoleReport.viewed_at >= now - RECENT)
    grids = (
        await session.execute(
            select(Grid.id, Grid.code, Grid.depth).where(
                Grid.id.in_(role_grids) | Grid.id.in_(recent)
            )
        )
    ).all()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    wanted = []
    for gid, code, depth in grids:
        computed, viewed = kept.get(gid, (None, None))
        if computed is not None and computed > fresh_after:
            continue
        hot = viewed is not None and viewed >= now - HOT
        wanted.append(((not hot, depth, computed or epoch), code))
    wanted.sort(key=lambda item: item[0])
    return [code for _, code in wanted]


async def refresh(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    clock: Callable[[], datetime],
) -> int:
    """One background run: compute and keep the most wanted of this month's overviews, at
    most ``console_report_batch`` and for no longer than the cadence. How many were kept."""
    if not settings.console_on:
        return 0
    started = time.monotonic()
    period = month_of(clock(), settings)
    async with sessionmaker() as session, session.begin():
        oldest = period
        for _ in range(KEEP_MONTHS - 1):
            oldest = oldest.previous()
        await session.execute(delete(ConsoleReport).where(ConsoleReport.period < oldest.label))
        todo = await due(session, settings, period, clock())
    done = 0
    for code in todo[: settings.console_report_batch]:
        if time.monotonic() - started > settings.console_report_seconds * 0.8:
            break
        try:
            made = await compute_apart(sessionmaker, settings, code, period, clock())
            await store(sessionmaker, made)
            done += 1
        except Exception:  # one bad subtree does not stop the others
            log.exception("console: could not compute the overview of %s %s", code,
                          period.label)
    if todo:
        log.info("console: %d of %d overviews of %s computed in %.1f s", done, len(todo),
                 period.label, time.monotonic() - started)
    return done
