"""Stopping the service (SIGTERM) finishes in bounded time whatever is stuck."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Harness


class HangingPart:
    """A part of the service whose stop never returns (a platform call that hangs)."""

    async def stop(self) -> None:
        await asyncio.sleep(3600)


async def test_a_part_that_hangs_does_not_hold_up_the_stop(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    app = harness.app
    app.duties = HangingPart()
    await app.deliverer.start()
    await asyncio.wait_for(app.stop(), 30)
    assert "stopping scheduler took more than" in caplog.text
    # What comes after the stuck part was still stopped: delivery handed its claims back.
    assert app.deliverer._task is None
