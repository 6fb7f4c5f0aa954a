"""What the city platform needs from the community file: building coordinates (YAML and CSV)
and each category's Open311 group, keywords and attributes — validated like everything else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.admin.importer import CommunityFileError, import_community
from models.db import make_engine, make_sessionmaker, upgrade
from models.grid import Building, Category

FILE = """\
community: {code: t, name: 测试社区}
grids:
  - {code: g, name: 网格}
categories:
  - code: repair
    group: 物业维修
    keywords: [楼道灯, 水管]
    attributes:
      - code: floor
        description: 楼层
        datatype: number
        required: true
      - code: part
        description: 部位
        datatype: singlevaluelist
        values: [{key: corridor, name: 楼道}, {key: home}]
  - {code: other, keywords: "噪音, 其他"}
buildings:
  - {code: b1, grid: g, name: 1栋, latitude: 31.2, longitude: 107.5}
  - {code: b2, grid: g, name: 2栋}
"""


@pytest.fixture
async def sm(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'import.db'}")
    await upgrade(engine)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def load(sm: async_sessionmaker[AsyncSession], path: Path, text: str) -> None:
    path.write_bytes(text.encode())  # noqa: ASYNC240 (a small test file)
    async with sm() as session, session.begin():
        await import_community(session, path)


async def test_coordinates_and_service_fields_are_imported(
    sm: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await load(sm, tmp_path / "c.yaml", FILE)
    await load(sm, tmp_path / "b.csv", "code,grid,name,latitude,longitude\nb2,g,2栋,31.3,107.6\n")
    async with sm() as session:
        b = {x.code: x for x in await session.scalars(select(Building))}
        cats = {c.code: c for c in await session.scalars(select(Category))}
    assert (b["b1"].latitude, b["b1"].longitude) == (31.2, 107.5)
    assert (b["b2"].latitude, b["b2"].longitude) == (31.3, 107.6)
    repair = cats["repair"]
    assert (repair.service_group, repair.keywords) == ("物业维修", "楼道灯,水管")
    assert repair.attributes is not None
    assert [a["code"] for a in repair.attributes] == ["floor", "part"]
    assert repair.attributes[0]["required"] is True
    assert repair.attributes[1]["values"] == [
        {"key": "corridor", "name": "楼道"},
        {"key": "home", "name": "home"},
    ]
    assert (cats["other"].keywords, cats["other"].attributes) == ("噪音,其他", None)
    # A file that leaves the fields out leaves them alone; a CSV without the columns too.
    await load(sm, tmp_path / "c.yaml", FILE.replace(", latitude: 31.2, longitude: 107.5", ""))
    await load(sm, tmp_path / "b.csv", "code,grid,name\nb2,g,2栋\n")
    async with sm() as session:
        b = {x.code: x for x in await session.scalars(select(Building))}
    assert b["b1"].latitude == 31.2 and b["b2"].latitude == 31.3


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("latitude: 31.2, longitude: 107.5", "latitude: 31.2", "both latitude and longitude"),
        ("latitude: 31.2,", "latitude: 95,", "out of range"),
        ("latitude: 31.2,", "latitude: north,", "latitude must be a number"),
        ("datatype: number", "datatype: colour", "datatype must be one of"),
        ("values: [{key: corridor, name: 楼道}, {key: home}]", "values: []", "needs values"),
        ("        description: 楼层\n", "", "missing 'description'"),
        ("keywords: [楼道灯, 水管]", "keywords: [楼道灯, 水管]\n    colour: red", "unknown key"),
    ],
)
async def test_bad_fields_reject_the_file(
    sm: async_sessionmaker[AsyncSession], tmp_path: Path, old: str, new: str, reason: str
) -> None:
    assert old in FILE
    with pytest.raises(CommunityFileError) as info:
        await load(sm, tmp_path / "bad.yaml", FILE.replace(old, new, 1))
    assert reason in info.value.message
    async with sm() as session:
        assert (await session.scalars(select(Category))).first() is None


async def test_bad_csv_coordinates_reject_the_file(
    sm: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await load(sm, tmp_path / "c.yaml", FILE)
    with pytest.raises(CommunityFileError) as info:
        await load(sm, tmp_path / "b.csv", "code,grid,name,latitude,longitude\nb2,g,2栋,31.3,\n")
    assert "both latitude and longitude" in info.value.message and info.value.line == 2
