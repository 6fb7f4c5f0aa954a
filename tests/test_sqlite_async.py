"""The SQLite adapter: statements of a transaction run in place, waiting ones on the thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from models.db import make_engine
from models.sqlite_async import OneTripDBAPI


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")

    @event.listens_for(eng.sync_engine, "connect")
    def _tid(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.create_function("tid", 0, threading.get_ident)

    async with eng.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
    try:
        yield eng
    finally:
        await eng.dispose()


async def test_the_engine_uses_the_adapter(engine: AsyncEngine) -> None:
    assert isinstance(engine.dialect.dbapi, OneTripDBAPI)


async def test_statements_in_a_transaction_run_on_the_loop_thread(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        assert await conn.scalar(text("SELECT tid()")) == threading.get_ident()
    async with engine.connect() as conn:  # a transaction too (BEGIN IMMEDIATE first)
        assert await conn.scalar(text("SELECT tid()")) == threading.get_ident()


async def test_results_rowcounts_and_ids(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        inserted = await conn.execute(text("INSERT INTO t (v) VALUES ('a') RETURNING id"))
        assert inserted.scalar_one() == 1
        plain = await conn.execute(text("INSERT INTO t (v) VALUES ('b')"))
        assert plain.lastrowid == 2
        many = await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), [{"v": "c"}, {"v": "d"}])
        assert many.rowcount == 2
        changed = await conn.execute(text("UPDATE t SET v = v || '!' WHERE v IN ('a', 'c')"))
        assert changed.rowcount == 2
        none = await conn.execute(text("UPDATE t SET v = 'x' WHERE id = 99"))
        assert none.rowcount == 0
        rows = (await conn.execute(text("SELECT id, v FROM t ORDER BY id"))).all()
        assert [tuple(r) for r in rows] == [(1, "a!"), (2, "b"), (3, "c!"), (4, "d")]
        assert list((await conn.execute(text("SELECT v FROM t WHERE 0"))).keys()) == ["v"]


async def test_errors_surface_as_sqlalchemy_errors_and_roll_back(engine: AsyncEngine) -> None:
    with pytest.raises(IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (v) VALUES ('same')"))
            await conn.execute(text("INSERT INTO t (v) VALUES ('same')"))
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM t")) == 0


async def test_waiting_for_another_writer_does_not_block_the_loop(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """BEGIN IMMEDIATE waits for another process's write lock on aiosqlite's thread, so the
    event loop goes on meanwhile."""
    other = sqlite3.connect(tmp_path / "t.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t (v) VALUES ('other')")

    async def write() -> None:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (v) VALUES ('ours')"))

    task = asyncio.create_task(write())
    ticks = 0
    for _ in range(20):  # the loop keeps turning while our BEGIN waits
        await asyncio.sleep(0.01)
        ticks += 1
    assert not task.done() and ticks == 20
    other.execute("COMMIT")
    other.close()
    await asyncio.wait_for(task, 10)
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT v FROM t ORDER BY id"))).scalars().all()
    assert rows == ["other", "ours"]
