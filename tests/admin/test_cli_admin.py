"""The admin subcommands, run in-process through the argparse functions they register."""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from bot.admin.cli_admin import add_admin_commands
from bot.config import Settings, load_settings
from bot.core.invites import InviteError, redeem_invite, signing_key
from models.base import utcnow
from models.db import make_engine, make_sessionmaker

COMMUNITY = """\
community: {code: cli-test, name: 测试社区}
levels: [街道, 社区, 网格, 微网格]
grids:
  - code: st
    name: 测试街道
    children:
      - code: cm
        name: 测试社区
        children:
          - code: g1
            name: 第一网格
            children:
              - {code: g1-m1, name: 第一网格1号微网格}
              - {code: g1-m2, name: 第一网格2号微网格}
buildings:
  - {code: b01, grid: g1-m1, name: 翠屏小区1栋}
  - {code: b02, grid: g1-m1, name: 翠屏小区2栋}
  - {code: b03, grid: g1-m2, name: 翠屏小区3栋}
people:
  - key: p-wang
    name: 王网格员
    phone: "13800000002"
    roles:
      - {role: worker, grid: g1-m1}
"""

TABLES = ("community", "grid", "building", "person", "role", "category", "invite", "kv")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gridbot")
    sub = p.add_subparsers(dest="command", required=True)
    add_admin_commands(sub)
    return p


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "cli.db"


@pytest.fixture
def settings(db: Path, tmp_path: Path) -> Settings:
    return load_settings(
        database_url=f"sqlite+aiosqlite:///{db}", qr_dir=tmp_path / "qr", secret_key=None
    )


def run(settings: Settings, *argv: str) -> int:
    if argv[0] in ("invite", "qr-sheet") and "--bot-username" not in argv:
        # the bot these links name (see test_invite_links.py for how it is found)
        argv = (*argv, "--bot-username", "gridbot")
    args = parser().parse_args(argv)
    code = args.func(settings, args)
    assert isinstance(code, int)
    return code


def counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


@pytest.fixture
def imported(settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "community.yaml"
    path.write_text(COMMUNITY, encoding="utf-8")
    assert run(settings, "import", str(path)) == 0
    capsys.readouterr()
    return path


def test_import_prints_report_and_is_idempotent(
    settings: Settings, db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "community.yaml"
    path.write_text(COMMUNITY, encoding="utf-8")
    csv = tmp_path / "buildings.csv"
    csv.write_text("code,grid,name,address\nb04,g1-m2,翠屏小区4栋,新华路16号\n", encoding="utf-8")
    assert run(settings, "import", str(path), str(csv)) == 0
    out = capsys.readouterr().out
    assert "community cli-test" in out and "imported" in out
    assert "grids:       5 created" in out
    assert "buildings:   1 created" in out
    first = counts(db)
    assert (first["grid"], first["building"], first["category"]) == (5, 4, 6)

    assert run(settings, "import", str(path), str(csv)) == 0
    out = capsys.readouterr().out
    assert out.count("no changes") == 2
    assert counts(db) == first


def test_bad_file_exits_1_and_leaves_the_database_alone(
    settings: Settings,
    db: Path,
    imported: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = counts(db)
    good = tmp_path / "more.csv"
    good.write_text("code,grid,name\nb09,g1-m2,新楼\n", encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(COMMUNITY.replace("{code: b03, grid: g1-m2,", "{code: b03, grid: g9,"), "utf-8")
    line = COMMUNITY.splitlines().index("  - {code: b03, grid: g1-m2, name: 翠屏小区3栋}") + 1

    # the good file first: the whole command is one transaction, so it is rolled back too
    assert run(settings, "import", str(good), str(bad)) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(
        f"error: {bad}:{line}: building b03 refers to unknown grid g9\n"
    )
    assert captured.out == ""
    assert counts(db) == before

    assert run(settings, "import", str(tmp_path / "missing.yaml")) == 1
    assert "cannot read" in capsys.readouterr().err
    assert counts(db) == before


def test_grids_text_and_json(
    settings: Settings, imported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(settings, "grids") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("测试街道 [st] 街道")
    assert out[-5:] == [
        "        ├── 第一网格1号微网格 [g1-m1] 微网格 — buildings 2, workers 1",
        "        │       · 翠屏小区1栋 [b01]",
        "        │       · 翠屏小区2栋 [b02]",
        "        └── 第一网格2号微网格 [g1-m2] 微网格 — buildings 1",
        "                · 翠屏小区3栋 [b03]",
    ]

    assert run(settings, "grids", "--json") == 0
    tree = json.loads(capsys.readouterr().out)
    assert [n["code"] for n in tree] == ["st"]
    grid = tree[0]["children"][0]["children"][0]
    assert grid["level"] == "网格"
    assert [c["code"] for c in grid["children"]] == ["g1-m1", "g1-m2"]
    assert grid["totals"]["buildings"] == 3
    assert grid["building_list"] == []  # buildings are listed on the grid they belong to
    assert grid["children"][0]["building_list"] == [
        {"code": "b01", "name": "翠屏小区1栋", "address": ""},
        {"code": "b02", "name": "翠屏小区2栋", "address": ""},
    ]


def test_grids_on_empty_database(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(settings, "grids") == 0
    assert "no grids yet" in capsys.readouterr().out


async def _redeem(settings: Settings, token: str) -> tuple[str, int | None, int | None]:
    engine = make_engine(settings.database_url)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            key = await signing_key(session, settings)
            invite = await redeem_invite(session, key, token, utcnow())
            return invite.role, invite.building_id, invite.max_uses
    finally:
        await engine.dispose()


def test_invite_worker_single_use(
    settings: Settings, imported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "out"
    code = run(
        settings,
        "invite",
        "--role",
        "worker",
        "--grid",
        "g1-m2",
        "--json",
        "--out",
        str(out_dir),
        "--bot-username",
        "@gridbot",
    )
    assert code == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) >= {
        "token",
        "role",
        "grid",
        "building",
        "expires_at",
        "telegram_link",
        "qr_png",
    }
    assert (info["role"], info["grid"], info["building"], info["max_uses"]) == (
        "worker",
        "g1-m2",
        None,
        1,
    )
    token = info["token"]
    assert len(token) <= 64
    assert info["telegram_link"] == f"https://t.me/gridbot?start={token}"
    png = Path(info["qr_png"])
    assert png.parent == out_dir and png.exists()
    with Image.open(png) as img:
        assert img.format == "PNG"

    assert asyncio.run(_redeem(settings, token)) == ("worker", None, 1)
    with pytest.raises(InviteError, match="used"):
        asyncio.run(_redeem(settings, token))


def test_invite_resident_defaults_to_building_and_many_uses(
    settings: Settings, db: Path, imported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(settings, "invite", "--role", "resident", "--grid", "g1", "--building", "b02") == 0
    out = capsys.readouterr().out
    assert "unlimited uses" in out
    token = next(line.split()[1] for line in out.splitlines() if line.startswith("token:"))
    assert "https://t.me/gridbot?start=" + token in out
    png = next(Path(line.split()[2]) for line in out.splitlines() if line.startswith("qr code:"))
    assert png.parent == settings.qr_dir and png.exists()
    with sqlite3.connect(db) as conn:
        grid_id, building_id = conn.execute(
            "SELECT building.grid_id, building.id FROM building WHERE code = 'b02'"
        ).fetchone()
        row = conn.execute("SELECT grid_id, building_id, max_uses FROM invite").fetchone()
    # the invite is bound to the building and to the building's own micro-grid
    assert row == (grid_id, building_id, None)
    for _ in range(3):
        assert asyncio.run(_redeem(settings, token))[:2] == ("resident", building_id)


@pytest.mark.parametrize(
    ("argv", "uses"),
    [
        (["--role", "member", "--grid", "g1-m1", "--uses", "5"], 5),
        (["--role", "resident", "--grid", "g1-m1", "--building", "b01", "--single"], 1),
        (["--role", "head", "--grid", "g1", "--days", "2"], 1),
    ],
)
def test_invite_uses(
    settings: Settings,
    imported: Path,
    argv: list[str],
    uses: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(settings, "invite", *argv, "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["max_uses"] == uses


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--role", "resident", "--grid", "g1-m1"], "a resident invite needs --building"),
        (["--role", "worker", "--grid", "nope"], "unknown grid nope"),
        (["--role", "worker", "--grid", "g1-m1", "--building", "b9"], "unknown building b9"),
        (
            ["--role", "resident", "--grid", "g1-m2", "--building", "b01"],
            "building b01 is not in grid g1-m2",
        ),
        (["--role", "member", "--grid", "g1", "--uses", "0"], "--uses must be at least 1"),
        (["--role", "member", "--grid", "g1", "--days", "0"], "--days must be positive"),
    ],
)
def test_invite_errors(
    settings: Settings,
    db: Path,
    imported: Path,
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = counts(db)
    assert run(settings, "invite", *argv) == 1
    assert capsys.readouterr().err == f"error: {message}\n"
    assert counts(db) == before


def test_invite_argument_errors(settings: Settings) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(
            ["invite", "--role", "member", "--grid", "g", "--uses", "2", "--single"]
        )
    with pytest.raises(SystemExit):
        parser().parse_args(["invite", "--role", "boss", "--grid", "g"])


def test_qr_sheet(
    settings: Settings,
    db: Path,
    imported: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out_dir = tmp_path / "sheets"
    assert run(settings, "qr-sheet", "--grid", "g1", "--out", str(out_dir)) == 0
    paths = [Path(p) for p in capsys.readouterr().out.split()]
    # One page per building, and per micro-grid one PDF of its pages.
    assert [p.name for p in paths] == [
        "sheet-g1-m1-b01.png",
        "sheet-g1-m1-b02.png",
        "sheet-g1-m1.pdf",
        "sheet-g1-m2-b03.png",
        "sheet-g1-m2.pdf",
    ]
    for p in paths:
        if p.suffix == ".pdf":
            assert p.read_bytes().startswith(b"%PDF-")
            continue
        with Image.open(p) as img:
            assert img.format == "PNG" and img.height > img.width  # portrait A4
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT invite.role, invite.max_uses, building.code, invite.grid_id = building.grid_id"
            " FROM invite JOIN building ON building.id = invite.building_id ORDER BY building.code"
        ).fetchall()
    assert rows == [
        ("resident", None, "b01", 1),
        ("resident", None, "b02", 1),
        ("resident", None, "b03", 1),
    ]

    # a single micro-grid
    assert run(settings, "qr-sheet", "--grid", "g1-m2", "--days", "30") == 0
    assert capsys.readouterr().out.split() == [
        str(settings.qr_dir / "sheet-g1-m2-b03.png"),
        str(settings.qr_dir / "sheet-g1-m2.pdf"),
    ]


def test_qr_sheet_errors(
    settings: Settings, imported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(settings, "qr-sheet", "--grid", "nope") == 1
    assert capsys.readouterr().err == "error: unknown grid nope\n"
    # a grid without buildings under it
    assert run(settings, "qr-sheet", "--grid", "cm") == 0
    capsys.readouterr()
    extra = Path(imported.parent / "lonely.yaml")
    extra.write_text(
        "community: {code: cli-test, name: 测试社区}\ngrids:\n  - {code: lonely, name: 空网格}\n",
        encoding="utf-8",
    )
    assert run(settings, "import", str(extra)) == 0
    capsys.readouterr()
    assert run(settings, "qr-sheet", "--grid", "lonely") == 1
    assert capsys.readouterr().err == "error: no buildings under grid lonely\n"
