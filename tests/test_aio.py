"""The cancellation-safe wait that the delivery loop and the web chat's long poll rely on."""

from __future__ import annotations

import asyncio

import pytest

from bot.aio import wait_event


async def test_a_cancel_arriving_as_the_event_is_set_is_not_lost() -> None:
    """The race that ``asyncio.wait_for`` loses on 3.11: set and cancel in one loop pass."""
    event = asyncio.Event()
    waiting = asyncio.create_task(wait_event(event, 5))
    await asyncio.sleep(0.01)
    event.set()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_it_tells_a_set_event_from_a_time_out() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True
