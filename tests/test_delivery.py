"""The outbox: nothing lost between commit and send, limits and retry_after honoured."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from bot.channels.base import DeliveryError, Limits, RetryAfter
from bot.channels.memory import MemoryChannel
from bot.delivery import Deliverer
from bot.instance import Holder
from bot.ports import Outbound
from models import OutboxMessage
from tests.conftest import Harness
from tests.support.clock import Clock


class FlakyChannel(MemoryChannel):
    """Fails the way a platform does, on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[Exception] = []
        self.attempts = 0

    async def send(self, chat_id: str, message: Outbound) -> str:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        return await super().send(chat_id, message)


async def queue(h: Harness, *texts: str, chat: str = "c1") -> None:
    async with h.app.sessionmaker() as session, session.begin():
        for text in texts:
            session.add(
                OutboxMessage(
                    channel="memory",
                    chat_id=chat,
                    payload={"text": text},
                    not_before=datetime(2026, 1, 1, tzinfo=UTC),
                )
            )


async def statuses(h: Harness) -> list[tuple[str, int]]:
    async with h.app.sessionmaker() as session:
        rows = await session.execute(
            select(OutboxMessage.status, OutboxMessage.attempts).order_by(OutboxMessage.id)
        )
        return [(s, a) for s, a in rows.all()]


async def test_rows_committed_before_a_crash_are_sent_after_restart(harness: Harness) -> None:
    await queue(harness, "一", "二")
    clock = Clock()
    channel = MemoryChannel()
    first = Deliverer(harness.app.sessionmaker, {"memory": channel}, clock=clock)
    claimed = await first._claim()  # claimed, then the process dies before sending
    assert len(claimed) == 2
    second = Deliverer(harness.app.sessionmaker, {"memory": channel}, clock=clock)
    assert await second.drain_once() == 0  # the lease still holds
    clock.advance(61)
    assert await second.drain_once() == 2
    assert [m.text for m in channel.messages["c1"]] == ["一", "二"]
    assert await statuses(harness) == [("sent", 1), ("sent", 1)]


async def test_retry_after_pauses_the_chat_and_keeps_order(harness: Harness) -> None:
    await queue(harness, "a", "b", "c")
    clock = Clock()
    channel = FlakyChannel()
    channel.failures = [RetryAfter(0.05)]
    deliverer = Deliverer(harness.app.sessionmaker, {"memory": channel}, clock=clock)
    await deliverer.drain_once()
    assert channel.messages.get("c1") is None
    assert [s for s, _ in await statuses(harness)] == ["pending"] * 3
    assert await deliverer.drain_once() == 0  # not before the time asked
    clock.advance(1)
    await deliverer.drain_once()
    assert [m.text for m in channel.messages["c1"]] == ["a", "b", "c"]


async def test_transient_errors_back_off_and_permanent_ones_stop(harness: Harness) -> None:
    await queue(harness, "x", chat="c1")
    await queue(harness, "y", chat="c2")
    clock = Clock()
    channel = FlakyChannel()
    channel.failures = [DeliveryError("timeout"), DeliveryError("blocked", permanent=True)]
    deliverer = Deliverer(harness.app.sessionmaker, {"memory": channel}, clock=clock)
    await deliverer.drain_once()
    rows = await statuses(harness)
    assert sorted(rows) == [("failed", 1), ("pending", 1)]
    clock.advance(5)
    await deliverer.drain_once()
    assert sorted(await statuses(harness)) == [("failed", 1), ("sent", 2)]
    assert deliverer.failed_count == 1


async def test_edit_of_an_unsent_message_is_sent_as_a_message(harness: Harness) -> None:
    async with harness.app.sessionmaker() as session, session.begin():
        session.add(
            OutboxMessage(
                channel="memory",
                chat_id="c1",
                payload={"text": "offer"},
                ref="offer:1",
                status="failed",
            )
        )
        session.add(
            OutboxMessage(
                channel="memory",
                chat_id="c1",
                payload={"text": "taken"},
                edit_ref="offer:1",
                not_before=datetime(2026, 1, 1, tzinfo=UTC),
            )
        )
    channel = MemoryChannel()
    await Deliverer(harness.app.sessionmaker, {"memory": channel}).drain_once()
    assert [m.text for m in channel.messages["c1"]] == ["taken"]


async def test_per_chat_pace_is_applied(harness: Harness) -> None:
    await queue(harness, "1", "2", "3")
    channel = MemoryChannel()
    channel.limits = Limits(per_chat_interval=0.2, global_per_second=1000)
    sent_at: list[float] = []
    original = channel.send

    async def timed(chat_id: str, message: Outbound) -> str:
        sent_at.append(time.monotonic())
        return await original(chat_id, message)

    channel.send = timed  # type: ignore[method-assign]
    await Deliverer(harness.app.sessionmaker, {"memory": channel}).drain_once()
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert len(gaps) == 2 and min(gaps) >= 0.19


async def test_rows_that_pacing_would_keep_past_half_the_lease_are_handed_back(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bot.delivery

    monkeypatch.setattr(bot.delivery, "LEASE", timedelta(seconds=0.5))
    await queue(harness, "1", "2", "3", "4")
    channel = MemoryChannel()
    channel.limits = Limits(per_chat_interval=0.2, global_per_second=1000)
    deliverer = Deliverer(harness.app.sessionmaker, {"memory": channel})
    assert await deliverer.drain_once() == 4
    first_pass = [m.text for m in channel.messages["c1"]]
    assert 1 <= len(first_pass) < 4  # the rest went back to the outbox, unsent
    while await deliverer.drain_once():
        pass
    assert [m.text for m in channel.messages["c1"]] == ["1", "2", "3", "4"]
    assert await statuses(harness) == [("sent", 1)] * 4


async def test_a_paced_chat_does_not_hold_back_the_others(harness: Harness) -> None:
    await queue(harness, "1", "2", "3", chat="busy")
    channel = MemoryChannel()
    channel.limits = Limits(per_chat_interval=0.5, global_per_second=1000)
    deliverer = Deliverer(harness.app.sessionmaker, {"memory": channel})
    await deliverer.start()
    try:
        await asyncio.sleep(0.1)  # the busy chat's sender is now pacing
        await queue(harness, "hello", chat="other")
        deliverer.wake()
        started = time.monotonic()
        while "other" not in channel.messages:
            assert time.monotonic() - started < 5, "the other chat waited for the busy one"
            await asyncio.sleep(0.01)
        assert time.monotonic() - started < 0.4, time.monotonic() - started
        assert len(channel.messages["busy"]) < 3  # still pacing
    finally:
        await deliverer.stop()


async def test_an_older_edit_committed_late_does_not_undo_a_newer_one(harness: Harness) -> None:
    async with harness.app.sessionmaker() as session, session.begin():
        session.add(OutboxMessage(channel="memory", chat_id="c1", payload={"text": "v0"},
                                  ref="roll:1", status="sent", platform_message_id="1"))
        older = OutboxMessage(channel="memory", chat_id="c1", payload={"text": "v1"},
                              edit_ref="roll:1", status="failed")  # committed "late"
        session.add(older)
        session.add(OutboxMessage(channel="memory", chat_id="c1", payload={"text": "v2"},
                                  edit_ref="roll:1", status="sent", platform_message_id="1"))
    channel = MemoryChannel()
    channel.messages["c1"] = []
    sent_v0 = await channel.send("c1", Outbound("v0"))
    assert sent_v0 == "1"
    await channel.edit("c1", "1", Outbound("v2"))
    async with harness.app.sessionmaker() as session, session.begin():
        row = await session.get(OutboxMessage, older.id)
        assert row is not None
        row.status, row.not_before = "pending", datetime(2026, 1, 1, tzinfo=UTC)
    await Deliverer(harness.app.sessionmaker, {"memory": channel}).drain_once()
    assert channel.messages["c1"][0].text == "v2"


async def test_no_more_sends_in_flight_than_the_channel_allows(harness: Harness) -> None:
    for n in range(10):
        await queue(harness, f"m{n}", chat=f"chat{n}")
    channel = MemoryChannel()
    channel.limits = Limits(per_chat_interval=0.0, global_per_second=1000, max_in_flight=3)
    in_flight = peak = 0
    original = channel.send

    async def slow(chat_id: str, message: Outbound) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        # Long enough for three more slots to be taken meanwhile: on PostgreSQL each take is a
        # round trip to the shared budget.
        await asyncio.sleep(0.2)
        in_flight -= 1
        return await original(chat_id, message)

    channel.send = slow  # type: ignore[method-assign]
    assert await Deliverer(harness.app.sessionmaker, {"memory": channel}).drain_once() == 10
    assert peak == 3  # ten chats at once, three requests at a time
    assert sorted(channel.messages) == [f"chat{n}" for n in range(10)]


async def test_stop_right_after_a_wake_up_ends_the_loop(harness: Harness) -> None:
    """A commit wakes the idle deliverer just as the service stops: the stop still finishes.

    On Python 3.11 ``asyncio.wait_for`` swallowed the cancel when its event fired in the same
    loop pass, so the delivery loop went on for ever and ``stop()`` (and the test suite's
    teardown with it) hung."""
    for _ in range(20):
        deliverer = Deliverer(harness.app.sessionmaker, {"memory": MemoryChannel()})
        await deliverer.start()
        await asyncio.sleep(0.05)  # idle, waiting for a wake-up
        deliverer.wake()
        await asyncio.wait_for(deliverer.stop(), 10)


class StuckChannel(MemoryChannel):
    """A platform that accepts a request and never answers (until the sender is cancelled)."""

    def __init__(self) -> None:
        super().__init__()
        self.started = asyncio.Event()

    async def send(self, chat_id: str, message: Outbound) -> str:
        self.started.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


async def outbox_rows(h: Harness) -> list[OutboxMessage]:
    async with h.app.sessionmaker() as session:
        rows = await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
        return list(rows.all())


async def test_a_stop_hands_back_the_rows_it_had_claimed(harness: Harness) -> None:
    """SIGTERM while a send hangs: the row is not left claimed for a minute; the next
    deliverer (another instance, or this one restarted) sends it at once."""
    await queue(harness, "您的工单已受理")
    stuck = StuckChannel()
    deliverer = Deliverer(harness.app.sessionmaker, {"memory": stuck})
    await deliverer.start()
    await asyncio.wait_for(stuck.started.wait(), 10)
    [row] = await outbox_rows(harness)
    assert (row.status, row.claimed_by) == ("sending", deliverer.holder)
    await asyncio.wait_for(deliverer.stop(), 10)
    [row] = await outbox_rows(harness)
    assert (row.status, row.claimed_until, row.claimed_by) == ("pending", None, None)
    channel = MemoryChannel()
    assert await Deliverer(harness.app.sessionmaker, {"memory": channel}).drain_once() == 1
    assert [m.text for m in channel.messages["c1"]] == ["您的工单已受理"]


async def test_rows_claimed_by_a_killed_process_are_sent_again_at_once(
    harness: Harness,
) -> None:
    """kill -9 mid-send: the dead process's claims would hold its rows for a minute. A
    deliverer starting on the same host sees that the claimant is gone and sends them now;
    rows claimed by a live deliverer, or by one on another host, are left to their lease."""
    await queue(harness, "dead-1", "dead-2", chat="c1")
    await queue(harness, "alive", chat="c2")
    await queue(harness, "remote", chat="c3")
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()
    here = socket.gethostname()
    owners = {
        "c1": str(Holder(here, proc.pid, "", "killed")),
        "c2": str(Holder(here, os.getpid(), "", "alive")),
        "c3": str(Holder("another-host", proc.pid, "", "remote")),
    }
    async with harness.app.sessionmaker() as session, session.begin():
        for row in (await session.scalars(select(OutboxMessage))).all():
            row.status, row.claimed_by = "sending", owners[row.chat_id]
            row.claimed_until = datetime.now(UTC) + timedelta(seconds=60)
    channel = MemoryChannel()
    deliverer = Deliverer(harness.app.sessionmaker, {"memory": channel})
    assert await deliverer.rescue_claims() == 2
    while await deliverer.drain_once():
        pass
    assert [m.text for m in channel.messages["c1"]] == ["dead-1", "dead-2"]
    assert "c2" not in channel.messages and "c3" not in channel.messages
