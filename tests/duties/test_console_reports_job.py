"""The scheduler's leader keeps the console's overviews ready (``bot.scheduler:console_reports``,
every ``console_report_seconds``): a stored job like the others, run by whoever leads."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from models import ConsoleReport, Grid
from tests.duties.conftest import DutyHarness


async def _kept(duty: DutyHarness) -> set[tuple[str, str]]:
    async with duty.app.sessionmaker() as session:
        return {
            (code, period)
            for code, period in (await session.execute(
                select(Grid.code, ConsoleReport.period)
                .join(ConsoleReport, ConsoleReport.grid_id == Grid.id)
            )).all()
        }


async def test_the_scheduler_leader_keeps_the_console_overviews(duty: DutyHarness) -> None:
    s = await duty.scheduler()
    assert s.is_leader
    await duty.tick(s)
    assert await _kept(duty) == set()  # the first run is one cadence after the start
    duty.clock.now += timedelta(seconds=duty.app.settings.console_report_seconds + 1)
    await duty.tick(s)
    assert await _kept(duty) == {
        (code, "2027-03") for code in ("xinhua", "xh-g1", "xh-g2", "xh-g3")
    }


async def test_without_the_console_the_scheduler_has_no_such_job(
    duty: DutyHarness,
) -> None:
    duty.app.settings.console_enabled = False
    s = await duty.scheduler()
    duty.clock.now += timedelta(seconds=duty.app.settings.console_report_seconds + 1)
    await duty.tick(s)
    assert await _kept(duty) == set()
