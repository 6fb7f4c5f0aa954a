"""Shared fixtures: a database per test (SQLite file, and PostgreSQL when it is there), the
service wired with the in-memory channel, and the demo community loaded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from bot.app import Gridbot
from bot.channels.memory import MemoryChannel, MemoryUser
from bot.config import load_settings
from bot.core.invites import create_invite, signing_key
from bot.ports import HandleResult, Inbound
from models import Base, Building, Grid, Identity, Order, OrderEvent, Person, utcnow
from tests.support.hangs import pytest_runtest_protocol  # noqa: F401 - the hang watchdog
from tests.support.pg import PG_ADMIN_URL, pg_admin
from tests.support.pg import database_url as pg_url


def _pg_available() -> str | None:
    """None when PostgreSQL answers, else the reason."""

    async def probe() -> None:
        engine = create_async_engine(PG_ADMIN_URL)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    try:
        asyncio.run(asyncio.wait_for(probe(), 5))
    except Exception as err:
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {err!r}"
    return None


@pytest.fixture(autouse=True)
def _no_wall_clock_quiet_hours(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quiet hours hold non-urgent order pushes at night by the wall clock: tests that do not
    drive a clock must not depend on the hour they run at. Quiet-hour tests pass
    ``quiet_hours`` explicitly (an override beats the environment)."""
    monkeypatch.setenv("GRIDBOT_QUIET_HOURS", "00:00-00:00")
    # The demo's invented month of orders is for people trying the product; tests write
    # the orders they count themselves (tests/reports/test_demo_history.py turns it on).
    monkeypatch.setenv("GRIDBOT_DEMO_HISTORY", "false")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (dropped at the end)."""
    reason = _pg_available()
    if reason:
        pytest.skip(reason)
    name = f"gridbot_t_{uuid.uuid4().hex[:10]}"
    asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    yield pg_url(name)
    asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Each test that asks runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'gridbot.db'}"
    url: str = request.getfixturevalue("pg_database")

    async def wipe() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                exists = await conn.scalar(text("SELECT to_regclass('public.grid') IS NOT NULL"))
                if exists:
                    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
                    await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        finally:
            await engine.dispose()

    asyncio.run(wipe())
    return url


class Harness:
    """The service with an in-memory channel; every action drains the outbox before returning."""

    def __init__(self, app: Gridbot, channel: MemoryChannel) -> None:
        self.app = app
        self.channel = channel

    async def intake(self, event: Inbound) -> HandleResult:
        """Handle an event, then deliver everything it queued."""
        result = await self.app.handler(event)
        await self.flush()
        return result

    async def flush(self) -> None:
        """Deliver until the outbox is empty."""
        while await self.app.deliverer.drain_once():
            pass

    def user(self, user_id: str, *, name: str = "", locale: str = "zh-hans") -> MemoryUser:
        """A chat user (bound or not)."""
        return self.channel.user(self.intake, user_id, name=name, locale=locale)

    async def login(self, key: str, *, locale: str = "zh-hans") -> MemoryUser:
        """A demo person already chatting with us (an identity on the memory channel)."""
        async with self.app.sessionmaker() as session, session.begin():
            person = await session.scalar(select(Person).where(Person.key == key))
            assert person is not None, key
            session.add(
                Identity(
                    person_id=person.id,
                    channel="memory",
                    external_id=key,
                    chat_id=key,
                    last_inbound_at=utcnow(),
                )
            )
            name = person.name
        return self.user(key, name=name, locale=locale)

    async def invite(
        self,
        role: str,
        grid: str,
        building: str | None = None,
        *,
        max_uses: int | None = 1,
        days: float = 7,
    ) -> str:
        """A fresh invite token."""
        async with self.app.sessionmaker() as session, session.begin():
            key = await signing_key(session, self.app.settings)
            g = await session.scalar(select(Grid).where(Grid.code == grid))
            assert g is not None
            b_id = None
            if building:
                b = await session.scalar(select(Building).where(Building.code == building))
                assert b is not None
                b_id = b.id
            _, token = await create_invite(
                session,
                key,
                role=role,
                grid_id=g.id,
                building_id=b_id,
                max_uses=max_uses,
                expires_at=utcnow() + timedelta(days=days),
            )
            return token

    async def order(self, order_id: int) -> Order:
        """An order as stored."""
        async with self.app.sessionmaker() as session:
            order = await session.get(Order, order_id)
            assert order is not None
            return order

    async def orders(self) -> list[Order]:
        """All orders."""
        async with self.app.sessionmaker() as session:
            return list((await session.scalars(select(Order).order_by(Order.id))).all())

    async def events(self, order_id: int) -> list[tuple[str, str | None, str]]:
        """(action, from, to) of an order's events, in order."""
        async with self.app.sessionmaker() as session:
            rows = await session.execute(
                select(OrderEvent.action, OrderEvent.from_status, OrderEvent.to_status)
                .where(OrderEvent.order_id == order_id)
                .order_by(OrderEvent.id)
            )
            return [tuple(r) for r in rows.all()]  # type: ignore[misc]

    async def count(self, model: type) -> int:
        """Rows in a table."""
        from sqlalchemy import func

        async with self.app.sessionmaker() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
async def harness(database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    """The demo community on a fresh database, with the in-memory channel."""
    settings = load_settings(
        database_url=database_url,
        demo=True,
        secret_key="test-key",
        media_dir=tmp_path / "media",
        qr_dir=tmp_path / "qr",
    )
    app = Gridbot(settings)
    await app.prepare()
    channel = MemoryChannel()
    app.add_channel(channel)
    try:
        yield Harness(app, channel)
    finally:
        await app.engine.dispose()
