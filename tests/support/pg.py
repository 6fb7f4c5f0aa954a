"""PostgreSQL for tests and benchmarks: the server's admin URL and fresh databases."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

#: Where PostgreSQL listens on the developer machines and CI (trust auth); override with
#: ``GRIDBOT_TEST_PG``.
PG_ADMIN_URL = os.environ.get(
    "GRIDBOT_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


async def pg_admin(sql: str) -> None:
    """Run one statement outside a transaction (CREATE/DROP DATABASE)."""
    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


def database_url(name: str) -> str:
    """The URL of database ``name`` on the same server."""
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@contextlib.asynccontextmanager
async def fresh_database(prefix: str = "gridbot_t") -> AsyncIterator[str]:
    """A new empty database (its URL), dropped afterwards whatever happened."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    await pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(name)
    finally:
        await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
