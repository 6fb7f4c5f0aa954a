"""Keeping the event loop responsive while the scheduler's store thread works through a burst:
the store thread hands the GIL over often (:func:`let_loop_run`), and the heap built by start-up
is left out of the garbage collector's full scans (:func:`freeze_startup_heap`)."""

from __future__ import annotations

import gc
import logging
import threading
import time

log = logging.getLogger(__name__)


#: Freeze the heap built by start-up once the scheduler leads (see :func:`freeze_startup_heap`).
FREEZE_HEAP = True
_heap_frozen = False


def freeze_startup_heap() -> bool:
    """Once per process: collect, then ``gc.freeze()`` what start-up built (modules, ORM
    mappers, catalogs, clients: ~120,000 objects), so that later full collections skip it.

    A full (generation 2) collection holds the GIL while it scans every tracked object, and a
    burst of reminders triggers one every few thousand reminders: over start-up's heap alone
    each took 60-200 ms on the 2-core development machine, the worst loop stalls of a 09:00
    burst. Frozen objects are still freed when their reference count drops; only cycles among
    them would never be collected. ``True`` if it froze now."""
    global _heap_frozen
    if _heap_frozen or not FREEZE_HEAP:
        return False
    gc.collect()
    gc.freeze()
    _heap_frozen = True
    log.info("start-up heap frozen: %s objects left out of collections", gc.get_freeze_count())
    return True


#: The store thread's Python work gives the GIL away after this long (see :func:`let_loop_run`).
GIL_SLICE = 0.0002
_slice = threading.local()


def let_loop_run(n: int = 0) -> None:
    """Called by the store thread after each job of a loop (unpickling, trigger arithmetic,
    pickling): once it has run ``GIL_SLICE`` (0.2 ms) since the last time, it sleeps 0.1 ms.

    A thread running Python keeps the GIL until the switch interval (5 ms) forces it out, each
    time the event loop asks for it back; and the loop asks for it back after every blocking
    call, e.g. after every row SQLite steps through on the loop's thread (the GIL "convoy"). A
    09:00 pass (about 60 µs of Python per job) thus stretched the loop's short statements to
    20-60 ms. Sleeping a little, often, hands the GIL over for certain (``sleep(0)`` does not:
    the thread usually takes it back first)."""
    now = time.perf_counter()
    if now - getattr(_slice, "since", 0.0) > GIL_SLICE:
        time.sleep(0.0001)
        _slice.since = time.perf_counter()
