"""Read-only parts of one report run at the same time on PostgreSQL, all on one snapshot.

A city's month is a few independent statements of seconds each (the two months' order
figures, the duties, the members' work); the server does the work and Python waits. On
PostgreSQL :func:`run_parts` runs them on up to :data:`MAX_CONNECTIONS` extra connections of
the session's engine that all see ONE snapshot, PostgreSQL's documented way: the first
transaction (``REPEATABLE READ``) exports it with ``pg_export_snapshot()`` and stays open
until every other has imported it (``SET TRANSACTION SNAPSHOT``) and all parts are done, so a
write committed meanwhile is seen by none of them and the parts cannot disagree.

Sequential on the caller's session instead (the same results): on SQLite, when asked to
(``concurrent=False``, the benchmark's baseline), when the caller's transaction has written
(the other connections could not see its uncommitted rows), or when fewer than two
connections are free under the process-wide bound (a console or the bulletin job asking for
several reports at once never takes more than :data:`MAX_CONNECTIONS` extra connections of an
engine, and never waits for one).
"""

from __future__ import annotations

import asyncio
import re
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

#: Extra connections one engine lends to concurrent parts, over all reports of the process.
MAX_CONNECTIONS = 4

Part = Callable[[AsyncSession], Awaitable[Any]]

_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f]+(-[0-9A-Fa-f]+)+")
_in_use: weakref.WeakKeyDictionary[Engine, int] = weakref.WeakKeyDictionary()


async def before_part() -> None:
    """Awaited on each connection once it holds the shared snapshot, before each part (a
    test seam: a test writes here and checks that no part sees it)."""


async def run_parts(
    session: AsyncSession, parts: Sequence[Part], *, concurrent: bool = True
) -> list[Any]:
    """Each part's result, in the parts' order."""
    engine = await _shareable(session) if concurrent and len(parts) > 1 else None
    taken = _take(engine.sync_engine, len(parts)) if engine is not None else 0
    if engine is None or taken < 2:
        if engine is not None:
            _give_back(engine.sync_engine, taken)
        return [await part(session) for part in parts]
    try:
        return await _on_one_snapshot(engine, parts, taken)
    finally:
        _give_back(engine.sync_engine, taken)


async def _shareable(session: AsyncSession) -> AsyncEngine | None:
    """The session's engine when the parts may run elsewhere: PostgreSQL, nothing written by
    the caller's transaction (pending changes are flushed first, as a query would)."""
    engine = session.bind
    if not isinstance(engine, AsyncEngine) or engine.dialect.name != "postgresql":
        return None
    await session.flush()
    if await session.scalar(text("SELECT txid_current_if_assigned()")) is not None:
        return None
    return engine


def _take(engine: Engine, wanted: int) -> int:
    """Reserve up to ``wanted`` of the engine's free connections (no await: atomic here)."""
    n = max(0, min(wanted, MAX_CONNECTIONS - _in_use.get(engine, 0)))
    _in_use[engine] = _in_use.get(engine, 0) + n
    return n


def _give_back(engine: Engine, n: int) -> None:
    _in_use[engine] = _in_use.get(engine, 0) - n


async def _on_one_snapshot(engine: AsyncEngine, parts: Sequence[Part], n: int) -> list[Any]:
    results: list[Any] = [None] * len(parts)
    todo = deque(enumerate(parts))
    async with AsyncExitStack() as stack:
        conns: list[AsyncConnection] = []
        for _ in range(n):
            conn = await stack.enter_async_context(engine.connect())
            conns.append(await conn.execution_options(isolation_level="REPEATABLE READ"))
        # The exporter's transaction stays open (this block) until every part is done.
        snapshot = str(await conns[0].scalar(text("SELECT pg_export_snapshot()")))
        if not _SNAPSHOT_ID.fullmatch(snapshot):
            raise ValueError(f"unexpected snapshot id {snapshot!r}")
        for conn in conns[1:]:  # the first statement of each transaction
            await conn.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))

        async def work(conn: AsyncConnection) -> None:
            async with AsyncSession(bind=conn, autoflush=False) as part_session:
                while todo:
                    i, part = todo.popleft()
                    await before_part()
                    results[i] = await part(part_session)

        async with asyncio.TaskGroup() as group:  # one fails: the others are cancelled
            for conn in conns:
                group.create_task(work(conn))
    return results
