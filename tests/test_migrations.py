"""Migrations: they build exactly the schema the models describe, on both databases."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from bot.app import Gridbot
from bot.config import load_settings
from models import Grid
from models.base import Base
from models.db import make_engine, upgrade
from tests.support.pg import fresh_database


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
    async with fresh_database("gridbot_t_start") as url:
        await _prepare_at_once(url, tmp_path)


async def _prepare_at_once(url: str, tmp_path: Path) -> None:
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
