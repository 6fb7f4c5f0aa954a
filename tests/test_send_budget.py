"""One send budget per bot: the contract both budgets keep, and what two PostgreSQL instances
share (a slot taken by one is seen by the other; so is a pause)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.channels.base import Limits
from bot.send_budget import WINDOW_MARGIN, LocalBudget, PostgresBudget, SendBudget
from models.db import make_engine, upgrade

LIMITS = Limits(per_chat_interval=1.0, global_per_second=3, group_per_minute=2)

MakeBudget = Callable[[Limits], Awaitable[SendBudget]]


async def _migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session's PostgreSQL database, migrated."""
    asyncio.run(_migrate(pg_database))
    return pg_database


@pytest.fixture
async def pg_engines(pg_url: str) -> AsyncIterator[list[AsyncEngine]]:
    """Two engines on one PostgreSQL database, as two instances have."""
    engines = [make_engine(pg_url), make_engine(pg_url)]
    try:
        yield engines
    finally:
        for engine in engines:
            await engine.dispose()


@pytest.fixture(params=["local", "postgresql"])
def budget_store(request: pytest.FixtureRequest) -> str | None:
    """Each contract test runs against the in-process budget and the shared one."""
    if request.param == "local":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def make_budget(budget_store: str | None) -> AsyncIterator[MakeBudget]:
    """Builds a fresh budget of each implementation (a new channel name: a fresh budget)."""
    if budget_store is None:

        async def local(limits: Limits) -> SendBudget:
            return LocalBudget(limits)

        yield local
        return
    engine = make_engine(budget_store)

    async def shared(limits: Limits) -> SendBudget:
        return PostgresBudget(engine, f"t{uuid.uuid4().hex[:10]}", limits)

    try:
        yield shared
    finally:
        await engine.dispose()


async def test_a_chat_waits_its_interval_after_a_send_and_other_chats_do_not(
    make_budget: MakeBudget,
) -> None:
    budget = await make_budget(LIMITS)
    assert isinstance(budget, SendBudget)
    assert await budget.chat_wait("1001") == 0
    assert await budget.take("1001") == 0
    assert await budget.take("1001") > 0  # its request is still in flight
    await budget.record("1001")
    wait = await budget.chat_wait("1001")
    assert 0 < wait <= LIMITS.per_chat_interval
    assert await budget.take("1001") > 0
    assert await budget.chat_wait("1002") == 0
    assert await budget.take("1002") == 0


async def test_the_global_limit_counts_requests_in_flight_and_finished(
    make_budget: MakeBudget,
) -> None:
    budget = await make_budget(LIMITS)
    assert await budget.take("1") == 0
    await budget.record("1")  # finished: counts for a second more
    assert await budget.take("2") == 0
    assert await budget.take("3") == 0  # two in flight, one finished: 3 of 3
    wait = await budget.take("4")
    assert 0 < wait <= 1.0 + WINDOW_MARGIN
    assert await budget.chat_wait("4") == 0  # the chat itself may: the channel is full


async def test_a_group_gets_no_more_than_its_messages_a_minute(make_budget: MakeBudget) -> None:
    budget = await make_budget(Limits(per_chat_interval=0.0, global_per_second=100,
                                      group_per_minute=2))
    for _ in range(2):
        assert await budget.take("-100500") == 0
        await budget.record("-100500")
    assert await budget.chat_wait("-100500") > 55
    assert await budget.take("-100500") > 55
    assert await budget.take("100500") == 0  # a private chat is no group


async def test_a_pause_stops_every_chat_of_the_channel(make_budget: MakeBudget) -> None:
    budget = await make_budget(LIMITS)
    await budget.pause(5)
    assert 4 < await budget.chat_wait("7") <= 5
    assert await budget.take("8") > 4
    await budget.pause(1)  # a shorter pause does not cut a longer one short
    assert await budget.take("9") > 4


async def test_two_instances_share_one_budget(pg_engines: list[AsyncEngine]) -> None:
    channel = f"t{uuid.uuid4().hex[:10]}"
    first, second = (PostgresBudget(engine, channel, LIMITS) for engine in pg_engines)
    assert await first.take("1") == 0
    assert await second.take("1") > 0  # in flight at the other instance
    await first.record("1")
    assert await second.chat_wait("1") > 0
    assert await second.take("2") == 0
    assert await first.take("3") == 0
    assert await second.take("4") > 0  # three requests in the last second, between them
    await second.pause(3)
    assert await first.chat_wait("5") > 2


async def test_takes_racing_from_two_instances_never_pass_the_limit(
    pg_engines: list[AsyncEngine],
) -> None:
    """A take waiting for another's lock must see the slot that one took (a statement's
    snapshot predates the lock it waited for: the lock is taken first, alone)."""
    channel = f"t{uuid.uuid4().hex[:10]}"
    limits = Limits(per_chat_interval=1.0, global_per_second=10)
    budgets = [PostgresBudget(engine, channel, limits) for engine in pg_engines]
    # Both pools hold a connection. The warm-up slots stay in flight (never recorded), so they
    # count for IN_FLIGHT_BOUND (30 s), not for a one-second window a slow machine can outlast.
    for n, budget in enumerate(budgets):
        assert await budget.take(f"warm-up {n}") == 0
    waits = await asyncio.gather(*(budgets[n % 2].take(str(n)) for n in range(24)))
    assert sum(1 for w in waits if w == 0) == 10 - 2


async def test_with_the_database_out_of_reach_an_instance_paces_itself() -> None:
    """Sending goes on at one instance's limits rather than stopping (or losing the rows'
    claims to an exception) until PostgreSQL is back."""
    engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")  # nobody listens
    try:
        budget = PostgresBudget(engine, "telegram", LIMITS)
        assert await budget.take("1") == 0
        assert await budget.take("1") > 0  # in flight
        await budget.record("1")
        assert 0 < await budget.chat_wait("1") <= LIMITS.per_chat_interval
        assert await budget.take("2") == 0
        await budget.pause(5)
        assert await budget.take("3") > 4
    finally:
        await engine.dispose()
