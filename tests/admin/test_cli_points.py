"""``gridbot points adjust`` and ``gridbot points list``: one ledger row per adjustment with who
and why; bad arguments exit 2 and change nothing. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.cli import main
from models import PointsEntry
from models.db import make_engine, make_sessionmaker

DEMO = str(Path(__file__).resolve().parents[2] / "bot" / "demo" / "community.yaml")


@pytest.fixture
def cli_db(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("GRIDBOT_DATABASE_URL", database_url)
    monkeypatch.setenv("GRIDBOT_LOG_LEVEL", "WARNING")
    assert main(["import", DEMO]) == 0
    return database_url


def ledger(url: str) -> list[tuple[int, str, str | None, str | None]]:
    async def read() -> list[tuple[int, str, str | None, str | None]]:
        engine = make_engine(url)
        try:
            async with make_sessionmaker(engine)() as session:
                rows = await session.execute(
                    select(
                        PointsEntry.points,
                        PointsEntry.reason,
                        PointsEntry.note,
                        PointsEntry.actor_name,
                    ).order_by(PointsEntry.id)
                )
                return [tuple(r) for r in rows.all()]  # type: ignore[misc]
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_adjust_then_list(cli_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert (
        main(
            [
                "points",
                "adjust",
                "--person",
                "p-li-dangyuan",
                "--delta",
                "+5",
                "--reason",
                "协助疫苗接种",
                "--by",
                "陈书记",
            ]
        )
        == 0
    )
    assert "total now 5" in capsys.readouterr().out
    assert (
        main(
            [
                "points",
                "adjust",
                "--person",
                "p-zhao-zhiyuanzhe",
                "--delta",
                "-3",
                "--reason",
                "缺席培训",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "points",
                "adjust",
                "--person",
                "p-zhao-zhiyuanzhe",
                "--delta=12",
                "--reason",
                "夜间巡逻",
            ]
        )
        == 0
    )
    rows = ledger(cli_db)
    assert rows[0] == (5, "adjust", "协助疫苗接种", "陈书记")
    assert [r[0] for r in rows] == [5, -3, 12]
    assert rows[1][3] is not None and rows[1][3].startswith("cli:")
    capsys.readouterr()

    assert main(["points", "list", "--grid", "xh-g1-m1", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    # 赵志愿者 -3 + 12 = 9, 李党员 5, 王网格员 0.
    assert [(p["rank"], p["person"], p["month_points"], p["total"]) for p in table["people"]] == [
        (1, "p-zhao-zhiyuanzhe", 9, 9),
        (2, "p-li-dangyuan", 5, 5),
        (3, "p-wang", 0, 0),
    ]
    assert main(["points", "list", "--person", "p-li-dangyuan"]) == 0
    out = capsys.readouterr().out
    assert "李党员: 5 points" in out and "协助疫苗接种 (by 陈书记)" in out
    assert main(["points", "list", "--month", "2001-01", "--grid", "xh-g1-m1"]) == 0
    assert "points of 2001-01" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["adjust", "--person", "p-li-dangyuan", "--delta", "abc", "--reason", "x"], "--delta"),
        (["adjust", "--person", "p-li-dangyuan", "--delta", "0", "--reason", "x"], "--delta"),
        (["adjust", "--person", "p-li-dangyuan", "--delta", "+10001", "--reason", "x"], "--delta"),
        (["adjust", "--person", "p-li-dangyuan", "--delta", "5", "--reason", "  "], "--reason"),
        (["adjust", "--person", "nobody", "--delta", "5", "--reason", "x"], "unknown person"),
        (["list", "--month", "2026-13"], "--month"),
        (["list", "--grid", "nowhere"], "unknown grid"),
        (["list", "--person", "nobody"], "unknown person"),
    ],
)
def test_bad_arguments_exit_2_and_change_nothing(
    cli_db: str, capsys: pytest.CaptureFixture[str], args: list[str], reason: str
) -> None:
    capsys.readouterr()
    assert main(["points", *args]) == 2
    err = capsys.readouterr().err
    assert reason in err and "nothing was changed" in err
    assert ledger(cli_db) == []
