"""A test that hangs fails in bounded time, and says where it hung.

Two bounds, both per test (setup, call and teardown together):

* at ``GRIDBOT_TEST_DUMP_AFTER`` seconds (default 120) a watchdog thread prints every thread's
  stack (``faulthandler``) and every task of every running event loop with the stack it is
  suspended at — an asyncio hang shows the main thread idle in ``select``, so the tasks are
  what tells the cause;
* at pytest-timeout's ``timeout`` (``pyproject.toml``) the test fails and the run goes on.

Registered by ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import io
import os
import sys
import threading
from collections.abc import Iterator

import pytest

DUMP_AFTER = float(os.environ.get("GRIDBOT_TEST_DUMP_AFTER", "120"))


def running_loops() -> list[asyncio.AbstractEventLoop]:
    """Event loops running in this process (found from another thread, for a dump)."""
    return [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, asyncio.AbstractEventLoop) and obj.is_running()
    ]


def describe_tasks(loop: asyncio.AbstractEventLoop) -> str:
    """Every task of ``loop`` with the frames it is suspended at (best effort from another
    thread: the task set may change while it is read)."""
    for _ in range(5):
        try:
            tasks = list(asyncio.all_tasks(loop))
            break
        except RuntimeError:  # changed size during iteration
            continue
    else:
        return "  (tasks could not be listed)\n"
    out = io.StringIO()
    for task in tasks:
        out.write(f"--- {task!r}\n")
        try:
            task.print_stack(limit=30, file=out)
        except Exception as err:  # a task finishing under us
            out.write(f"  (stack unavailable: {err!r})\n")
    return out.getvalue()


def dump(title: str) -> None:
    """Print all threads' stacks and all running loops' tasks to stderr."""
    err = sys.__stderr__ or sys.stderr
    err.write(f"\n{'=' * 30} {title} {'=' * 30}\n")
    err.flush()
    faulthandler.dump_traceback(file=err, all_threads=True)
    for loop in running_loops():
        err.write(f"\n--- asyncio tasks of {loop!r}\n{describe_tasks(loop)}")
    err.write(f"{'=' * 80}\n")
    err.flush()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """Arm the watchdog for the whole protocol of one test."""
    timer = threading.Timer(DUMP_AFTER, dump, args=(f"{item.nodeid} still running after "
                                                    f"{DUMP_AFTER:.0f} s",))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
