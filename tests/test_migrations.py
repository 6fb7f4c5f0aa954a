"""Migrations: they build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from bot.app import Gridbot
from bot.config import load_settings
from models import Grid
from models.base import Base
from models.db import make_engine, upgrade
from tests.conftest import PG_ADMIN_URL


async def test_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        await upgrade(engine)

        def diff(conn: Connection) -> list[object]:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))

        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_replicas_starting_at_once_on_an_empty_database_all_come_up(
    pg_database: str, tmp_path: Path
) -> None:
    """Every replica of a deployment starts at the same moment: migrations and the demo load
    take turns (one of two once died with a duplicate key in pg_type) and load once."""
    name = f"gridbot_t_start_{uuid.uuid4().hex[:8]}"
    await _admin(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    apps = [
        Gridbot(load_settings(database_url=url, demo=True, secret_key="k",
                              media_dir=tmp_path / f"m{n}"))
        for n in range(3)
    ]
    try:
        await asyncio.gather(*(app.prepare() for app in apps))
        async with apps[0].sessionmaker() as session:
            assert await session.scalar(
                select(func.count()).select_from(Grid).where(Grid.parent_id.is_(None))
            ) == 1
    finally:
        for app in apps:
            await app.engine.dispose()
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _admin(sql: str) -> None:
    engine = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()
