"""What the console tests share: the demo community on a test clock with the in-memory chat,
a person signing in through the link the bot sends them, and orders written straight in."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.app import Gridbot
from bot.channels.memory import MemoryChannel, MemoryUser
from bot.config import load_settings
from models import Building, Order, OrderEvent, Person
from tests.conftest import Harness
from tests.duties.conftest import SH, Clock

LINK = re.compile(r"https?://\S+/console/login/(\S+)")
#: The test's "now": 10 March 2027, 10:00 in Shanghai (after the wall clock: outbox rows are
#: due at once).
NOW = datetime(2027, 3, 10, 10, 0, tzinfo=SH)


class ConsoleHarness(Harness):
    """The service, its clock, and browsers (HTTP clients) on its one web server."""

    def __init__(self, app: Gridbot, channel: MemoryChannel, clock: Clock) -> None:
        super().__init__(app, channel)
        self.clock = clock
        self.web = app.web_app()
        self.users: dict[str, MemoryUser] = {}

    def browser(self) -> httpx.AsyncClient:
        """A fresh browser (its own cookie jar)."""
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.web),
            base_url="http://127.0.0.1:8080",
            headers={"host": "127.0.0.1:8080"},
        )

    async def link_for(self, key: str) -> str:
        """The sign-in token the bot sends ``key`` when they ask with /console in chat."""
        if key not in self.users:
            self.users[key] = await self.login(key)
        user = self.users[key]
        await user.send("/console")
        found = LINK.search(user.last().text)
        assert found, user.last().text
        return found.group(1)

    async def signed_in(self, key: str) -> httpx.AsyncClient:
        """A browser signed in as ``key`` through the chat link."""
        token = await self.link_for(key)
        browser = self.browser()
        page = await browser.get(f"/console/login/{token}")
        assert page.status_code == 200
        done = await browser.post("/console/login", data={"token": token})
        assert done.status_code == 303, done.text
        return browser

    async def place(self, building: str, **order: Any) -> int:
        """An order written straight into the database, at the clock's time by default."""
        return await place(self.app.sessionmaker, building, **{"at": self.clock(), **order})


async def place(
    sessionmaker: async_sessionmaker[AsyncSession],
    building: str,
    *,
    at: datetime,
    status: str = "submitted",
    category: str = "repair",
    updated: datetime | None = None,
    description: str = "楼道灯不亮",
    assignee: str | None = None,
    room: str | None = "2-301",
) -> int:
    """An order of 张阿姨's written straight into the database (with its submit event)."""
    async with sessionmaker() as session, session.begin():
        b = await session.scalar(select(Building).where(Building.code == building))
        assert b is not None
        resident = await session.scalar(select(Person).where(Person.key == "p-zhang-ayi"))
        assert resident is not None
        member_id = None
        if assignee:
            member_id = await session.scalar(select(Person.id).where(Person.key == assignee))
        order = Order(
            resident_id=resident.id, building_id=b.id, room=room, grid_id=b.grid_id,
            handling_grid_id=b.grid_id, category=category, description=description,
            status=status, created_at=at, updated_at=updated or at, assignee_id=member_id,
        )
        session.add(order)
        await session.flush()
        session.add(OrderEvent(order_id=order.id, actor_id=resident.id, action="submit",
                               from_status=None, to_status="submitted", created_at=at))
        return order.id


@contextlib.asynccontextmanager
async def console_harness(
    database_url: str, tmp_path: Path, **settings: Any
) -> AsyncIterator[ConsoleHarness]:
    """The demo community (no invented history) with the console on, at :data:`NOW`."""
    clock = Clock(NOW)
    app = Gridbot(
        load_settings(
            database_url=database_url, demo=True, demo_history=False, secret_key="test-key",
            media_dir=tmp_path / "media", qr_dir=tmp_path / "qr",
            # An overview waits for its first report here (tests of the figures); the state
            # "being computed" is tested with a wait of 0.
            **{"console_report_wait_ms": 30_000, **settings},
        ),
        clock=clock,
    )
    await app.prepare()
    channel = MemoryChannel()
    app.add_channel(channel)
    try:
        yield ConsoleHarness(app, channel, clock)
    finally:
        await app.engine.dispose()


def later(clock: Clock, **delta: float) -> None:
    """Move the clock on."""
    clock.now = clock.now + timedelta(**delta)
