"""SQLite through aiosqlite without a thread trip per step of every statement.

SQLAlchemy's aiosqlite adapter makes four trips to aiosqlite's worker thread for every
statement (open a cursor, execute, fetch, close), and each trip waits for the event loop to come
round again. SQLite has one writer, so a write transaction holds the database (and the
in-process writer queue of :mod:`models.db`) across all of its trips: under load the order intake
spent nearly all its time with the write lock held while the loop was busy elsewhere, and the
trips themselves (thread hand-offs, wake-ups) cost a tenth of the CPU.

Here a statement is one call:

* **inside a transaction** (every transaction here is ``BEGIN IMMEDIATE``, so it holds SQLite's
  write lock and, in WAL mode, no statement of it can wait for another connection) it runs on
  the calling thread, like the synchronous driver would;
* **otherwise**, and always for ``BEGIN``/``COMMIT``/``ROLLBACK``/``PRAGMA`` (which may wait for
  another process's lock, up to the busy timeout, or write a checkpoint), it runs as one trip to
  aiosqlite's thread, through the queue aiosqlite uses for its own cursors.

Connection set-up, ``commit``/``rollback``, server-side cursors and error mapping stay
SQLAlchemy's and aiosqlite's. Used by :func:`models.db.make_engine` for ``sqlite+aiosqlite``
URLs (as the dialect's ``module``); if aiosqlite lacks the queue this relies on, the stock
adapter is used.
"""

from __future__ import annotations

import collections
import re
import sqlite3
from collections.abc import Sequence
from threading import Thread
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_

#: Statements that may wait for another connection's lock: always on the worker thread.
_LOCKING = re.compile(r"\s*(BEGIN|COMMIT|END|ROLLBACK|RELEASE|SAVEPOINT|PRAGMA|VACUUM)\b", re.I)

#: What one trip brings back: description, rowcount, lastrowid, rows (None: no result set).
_Outcome = tuple[Any, int, int | None, list[Any] | None]


def _run(
    conn: sqlite3.Connection, operation: str, parameters: Any, many: bool
) -> _Outcome:
    """On aiosqlite's thread: the whole life of a cursor."""
    cur = conn.cursor()
    try:
        if many:
            cur.executemany(operation, parameters)
        elif parameters is None:
            cur.execute(operation)
        else:
            cur.execute(operation, parameters)
        rows = cur.fetchall() if cur.description else None
        return cur.description, cur.rowcount, cur.lastrowid, rows
    finally:
        cur.close()


class _Done:
    """Stands in for the driver cursor: the outcome of the last statement, already fetched."""

    __slots__ = ("arraysize", "description", "lastrowid", "rowcount")

    def __init__(self) -> None:
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    def close(self) -> None:
        """Nothing to release: the real cursor was closed on the worker thread."""


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """A cursor whose ``execute`` is one call (inline or one trip) and ``close`` none."""

    __slots__ = ()
    _awaitable_cursor_close = False

    def _make_new_cursor(self, connection: Any) -> Any:
        return _Done()

    def _aenter_cursor(self, cursor: Any) -> Any:
        return cursor

    async def _trip(self, operation: Any, parameters: Any, many: bool) -> None:
        conn: aiosqlite.Connection = self._connection  # type: ignore[assignment]
        async with self._adapt_connection._execute_mutex:
            raw = conn._conn
            if raw.in_transaction and not _LOCKING.match(operation):
                # Inside a write transaction (BEGIN IMMEDIATE) nothing waits on another
                # connection: run here, without a trip (see the module docstring).
                outcome = _run(raw, operation, parameters, many)
            else:
                outcome = await conn._execute(_run, raw, operation, parameters, many)
        done: _Done = self._cursor  # type: ignore[assignment]
        done.description, done.rowcount, done.lastrowid, rows = outcome
        if rows is not None:
            self._rows = collections.deque(rows)

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        await self._trip(operation, parameters, False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Sequence[Any]) -> Any:
        await self._trip(operation, seq_of_parameters, True)


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """aiosqlite's adapted connection, with :class:`OneTripCursor` for plain cursors."""

    __slots__ = ()
    _cursor_cls = OneTripCursor


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module facade SQLAlchemy's aiosqlite dialect uses, making one-trip connections."""

    def connect(self, *arg: Any, **kw: Any) -> OneTripConnection:
        creator_fn = kw.pop("async_creator_fn", None)
        connection = creator_fn(*arg, **kw) if creator_fn else self.aiosqlite.connect(*arg, **kw)
        thread = connection if isinstance(connection, Thread) else connection._thread
        thread.daemon = True  # as SQLAlchemy does: a forgotten connection must not block exit
        return OneTripConnection(self, await_(connection))


def one_trip_dbapi() -> OneTripDBAPI | None:
    """The module to give ``sqlite+aiosqlite`` engines, or None if this aiosqlite lacks the
    worker queue (``Connection._execute``) and the stock adapter must do."""
    if not callable(getattr(aiosqlite.Connection, "_execute", None)):
        return None
    return OneTripDBAPI(aiosqlite, sqlite3)
