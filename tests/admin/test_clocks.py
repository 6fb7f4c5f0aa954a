"""Order clock settings: ``gridbot clocks list|set|unset`` and the ``clocks:`` section of a
community file, on SQLite and PostgreSQL; a setting made here changes what the clocks do."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.admin.importer import CommunityFileError, ImportReport, import_community
from bot.app import DEMO_FILE
from bot.cli import build_parser
from bot.config import Settings, load_settings
from models import ClockSetting, Order
from models.db import make_engine, make_sessionmaker, upgrade
from tests.duties import conftest as duties_conftest
from tests.duties.conftest import DutyHarness

duty = duties_conftest.duty  # the duty harness (controllable clock, manual scheduler)

FIELDS = (
    "dispatch_minutes",
    "accept_minutes",
    "deadline_hours",
    "overdue_escalate_minutes",
    "rate_days",
)

#: A second community whose level names put 网格 one level higher than the demo's.
OTHER = """\
community: {code: other, name: 另一个社区}
levels: [社区, 网格, 楼栋]
grids:
  - code: o
    name: 另一个社区
    children:
      - code: o-g1
        name: 一网格
"""


def cli(settings: Settings, *argv: str) -> int:
    """Run ``gridbot ARGV`` in-process (argparse errors raise SystemExit)."""
    args = build_parser().parse_args(argv)
    code = args.func(settings, args)
    assert isinstance(code, int)
    return code


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        database_url=database_url,
        demo=False,
        secret_key="k",
        qr_dir=tmp_path / "qr",
        media_dir=tmp_path / "media",
        order_dispatch_minutes=25,
    )


def table(settings: Settings, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert cli(settings, "clocks", "list", "--json") == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def rows(settings: Settings) -> list[tuple[Any, ...]]:
    """Every clock_setting row, as stored."""

    async def read() -> list[tuple[Any, ...]]:
        engine = make_engine(settings.database_url)
        try:
            async with engine.connect() as conn:
                result = await conn.execute(
                    select(ClockSetting.category, ClockSetting.depth, *[
                        getattr(ClockSetting, f) for f in FIELDS
                    ]).order_by(ClockSetting.id)
                )
                return [tuple(r) for r in result]
        finally:
            await engine.dispose()

    return asyncio.run(read())


def scope(table: dict[str, Any], category: str | None, depth: int | None) -> list[dict[str, Any]]:
    return [r for r in table["rows"] if (r["category"], r["depth"]) == (category, depth)]


# --------------------------------------------------------------------------------------------
# The command line


def test_list_set_unset(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(settings, "import", str(DEMO_FILE)) == 0
    t = table(settings, capsys)
    assert t["defaults"] == {
        "dispatch_minutes": 25,  # from the settings
        "accept_minutes": 60,
        "deadline_hours": None,
        "overdue_escalate_minutes": 120,
        "rate_days": 7,
    }
    assert {"code": "safety", "name": "安全隐患", "urgent": True, "deadline_hours": 4} in (
        t["categories"]
    )
    assert {"depth": 3, "level": "微网格"} in t["levels"]
    # The demo community's clock: safety hazards on micro-grids.
    [demo] = scope(t, "safety", 3)
    assert (demo["category_name"], demo["level"]) == ("安全隐患", "微网格")
    assert (demo["dispatch_minutes"], demo["accept_minutes"], demo["rate_days"]) == (10, 15, None)

    # Set by level name, then by depth: the same row.
    assert cli(settings, "clocks", "set", "--level", "网格", "--accept-minutes", "45") == 0
    assert "created" in capsys.readouterr().out
    assert cli(settings, "clocks", "set", "--level", "2", "--rate-days", "3") == 0
    assert "updated" in capsys.readouterr().out
    [grid_row] = scope(table(settings, capsys), None, 2)
    assert (grid_row["level"], grid_row["accept_minutes"], grid_row["rate_days"]) == (
        "网格", 45, 3
    )

    # The row for every order (both NULL): set twice, still one row.
    assert cli(settings, "clocks", "set", "--dispatch-minutes", "20") == 0
    assert cli(settings, "clocks", "set", "--dispatch-minutes", "15", "--rate-days", "5") == 0
    assert [r for r in rows(settings) if r[:2] == (None, None)] == [
        (None, None, 15, None, None, None, 5)
    ]
    # A deadline for every category is allowed, with a note that it overrides theirs.
    assert cli(settings, "clocks", "set", "--deadline-hours", "30") == 0
    assert "replaces each category's own deadline" in capsys.readouterr().err

    # The text table names categories and levels.
    assert cli(settings, "clocks") == 0
    out = capsys.readouterr().out
    assert "safety 安全隐患 · depth 3 微网格" in out
    assert "any category · depth 2 网格" in out
    assert "defaults (GRIDBOT_ORDER_*)" in out and "25 min" in out

    # unset FIELD clears it; a row left empty goes; unset without FIELD deletes the row.
    assert cli(settings, "clocks", "unset", "--level", "网格", "accept-minutes") == 0
    [grid_row] = scope(table(settings, capsys), None, 2)
    assert (grid_row["accept_minutes"], grid_row["rate_days"]) == (None, 3)
    assert cli(settings, "clocks", "unset", "--level", "网格", "rate_days") == 0
    assert "removed" in capsys.readouterr().out
    assert not scope(table(settings, capsys), None, 2)
    assert cli(settings, "clocks", "unset") == 0
    assert not scope(table(settings, capsys), None, None)
    assert cli(settings, "clocks", "unset") == 0  # nothing left: says so, changes nothing
    assert "nothing to unset" in capsys.readouterr().out
    assert rows(settings) == [("safety", 3, 10, 15, None, 60, None)]

    # Re-importing the demo leaves the clock rows as they are.
    assert cli(settings, "import", str(DEMO_FILE)) == 0
    assert "clocks:      0 created, 0 updated, 1 unchanged" in capsys.readouterr().out


def test_bad_requests_exit_2_and_change_nothing(
    settings: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli(settings, "import", str(DEMO_FILE)) == 0
    other = tmp_path / "other.yaml"
    other.write_text(OTHER, encoding="utf-8")
    assert cli(settings, "import", str(other)) == 0
    before = rows(settings)
    capsys.readouterr()

    for argv, reason in [
        (("set", "--category", "nope", "--rate-days", "3"), "unknown category nope"),
        (("set", "--level", "单元", "--rate-days", "3"), "unknown level '单元'"),
        (("set", "--level", "9", "--rate-days", "3"), "unknown level 9"),
        # 网格 is depth 2 in the demo and depth 1 in the other community.
        (("set", "--level", "网格", "--rate-days", "3"), "give the depth"),
        (("set", "--category", "safety"), "say which durations"),
        (("unset", "--category", "nope"), "unknown category nope"),
        (("unset", "--level", "单元"), "unknown level '单元'"),
        (("unset", "--category", "safety", "--level", "3", "rate"), "unknown duration 'rate'"),
    ]:
        assert cli(settings, "clocks", *argv) == 2, argv
        err = capsys.readouterr().err
        assert reason in err and "nothing was changed" in err, (argv, err)

    for value in ("0", "-5", "abc", "1.5", "525601"):
        with pytest.raises(SystemExit) as exc:
            cli(settings, "clocks", "set", "--dispatch-minutes", value)
        assert exc.value.code == 2
        assert "--dispatch-minutes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli(settings, "clocks", "set", "--rate-days", "366")
    assert exc.value.code == 2
    assert rows(settings) == before

    # Levels the communities agree on still work by name, and any level by depth.
    assert cli(settings, "clocks", "set", "--level", "微网格", "--rate-days", "2") == 0
    assert cli(settings, "clocks", "set", "--level", "1", "--rate-days", "4") == 0
    assert rows(settings) == [*before, (None, 3, None, None, None, None, 2),
                              (None, 1, None, None, None, None, 4)]
    t = table(settings, capsys)
    assert {"depth": 1, "level": "社区|网格"} in t["levels"]


def test_help_documents_every_option(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    def help_of(*argv: str) -> str:
        with pytest.raises(SystemExit) as exc:
            cli(settings, *argv, "--help")
        assert exc.value.code == 0
        return capsys.readouterr().out

    assert "clocks" in help_of()
    group = help_of("clocks")
    for word in ("list", "set", "unset", "most specific", *FIELDS):
        assert word in group, word
    set_help = help_of("clocks", "set")
    for flag in ("--category", "--level", *["--" + f.replace("_", "-") for f in FIELDS]):
        assert flag in set_help, flag
    assert "exit status 2" in set_help
    unset_help = help_of("clocks", "unset")
    assert "FIELD" in unset_help and "delete" in unset_help
    assert "--json" in help_of("clocks", "list")


def test_duplicate_rows_of_a_scope_are_folded_into_one(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """The unique constraint lets two (NULL, NULL) rows in; the next write leaves one, with
    the newest value of each duration (what the clocks used)."""
    assert cli(settings, "import", str(DEMO_FILE)) == 0

    async def add_twins() -> None:
        engine = make_engine(settings.database_url)
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                session.add(ClockSetting(dispatch_minutes=11, accept_minutes=22))
                await session.flush()
                session.add(ClockSetting(dispatch_minutes=33, rate_days=4))
        finally:
            await engine.dispose()

    asyncio.run(add_twins())
    assert len([r for r in rows(settings) if r[:2] == (None, None)]) == 2
    assert cli(settings, "clocks", "set", "--deadline-hours", "40") == 0
    assert [r for r in rows(settings) if r[:2] == (None, None)] == [
        (None, None, 33, 22, 40, None, 4)
    ]


# --------------------------------------------------------------------------------------------
# The clocks: section of a community file

BASE = """\
community: {code: c1, name: 测试社区}
levels: [社区, 网格, 微网格]
categories:
  - {code: repair, deadline_hours: 48}
  - {code: safety, urgent: true, deadline_hours: 4}
grids:
  - code: c1
    name: 测试社区
    children:
      - code: c1-g1
        name: 第一网格
        children:
          - {code: c1-g1-m1, name: 1号微网格}
clocks:
  - {category: safety, level: 微网格, dispatch_minutes: 10, accept_minutes: 15}
  - {level: 网格, accept_minutes: 90}
  - {category: repair, rate_days: 3}
  - {level: 0, overdue_escalate_minutes: 30}
"""


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(database_url)
    await upgrade(eng)
    yield eng
    await eng.dispose()


@pytest.fixture
def sm(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


async def load(sm: async_sessionmaker[AsyncSession], path: Path) -> ImportReport:
    async with sm() as session, session.begin():
        return await import_community(session, path)


async def stored(sm: async_sessionmaker[AsyncSession]) -> list[tuple[Any, ...]]:
    async with sm() as session:
        result = await session.execute(text("SELECT * FROM clock_setting ORDER BY id"))
        return [tuple(r) for r in result]


def write(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "community.yaml"
    path.write_text(content, encoding="utf-8")
    return path


async def test_import_clocks_and_reimport_changes_nothing(
    sm: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    path = write(tmp_path, BASE)
    report = await load(sm, path)
    assert report["clocks"].created == 4
    async with sm() as session:
        got = {
            (r.category, r.depth): tuple(getattr(r, f) for f in FIELDS)
            for r in await session.scalars(select(ClockSetting))
        }
    assert got == {
        ("safety", 2): (10, 15, None, None, None),
        (None, 1): (None, 90, None, None, None),
        ("repair", None): (None, None, None, None, 3),
        (None, 0): (None, None, None, 30, None),
    }
    before = await stored(sm)
    again = await load(sm, path)
    assert not again.changed, str(again)
    assert again["clocks"].unchanged == 4
    assert await stored(sm) == before

    # An edit updates in place; null clears a duration; a row left empty is removed; a row
    # the file no longer lists stays.
    edited = BASE.replace("dispatch_minutes: 10, accept_minutes: 15", "dispatch_minutes: 5")
    edited = edited.replace("{level: 网格, accept_minutes: 90}",
                            "{level: 1, accept_minutes: null}")
    edited = edited.replace("  - {category: repair, rate_days: 3}\n", "")
    report = await load(sm, write(tmp_path, edited))
    assert (report["clocks"].updated, report["clocks"].removed) == (1, 1)
    assert report["clocks"].unchanged == 1
    async with sm() as session:
        got = {
            (r.category, r.depth): tuple(getattr(r, f) for f in FIELDS)
            for r in await session.scalars(select(ClockSetting))
        }
    assert got == {
        ("safety", 2): (5, 15, None, None, None),  # accept_minutes left as it was
        ("repair", None): (None, None, None, None, 3),
        (None, 0): (None, None, None, 30, None),
    }


def _line(content: str, needle: str) -> int:
    return next(i for i, line in enumerate(content.splitlines(), 1) if needle in line)


RATE = "a clock: 'rate_days' must be a whole number of days"


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("category: repair, rate_days: 3", "category: nope, rate_days: 3",
         "a clock refers to unknown category nope"),
        ("level: 网格, accept_minutes: 90", "level: 单元, accept_minutes: 90",
         "a clock: unknown level '单元'"),
        ("level: 0, overdue", "level: 7, overdue", "a clock: unknown level 7"),
        ("level: 0, overdue", "level: -1, overdue", "a clock: 'level' must be"),
        ("rate_days: 3", "rate_days: 0", RATE),
        ("rate_days: 3", "rate_days: -2", RATE),
        ("rate_days: 3", "rate_days: true", RATE),
        ("rate_days: 3", "rate_days: 1.5", RATE),
        ("rate_days: 3", "rate_days: 366", RATE + " from 1 to 365"),
        ("{category: repair, rate_days: 3}", "{category: repair}", "a clock names no duration"),
        ("rate_days: 3", "rate_days: 3, colour: red", "unknown key 'colour' in a clock"),
        ("{level: 0, overdue_escalate_minutes: 30}",
         "{category: safety, level: 2, rate_days: 1}",
         "a second clock for category safety at depth 2"),
    ],
)
async def test_bad_clocks_are_rejected_with_their_line(
    sm: async_sessionmaker[AsyncSession], tmp_path: Path, old: str, new: str, reason: str
) -> None:
    await load(sm, write(tmp_path, BASE.replace("clocks:", "old_clocks:")))
    before = await stored(sm)
    assert old in BASE
    content = BASE.replace(old, new)
    path = write(tmp_path, content)
    with pytest.raises(CommunityFileError) as info:
        await load(sm, path)
    line = _line(content, new)
    assert str(info.value).startswith(f"{path}:{line}: {reason}"), str(info.value)
    assert await stored(sm) == before


async def test_clocks_without_a_community_section_use_stored_level_names(
    sm: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """Without a community section, level names are those of the stored communities."""
    await load(sm, write(tmp_path, BASE))
    path = write(tmp_path, "clocks:\n  - {category: repair, level: 微网格, accept_minutes: 5}\n")
    report = await load(sm, path)
    assert report["clocks"].created == 1
    async with sm() as session:
        row = await session.scalar(
            select(ClockSetting).where(ClockSetting.category == "repair", ClockSetting.depth == 2)
        )
        assert row is not None and row.accept_minutes == 5


# --------------------------------------------------------------------------------------------
# Settings change what the clocks do


async def set_by_cli(h: DutyHarness, *argv: str) -> None:
    """``gridbot clocks …`` on the harness's database (in a thread: it runs its own loop)."""
    assert await asyncio.to_thread(cli, h.app.settings, "clocks", *argv) == 0


async def test_cli_setting_changes_when_an_order_is_broadcast(duty: DutyHarness) -> None:
    # The sweep runs at most once a minute: checks are a minute or more apart.
    h = duty
    h.clock.set(2027, 3, 1, 9, 0)
    await h.login("p-wang")
    await h.login("p-li-dangyuan")
    s = await h.scheduler()
    await set_by_cli(h, "set", "--category", "repair", "--level", "微网格",
                     "--dispatch-minutes", "5")
    repair = await h.submit(category="repair")
    dispute = await h.submit(category="dispute")  # same grid, default clock (30 min)
    h.clock.set(2027, 3, 1, 9, 4)
    await h.tick(s)
    assert (await h.order(repair)).status == "submitted"
    h.clock.set(2027, 3, 1, 9, 6, 30)
    await h.tick(s)
    assert (await h.order(repair)).status == "dispatched"
    assert ("auto_broadcast", "submitted", "dispatched") in await h.events(repair)
    assert (await h.order(dispute)).status == "submitted"

    # Unset: the next repair order waits for the default again.
    await set_by_cli(h, "unset", "--category", "repair", "--level", "微网格")
    later = await h.submit(category="repair")  # at 09:06:30
    h.clock.set(2027, 3, 1, 9, 20)
    await h.tick(s)
    assert (await h.order(later)).status == "submitted"
    h.clock.set(2027, 3, 1, 9, 38)
    await h.tick(s)
    assert (await h.order(later)).status == "dispatched"
    assert (await h.order(dispute)).status == "dispatched"


async def test_demo_clock_applies_at_the_micro_grid_only(duty: DutyHarness) -> None:
    """The demo's safety row (10/15 min at 微网格): after escalating to 网格, the defaults.
    The sweep runs at most once a minute: checks are a minute or more apart."""
    h = duty
    h.clock.set(2027, 3, 1, 9, 0)
    await h.login("p-wang")
    await h.login("p-li-dangyuan")
    await h.login("p-liu-wanggezhang")
    s = await h.scheduler()
    oid = await h.submit(category="safety")
    micro = (await h.order(oid)).handling_grid_id
    for minute, second, status in ((8, 30, "submitted"),  # 10 min to dispatch
                                   (11, 0, "dispatched"),
                                   (24, 30, "dispatched"),  # 15 min to accept
                                   (27, 0, "escalated")):
        h.clock.set(2027, 3, 1, 9, minute, second)
        await h.tick(s)
        assert (await h.order(oid)).status == status, (minute, second)
    order = await h.order(oid)
    assert order.handling_grid_id == await h.grid_id("xh-g1") != micro
    h.clock.set(2027, 3, 1, 9, 55)  # 28 minutes at 网格: its 30-minute default still runs
    await h.tick(s)
    assert (await h.order(oid)).status == "escalated"
    h.clock.set(2027, 3, 1, 9, 58, 30)
    await h.tick(s)
    assert (await h.order(oid)).status == "dispatched"


async def test_digest_counts_overdue_by_the_configured_deadline(duty: DutyHarness) -> None:
    h = duty
    head = await h.login("p-liu-wanggezhang")
    member = await h.login("p-li-dangyuan")
    s = await h.scheduler()
    h.clock.set(2027, 3, 1, 9, 0)
    await set_by_cli(h, "set", "--category", "repair", "--deadline-hours", "8",
                     "--overdue-escalate-minutes", "600")
    oid = await h.submit(category="repair")  # the category's own deadline: 48 h
    member_id = await h.person_id("p-li-dangyuan")
    async with h.app.sessionmaker() as session, session.begin():
        await session.execute(update(Order).where(Order.id == oid).values(
            status="accepted", assignee_id=member_id, updated_at=h.clock()))
    h.clock.set(2027, 3, 1, 18, 0, 5)
    await h.tick(s)
    assert (await h.order(oid)).status == "accepted"
    assert sum("超过办理期限" in t for t in member.texts()) == 1  # the 8-hour deadline passed
    [digest] = [t for t in head.texts() if "今日汇总" in t]
    assert "已超期：1" in digest
