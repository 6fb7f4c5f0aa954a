"""Two instances drain one outbox to one bot: together they keep the bot's limits (one send
budget in PostgreSQL), and each chat gets its messages once, in order. Measured by the fake
Bot API server enforcing Telegram's limits (429 + ``retry_after``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select, text

import bot.delivery
from bot.channels.base import RetryAfter
from bot.channels.telegram import TelegramChannel
from bot.delivery import Deliverer
from bot.ports import HandleResult, Inbound, Outbound
from models import OutboxMessage
from models.db import make_engine, make_sessionmaker, upgrade
from tests.fakes.telegram_server import FakeTelegramServer

DUE = datetime(2026, 1, 1, tzinfo=UTC)


async def _no_intake(event: Inbound) -> HandleResult:
    return HandleResult()


class TimedFake(FakeTelegramServer):
    """The fake, noting when (its own monotonic clock) it stored each message."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stored_at: list[float] = []

    def _store(self, chat_id: int, p: Any, *, text: str | None, photo: str | None) -> Any:
        result = super()._store(chat_id, p, text=text, photo=photo)  # 429 when over a limit
        self.stored_at.append(time.monotonic())
        return result


class FloodedOnce(TelegramChannel):
    """Instance A's channel: its first send is answered 429 ``retry_after``."""

    flood_seconds = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flooded = False

    async def send(self, chat_id: str, message: Outbound) -> str:
        if not self.flooded:
            self.flooded = True
            raise RetryAfter(self.flood_seconds)
        return await super().send(chat_id, message)


async def _wipe(url: str) -> None:
    engine = make_engine(url)
    try:
        await upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(text("TRUNCATE outbox, send_slot, send_budget RESTART IDENTITY"))
    finally:
        await engine.dispose()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session's PostgreSQL database, migrated, with an empty outbox (PostgreSQL only:
    SQLite is one instance by design)."""
    asyncio.run(_wipe(pg_database))
    return pg_database


class Instance:
    """One ``gridbot run``'s delivery: its own engine, sessionmaker, bot client, deliverer."""

    def __init__(self, url: str, tg: FakeTelegramServer, cls: type[TelegramChannel]) -> None:
        self.engine = make_engine(url)
        self.sessionmaker = make_sessionmaker(self.engine)
        self.channel = cls(tg.token, _no_intake, base_url=tg.base_url, base_file_url=tg.file_url)
        self.deliverer = Deliverer(self.sessionmaker, {"telegram": self.channel})

    async def initialize(self) -> None:
        await self.channel.application.initialize()

    async def start(self) -> None:
        await self.deliverer.start()

    async def stop(self) -> None:
        await self.deliverer.stop()
        await self.channel.application.shutdown()
        await self.engine.dispose()


@pytest.fixture
async def fake() -> AsyncIterator[TimedFake]:
    async with TimedFake(enforce_limits=True) as tg:
        yield tg


async def _queue(url: str, rows: list[tuple[int, str]]) -> None:
    engine = make_engine(url)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            for chat, body in rows:
                session.add(OutboxMessage(channel="telegram", chat_id=str(chat),
                                          payload={"text": body}, not_before=DUE))
    finally:
        await engine.dispose()


async def _drain(
    url: str, instances: list[Instance], *, others_after: asyncio.Event | None = None
) -> None:
    """Start the instances (all at once, or the first alone until ``others_after`` is set)
    and wait until every outbox row is sent."""
    engine = make_engine(url)
    try:
        await asyncio.gather(*(instance.initialize() for instance in instances))
        if others_after is not None:
            await instances[0].start()
            await asyncio.wait_for(others_after.wait(), 60)  # a guard against a hang
            instances = instances[1:]
        await asyncio.gather(*(instance.start() for instance in instances))
        deadline = time.monotonic() + 120  # a guard against a hang, not a timing
        while True:
            async with make_sessionmaker(engine)() as session:
                left = await session.scalar(
                    select(func.count()).select_from(OutboxMessage)
                    .where(OutboxMessage.status != "sent"))
            if not left:
                break
            assert time.monotonic() < deadline, f"{left} rows never sent"
            await asyncio.sleep(0.1)
    finally:
        for instance in instances:
            await instance.stop()
        await engine.dispose()


async def test_two_instances_send_a_burst_within_one_bots_limits_and_in_order(
    pg_url: str, fake: TimedFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small claims and few chats served at once per instance, so that both instances get rows
    # of the burst, and a chat's rows fall into different claims: the one-deliverer-per-chat
    # rule is what keeps them in order.
    monkeypatch.setattr(bot.delivery, "BATCH", 30)
    monkeypatch.setattr(bot.delivery, "SENDER_SECONDS", 1)
    singles = [3000 + n for n in range(120)]
    series = [4000 + n for n in range(4)]
    for uid in singles + series:
        fake.user(uid, f"u{uid}")
    rows: list[tuple[int, str]] = []
    for n in range(4):
        rows += [(uid, f"第 {n} 条 / {uid}") for uid in series]
        rows += [(uid, f"通知 {uid}") for uid in singles[n * 30:(n + 1) * 30]]
    await _queue(pg_url, rows)
    a, b = Instance(pg_url, fake, TelegramChannel), Instance(pg_url, fake, TelegramChannel)

    await _drain(pg_url, [a, b])

    assert fake.too_many_requests == 0  # neither 30/s for the bot nor 1/s per chat broken
    assert a.deliverer.sent_count > 0 and b.deliverer.sent_count > 0  # both drained it
    assert a.deliverer.sent_count + b.deliverer.sent_count == len(rows)  # each row once
    for uid in singles:
        assert [m.text for m in fake.sent(uid)] == [f"通知 {uid}"]
    for uid in series:
        assert [m.text for m in fake.sent(uid)] == [f"第 {n} 条 / {uid}" for n in range(4)]


async def test_a_429_seen_by_one_instance_pauses_the_other(
    pg_url: str, fake: TimedFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bot.delivery, "BATCH", 20)  # A claims part of the rows, B the rest
    monkeypatch.setattr(bot.delivery, "SENDER_SECONDS", 1)
    singles = [5000 + n for n in range(90)]
    for uid in singles:
        fake.user(uid, f"u{uid}")
    await _queue(pg_url, [(uid, f"通知 {uid}") for uid in singles])
    a, b = Instance(pg_url, fake, FloodedOnce), Instance(pg_url, fake, TelegramChannel)
    paused_at: list[float] = []
    paused = asyncio.Event()
    budget = a.deliverer.budget("telegram")
    pause = budget.pause

    async def noted_pause(seconds: float) -> None:
        await pause(seconds)
        paused_at.append(time.monotonic())
        paused.set()

    budget.pause = noted_pause  # type: ignore[method-assign]

    # B starts once A has been told to wait (and has written the pause).
    await _drain(pg_url, [a, b], others_after=paused)

    assert b.deliverer.sent_count > 0
    # Requests of A already under way when the pause was written may still land; after
    # that, nothing reaches the bot until the pause ends, from either instance.
    quiet_from, quiet_to = paused_at[0] + 0.5, paused_at[0] + FloodedOnce.flood_seconds - 0.1
    assert [t for t in fake.stored_at if quiet_from <= t <= quiet_to] == []
    assert fake.too_many_requests == 0
    assert sum(len(fake.sent(uid)) for uid in singles) == len(singles)
