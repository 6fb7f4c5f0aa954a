"""``gridbot duties import``: households, visit and patrol plans from CSV (both databases)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from bot.admin.duty_import import import_duties
from bot.admin.importer import CommunityFileError
from bot.app import DEMO_DUTIES, DEMO_FILE
from bot.cli import build_parser
from bot.config import load_settings
from models import Household, PatrolPlan, Person, VisitPlan
from tests.conftest import Harness

SH = ZoneInfo("Asia/Shanghai")
DUTY_TABLES = (Household, VisitPlan, PatrolPlan)


async def snapshot(h: Harness) -> list[tuple[object, ...]]:
    async with h.app.sessionmaker() as session:
        rows: list[tuple[object, ...]] = []
        for h_ in (await session.scalars(select(Household).order_by(Household.id))).all():
            rows.append((h_.code, h_.kind, h_.name, h_.address, h_.notes, h_.private,
                         h_.person_id, h_.building_id))
        for v in (await session.scalars(select(VisitPlan).order_by(VisitPlan.id))).all():
            rows.append((v.household_id, v.member_id, v.frequency, v.starts_at, v.updated_at))
        for p in (await session.scalars(select(PatrolPlan).order_by(PatrolPlan.id))).all():
            rows.append((p.code, p.grid_id, p.person_id, p.schedule, p.deadline_minutes,
                         p.timezone, p.updated_at))
        return rows


async def load(h: Harness, path: Path) -> str:
    async with h.app.sessionmaker() as session, session.begin():
        return str(await import_duties(session, path))


async def test_demo_duties_are_loaded_with_the_demo(harness: Harness) -> None:
    h = harness
    assert await h.count(PatrolPlan) == 8  # one 09:00 patrol per micro-grid
    async with h.app.sessionmaker() as session:
        li = await session.scalar(select(Person.id).where(Person.key == "p-li-dangyuan"))
        plans = (await session.scalars(select(VisitPlan))).all()
        kinds = (await session.scalars(select(Household.kind))).all()
        schedules = set((await session.scalars(select(PatrolPlan.schedule))).all())
    assert {p.member_id for p in plans} == {li} and len(plans) == 3
    assert kinds.count("elderly_alone") == 2
    assert schedules == {"0 9 * * *"}


async def test_reimport_changes_nothing_and_edits_update_in_place(
    harness: Harness, tmp_path: Path
) -> None:
    h = harness
    before = await snapshot(h)
    for path in DEMO_DUTIES:
        assert "no changes" in await load(h, path)
    assert await snapshot(h) == before

    patrols = tmp_path / "patrols.csv"
    patrols.write_text(
        DEMO_DUTIES[2].read_text(encoding="utf-8").replace(
            "pp-xh-g1-m1,xh-g1-m1,0 9 * * *,p-wang,240",
            'pp-xh-g1-m1,xh-g1-m1,"30 8 * * mon,wed,fri",p-wang,90',
        ),
        encoding="utf-8",
    )
    visits = tmp_path / "visits.csv"
    visits.write_text(
        "household,member,frequency,start\n"
        "hh-zhang-ayi,p-li-dangyuan,每两周,2027-03-02 16:00\n"
        "hh-zhang-ayi,p-wang,monthly,2027-03-05\n",
        encoding="utf-8",
    )
    households = tmp_path / "households.csv"
    households.write_text(
        "key,building,kind,name,address,notes,private\n"
        "hh-zhang-ayi,xh-b01,独居老人,张桂芳,翠屏小区1栋2-301,新装了呼叫器,no\n"
        "hh-new,xh-b16,disabled,曹婆婆,滨河花园A栋,,\n",
        encoding="utf-8",
    )
    assert "1 created, 1 updated" in await load(h, households)
    assert "1 created, 1 updated" in await load(h, visits)
    assert "0 created, 1 updated, 7 unchanged" in await load(h, patrols)
    assert await h.count(PatrolPlan) == 8 and await h.count(Household) == 4
    async with h.app.sessionmaker() as session:
        plan = await session.scalar(select(PatrolPlan).where(PatrolPlan.code == "pp-xh-g1-m1"))
        assert plan is not None
        assert (plan.schedule, plan.deadline_minutes) == ("30 8 * * mon,wed,fri", 90)
        zhang = await session.scalar(select(Household).where(Household.code == "hh-zhang-ayi"))
        assert zhang is not None and not zhang.private and zhang.notes == "新装了呼叫器"
        assert zhang.person_id is not None  # no 'resident' column: left as it was
        starts = (await session.scalars(
            select(VisitPlan.starts_at).where(VisitPlan.household_id == zhang.id)
            .order_by(VisitPlan.id))).all()
        assert starts == [datetime(2027, 3, 2, 16, 0, tzinfo=SH),
                          datetime(2027, 3, 5, 9, 0, tzinfo=SH)]
    again = await snapshot(h)
    for path in (households, visits, patrols):
        assert "no changes" in await load(h, path)
    assert await snapshot(h) == again


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("key,building,kind,name\nhh-a,xh-b01,独居老人,甲\nhh-b,xh-b99,独居老人,乙\n", 3,
         "unknown building 'xh-b99'"),
        ("key,building,kind,name\nhh-a,xh-b01,老人,甲\n", 2, "unknown kind '老人'"),
        ("key,building,kind,name,private\nhh-a,xh-b01,child,甲,maybe\n", 2,
         "'private' must be yes or no"),
        ("key,building,kind,name\nhh-a,xh-b01,child,甲\nhh-a,xh-b02,child,乙\n", 3,
         "household hh-a already on line 2"),
        ("household,member,frequency,start\nhh-zhang-ayi,p-li-dangyuan,daily,2027-03-01\n", 2,
         "unknown frequency 'daily'"),
        ("household,member,frequency,start\nhh-zhang-ayi,p-nobody,weekly,2027-03-01\n", 2,
         "unknown person 'p-nobody'"),
        ("household,member,frequency,start\nhh-zhang-ayi,p-wang,weekly,next monday\n", 2,
         "start 'next monday' is not a date"),
        ("key,grid,schedule,who,deadline_minutes\npp-1,xh-g1-m1,0 9 * *,p-wang,60\n", 2,
         "schedule '0 9 * *' is not a 5-field cron line"),
        ("key,grid,schedule,who,deadline_minutes\npp-1,xh-g1-m1,0 9 * * *,p-wang,soon\n", 2,
         "deadline_minutes 'soon' must be"),
        ("key,grid,schedule,who,timezone\npp-1,xh-g1-m1,0 9 * * *,p-wang,Mars/Base\n", 2,
         "unknown time zone 'Mars/Base'"),
        ("key,grid,schedule,who\n\npp-1,xh-g9,0 9 * * *,p-wang\n", 3, "unknown grid 'xh-g9'"),
        ("name,age\n甲,3\n", 1, "unknown CSV header"),
        ("key,grid,schedule,who,colour\n", 1, "unknown column 'colour'"),
        ("", 1, "the file is empty"),
    ],
)
async def test_bad_file_rejected_whole(
    harness: Harness, tmp_path: Path, text: str, line: int, reason: str
) -> None:
    h = harness
    before = await snapshot(h)
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CommunityFileError) as err:
        await load(h, path)
    assert str(err.value).startswith(f"{path}:{line}: {reason}"), str(err.value)
    assert await snapshot(h) == before


def test_cli_duties_import(database_url: str, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(database_url=database_url, demo=False, secret_key="k",
                             qr_dir=tmp_path / "qr", media_dir=tmp_path / "media")

    def run(*argv: str) -> int:
        args = build_parser().parse_args(argv)
        code = args.func(settings, args)
        assert isinstance(code, int)
        return code

    assert run("import", str(DEMO_FILE)) == 0
    files = [str(p) for p in DEMO_DUTIES]
    assert run("duties", "import", *files) == 0
    out = capsys.readouterr().out
    assert "(households): imported: 3 created" in out
    assert "(patrol plans): imported: 8 created" in out
    assert run("duties", "import", *files) == 0
    assert capsys.readouterr().out.count("no changes") == 3

    bad = tmp_path / "patrols.csv"
    bad.write_text("key,grid,schedule,who\npp-x,xh-g1-m1,0 9 * * *,p-wang\n"
                   "pp-y,xh-g1-m2,0 9 * * *,p-ghost\n", encoding="utf-8")
    assert run("duties", "import", files[0], str(bad)) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {bad}:3: unknown person 'p-ghost'")
    assert "nothing was imported" in captured.err

    import asyncio

    from models.db import make_engine, make_sessionmaker

    async def plans() -> int:
        engine = make_engine(database_url)
        try:
            async with make_sessionmaker(engine)() as session:
                return int(await session.scalar(select(func.count()).select_from(PatrolPlan)) or 0)
        finally:
            await engine.dispose()

    assert asyncio.run(plans()) == 8
