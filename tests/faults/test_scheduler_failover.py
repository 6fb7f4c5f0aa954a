"""The scheduler's leader is killed just before a reminder falls due: the standby leads
within the lease and the reminder goes out exactly once (PostgreSQL: several instances)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.faults.rig import Rig, fake_bot_api, free_port

pytestmark = pytest.mark.faults

LEASE_SECONDS = 6
MEMBER_UID = 60_001


async def test_a_reminder_due_during_a_failover_fires_once(
    database_url: str, tmp_path: Path
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite is single-instance: no standby to fail over to")
    async with fake_bot_api() as tg:
        rig = Rig(tg, database_url, tmp_path, mode="webhook")
        await rig.prepare(0)
        due = datetime.now(UTC) + timedelta(seconds=20)
        member = await rig.visit_due("p-li-dangyuan", MEMBER_UID, due)
        lease = {"GRIDBOT_SCHEDULER_LEASE_SECONDS": str(LEASE_SECONDS)}
        leader, standby = rig.service(**lease), rig.service(free_port(), **lease)
        await leader.start()
        await leader.ready(scheduler="leader")
        await standby.start()
        try:
            await standby.ready(scheduler="standby")
            # kill -9 the leader three seconds before the reminder is due.
            await asyncio.sleep(max((due - datetime.now(UTC)).total_seconds() - 3, 0))
            await leader.kill()
            killed = time.monotonic()
            await standby.ready(timeout=LEASE_SECONDS * 3, scheduler="leader")
            failover = time.monotonic() - killed
            reminder = await tg.wait_for(member.user_id, lambda m: "走访提醒" in (m.text or ""),
                                         timeout=30)
            late = datetime.fromtimestamp(reminder.date, UTC) - due
            await asyncio.sleep(LEASE_SECONDS)  # a second firing would come by now
            reminders = [m for m in tg.sent(member.user_id) if "走访提醒" in (m.text or "")]
            print(f"\n[failover] standby leading {failover:.1f} s after kill -9 (lease "
                  f"{LEASE_SECONDS} s); reminder {late.total_seconds():.0f} s after due; "
                  f"sent {len(reminders)} time(s)")
            assert len(reminders) == 1
        finally:
            await standby.stop()
