"""The database connection drops in the middle of handling an event.

On PostgreSQL the server really ends the session (``pg_terminate_backend`` of the connection's
own backend, inside the transaction); SQLite has no connection to lose, so the statement fails
the way a failing disk makes it fail (``disk I/O error``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine


@contextlib.contextmanager
def connection_drops_once(
    engine: AsyncEngine, before: Callable[[str], bool]
) -> Iterator[list[str]]:
    """Drop the connection just before the first statement for which ``before`` is true;
    yields the list of statements it fired on (one at most)."""
    fired: list[str] = []

    def hook(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
             executemany: bool) -> None:
        if fired or not before(statement):
            return
        fired.append(statement)
        if conn.dialect.name == "postgresql":
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        raise OperationalError(statement, parameters, sqlite3.OperationalError("disk I/O error"))

    event.listen(engine.sync_engine, "before_cursor_execute", hook)
    try:
        yield fired
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", hook)


def inserting(table: str) -> Callable[[str], bool]:
    """A statement picker: ``INSERT INTO <table>``."""
    return lambda statement: statement.lstrip().upper().startswith(f"INSERT INTO {table.upper()} ")
