"""``gridbot report`` over the hand-built October of ``history.py``: the table, JSON, CSV and
the Excel ledger (opened with openpyxl), contacts only when asked for, English headers, and
bad arguments refused with exit status 2."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import datetime
from pathlib import Path

import pytest
from openpyxl import load_workbook

from bot.cli import build_parser
from bot.config import Settings
from tests.conftest import Harness
from tests.reports.history import write_history


def cli(settings: Settings, *argv: str) -> int:
    args = build_parser().parse_args(argv)
    code = args.func(settings, args)
    assert isinstance(code, int)
    return code


async def run(settings: Settings, *argv: str) -> int:
    """The command in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(cli, settings, *argv)


@pytest.fixture
async def october(harness: Harness) -> Settings:
    await write_history(harness.app.sessionmaker)
    return harness.app.settings


async def test_table_json_and_csv(
    october: Settings, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert await run(october, "report", "--month", "2026-10", "--grid", "xinhua") == 0
    table = capsys.readouterr().out
    assert "新华社区 2026-10 台账" in table
    first = next(line for line in table.splitlines() if "第一网格" in line)
    assert first.split()[:4] == ["1", "第一网格", "78.3", "7"]
    third = next(line for line in table.splitlines() if "第三网格" in line)
    assert third.split()[0] == "—" and "—" in third.split()[3:]

    assert await run(october, "report", "--month", "2026-10", "--grid", "xinhua",
                     "--format", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total"]["figures"]["satisfaction"] == {"num": 2, "den": 3, "value": 0.6667}
    assert data["total"]["figures"]["received"] == 8
    assert [c["code"] for c in data["children"]] == ["xh-g1", "xh-g2", "xh-g3"]
    assert data["children"][2]["figures"]["response"]["value"] is None
    assert "phone" not in data["orders"][0] and data["with_contacts"] is False
    first = data["orders"][0]
    assert (first["number"], first["grid"], first["building"], first["stars"]) == (
        first["number"], "xh-g1-m1", "xh-b01", 5)
    assert first["submitted_at"] == "2026-10-05T02:00:00+00:00"  # 10:00 in Shanghai

    out = tmp_path / "summary.csv"
    assert await run(october, "report", "--month", "2026-10", "--grid", "xinhua",
                     "--format", "csv", "--out", str(out)) == 0
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))
    header = rows[0]
    by_grid = {r[2]: dict(zip(header, r, strict=True)) for r in rows[1:]}
    assert by_grid["新华社区"]["满意率"] == "66.7%"
    assert by_grid["第二网格"]["满意率"] == "0.0%"
    assert by_grid["第三网格"]["满意率"] == "—"
    assert by_grid["第三网格"]["排名"] == "—"


async def test_a_span_of_days_against_the_days_before(
    october: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(october, "report", "--from", "2026-10-05", "--to", "2026-10-06",
                     "--format", "json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["period"]["label"] == "2026-10-05~2026-10-06"
    assert data["period"]["start"] == "2026-10-05T00:00:00+08:00"
    assert data["previous"] == "2026-10-03~2026-10-04"
    assert data["total"]["figures"]["received"] == 2  # A and B


async def test_the_excel_ledger(october: Settings, tmp_path: Path) -> None:
    out = tmp_path / "ledger.xlsx"
    assert await run(october, "report", "--month", "2026-10", "--grid", "xinhua",
                     "--format", "xlsx", "--out", str(out)) == 0
    wb = load_workbook(out)
    assert wb.sheetnames == ["汇总", "工单", "巡查与走访", "党员积分"]
    summary = wb["汇总"]
    assert summary.freeze_panes == "A3"
    header = [c.value for c in summary[2]]
    assert header[:7] == ["排名", "网格编号", "网格", "得分", "上期得分", "受理量", "上期受理量"]
    col = header.index("满意率") + 1
    assert header[col] == "上期满意率"  # the month before, beside it
    total = summary.cell(row=3, column=col)
    assert total.value == pytest.approx(2 / 3) and total.number_format == "0.0%"
    assert summary.cell(row=3, column=col + 1).value == "—"  # September had nothing
    # Median submit → dispatch 15 minutes (see test_kpi), as h:mm.
    assert summary.cell(row=3, column=header.index("派单用时中位数（时:分）") + 1).value == "0:15"
    assert [summary.cell(row=r, column=3).value for r in (4, 5, 6)] == ["第一网格", "第二网格",
                                                                         "第三网格"]
    assert summary.column_dimensions["C"].width >= 10

    orders = wb["工单"]
    head = [c.value for c in orders[2]]
    assert "电话" not in head and "房号" not in head
    rows = list(orders.iter_rows(min_row=3, values_only=True))
    assert len(rows) == 8
    first = dict(zip(head, rows[0], strict=True))
    assert first["提交时间"] == datetime(2026, 10, 5, 10, 0)  # a real date, local time
    submitted = orders.cell(row=3, column=head.index("提交时间") + 1)
    assert submitted.number_format == "yyyy-mm-dd hh:mm"
    assert first["接单时间"] == datetime(2026, 10, 5, 10, 50)
    assert (first["类别"], first["楼栋"], first["星级"], first["承办党员"]) == (
        "维修报修", "翠屏小区1栋", 5, "李党员")
    assert first["派单人"] == "王网格员" and first["状态"] == "已关闭"
    escalated = next(r for r in rows if dict(zip(head, r, strict=True))["升级次数"] == 2)
    assert dict(zip(head, escalated, strict=True))["网格"] == "第二网格1号微网格"

    points = wb["党员积分"]
    top = dict(zip([c.value for c in points[2]], [c.value for c in points[3]], strict=True))
    assert (top["承办党员"], top["积分"], top["办结数"], top["平均评价"]) == ("李党员", 10, 3, 4.5)
    assert top["排名"] == 1
    # Everyone else has 0 points: they share rank 2.
    assert {r[0] for r in points.iter_rows(min_row=4, values_only=True)} == {2}
    assert wb["巡查与走访"].freeze_panes == "A3"


async def test_contacts_only_when_asked_and_english(october: Settings, tmp_path: Path) -> None:
    out = tmp_path / "contacts.xlsx"
    assert await run(october, "report", "--month", "2026-10", "--grid", "xinhua",
                     "--format", "xlsx", "--out", str(out), "--with-contacts") == 0
    orders = load_workbook(out)["工单"]
    assert "含居民电话和房号" in str(orders["A1"].value)
    head = [c.value for c in orders[2]]
    first = dict(zip(head, [c.value for c in orders[3]], strict=True))
    assert (first["电话"], first["房号"]) == ("13800000009", "2-301")

    out = tmp_path / "en.xlsx"
    assert await run(october, "report", "--month", "2026-10", "--format", "xlsx",
                     "--out", str(out), "--lang", "en") == 0
    wb = load_workbook(out)
    assert wb.sheetnames == ["Summary", "Orders", "Patrols and visits", "Member points"]
    assert wb["Summary"]["A2"].value == "Rank"
    # The whole tree: its one top grid, 三里坪街道, holds all eight.
    assert wb["Summary"].cell(row=3, column=6).value == 8


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (("--month", "2026-13"), "not a month"),
        (("--grid", "nowhere"), "unknown grid 'nowhere'"),
        (("--from", "2026-10-10", "--to", "2026-10-01"), "is after --to"),
        (("--from", "2026-10-10"), "go together"),
        (("--month", "2026-10", "--from", "2026-10-01", "--to", "2026-10-02"), "not both"),
        (("--lang", "de"), "unknown language"),
    ],
)
async def test_bad_arguments_exit_2_with_the_reason(
    october: Settings, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], reason: str
) -> None:
    assert await run(october, "report", *argv) == 2
    assert reason in capsys.readouterr().err
