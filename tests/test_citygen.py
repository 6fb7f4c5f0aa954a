"""The city generator (bench/citygen.py) keeps writing what the importer writes, and a city it
generates routes orders: a benchmark that silently drifted from the product would measure
nothing. PostgreSQL only (the generator's COPY path); skipped with the reason without it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.citygen import CityKeys, fresh_database, generate, plan_city, write_files
from bot.admin.importer import import_community
from bot.core.notify import Notifier
from bot.core.orders import NewOrder, OrderService
from bot.i18n import Translator
from models import Building, Category, Grid, Identity, OutboxMessage, Person, Role
from models.db import make_engine, make_sessionmaker, upgrade
from tests.conftest import _pg_available
from tests.support.pg import PG_ADMIN_URL

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def pg() -> str:
    reason = _pg_available()
    if reason:
        pytest.skip(reason)
    return PG_ADMIN_URL


@pytest.fixture
async def engine(pg: str) -> AsyncIterator[AsyncEngine]:
    async with fresh_database(pg, label="t_citygen") as url:
        eng = make_engine(url)
        try:
            yield eng
        finally:
            await eng.dispose()


async def _snapshot(engine: AsyncEngine) -> dict[str, Any]:
    """Everything the import writes, by codes and keys (ids differ between databases)."""
    async with make_sessionmaker(engine)() as s:
        grids = {g.id: g for g in await s.scalars(select(Grid))}
        buildings = {b.id: b for b in await s.scalars(select(Building))}
        people = {p.id: p for p in await s.scalars(select(Person))}

        def path(g: Grid) -> str:
            return "/".join(grids[int(i)].code for i in g.path.strip("/").split("/"))

        return {
            "grids": {
                (g.code, g.name, g.depth, g.parent_id and grids[g.parent_id].code, path(g))
                for g in grids.values()
            },
            "buildings": {
                (b.code, grids[b.grid_id].code, b.name, b.address) for b in buildings.values()
            },
            "people": {(p.key, p.name, p.phone, p.locale) for p in people.values()},
            "roles": {
                (
                    people[r.person_id].key,
                    grids[r.grid_id].code,
                    r.role,
                    r.building_id and buildings[r.building_id].code,
                    r.room,
                )
                for r in await s.scalars(select(Role))
            },
            "categories": {
                (c.code, c.urgent, c.deadline_hours, c.points, c.sort)
                for c in await s.scalars(select(Category))
            },
        }


async def test_a_generated_city_is_what_the_importer_makes_of_the_same_files(
    engine: AsyncEngine, pg: str, tmp_path: Path
) -> None:
    plan = plan_city(0.001, seed=7)
    keys = await generate(engine, plan, now=NOW)
    # The operator's way: the same city as community files through the importer.
    async with fresh_database(pg, label="t_cityimp") as url:
        imported = make_engine(url)
        try:
            await upgrade(imported)
            async with make_sessionmaker(imported)() as s, s.begin():
                for path in write_files(plan, tmp_path):
                    await import_community(s, path)
            expected = await _snapshot(imported)
        finally:
            await imported.dispose()
    assert await _snapshot(engine) == expected
    assert keys.counts["grids"] == len(expected["grids"])


async def test_the_counts_are_those_asked_for_and_every_person_can_be_reached(
    engine: AsyncEngine,
) -> None:
    keys = await generate(engine, plan_city(0.001, seed=7), now=NOW)
    async with make_sessionmaker(engine)() as s:
        by_depth = dict(
            (await s.execute(select(Grid.depth, func.count()).group_by(Grid.depth))).all()
        )
        by_role = dict(
            (await s.execute(select(Role.role, func.count()).group_by(Role.role))).all()
        )
        people = await s.scalar(select(func.count()).select_from(Person))
        identities = await s.scalar(select(func.count()).select_from(Identity))
        per_micro = (
            await s.scalars(select(func.count()).select_from(Building).group_by(Building.grid_id))
        ).all()
    # 1/1000 of Yunfu: 64 / 996 / 6,128 / 14,392 grids → 1 / 1 / 6 / 14; 300 residents, 30 members.
    assert by_depth == {0: 1, 1: 1, 2: 6, 3: 14}
    assert by_role["resident"] == 300 and by_role["member"] == 30
    assert by_role["head"] == 1 + 1 + 6  # every small grid and above
    assert by_role["worker"] == 14 - 1  # one micro-grid in twenty is left without a worker
    assert people == identities == sum(by_role.values()) == keys.counts["people"]
    assert len(per_micro) == 14 and min(per_micro) >= 1 and max(per_micro) <= 3
    assert len(keys.residents) == 300 and len(keys.workers) == 13


async def _submit(engine: AsyncEngine, keys: CityKeys, resident: tuple[int, int, str]) -> Any:
    tr = Translator.load(ROOT / "locales", "zh_CN")
    async with make_sessionmaker(engine)() as s, s.begin():
        person = await s.get(Person, resident[0])
        building = await s.get(Building, resident[1])
        assert person is not None and building is not None
        order = await OrderService(s, Notifier(s, tr, "zh_CN"), tr, NOW).submit(
            person, building, resident[2], NewOrder(category="repair", description="楼道灯坏了")
        )
        outbox = (
            await s.execute(
                select(
                    OutboxMessage.person_id, OutboxMessage.channel, OutboxMessage.chat_id
                ).where(OutboxMessage.ref == f"disp:{order.id}")
            )
        ).all()
        return order.handling_grid_id, outbox


async def test_an_order_from_a_generated_resident_reaches_the_generated_worker_or_head(
    engine: AsyncEngine,
) -> None:
    keys = await generate(engine, plan_city(0.001, seed=7), now=NOW)
    staffed = next(r for r in keys.residents if keys.building_grid[r[1]] in keys.workers)
    micro = keys.building_grid[staffed[1]]
    worker = keys.workers[micro]
    handled_at, outbox = await _submit(engine, keys, staffed)
    assert handled_at == micro
    assert outbox == [(worker, "telegram", str(6_000_000_000 + worker))]

    # The micro-grid without a worker: the head of the small grid above gets the order.
    bare = next(g for g in keys.grid_ids[-1] if g not in keys.workers)
    resident = next(r for r in keys.residents if keys.building_grid[r[1]] == bare)
    async with make_sessionmaker(engine)() as s:
        grid = await s.get(Grid, bare)
        assert grid is not None
    small = grid.parent_id
    assert small in keys.grid_ids[2]
    handled_at, outbox = await _submit(engine, keys, resident)
    assert handled_at == small
    assert [pid for pid, _, _ in outbox] == [keys.heads[small]]
