"""The report's independent reads on one shared snapshot (bot.reports.snapshot): on
PostgreSQL they run on several connections at the same time and give the same Report as the
sequential path; a write committed while they run is counted by none of them."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from bot.reports import kpi, snapshot
from bot.reports.kpi import Period, Report, build_report, load_scope
from models import Person
from tests.conftest import Harness
from tests.duties.conftest import SH
from tests.reports.history import local, write_history

OCTOBER = Period.month(2026, 10, SH)


def comparable(report: Report) -> Any:
    """The report with its buildings by name (ORM objects of other sessions differ)."""
    names = {k: b.name for k, b in report.buildings_by_id.items()}
    return replace(report, buildings_by_id={}), names


async def reports(harness: Harness, code: str | None, *ways: bool) -> list[Any]:
    """The report of ``code`` made each way (sequential or not) in one session, one scope."""
    async with harness.app.sessionmaker() as session:
        scope = await load_scope(session, code)
        return [comparable(await build_report(
            session, harness.app.settings, scope, OCTOBER, local(2026, 11, 1, 9, 0),
            sequential=sequential)) for sequential in ways]


@pytest.fixture(autouse=True)
def any_subtree(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's subtrees are small: let any of them read its parts concurrently."""
    monkeypatch.setattr(kpi, "CONCURRENT_FROM_GRIDS", 1)


@pytest.fixture
def parts_seen(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the parts run on the shared snapshot's connections."""
    seen: list[int] = []

    async def count() -> None:
        seen.append(1)

    monkeypatch.setattr(snapshot, "before_part", count)
    return seen


async def test_concurrent_report_equals_sequential(
    harness: Harness, database_url: str, parts_seen: list[int]
) -> None:
    await write_history(harness.app.sessionmaker)
    for code in (None, "xinhua", "xh-g1"):
        want, got = await reports(harness, code, True, False)
        assert got == want
        assert want[0].total.figures.received > 0 and want[0].members
    # On PostgreSQL the six parts ran on the other connections; SQLite stays in the session.
    assert len(parts_seen) == (18 if database_url.startswith("postgresql") else 0)


async def test_a_write_while_the_parts_run_is_seen_by_none(
    harness: Harness, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("the parts share a snapshot on PostgreSQL only")
    await write_history(harness.app.sessionmaker)
    written: list[int] = []
    committed = asyncio.Event()

    async def write_once() -> None:
        # The snapshot is taken: the October stories again, committed before any part runs.
        if not written:
            written.append(1)
            await write_history(harness.app.sessionmaker)
            committed.set()
        await committed.wait()

    monkeypatch.setattr(snapshot, "before_part", write_once)
    before, during = await reports(harness, None, True, False)
    assert written and during == before
    # Written and committed: any report made now counts them (orders and members' work).
    (after,) = await reports(harness, None, True)
    assert after[0].total.figures.received == 2 * before[0].total.figures.received
    done = {m.person_id: m.done for m in before[0].members}
    assert any(m.done > done[m.person_id] for m in after[0].members)


async def test_small_subtree_no_free_connection_or_written_transaction_stay_sequential(
    harness: Harness, database_url: str, parts_seen: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite is always sequential")
    await write_history(harness.app.sessionmaker)
    # A subtree smaller than the threshold.
    monkeypatch.setattr(kpi, "CONCURRENT_FROM_GRIDS", 10**6)
    want, got = await reports(harness, "xinhua", True, False)
    assert got == want and not parts_seen
    monkeypatch.setattr(kpi, "CONCURRENT_FROM_GRIDS", 1)
    # The engine's other reports hold all but one of the bound's connections.
    monkeypatch.setitem(snapshot._in_use, harness.app.engine.sync_engine,
                        snapshot.MAX_CONNECTIONS - 1)
    want, got = await reports(harness, "xinhua", True, False)
    assert got == want and not parts_seen
    monkeypatch.delitem(snapshot._in_use, harness.app.engine.sync_engine)
    # The caller's own uncommitted write is counted: the parts stay in its transaction.
    async with harness.app.sessionmaker() as session:
        scope = await load_scope(session, None)
        person = (await session.scalars(select(Person).where(Person.key == "p-li-dangyuan"))
                  ).one()
        person.name = "李党员（改）"
        report = await build_report(session, harness.app.settings, scope, OCTOBER,
                                    local(2026, 11, 1, 9, 0), with_orders=False)
        assert "李党员（改）" in {m.name for m in report.members}
        await session.rollback()
    assert not parts_seen
