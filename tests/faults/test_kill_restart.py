"""kill -9 of a real ``gridbot run`` while residents place orders, then a restart: every order a
resident was told about is stored, none twice, every reply goes out, and the service answers
again within seconds (figures printed with ``-s``; more rounds: ``bench/faults.py``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.faults.rig import Rig, fake_bot_api, free_port, kill_and_restart

pytestmark = pytest.mark.faults

RESIDENTS = 12


@pytest.mark.parametrize("mode", ["webhook", "polling"])
async def test_kill_9_mid_burst_loses_and_duplicates_nothing(
    database_url: str, tmp_path: Path, mode: str
) -> None:
    async with fake_bot_api() as tg:
        rig = Rig(tg, database_url, tmp_path, mode=mode)
        await rig.prepare(RESIDENTS)
        service = rig.service()
        await service.start()
        try:
            await service.ready()
            burst = asyncio.gather(*(rig.place_order(u) for u in rig.residents))
            # Kill once the burst is well under way: some orders stored, some mid-flow.
            service = await kill_and_restart(rig, service, after_replies=RESIDENTS * 3)
            await service.ready()
            await burst
            await rig.settle()
        finally:
            stop_seconds = await service.stop()
        f = rig.figures
        print(f"\n[{mode}, {database_url.split(':')[0]}] {f.line()}; SIGTERM stop "
              f"{stop_seconds:.1f} s")
        assert f.lost == 0, service.tail()
        assert f.duplicated == 0
        assert f.unsent_rows == 0
        assert f.gave_up == 0, service.tail()
        assert len(f.acknowledged) == RESIDENTS
        assert f.stored == RESIDENTS
        # Rows in flight at the kill may go out twice, never more than that.
        assert f.sends_doubled <= RESIDENTS
        assert f.recovery_seconds, "no reply after the restart"


async def test_a_second_poller_is_refused_and_a_restart_after_kill_is_not(
    database_url: str, tmp_path: Path
) -> None:
    """Two pollers of one bot lose and repeat updates: the second `gridbot run` says why and
    exits 1. After kill -9 of the first, a restart polls at once (its holder is dead)."""
    async with fake_bot_api() as tg:
        rig = Rig(tg, database_url, tmp_path, mode="polling")
        await rig.prepare(1)
        first = rig.service()
        await first.start()
        try:
            await first.ready()
            second = rig.service(free_port())
            await second.start()
            assert second.proc is not None
            assert await asyncio.wait_for(second.proc.wait(), 60) == 1
            assert "polls this Telegram bot already" in second.tail()
            await first.kill()
            first = rig.service()
            await first.start()
            await first.ready()
            assert await rig.place_order(rig.residents[0]) is not None
        finally:
            await first.stop()


async def test_sigterm_under_load_stops_in_bounded_time_and_leaves_nothing_claimed(
    database_url: str, tmp_path: Path
) -> None:
    async with fake_bot_api() as tg:
        rig = Rig(tg, database_url, tmp_path, mode="webhook")
        await rig.prepare(RESIDENTS)
        service = rig.service()
        await service.start()
        await service.ready()
        burst = asyncio.gather(*(rig.place_order(u) for u in rig.residents))
        await tg.wait_until(lambda: rig.replies() >= RESIDENTS * 3, timeout=60)
        stop_seconds = await service.stop()
        claimed = await rig.claimed_rows()
        service = rig.service()
        await service.start()
        try:
            await service.ready()
            await burst
            await rig.settle()
        finally:
            await service.stop()
        f = rig.figures
        print(f"\n[SIGTERM under load, {database_url.split(':')[0]}] exit after "
              f"{stop_seconds:.1f} s, {claimed} rows left claimed; {f.line()}")
        assert claimed == 0
        assert f.lost == 0 and f.duplicated == 0 and f.unsent_rows == 0 and f.gave_up == 0
        assert f.stored == RESIDENTS
