"""Patrols end to end through the in-memory channel; restart survival; one scheduler per
database."""

from __future__ import annotations

import socket
import subprocess

import pytest
from sqlalchemy import func, select

from bot.instance import Holder
from bot.scheduler import DutyScheduler, SchedulerRefused
from models import DutyFire, PatrolRun
from models.db import is_sqlite
from tests.duties.conftest import DutyHarness


async def runs(h: DutyHarness) -> list[PatrolRun]:
    async with h.app.sessionmaker() as session:
        return list((await session.scalars(select(PatrolRun).order_by(PatrolRun.id))).all())


async def test_patrol_reminder_check_in_and_missed_deadline(duty: DutyHarness) -> None:
    h = duty
    wang = await h.login("p-wang")
    head = await h.login("p-liu-wanggezhang")
    await h.patrol_plan()
    s = await h.scheduler()
    await h.tick(s)
    assert not wang.inbox

    h.clock.set(2027, 3, 1, 9, 0, 20)
    await h.tick(s)
    reminder = wang.last()
    assert "巡查提醒" in reminder.text and "11:00" in reminder.text
    await wang.press("打卡")
    await wang.send("楼道畅通，消防通道无堆放")
    await wang.press("跳过")
    await wang.location(31.21, 107.46)
    assert "打卡成功" in wang.last().text
    [run] = await runs(h)
    assert run.status == "checked_in" and run.note and run.latitude == 31.21

    # Next day nobody checks in: the head is told once, at the deadline.
    h.clock.set(2027, 3, 2, 9, 0, 5)
    await h.tick(s)
    h.clock.set(2027, 3, 2, 11, 1)
    await h.tick(s)
    h.clock.set(2027, 3, 2, 11, 3)
    await h.tick(s)
    missed = [m for m in head.texts() if "未在期限内" in m]
    assert len(missed) == 1 and "王网格员" in missed[0]
    assert [r.status for r in await runs(h)] == ["checked_in", "missed"]
    # A late check-in is still recorded.
    await wang.press("打卡")
    await wang.send("补打卡")
    await wang.press("跳过")
    await wang.press("跳过")
    assert "补打卡" in wang.last().text or "超过期限" in wang.last().text


async def test_missed_while_down_fires_once_after_restart(duty: DutyHarness) -> None:
    h = duty
    wang = await h.login("p-wang")
    await h.patrol_plan()
    first = await h.scheduler()  # stores the job: next run 09:00
    await first.stop()

    h.clock.set(2027, 3, 1, 10, 30)  # restarted 90 minutes late: within the grace
    second = await h.scheduler()
    await h.tick(second)
    await h.tick(second)
    await second.stop()
    third = await h.scheduler()
    await h.tick(third)
    assert sum("巡查提醒" in t for t in wang.texts()) == 1
    assert len(await runs(h)) == 1
    await third.stop()

    # Down for two days and beyond the grace: not sent, but recorded as skipped (and logged).
    h.clock.set(2027, 3, 3, 20, 0)
    fourth = await h.scheduler()
    await h.tick(fourth)
    assert sum("巡查提醒" in t for t in wang.texts()) == 1
    assert [r.status for r in await runs(h)] == ["missed", "skipped"]


async def test_a_crash_before_the_store_is_updated_does_not_send_twice(duty: DutyHarness) -> None:
    h = duty
    wang = await h.login("p-wang")
    plan_id = await h.patrol_plan()
    s = await h.scheduler()
    h.clock.set(2027, 3, 1, 9, 0, 1)
    from bot.scheduler import patrol_reminder

    due = h.clock().replace(second=0)
    await patrol_reminder(plan_id, rt=s.runtime, due_at=due)  # as if fired before a crash
    await h.tick(s)  # the job fires again for the same due time
    assert sum("巡查提醒" in t for t in wang.texts()) == 1


async def test_one_scheduler_per_database(duty: DutyHarness) -> None:
    h = duty
    wang = await h.login("p-wang")
    await h.patrol_plan()
    leader = await h.scheduler()
    assert leader.is_leader
    second = DutyScheduler(h.app.sessionmaker, h.app.settings, h.app.tr, clock=h.clock,
                           manual=True)
    h.schedulers.append(second)
    if is_sqlite(h.app.settings.database_url):
        with pytest.raises(SchedulerRefused, match="SQLite"):
            await second.start()
    else:
        assert await second.start() is False
    h.clock.set(2027, 3, 1, 9, 0, 10)
    await h.tick(leader)
    await h.tick(second)
    assert sum("巡查提醒" in t for t in wang.texts()) == 1
    # The leader stops cleanly: the lease is released and the other one can take over.
    await leader.stop()
    assert await second.lease.acquire()


async def test_lease_expires_when_the_leader_dies(duty: DutyHarness) -> None:
    h = duty
    leader = await h.scheduler()
    other = DutyScheduler(h.app.sessionmaker, h.app.settings, h.app.tr, clock=h.clock,
                          manual=True)
    assert not await other.lease.acquire()
    from datetime import timedelta

    h.clock.now += timedelta(seconds=h.app.settings.scheduler_lease_seconds + 1)
    assert await other.lease.acquire()
    assert not await leader.lease.acquire()
    async with h.app.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(DutyFire)) == 0


async def test_a_restart_takes_over_the_lease_of_a_killed_leader_at_once(
    duty: DutyHarness,
) -> None:
    """kill -9 leaves a lease that runs 30 s more; a restart on the same host sees that its
    holder's process is gone and leads at once (SQLite no longer refuses to start)."""
    h = duty
    dead = _exited_pid()
    gone = str(Holder(socket.gethostname(), dead, "", "killed"))
    killed = DutyScheduler(h.app.sessionmaker, h.app.settings, h.app.tr, clock=h.clock,
                           manual=True, holder=gone)
    assert await killed.lease.acquire()
    restarted = await h.scheduler()
    assert restarted.is_leader
    # A live holder is still respected: the standby (same process) does not take over.
    other = DutyScheduler(h.app.sessionmaker, h.app.settings, h.app.tr, clock=h.clock,
                          manual=True)
    assert not await other.lease.acquire()
    # Nor is a holder on another host judged by anything but its lease.
    await restarted.stop()
    elsewhere = DutyScheduler(h.app.sessionmaker, h.app.settings, h.app.tr, clock=h.clock,
                              manual=True, holder=str(Holder("other-host", dead, "", "x")))
    assert await elsewhere.lease.acquire()
    assert not await other.lease.acquire()


def _exited_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
