"""Importing community files: the tree, updates in place, rejection of bad files, CSV lists."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import bot
from bot.admin.grid_tree import grid_tree, render_tree
from bot.admin.importer import (
    CommunityFileError,
    ImportReport,
    default_categories,
    import_community,
)
from models.db import make_engine, make_sessionmaker, upgrade
from models.grid import Building, Category, Community, Grid
from models.people import Person, Role

DEMO_DIR = Path(bot.__file__).resolve().parent / "demo"

# A Haizhou-style five-level model: community / compound / area / building / unit.
BASE = """\
community: {code: hz-test, name: 测试社区, timezone: Asia/Shanghai}
levels: [社区, 小区, 片区, 楼栋, 单元]
grids:
  - code: c1
    name: 海州测试社区
    children:
      - code: c1-a
        name: 幸福小区
        children:
          - code: c1-a-p1
            name: 一片区
            children:
              - code: c1-a-p1-b1
                name: 1号楼
                children:
                  - {code: c1-a-p1-b1-u1, name: 1单元}
                  - {code: c1-a-p1-b1-u2, name: 2单元}
          - code: c1-a-p2
            name: 二片区
            children:
              - code: c1-a-p2-b5
                name: 5号楼
                children:
                  - {code: c1-a-p2-b5-u1, name: 1单元}
      - code: c1-b
        name: 和平小区
buildings:
  - {code: b1u1, grid: c1-a-p1-b1-u1, name: 幸福小区1号楼1单元, address: 幸福路1号}
  - {code: b1u2, grid: c1-a-p1-b1-u2, name: 幸福小区1号楼2单元}
  - {code: b5u1, grid: c1-a-p2-b5-u1, name: 幸福小区5号楼1单元}
people:
  - key: p-head
    name: 李网格长
    phone: "13800000001"
    roles:
      - {role: head, grid: c1-a}
      - {role: admin, grid: c1}
  - key: p-worker
    name: 王网格员
    phone: 13800000002
    locale: zh_CN
    roles:
      - {role: worker, grid: c1-a-p1}
      - {role: resident, building: b1u1, room: "301"}
  - key: p-member
    name: 张党员
    roles:
      - {role: member, grid: c1-a-p1}
"""

TABLES = ("community", "grid", "building", "person", "role", "category")


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """Every test here runs on SQLite and on PostgreSQL (see tests/conftest.py)."""
    eng = make_engine(database_url)
    await upgrade(eng)
    yield eng
    await eng.dispose()


@pytest.fixture
def sm(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


def write(tmp_path: Path, content: str, name: str = "community.yaml") -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def line_of(content: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    for number, line in enumerate(content.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in the test file")


async def run_import(
    sm: async_sessionmaker[AsyncSession], path: Path, fmt: str | None = None
) -> ImportReport:
    async with sm() as session, session.begin():
        return await import_community(session, path, fmt=fmt)


async def snapshot(sm: async_sessionmaker[AsyncSession]) -> dict[str, list[Any]]:
    """Every row of every table the importer writes."""
    async with sm() as session:
        return {
            t: [tuple(r) for r in await session.execute(text(f"SELECT * FROM {t} ORDER BY 1"))]
            for t in TABLES
        }


async def grids_by_code(session: AsyncSession) -> dict[str, Grid]:
    return {g.code: g for g in await session.scalars(select(Grid))}


async def roles_of(session: AsyncSession, key: str) -> set[tuple[str, str, str | None]]:
    grids = {g.id: g.code for g in await session.scalars(select(Grid))}
    buildings = {b.id: b.code for b in await session.scalars(select(Building))}
    stmt = select(Role).join(Person, Role.person_id == Person.id).where(Person.key == key)
    return {
        (r.role, grids[r.grid_id], buildings.get(r.building_id or 0))
        for r in await session.scalars(stmt)
    }


def assert_paths_consistent(grids: dict[str, Grid]) -> None:
    by_id = {g.id: g for g in grids.values()}
    for g in grids.values():
        if g.parent_id is None:
            assert (g.path, g.depth) == (f"/{g.id}/", 0)
        else:
            parent = by_id[g.parent_id]
            assert g.path == f"{parent.path}{g.id}/"
            assert g.depth == parent.depth + 1


# --------------------------------------------------------------------------------------------


async def test_import_deep_tree(sm: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
    report = await run_import(sm, write(tmp_path, BASE))
    assert report.changed
    assert report["communities"].created == 1
    assert report["grids"].created == 10
    assert report["buildings"].created == 3
    assert report["people"].created == 3
    assert report["roles"].created == 5
    assert report["categories"].created == 6  # the defaults: the file has none
    assert "created" in str(report)

    async with sm() as session:
        community = await session.scalar(select(Community))
        assert community is not None
        assert community.level_names == "社区/小区/片区/楼栋/单元"
        grids = await grids_by_code(session)
        assert_paths_consistent(grids)
        assert grids["c1-a-p2-b5-u1"].depth == 4
        unit = grids["c1-a-p1-b1-u1"]
        chain = [grids[c].id for c in ("c1", "c1-a", "c1-a-p1", "c1-a-p1-b1", "c1-a-p1-b1-u1")]
        assert unit.path == "/" + "/".join(map(str, chain)) + "/"
        assert all(g.community_id == community.id for g in grids.values())

        worker = await session.scalar(select(Person).where(Person.key == "p-worker"))
        assert worker is not None
        assert worker.phone == "13800000002"  # unquoted YAML number kept as text
        assert worker.locale == "zh_CN"
        assert await roles_of(session, "p-worker") == {
            ("worker", "c1-a-p1", None),
            ("resident", "c1-a-p1-b1-u1", "b1u1"),  # a resident's grid is the building's grid
        }
        room = await session.scalar(select(Role.room).where(Role.role == "resident"))
        assert room == "301"
        b = await session.scalar(select(Building).where(Building.code == "b1u2"))
        assert b is not None and b.address == ""

        codes = [c.code for c in await session.scalars(select(Category).order_by(Category.sort))]
        assert codes == [c.code for c in default_categories()]

        tree = await grid_tree(session)
    assert len(tree) == 1
    root = tree[0]
    assert (root["code"], root["level"], root["depth"], root["admins"]) == ("c1", "社区", 0, 1)
    assert root["totals"]["buildings"] == 3
    assert root["totals"]["residents"] == 1
    compound = root["children"][0]
    assert (compound["code"], compound["level"], compound["heads"]) == ("c1-a", "小区", 1)
    unit_node = compound["children"][0]["children"][0]["children"][0]
    assert (unit_node["level"], unit_node["buildings"], unit_node["residents"]) == ("单元", 1, 1)
    rendered = render_tree(tree)
    assert rendered.splitlines()[0].startswith("海州测试社区 [c1] 社区")
    assert "└── 和平小区 [c1-b] 小区" in rendered
    assert "│   │       ├── 1单元 [c1-a-p1-b1-u1] 单元 — buildings 1, residents 1" in rendered


async def test_reimport_changes_nothing(
    sm: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    path = write(tmp_path, BASE)
    await run_import(sm, path)
    before = await snapshot(sm)
    report = await run_import(sm, path)
    assert not report.changed
    for kind, counts in report.counts.items():
        assert (counts.created, counts.updated, counts.removed) == (0, 0, 0), kind
    assert report["grids"].unchanged == 10
    assert report["roles"].unchanged == 5
    assert "no changes" in str(report)
    assert await snapshot(sm) == before


async def test_edited_file_updates_in_place(
    sm: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await run_import(sm, write(tmp_path, BASE))
    async with sm() as session:
        old = {c: (g.id, g.path, g.depth) for c, g in (await grids_by_code(session)).items()}
        old_person_ids = {p.key: p.id for p in await session.scalars(select(Person))}

    edited = BASE
    # rename a compound
    edited = edited.replace("name: 和平小区", "name: 和平新村")
    # move area c1-a-p2 (and its subtree) from compound c1-a to the root community; its last
    # unit is no longer listed at all and must follow its parent anyway
    edited = edited.replace(
        """          - code: c1-a-p2
            name: 二片区
            children:
              - code: c1-a-p2-b5
                name: 5号楼
                children:
                  - {code: c1-a-p2-b5-u1, name: 1单元}
""",
        "",
    )
    edited = edited.replace(
        "      - code: c1-b\n",
        """      - code: c1-a-p2
        name: 二片区
        children:
          - {code: c1-a-p2-b5, name: 5号楼}
      - code: c1-b
""",
    )
    # drop the head's admin role, change a phone, give the head another role
    edited = edited.replace(
        "      - {role: admin, grid: c1}\n", "      - {role: head, grid: c1-b}\n"
    )
    edited = edited.replace('phone: "13800000001"', 'phone: "+86 138-0000-0099"')
    # p-member is no longer listed: left alone
    edited = edited[: edited.index("  - key: p-member")]
    report = await run_import(sm, write(tmp_path, edited, "edited.yaml"))

    assert report.changed
    assert report["grids"].created == 0
    # renamed c1-b, moved c1-a-p2, and the paths of c1-a-p2-b5 and c1-a-p2-b5-u1
    assert report["grids"].updated == 4
    assert report["people"].updated == 1
    assert (report["roles"].created, report["roles"].removed) == (1, 1)

    async with sm() as session:
        grids = await grids_by_code(session)
        assert_paths_consistent(grids)
        assert {c: g.id for c, g in grids.items()} == {c: v[0] for c, v in old.items()}
        assert grids["c1-b"].name == "和平新村"
        assert grids["c1-a-p2"].parent_id == grids["c1"].id
        assert (grids["c1-a-p2"].depth, grids["c1-a-p2-b5"].depth) == (1, 2)
        assert grids["c1-a-p2-b5-u1"].depth == 3
        assert grids["c1-a-p2-b5-u1"].path == (
            f"/{grids['c1'].id}/{grids['c1-a-p2'].id}/{grids['c1-a-p2-b5'].id}/"
            f"{grids['c1-a-p2-b5-u1'].id}/"
        )
        # untouched grids keep their paths
        assert (grids["c1-a-p1-b1-u2"].path, grids["c1-a-p1-b1-u2"].depth) == old["c1-a-p1-b1-u2"][
            1:
        ]
        assert {p.key: p.id for p in await session.scalars(select(Person))} == old_person_ids
        head = await session.scalar(select(Person).where(Person.key == "p-head"))
        assert head is not None and head.phone == "+86 138-0000-0099"
        assert await roles_of(session, "p-head") == {
            ("head", "c1-a", None),
            ("head", "c1-b", None),
        }
        assert await roles_of(session, "p-member") == {("member", "c1-a-p1", None)}

    # and the edited file is now stable
    again = await run_import(sm, tmp_path / "edited.yaml")
    assert not again.changed


async def test_omitted_optional_fields_are_left_alone(
    sm: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await run_import(sm, write(tmp_path, BASE))
    edited = BASE.replace("    phone: 13800000002\n    locale: zh_CN\n", "")
    edited = edited.replace('    phone: "13800000001"\n', '    phone: ""\n')
    await run_import(sm, write(tmp_path, edited))
    async with sm() as session:
        people = {p.key: p for p in await session.scalars(select(Person))}
    assert (people["p-worker"].phone, people["p-worker"].locale) == ("13800000002", "zh_CN")
    assert people["p-head"].phone is None  # explicitly emptied


async def test_moving_a_building_takes_its_unlisted_residents_along(
    sm: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await run_import(sm, write(tmp_path, BASE))
    members = "key,name,phone,role,grid,building,room\np-res,赵居民,,resident,,b1u1,502\n"
    await run_import(sm, write(tmp_path, members, "members.csv"))
    moved = BASE.replace("{code: b1u1, grid: c1-a-p1-b1-u1,", "{code: b1u1, grid: c1-a-p1-b1-u2,")
    report = await run_import(sm, write(tmp_path, moved))
    assert report["buildings"].updated == 1
    async with sm() as session:
        assert await roles_of(session, "p-res") == {("resident", "c1-a-p1-b1-u2", "b1u1")}
        assert await roles_of(session, "p-worker") == {
            ("worker", "c1-a-p1", None),
            ("resident", "c1-a-p1-b1-u2", "b1u1"),
        }


# --------------------------------------------------------------------------------------------
# Bad files: (description, edit of BASE, text on the expected line, words of the reason)

BAD_FILES: list[tuple[str, str, str, str, str]] = [
    (
        "missing name",
        "{code: c1-a-p1-b1-u2, name: 2单元}",
        "{code: c1-a-p1-b1-u2}",
        "{code: c1-a-p1-b1-u2}",
        "grid c1-a-p1-b1-u2 is missing 'name'",
    ),
    (
        "bad code",
        "{code: b1u2, grid",
        "{code: 'b1 u2!', grid",
        "b1 u2!",
        "bad building code 'b1 u2!'",
    ),
    (
        "duplicate grid code",
        "{code: c1-a-p1-b1-u2, name: 2单元}",
        "{code: c1-a-p1-b1-u1, name: 2单元}",
        "{code: c1-a-p1-b1-u1, name: 2单元}",
        "duplicate grid code c1-a-p1-b1-u1 (first at line 16)",
    ),
    (
        "duplicate person key",
        "  - key: p-member\n",
        "  - key: p-head  # again\n",
        "# again",
        "duplicate person key p-head",
    ),
    (
        "unknown grid",
        "{code: b5u1, grid: c1-a-p2-b5-u1,",
        "{code: b5u1, grid: c9-x,",
        "{code: b5u1",
        "building b5u1 refers to unknown grid c9-x",
    ),
    (
        "unknown building",
        '{role: resident, building: b1u1, room: "301"}',
        '{role: resident, building: b9u9, room: "301"}',
        "building: b9u9",
        "person p-worker refers to unknown building b9u9",
    ),
    (
        "unknown role",
        "{role: member, grid: c1-a-p1}",
        "{role: boss, grid: c1-a-p1}",
        "role: boss",
        "unknown role 'boss'",
    ),
    (
        "resident without building",
        '{role: resident, building: b1u1, room: "301"}',
        '{role: resident, grid: c1-a-p1-b1-u1, room: "301"}',
        "role: resident",
        "a resident role needs a building",
    ),
    (
        "worker without grid",
        "{role: worker, grid: c1-a-p1}",
        "{role: worker}",
        "{role: worker}",
        "a worker role needs a grid",
    ),
    (
        "resident on the wrong grid",
        '{role: resident, building: b1u1, room: "301"}',
        "{role: resident, building: b1u1, grid: c1-b}",
        "role: resident",
        "building b1u1 is in grid c1-a-p1-b1-u1, not c1-b",
    ),
    (
        "bad phone",
        'phone: "13800000001"',
        "phone: 138-0000-abcd",
        "138-0000-abcd",
        "bad phone '138-0000-abcd'",
    ),
    (
        "phone too long",
        'phone: "13800000001"',
        'phone: "138000000011380000000113800000001"',
        "1380000000113800",
        "bad phone",
    ),
    (
        "malformed YAML",
        "    name: 一片区",
        "    name: [一片区",
        "name: [一片区",
        "malformed YAML",
    ),
    (
        "bad indentation",
        "        name: 二片区",
        "         name: 二片区",
        "name: 二片区",
        "malformed YAML",
    ),
    (
        "duplicate key",
        "    name: 张党员\n",
        "    name: 张党员\n    name: 张三\n",
        "name: 张三",
        "duplicate key 'name'",
    ),
    (
        "unknown key",
        "        name: 幸福小区\n",
        "        name: 幸福小区\n        childs: []\n",
        "childs:",
        "unknown key 'childs' in grid",
    ),
    (
        "duplicate role",
        "      - {role: member, grid: c1-a-p1}\n",
        "      - {role: member, grid: c1-a-p1}\n      - {role: member, grid: c1-a-p1}\n",
        "      - {role: member, grid: c1-a-p1}\n      - {role: member",
        "has the role member on grid c1-a-p1 twice",
    ),
    (
        "not a list",
        "buildings:\n",
        "buildings: {}\nbuildingz:\n",
        "buildings: {}",
        "'buildings' of the file must be a list",
    ),
    (
        "unknown time zone",
        "timezone: Asia/Shanghai",
        "timezone: Mars/Olympus",
        "Mars/Olympus",
        "unknown time zone",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "needle", "reason"),
    [case[1:] for case in BAD_FILES],
    ids=[case[0] for case in BAD_FILES],
)
async def test_bad_file_rejected_whole(
    sm: async_sessionmaker[AsyncSession],
    tmp_path: Path,
    old: str,
    new: str,
    needle: str,
    reason: str,
) -> None:
    await run_import(sm, write(tmp_path, BASE))
    before = await snapshot(sm)
    assert old in BASE
    bad = BASE.replace(old, new, 1)
    # a bad file that is also otherwise edited: none of the edits may land
    bad = bad.replace("name: 和平小区", "name: 和平新村")
    path = write(tmp_path, bad, "bad.yaml")
    expected = _line_of_block(bad, needle) if "\n" in needle else line_of(bad, needle)

    async with sm() as session:
        with pytest.raises(CommunityFileError) as info:
            await import_community(session, path)
        # validated before any write: nothing pending in the session
        assert not (session.new or session.dirty or session.deleted)
        await session.rollback()
    err = info.value
    assert reason in err.message
    if "malformed YAML" not in reason:
        assert err.line == expected, (err.line, expected, str(err))
    else:
        assert err.line is not None and abs(err.line - expected) <= 1, (err.line, expected)
    assert str(err) == f"{path}:{err.line}: {err.message}"
    assert await snapshot(sm) == before


def _line_of_block(content: str, block: str) -> int:
    """Line of the last line of the first occurrence of a multi-line ``block``."""
    start = content.index(block)
    return content[: start + len(block.rstrip("\n"))].count("\n") + 1


async def test_errors_for_empty_and_unreadable_files(
    sm: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    async with sm() as session:
        with pytest.raises(CommunityFileError, match="empty"):
            await import_community(session, write(tmp_path, "# nothing\n", "empty.yaml"))
        with pytest.raises(CommunityFileError, match="cannot read"):
            await import_community(session, tmp_path / "missing.yaml")
        with pytest.raises(CommunityFileError, match=r"list\.yaml:1: a community file is"):
            await import_community(session, write(tmp_path, "- a\n- b\n", "list.yaml"))
        with pytest.raises(CommunityFileError, match="needs a 'community' section"):
            await import_community(
                session, write(tmp_path, "grids:\n  - {code: a, name: A}\n", "nocomm.yaml")
            )


async def test_grid_of_another_community_is_refused(
    sm: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await run_import(sm, write(tmp_path, BASE))
    other = "community: {code: other, name: 别的社区}\ngrids:\n  - {code: c1-b, name: 抢来的}\n"
    with pytest.raises(CommunityFileError, match="c1-b already belongs to community hz-test"):
        await run_import(sm, write(tmp_path, other, "other.yaml"))


async def test_categories_from_file(sm: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
    content = BASE + (
        "categories:\n"
        "  - {code: repair, urgent: false, deadline_hours: 24, points: 8}\n"
        "  - {code: fire, urgent: true, deadline_hours: 1, points: 30}\n"
    )
    report = await run_import(sm, write(tmp_path, content))
    assert report["categories"].created == 2
    async with sm() as session:
        cats = {c.code: c for c in await session.scalars(select(Category))}
    assert set(cats) == {"repair", "fire"}
    assert (cats["fire"].urgent, cats["fire"].deadline_hours, cats["fire"].points) == (True, 1, 30)
    bad = content.replace("deadline_hours: 1,", "deadline_hours: soon,")
    with pytest.raises(CommunityFileError) as info:
        await run_import(sm, write(tmp_path, bad, "bad.yaml"))
    assert info.value.line == line_of(bad, "code: fire")
    assert "deadline_hours" in info.value.message


def test_default_categories() -> None:
    cats = {c.code: c for c in default_categories()}
    assert list(cats) == ["repair", "safety", "elderly", "dispute", "sanitation", "other"]
    assert (cats["repair"].deadline_hours, cats["repair"].points) == (48, 10)
    assert (cats["safety"].urgent, cats["safety"].deadline_hours, cats["safety"].points) == (
        True,
        4,
        20,
    )
    assert (cats["elderly"].deadline_hours, cats["elderly"].points) == (24, 15)
    assert (cats["dispute"].deadline_hours, cats["dispute"].points) == (72, 10)
    assert (cats["sanitation"].deadline_hours, cats["sanitation"].points) == (48, 5)
    assert (cats["other"].deadline_hours, cats["other"].points) == (72, 5)
    assert sum(c.urgent for c in cats.values()) == 1


# --------------------------------------------------------------------------------------------
# CSV


async def test_csv_buildings_and_members(
    sm: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    await run_import(sm, write(tmp_path, BASE))
    buildings = write(
        tmp_path,
        "\ufeffcode,grid,name,address\n"
        "b1u3,c1-a-p1-b1-u2,幸福小区1号楼3单元,幸福路1号\n"
        "\n"
        'b5u2,c1-a-p2-b5-u1,"幸福小区5号楼,2单元",\n',
        "buildings.csv",
    )
    report = await run_import(sm, buildings)
    assert (report.fmt, report["buildings"].created) == ("csv", 2)
    assert report["categories"].created == 0

    members = write(
        tmp_path,
        "key,name,phone,role,grid,building,room\n"
        "p-new,孙志愿者,13800000040,member,c1-a-p1,,\n"
        "p-new,孙志愿者,,resident,,b1u3,1-101\n"
        "p-worker,王网格员,,worker,c1-a-p1,,\n"
        "p-bare,钱居民,,,,,\n",
        "members.csv",
    )
    report = await run_import(sm, members)
    assert (report["people"].created, report["people"].unchanged) == (2, 1)
    assert report["roles"].created == 2
    # p-worker's resident role is not in this file: the file is the truth for p-worker
    assert (report["roles"].unchanged, report["roles"].removed) == (1, 1)

    async with sm() as session:
        assert await roles_of(session, "p-new") == {
            ("member", "c1-a-p1", None),
            ("resident", "c1-a-p1-b1-u2", "b1u3"),
        }
        assert await roles_of(session, "p-worker") == {("worker", "c1-a-p1", None)}
        assert await roles_of(session, "p-bare") == set()
        p = await session.scalar(select(Person).where(Person.key == "p-new"))
        assert p is not None and p.phone == "13800000040"
        b = await session.scalar(select(Building).where(Building.code == "b5u2"))
        assert b is not None and b.name == "幸福小区5号楼,2单元"

    before = await snapshot(sm)
    assert not (await run_import(sm, buildings)).changed
    assert not (await run_import(sm, members)).changed
    assert await snapshot(sm) == before


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (
            "code,grid,name\nb9,c1-b,ok\nb10,c9-x,坏\n",
            3,
            "building b10 refers to unknown grid c9-x",
        ),
        ("code,grid,name\nb9,c1-b,ok\nb9,c1-b,again\n", 3, "duplicate building code b9"),
        ("code,grid,name\nb9,c1-b,\n", 2, "row is missing 'name'"),
        ("foo,bar\n1,2\n", 1, "unknown CSV header"),
        ("key,name,role,grid\np1,甲,member,c1-b\np1,乙,member,c1-a\n", 3, "name differs"),
        ("key,name,role,grid\np1,甲,chief,c1-b\n", 2, "unknown role 'chief'"),
        ("key,name,role,building\np1,甲,resident,nope\n", 2, "unknown building nope"),
        ("key,name,role,grid,building\np1,甲,resident,c1-b,\n", 2, "needs a building"),
        ("key,name,phone\np1,甲,call me\n", 2, "bad phone"),
        ("key,name,role,grid\np1,甲,member,c1-b\np1,甲,member,c1-b\n", 3, "twice"),
    ],
)
async def test_bad_csv_rejected(
    sm: async_sessionmaker[AsyncSession], tmp_path: Path, content: str, line: int, reason: str
) -> None:
    await run_import(sm, write(tmp_path, BASE))
    before = await snapshot(sm)
    path = write(tmp_path, content, "bad.csv")
    with pytest.raises(CommunityFileError) as info:
        await run_import(sm, path)
    assert reason in info.value.message
    assert info.value.line == line
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert await snapshot(sm) == before


async def test_gb18030_csv(sm: async_sessionmaker[AsyncSession], tmp_path: Path) -> None:
    await run_import(sm, write(tmp_path, BASE))
    path = tmp_path / "excel.csv"
    path.write_bytes("code,grid,name,address\nb9,c1-b,和平小区9栋,和平路\n".encode("gb18030"))
    await run_import(sm, path)
    async with sm() as session:
        assert await session.scalar(select(Building.name).where(Building.code == "b9")) == (
            "和平小区9栋"
        )


# --------------------------------------------------------------------------------------------
# The demo community


async def test_demo_community(sm: async_sessionmaker[AsyncSession]) -> None:
    demo = DEMO_DIR / "community.yaml"
    if not demo.exists():
        pytest.skip("bot/demo/community.yaml is not there yet")
    extra = [DEMO_DIR / n for n in ("buildings.csv", "members.csv") if (DEMO_DIR / n).exists()]
    report = await run_import(sm, demo)
    assert report.changed and report["grids"].created > 0
    assert not report.ignored
    for path in extra:
        await run_import(sm, path)
    before = await snapshot(sm)
    for path in [demo, *extra]:
        again = await run_import(sm, path)
        assert not again.changed, str(again)
    assert await snapshot(sm) == before
    async with sm() as session:
        assert_paths_consistent(await grids_by_code(session))
        tree = await grid_tree(session)
    assert render_tree(tree)
