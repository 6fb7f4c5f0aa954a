"""Engine and session factories, and schema migrations (Alembic) run from code."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from models.sqlite_async import one_trip_dbapi

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def is_sqlite(url: str) -> bool:
    """Tell whether a database URL points at SQLite."""
    return url.startswith("sqlite")


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """Create the async engine; SQLite gets WAL, a busy timeout and immediate write transactions.

    SQLite upgrades a read transaction to a write one without waiting on the busy timeout, so two
    concurrent writers would fail with "database is locked"; ``BEGIN IMMEDIATE`` takes the write
    lock up front and makes them queue instead.
    """
    if is_sqlite(url):
        kwargs.setdefault("connect_args", {"timeout": 30})
        one_trip = one_trip_dbapi() if "aiosqlite" in url.split(":", 1)[0] else None
        if one_trip is not None:  # see models.sqlite_async
            kwargs.setdefault("module", one_trip)
            kwargs["connect_args"] = {**kwargs["connect_args"], "check_same_thread": False}
    else:
        kwargs.setdefault("pool_pre_ping", True)
    engine = create_async_engine(url, **kwargs)
    if is_sqlite(url):

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def make_sync_engine(url: str, **kwargs: Any) -> Engine:
    """A synchronous engine on the same database (APScheduler's job store), with the same
    SQLite settings as :func:`make_engine`: WAL, busy timeout, ``BEGIN IMMEDIATE``."""
    if is_sqlite(url):
        kwargs.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
    else:
        kwargs.setdefault("pool_pre_ping", True)
    engine = create_engine(url, **kwargs)
    if is_sqlite(url):

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class _QueuedTransaction:
    """An explicit transaction that first waits its turn on an :class:`asyncio.Lock`."""

    def __init__(self, lock: asyncio.Lock, inner: Any) -> None:
        self.lock = lock
        self.inner = inner

    async def __aenter__(self) -> Any:
        await self.lock.acquire()
        try:
            return await self.inner.__aenter__()
        except BaseException:
            self.lock.release()
            raise

    async def __aexit__(self, *exc: Any) -> Any:
        try:
            return await self.inner.__aexit__(*exc)
        finally:
            self.lock.release()


class QueuedWriterSession(AsyncSession):
    """A session whose explicit transactions (``session.begin()``) queue on one in-process lock.

    SQLite has a single writer. Without the queue, concurrent transactions of one process meet
    at SQLite's lock, whose busy handler sleeps and retries in growing steps: under load most
    of the time goes to sleeping. Handing the turn over through an asyncio lock is immediate
    and fair. (Several processes still meet at SQLite's lock; SQLite mode is single-instance.)
    """

    write_lock: asyncio.Lock

    def begin(self) -> Any:
        return _QueuedTransaction(self.write_lock, super().begin())


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Session factory; objects stay usable after commit (``expire_on_commit=False``).

    On SQLite, explicit transactions of this factory's sessions take turns (see
    :class:`QueuedWriterSession`); code must not open one while holding another.
    """
    if engine.dialect.name != "sqlite":
        return async_sessionmaker(engine, expire_on_commit=False)
    session_class = type("SQLiteSession", (QueuedWriterSession,), {"write_lock": asyncio.Lock()})
    return async_sessionmaker(engine, class_=session_class, expire_on_commit=False)


def alembic_config() -> Config:
    """Alembic configuration pointing at the migrations shipped in this package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


#: The PostgreSQL advisory lock key that start-up work (migrations, the demo load) takes.
STARTUP_LOCK_KEY = 0x67726964  # "grid"


@contextlib.asynccontextmanager
async def startup_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """Serialise start-up work across every instance on one PostgreSQL database.

    Replicas of a deployment start at the same moment; two running the migrations at once
    failed (``duplicate key … pg_type_typname_nsp_index``) and two could both load the demo.
    A session-level advisory lock, held on its own connection for the block, makes them take
    turns: the second finds the schema at head and the community loaded. A process that dies
    holding it releases it with its connection. SQLite is single-instance: nothing to do.
    """
    if engine.dialect.name != "postgresql":
        yield
        return
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": STARTUP_LOCK_KEY})
        await conn.commit()
        try:
            yield
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": STARTUP_LOCK_KEY})
            await conn.commit()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (idempotent)."""

    def _run(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(_run)
