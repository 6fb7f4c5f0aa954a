"""Duty tests: the service with a controllable clock, the in-memory channel and a manual
scheduler (passes run when the test says ``tick``; no sleeps)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.app import Gridbot
from bot.channels.memory import MemoryChannel
from bot.config import load_settings
from bot.core.notify import Notifier
from bot.core.orders import NewOrder, OrderService
from bot.scheduler import DutyScheduler
from models import Building, Grid, Order, OutboxMessage, PatrolPlan, Person
from tests.conftest import Harness
from tests.support.clock import SH, Clock


class DutyHarness(Harness):
    """The harness plus a clock and scheduler helpers."""

    def __init__(self, app: Gridbot, channel: MemoryChannel, clock: Clock) -> None:
        super().__init__(app, channel)
        self.clock = clock
        self.schedulers: list[DutyScheduler] = []

    async def scheduler(self, **kwargs: Any) -> DutyScheduler:
        """A started manual scheduler on this database."""
        s = DutyScheduler(self.app.sessionmaker, self.app.settings, self.app.tr,
                          clock=self.clock, wake=self.app.deliverer.wake, manual=True, **kwargs)
        self.schedulers.append(s)
        await s.start()
        return s

    async def tick(self, s: DutyScheduler) -> None:
        await s.tick()
        await self.flush()

    async def person_id(self, key: str) -> int:
        async with self.app.sessionmaker() as session:
            pid = await session.scalar(select(Person.id).where(Person.key == key))
            assert pid is not None
            return pid

    async def grid_id(self, code: str) -> int:
        async with self.app.sessionmaker() as session:
            gid = await session.scalar(select(Grid.id).where(Grid.code == code))
            assert gid is not None
            return gid

    async def add(self, *rows: Any) -> None:
        async with self.app.sessionmaker() as session, session.begin():
            session.add_all(rows)

    async def patrol_plan(self, grid: str = "xh-g1-m1", who: str = "p-wang",
                          schedule: str = "0 9 * * *", deadline: int = 120) -> int:
        plan = PatrolPlan(grid_id=await self.grid_id(grid), person_id=await self.person_id(who),
                          schedule=schedule, deadline_minutes=deadline,
                          created_at=self.clock(), updated_at=self.clock())
        await self.add(plan)
        return plan.id

    async def submit(self, category: str = "repair", resident: str = "p-zhang-ayi",
                     building: str = "xh-b01") -> int:
        async with self.app.sessionmaker() as session, session.begin():
            person = await session.scalar(select(Person).where(Person.key == resident))
            b = await session.scalar(select(Building).where(Building.code == building))
            assert person is not None and b is not None
            notifier = Notifier(session, self.app.tr, "zh_CN")
            order = await OrderService(session, notifier, self.app.tr, self.clock()).submit(
                person, b, "2-301", NewOrder(category=category, description="楼道灯坏了"))
            return order.id

    async def outbox(self, like: str) -> list[OutboxMessage]:
        async with self.app.sessionmaker() as session:
            return list((await session.scalars(
                select(OutboxMessage).where(OutboxMessage.ref.like(like))
                .order_by(OutboxMessage.id))).all())

    async def order(self, order_id: int) -> Order:
        async with self.app.sessionmaker() as session:
            order = await session.get(Order, order_id)
            assert order is not None
            return order


@pytest.fixture
async def duty(database_url: str, tmp_path: Path) -> AsyncIterator[DutyHarness]:
    """Demo community, memory channel, clock at Monday 2027-03-01 08:00 Shanghai."""
    clock = Clock(datetime(2027, 3, 1, 8, 0, tzinfo=SH))
    settings = load_settings(database_url=database_url, demo=True, demo_duties=False,
                             secret_key="test-key", quiet_hours="22:00-07:00",
                             media_dir=tmp_path / "media", qr_dir=tmp_path / "qr")
    app = Gridbot(settings, clock=clock)
    await app.prepare()
    channel = MemoryChannel()
    app.add_channel(channel)
    h = DutyHarness(app, channel, clock)
    try:
        yield h
    finally:
        for s in h.schedulers:
            await s.stop()
        await app.engine.dispose()
