"""The overview's kept reports (``bot.console.kept``), on SQLite and PostgreSQL: computed in the
background for the grids of heads and admins, read by any instance, never waited for longer
than the budget, scoped like every page, and marked when the viewer acted since."""

from __future__ import annotations

import asyncio
import threading
from contextlib import aclosing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from bot.console import kept
from bot.scheduler import DutyRuntime, console_reports
from models import ConsoleReport, Grid, Role
from models.people import ROLE_ADMIN, ROLE_HEAD
from tests.console.support import NOW, ConsoleHarness, console_harness, later
from tests.reports.history import write_history

CHEN = "p-chen-shuji"  # community admin of 新华社区 (xinhua)
LIU = "p-liu-wanggezhang"  # head of 第一网格 (xh-g1) only


def _csrf(html: str) -> str:
    return html.split('name="csrf" value="', 1)[1].split('"', 1)[0]


async def _kept(h: ConsoleHarness, code: str, period: str) -> kept.Overview | None:
    async with h.app.sessionmaker() as session:
        grid = await session.scalar(select(Grid).where(Grid.code == code))
        assert grid is not None
        return await kept.read(session, grid.id, period)


async def _computed(h: ConsoleHarness, code: str, period: str, after: datetime) -> None:
    """Wait (a bounded number of polls) until the background has kept a newer overview."""
    for _ in range(600):
        found = await _kept(h, code, period)
        if found is not None and found.computed_at >= after:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no overview of {code} {period} computed")


async def _run_job(h: ConsoleHarness) -> int:
    """The scheduler's job, as its leader runs it; how many overviews it kept."""
    before = await _rows(h)
    rt = DutyRuntime(h.app.sessionmaker, h.app.tr, h.app.settings, h.clock)
    await console_reports(rt=rt, due_at=h.clock())
    after = await _rows(h)
    return sum(1 for key, at in after.items() if before.get(key) != at)


async def _rows(h: ConsoleHarness) -> dict[tuple[int, str], datetime]:
    async with h.app.sessionmaker() as session:
        return {
            (r.grid_id, r.period): r.computed_at
            for r in (await session.scalars(select(ConsoleReport))).all()
        }


async def test_a_subtree_nobody_opened_shows_it_is_being_computed_then_its_figures(
    database_url: str, tmp_path: Path
) -> None:
    """No kept report and no time to wait: the page answers at once with the grid and a note
    (and reloads itself); the figures computed meanwhile are kept and shown with their time."""
    async with console_harness(database_url, tmp_path, console_report_wait_ms=0) as h:
        await write_history(h.app.sessionmaker)
        async with aclosing(await h.signed_in(CHEN)) as chen:
            first = await chen.get("/console/?month=2026-10")
            assert first.status_code == 200
            assert 'data-testid="computing"' in first.text and "正在计算" in first.text
            assert '<meta http-equiv="refresh"' in first.text
            assert "新华社区 · 2026-10" in first.text
            assert 'data-testid="received"' not in first.text
            await _computed(h, "xinhua", "2026-10", NOW)
            second = await chen.get("/console/?month=2026-10")
            assert 'data-testid="received">8<' in second.text and "2/3" in second.text
            assert "计算于 10:00" in second.text
            assert 'data-testid="computing"' not in second.text
            assert '<meta http-equiv="refresh"' not in second.text
            chart = await chen.get("/console/chart.png?month=2026-10")
            assert chart.content.startswith(b"\x89PNG")


async def test_the_background_job_keeps_the_overviews_of_heads_and_admins(
    database_url: str, tmp_path: Path
) -> None:
    """The job computes this month's overview of every head's and admin's grid; a console
    that never computed one (another instance, a restart) serves it at once, scoped; older
    than the cadence they are computed again, the recently viewed first."""
    async with console_harness(database_url, tmp_path, console_report_wait_ms=0) as h:
        await h.place("xh-b01")
        assert await _run_job(h) == 4
        async with h.app.sessionmaker() as session:
            wanted = set((await session.scalars(
                select(Grid.code).join(Role, Role.grid_id == Grid.id)
                .where(Role.role.in_((ROLE_HEAD, ROLE_ADMIN)))
            )).all())
            kept_codes = set((await session.scalars(
                select(Grid.code).join(ConsoleReport, ConsoleReport.grid_id == Grid.id)
                .where(ConsoleReport.period == "2027-03")
            )).all())
        assert kept_codes == wanted == {"xinhua", "xh-g1", "xh-g2", "xh-g3"}
        assert await _run_job(h) == 0  # all fresh: nothing to do
        async with aclosing(await h.signed_in(LIU)) as liu:
            page = await liu.get("/console/")
            assert "第一网格 · 2027-03" in page.text
            assert 'data-testid="received">1<' in page.text and "计算于 10:00" in page.text
            # The community's kept report is there, and still not for a head of one grid.
            other = await liu.get("/console/?grid=xinhua")
            assert other.status_code == 404 and "新华社区" not in other.text
        later(h.clock, seconds=h.app.settings.console_report_seconds + 1)
        async with h.app.sessionmaker() as session:
            due = await kept.due(session, h.app.settings,
                                 kept.month_of(h.clock(), h.app.settings), h.clock())
        assert due[:2] == ["xh-g1", "xinhua"]  # viewed just now, then the top of the tree
        assert await _run_job(h) == 4


async def test_a_run_computes_a_bounded_batch_top_grids_first(
    database_url: str, tmp_path: Path
) -> None:
    async with console_harness(database_url, tmp_path, console_report_batch=2) as h:
        assert await _run_job(h) == 2
        assert await _kept(h, "xinhua", "2027-03") is not None
        assert await _run_job(h) == 2  # the other two
        assert await _run_job(h) == 0


async def test_figures_older_than_the_viewers_action_say_so_and_are_recomputed(
    database_url: str, tmp_path: Path
) -> None:
    async with console_harness(database_url, tmp_path, console_report_wait_ms=0) as h:
        oid = await h.place("xh-b01")
        await _run_job(h)
        later(h.clock, minutes=2)
        async with aclosing(await h.signed_in(LIU)) as liu:
            order = await liu.get(f"/console/orders/{oid}")
            done = await liu.post(f"/console/orders/{oid}/escalate",
                                  data={"csrf": _csrf(order.text), "reason": "需要社区协调"})
            assert done.status_code == 303
            page = await liu.get("/console/")
            assert "计算于 10:00" in page.text and 'data-testid="acted-since"' in page.text
            assert "您在 10:02 的操作尚未计入" in page.text
            await _computed(h, "xh-g1", "2027-03", h.clock())
            again = await liu.get("/console/")
            assert "计算于 10:02" in again.text
            assert 'data-testid="acted-since"' not in again.text


async def _slow_last_month(h: ConsoleHarness, code: str, took_ms: int) -> None:
    """``code``'s overview was last computed for the month before, taking ``took_ms``."""
    made = await kept.compute(h.app.sessionmaker, h.app.settings, code,
                              kept.month_of(h.clock(), h.app.settings).previous(), h.clock())
    made.took_ms = took_ms
    await kept.store(h.app.sessionmaker, made)


async def test_a_subtree_known_to_be_slow_is_not_waited_for_and_is_computed_after_the_page(
    database_url: str, tmp_path: Path
) -> None:
    """Nothing kept for this month, and last month's overview took longer than the page may
    wait: the page answers at once (it does not share the machine with the computation) and
    the figures are computed after it; a subtree known to be quick is waited for."""
    async with console_harness(database_url, tmp_path) as h:  # waits up to 30 s
        await h.place("xh-b01")
        budget = h.app.settings.console_report_wait_ms
        await _slow_last_month(h, "xinhua", budget + 1)
        await _slow_last_month(h, "xh-g1", budget)
        async with aclosing(await h.signed_in(CHEN)) as chen:
            first = await chen.get("/console/")
            assert 'data-testid="computing"' in first.text
            await _computed(h, "xinhua", "2027-03", NOW)
            found = await _kept(h, "xinhua", "2027-03")
            assert found is not None and found.took_ms is not None and found.took_ms >= 0
            second = await chen.get("/console/")
            assert 'data-testid="received">1<' in second.text
            quick = await chen.get("/console/?grid=xh-g1")
            assert 'data-testid="computing"' not in quick.text
            assert 'data-testid="received">1<' in quick.text


async def test_a_large_subtree_never_computed_is_not_waited_for(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never computed: a subtree of ``QUICK_GRIDS`` grids or more (lowered here to 4; the
    demo community has 13) is computed after the page; a smaller one is waited for."""
    monkeypatch.setattr(kept, "QUICK_GRIDS", 4)
    async with console_harness(database_url, tmp_path) as h, aclosing(
        await h.signed_in(CHEN)
    ) as chen:
        first = await chen.get("/console/")  # 新华社区: 13 grids
        assert 'data-testid="computing"' in first.text
        small = await chen.get("/console/?grid=xh-g2-m1")  # one grid
        assert 'data-testid="computing"' not in small.text
        assert "第二网格1号微网格 · 2027-03" in small.text and "计算于 10:00" in small.text
        await _computed(h, "xinhua", "2027-03", NOW)
        assert 'data-testid="computing"' not in (await chen.get("/console/")).text


async def test_a_run_forgets_kept_months_older_than_a_year(
    database_url: str, tmp_path: Path
) -> None:
    async with console_harness(database_url, tmp_path) as h:
        async with h.app.sessionmaker() as session, session.begin():
            grid = await session.scalar(select(Grid).where(Grid.code == "xh-g1"))
            assert grid is not None
            for period in ("2026-02", "2026-03"):
                session.add(ConsoleReport(grid_id=grid.id, period=period, computed_at=NOW,
                                          report="{}"))
        await _run_job(h)
        kept_periods = {period for _, period in await _rows(h)}
        assert kept_periods == {"2026-03", "2027-03"}  # 2026-02 is 13 months back


async def test_stopping_the_service_cancels_an_overview_being_computed(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A computation the console started (on PostgreSQL in a thread of its own, where a
    city's month takes seconds) is cancelled when the service stops, not waited for."""
    started, unwound = threading.Event(), threading.Event()

    async def slow_report(*args: object, **kwargs: object) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            unwound.set()
            raise

    monkeypatch.setattr(kept, "build_report", slow_report)
    async with console_harness(database_url, tmp_path, console_report_wait_ms=0) as h:
        async with aclosing(await h.signed_in(CHEN)) as chen:
            page = await chen.get("/console/")
            assert 'data-testid="computing"' in page.text
        assert await asyncio.to_thread(started.wait, 60)
        await h.app.stop()
        assert unwound.is_set()
        assert await _kept(h, "xinhua", "2027-03") is None


async def test_a_kept_overview_is_computed_on_one_core(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pages served meanwhile need the other core: the report's parts run one after
    another, and PostgreSQL plans them without parallel workers."""
    seen: list[tuple[bool, str | None]] = []
    real = kept.build_report

    async def spy(session: AsyncSession, *args: Any, **kwargs: Any) -> Any:
        workers = None
        if session.get_bind().dialect.name == "postgresql":
            workers = await session.scalar(text("SHOW max_parallel_workers_per_gather"))
        seen.append((kwargs.get("sequential", False), workers))
        return await real(session, *args, **kwargs)

    monkeypatch.setattr(kept, "build_report", spy)
    async with console_harness(database_url, tmp_path) as h:
        made = await kept.compute_apart(h.app.sessionmaker, h.app.settings, "xinhua",
                                        kept.month_of(h.clock(), h.app.settings), h.clock())
        assert made.period == "2027-03" and made.total.name == "新华社区"
        postgres = database_url.startswith("postgresql")
        assert seen == [(True, "0" if postgres else None)]
        if postgres:  # only the computation's own transaction was changed
            async with h.app.sessionmaker() as session:
                assert await session.scalar(text("SHOW max_parallel_workers_per_gather")) != "0"
