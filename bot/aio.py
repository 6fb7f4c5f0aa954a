"""Small asyncio helpers that stay correct under cancellation on Python 3.11.

``asyncio.wait_for`` on 3.11 loses a cancellation that arrives in the same loop iteration as
the awaited thing completing: it returns the result instead of raising ``CancelledError``
(CPython gh-86296, fixed in 3.12 by building ``wait_for`` on ``asyncio.timeout``). A loop like
``while True: await wait_for(event.wait(), 1)`` then never ends after ``task.cancel()``, and
whoever awaits the task waits for ever — that hung the test suite's teardowns when a commit woke
the deliverer just as the service stopped. Code here waits with ``asyncio.timeout`` instead,
whose cancellation accounting (``Task.uncancel``) tells its own time-out from a caller's cancel.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:  # noqa: ASYNC109
    """Wait until ``event`` is set or ``timeout`` seconds pass; ``True`` if it was set.

    A cancellation of the caller always propagates, whatever else happened at that moment.
    """
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
