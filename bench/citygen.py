"""A Yunfu-sized community tree for benchmarks (see bench/README.md, section "City scale").

At ``scale=1.0``: 64 large grids (镇街) / 996 middle (村社区) / 6,128 small (网格) / 14,392
micro-grids (微网格), 1–3 buildings per micro-grid, a grid worker per micro-grid (a share of
them left without one, as happens: their orders go up to the head), a head per small grid and
above, 300,000 residents bound to buildings (person + resident role + a Telegram identity) and
30,000 party members spread over the micro-grids, and the importer's default categories.

The rows are those the importer writes for the same files (``write_files`` writes them:
``community.yaml``, ``buildings.csv``, ``people.csv``): same codes, names, depth order,
materialised ``Grid.path``, same role rows. The generator also writes what only chatting
creates: an identity per person (as if every invite had been redeemed on Telegram).

    from bench.citygen import generate, plan_city
    keys = await generate(engine, plan_city(scale=0.05))   # CityKeys: ids of what it made

    .venv/bin/python bench/citygen.py --scale 0.02            # fresh database, dropped after
    .venv/bin/python bench/citygen.py --scale 1 --keep        # prints the database URL kept
    .venv/bin/python bench/citygen.py --database-url URL      # into an existing database
    .venv/bin/python bench/citygen.py --scale 0.05 --files DIR   # community files only

On PostgreSQL the rows go in with ``COPY`` (asyncpg ``copy_records_to_table``); on SQLite with
Core ``executemany``. Ids are assigned here (after the tables' current maximum) and the
sequences moved past them, so the generator adds to a database that already holds data.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import Table, func, insert, select, text  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine  # noqa: E402

from bot.admin.importer import default_categories  # noqa: E402
from models import Building, Category, Community, Grid, Identity, Person, Role  # noqa: E402
from models.db import make_engine, upgrade  # noqa: E402
from models.people import ROLE_HEAD, ROLE_MEMBER, ROLE_RESIDENT, ROLE_WORKER  # noqa: E402

PG_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"

#: Yunfu's grid counts per level, top first, and its people (the brief's figures).
FULL_LEVELS = (64, 996, 6_128, 14_392)
FULL_RESIDENTS = 300_000
FULL_MEMBERS = 30_000
LEVEL_NAMES = ("镇街", "村社区", "网格", "微网格")
DISTRICTS = ("云城区", "云安区", "罗定市", "新兴县", "郁南县")
#: A generated person's Telegram user id is this plus their person id (far from the fakes'
#: 100,001 / 200,001, and unique across cities generated into one database).
TELEGRAM_ID0 = 6_000_000_000

_SURNAMES = "李王张刘陈杨黄赵吴周徐孙马朱胡郭何林罗梁宋郑谢韩唐冯邓曹彭曾萧田董潘袁蔡蒋余"
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰红梅建国志文金凤海波辉德胜春燕"
_STREETS = ("兴云", "环市", "建设", "人民", "新华", "城北", "河滨", "星岩", "解放", "育华")


@dataclass
class GridRow:
    """One grid of the plan, parent first in list order (the importer's depth order)."""

    code: str
    name: str
    parent: int | None  # index into CityPlan.grids
    depth: int


@dataclass
class PersonRow:
    """One person with one role (every generated person holds exactly one)."""

    key: str
    name: str
    phone: str
    role: str
    grid: int  # index into CityPlan.grids
    building: int | None = None  # index into CityPlan.buildings
    room: str | None = None


@dataclass
class CityPlan:
    """What a generation writes, as plain data (no ids): grids, buildings, people."""

    scale: float
    seed: int
    prefix: str
    levels: tuple[int, ...]
    grids: list[GridRow] = field(default_factory=list)
    #: (code, grid index, name, address)
    buildings: list[tuple[str, int, str, str]] = field(default_factory=list)
    people: list[PersonRow] = field(default_factory=list)

    def count(self, role: str) -> int:
        """How many people of the plan hold ``role``."""
        return sum(1 for p in self.people if p.role == role)


@dataclass
class CityKeys:
    """Ids of what :func:`generate` created, for benchmarks built on top (orders, duties)."""

    community_id: int
    #: Grid ids per level, top first (``grid_ids[-1]``: the micro-grids).
    grid_ids: list[list[int]]
    grid_codes: dict[int, str]
    #: Building id -> its micro-grid id.
    building_grid: dict[int, int]
    #: (person id, building id, room) of every resident.
    residents: list[tuple[int, int, str]]
    #: Micro-grid id -> its worker's person id (micro-grids without a worker are absent).
    workers: dict[int, int]
    #: Grid id -> its head's person id (small grids and above).
    heads: dict[int, int]
    members: list[int]
    #: Member person id -> their micro-grid id.
    member_grid: dict[int, int]
    categories: list[str]
    counts: dict[str, int]
    #: Seconds per step (``plan``, each table, ``analyze``, ``total``).
    timings: dict[str, float]


def _scaled(n: int, scale: float) -> int:
    return max(1, round(n * scale))


def _name(rng: random.Random) -> str:
    return rng.choice(_SURNAMES) + "".join(rng.choices(_GIVEN, k=rng.choice((1, 2))))


def _spread(children: int, parents: int) -> list[int]:
    """The parent index of each child: contiguous runs, every parent gets one at least."""
    return [i * parents // children for i in range(children)]


def plan_city(
    scale: float = 1.0,
    *,
    seed: int = 1,
    prefix: str = "yf",
    unstaffed_share: float = 0.05,
) -> CityPlan:
    """The city at ``scale`` (a fraction of Yunfu), the same for the same arguments.

    ``unstaffed_share`` of the micro-grids have no worker (their orders go to the head of the
    small grid above); ``prefix`` starts every code, so two cities can share a database.
    """
    if not 0 < scale <= 10:
        raise ValueError("scale must be in (0, 10]")
    rng = random.Random(seed)
    levels = [_scaled(n, scale) for n in FULL_LEVELS]
    for i in range(1, len(levels)):  # a parent per child at least: never fewer children
        levels[i] = max(levels[i], levels[i - 1])
    plan = CityPlan(scale, seed, prefix, tuple(levels))
    tags = ("t", "c", "g", "m")
    first: list[int] = []  # index in plan.grids of each level's first grid
    district_of: list[str] = []
    for depth, n in enumerate(levels):
        first.append(len(plan.grids))
        parents = _spread(n, levels[depth - 1]) if depth else [0] * n
        within: dict[int, int] = {}
        for i in range(n):
            if depth == 0:
                district = DISTRICTS[i * len(DISTRICTS) // n]
                parent = None
            else:
                parent = first[depth - 1] + parents[i]
                district = district_of[parent]
            district_of.append(district)
            within[parents[i]] = within.get(parents[i], 0) + 1
            if depth == 0:
                name = f"{district}第{i + 1}镇街"
            elif depth == 1:
                name = f"{district}第{i + 1}村社区"
            elif depth == 2:
                name = f"{district}第{i + 1}网格"
            else:
                assert parent is not None
                small = plan.grids[parent].name
                name = f"{small}{within[parents[i]]}号微网格"
            plan.grids.append(GridRow(f"{prefix}-{tags[depth]}{i + 1}", name, parent, depth))
    micro0 = first[-1]
    micros = range(micro0, len(plan.grids))
    # Buildings: 1-3 per micro-grid.
    for g in micros:
        for b in range(rng.randint(1, 3)):
            n = len(plan.buildings) + 1
            street = rng.choice(_STREETS)
            plan.buildings.append(
                (
                    f"{prefix}-b{n}",
                    g,
                    f"{plan.grids[g].name}{b + 1}栋",
                    f"云浮市{district_of[g]}{street}路{rng.randint(1, 400)}号",
                )
            )

    def phone() -> str:
        return f"139{rng.randrange(10**8):08d}"

    people = plan.people
    # Heads of every small grid and above, top first.
    for g in range(micro0):
        people.append(PersonRow(f"{prefix}-h{g + 1}", _name(rng), phone(), ROLE_HEAD, g))
    # A worker per micro-grid, but for the unstaffed share.
    unstaffed = set(rng.sample(list(micros), round(len(micros) * unstaffed_share)))
    for g in micros:
        if g not in unstaffed:
            key = f"{prefix}-w{g - micro0 + 1}"
            people.append(PersonRow(key, _name(rng), phone(), ROLE_WORKER, g))
    for i in range(_scaled(FULL_MEMBERS, scale)):
        g = micro0 + rng.randrange(len(micros))
        people.append(PersonRow(f"{prefix}-p{i + 1}", _name(rng), phone(), ROLE_MEMBER, g))
    for i in range(_scaled(FULL_RESIDENTS, scale)):
        b = rng.randrange(len(plan.buildings))
        room = f"{rng.randint(1, 4)}-{rng.randint(1, 18)}{rng.randint(1, 4):02d}"
        people.append(
            PersonRow(
                f"{prefix}-r{i + 1}",
                _name(rng),
                phone(),
                ROLE_RESIDENT,
                plan.buildings[b][1],
                b,
                room,
            )
        )
    return plan


# --------------------------------------------------------------------------------------------
# Community files: what an operator would import (``gridbot import``).


def write_files(plan: CityPlan, directory: Path) -> list[Path]:
    """Write the plan as ``community.yaml`` (community, levels, tree), ``buildings.csv`` and
    ``people.csv``, the formats of ``bot/demo``; returns the paths in import order."""
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    nodes: list[dict[str, Any]] = []
    roots: list[dict[str, Any]] = []
    for g in plan.grids:
        node: dict[str, Any] = {"code": g.code, "name": g.name}
        nodes.append(node)
        if g.parent is None:
            roots.append(node)
        else:
            nodes[g.parent].setdefault("children", []).append(node)
    community = {
        "community": {
            "code": plan.prefix + "-city",
            "name": "云浮市",
            "timezone": "Asia/Shanghai",
        },
        "levels": list(LEVEL_NAMES),
        "grids": roots,
    }
    yaml_path = directory / "community.yaml"
    yaml_path.write_text(
        yaml.safe_dump(community, allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    buildings_path = directory / "buildings.csv"
    with buildings_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(("code", "grid", "name", "address"))
        for code, gi, name, address in plan.buildings:
            w.writerow((code, plan.grids[gi].code, name, address))
    people_path = directory / "people.csv"
    with people_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(("key", "name", "phone", "role", "grid", "building", "room"))
        for p in plan.people:
            building = plan.buildings[p.building][0] if p.building is not None else ""
            grid = "" if p.role == ROLE_RESIDENT else plan.grids[p.grid].code
            w.writerow((p.key, p.name, p.phone, p.role, grid, building, p.room or ""))
    return [yaml_path, buildings_path, people_path]


# --------------------------------------------------------------------------------------------
# Bulk writing.


def _t(model: type[Any]) -> Table:
    table: Table = model.__table__
    return table


async def _next_id(conn: AsyncConnection, table: Table) -> int:
    return int(await conn.scalar(select(func.coalesce(func.max(table.c.id), 0))) or 0) + 1


async def _bulk(
    conn: AsyncConnection, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """Insert ``rows`` (tuples in ``columns`` order): COPY on PostgreSQL, else executemany."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        await driver.copy_records_to_table(table.name, records=rows, columns=list(columns))
        return
    for start in range(0, len(rows), 5_000):
        chunk = rows[start : start + 5_000]
        await conn.execute(insert(table), [dict(zip(columns, r, strict=True)) for r in chunk])


async def _move_sequence(conn: AsyncConnection, table: Table) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                f"(SELECT max(id) FROM {table.name}))"
            )
        )


async def generate(
    engine: AsyncEngine,
    plan: CityPlan,
    *,
    migrate: bool = True,
    now: datetime | None = None,
) -> CityKeys:
    """Write ``plan`` into the database of ``engine`` in one transaction; return its ids.

    ``migrate`` brings the schema to head first (Alembic, as ``gridbot migrate``). ``now`` is
    the creation time of the rows (default: the wall clock).
    """
    now = now or datetime.now(UTC)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if migrate:
        await upgrade(engine)
        timings["migrate"] = time.perf_counter() - started

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(
                text(
                    "LOCK TABLE community, grid, building, person, identity, role "
                    "IN EXCLUSIVE MODE"
                )
            )

        def lap(step: str, t0: float) -> float:
            t1 = time.perf_counter()
            timings[step] = round(t1 - t0, 3)
            return t1

        t = time.perf_counter()
        community_id = await _next_id(conn, _t(Community))
        await conn.execute(
            insert(_t(Community)).values(
                id=community_id,
                code=f"{plan.prefix}-city",
                name="云浮市",
                level_names="/".join(LEVEL_NAMES),
                timezone="Asia/Shanghai",
                updated_at=now,
            )
        )
        await _move_sequence(conn, _t(Community))

        # Grids, parents first: the path is the parent's path plus the grid's own id.
        grid0 = await _next_id(conn, _t(Grid))
        grid_ids = [grid0 + i for i in range(len(plan.grids))]
        paths: list[str] = []
        grid_rows = []
        for i, g in enumerate(plan.grids):
            parent_id = grid_ids[g.parent] if g.parent is not None else None
            base = paths[g.parent] if g.parent is not None else "/"
            paths.append(f"{base}{grid_ids[i]}/")
            grid_rows.append(
                (grid_ids[i], community_id, g.code, g.name, parent_id, g.depth, paths[i])
            )
        await _bulk(
            conn,
            _t(Grid),
            ("id", "community_id", "code", "name", "parent_id", "depth", "path"),
            grid_rows,
        )
        await _move_sequence(conn, _t(Grid))
        t = lap("grids", t)

        b0 = await _next_id(conn, _t(Building))
        building_rows = [
            (b0 + i, code, grid_ids[g], name, address, None, None)
            for i, (code, g, name, address) in enumerate(plan.buildings)
        ]
        await _bulk(
            conn,
            _t(Building),
            ("id", "code", "grid_id", "name", "address", "latitude", "longitude"),
            building_rows,
        )
        await _move_sequence(conn, _t(Building))
        t = lap("buildings", t)

        p0 = await _next_id(conn, _t(Person))
        person_rows = [
            (p0 + i, p.key, p.name, p.phone, None, 0, None, now) for i, p in enumerate(plan.people)
        ]
        await _bulk(
            conn,
            _t(Person),
            ("id", "key", "name", "phone", "locale", "points", "preferred_channel", "created_at"),
            person_rows,
        )
        await _move_sequence(conn, _t(Person))
        del person_rows
        t = lap("people", t)

        r0 = await _next_id(conn, _t(Role))
        role_rows = [
            (
                r0 + i,
                p0 + i,
                grid_ids[p.grid],
                p.role,
                b0 + p.building if p.building is not None else None,
                p.room,
                now,
            )
            for i, p in enumerate(plan.people)
        ]
        await _bulk(
            conn,
            _t(Role),
            ("id", "person_id", "grid_id", "role", "building_id", "room", "created_at"),
            role_rows,
        )
        await _move_sequence(conn, _t(Role))
        del role_rows
        t = lap("roles", t)

        i0 = await _next_id(conn, _t(Identity))
        ident_rows = [
            (i0 + i, p0 + i, "telegram", tg, tg, "zh_CN", now, 0, now)
            for i, tg in ((i, str(TELEGRAM_ID0 + p0 + i)) for i in range(len(plan.people)))
        ]
        await _bulk(
            conn,
            _t(Identity),
            (
                "id",
                "person_id",
                "channel",
                "external_id",
                "chat_id",
                "locale",
                "last_inbound_at",
                "window_pushes",
                "created_at",
            ),
            ident_rows,
        )
        await _move_sequence(conn, _t(Identity))
        del ident_rows
        t = lap("identities", t)

        known = set((await conn.scalars(select(Category.code))).all())
        cats = [
            {
                "code": c.code,
                "urgent": c.urgent,
                "deadline_hours": c.deadline_hours,
                "points": c.points,
                "sort": i,
            }
            for i, c in enumerate(default_categories())
            if c.code not in known
        ]
        if cats:
            await conn.execute(insert(_t(Category)), cats)
        categories = [c.code for c in default_categories()]
        t = lap("categories", t)

    # Fresh statistics, as autovacuum would make soon after a real import.
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(
                text("ANALYZE community, grid, building, person, identity, role, category")
            )
        timings["analyze"] = round(time.perf_counter() - t, 3)
    timings["total"] = round(time.perf_counter() - started, 3)

    levels = plan.levels
    by_level: list[list[int]] = []
    at = 0
    for n in levels:
        by_level.append(grid_ids[at : at + n])
        at += n
    keys = CityKeys(
        community_id=community_id,
        grid_ids=by_level,
        grid_codes={grid_ids[i]: g.code for i, g in enumerate(plan.grids)},
        building_grid={b0 + i: grid_ids[g] for i, (_, g, _, _) in enumerate(plan.buildings)},
        residents=[],
        workers={},
        heads={},
        members=[],
        member_grid={},
        categories=categories,
        counts={},
        timings=timings,
    )
    for i, p in enumerate(plan.people):
        pid = p0 + i
        if p.role == ROLE_RESIDENT:
            assert p.building is not None and p.room is not None
            keys.residents.append((pid, b0 + p.building, p.room))
        elif p.role == ROLE_WORKER:
            keys.workers[grid_ids[p.grid]] = pid
        elif p.role == ROLE_HEAD:
            keys.heads[grid_ids[p.grid]] = pid
        else:
            keys.members.append(pid)
            keys.member_grid[pid] = grid_ids[p.grid]
    keys.counts = {
        **{f"grids_{name}": n for name, n in zip(LEVEL_NAMES, levels, strict=True)},
        "grids": len(plan.grids),
        "buildings": len(plan.buildings),
        "people": len(plan.people),
        "residents": len(keys.residents),
        "members": len(keys.members),
        "workers": len(keys.workers),
        "heads": len(keys.heads),
        "identities": len(plan.people),
        "roles": len(plan.people),
    }
    return keys


# --------------------------------------------------------------------------------------------
# Databases.


@asynccontextmanager
async def fresh_database(
    admin_url: str = PG_ADMIN_URL, *, keep: bool = False, label: str = "city"
) -> AsyncIterator[str]:
    """A new PostgreSQL database next to ``admin_url``'s; dropped on exit unless ``keep``."""
    name = f"gridbot_{label}_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    await admin(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        if not keep:
            await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _cli(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    plan = plan_city(args.scale, seed=args.seed, prefix=args.prefix)
    plan_s = time.perf_counter() - t0
    if args.files:
        for path in write_files(plan, Path(args.files)):
            print(path)
        return 0

    async def run(url: str) -> None:
        engine = make_engine(url)
        try:
            keys = await generate(engine, plan)
        finally:
            await engine.dispose()
        keys.timings["plan"] = round(plan_s, 3)
        print(f"database: {url}")
        for k, v in keys.counts.items():
            print(f"  {k:<14} {v:>9,}")
        print("  seconds:", ", ".join(f"{k} {v:.2f}" for k, v in keys.timings.items()))

    if args.database_url:
        await run(args.database_url)
    else:
        async with fresh_database(keep=args.keep) as url:
            await run(url)
            if args.keep:
                print("kept (drop it with: DROP DATABASE ... WITH (FORCE))")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: generate a city into a fresh (or given) database."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of Yunfu (1.0)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--prefix", default="yf", help="start of every code (yf)")
    parser.add_argument(
        "--database-url", help="write into this database (default: a fresh one on 127.0.0.1)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the fresh database")
    parser.add_argument("--files", metavar="DIR", help="write community files instead")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 10:
        parser.error("--scale must be in (0, 10]")
    if not args.prefix.replace("-", "").isalnum() or len(args.prefix) > 8:
        parser.error("--prefix: up to 8 letters or digits")
    return asyncio.run(_cli(args))


if __name__ == "__main__":
    sys.exit(main())
