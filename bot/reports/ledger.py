"""The ledger (台账) a community keeps, as an Excel workbook (openpyxl), and the same figures
as text, JSON and CSV.

Every writer is a function of a :class:`~bot.reports.kpi.Report` (figures and rows) and the
language, never of command-line arguments, so the CLI, the monthly bulletin and a web console
export share it. Phone numbers and rooms appear only when ``contacts`` is given (the caller
decides; the workbook then says so at the top of the order sheet).

The workbook can also be of several reports of one period, of subtrees apart (a console export
of someone who heads two grids, neither above the other): each subtree's grids in turn, their
orders and members together (:func:`together`).
"""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from openpyxl import Workbook
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

from bot.i18n import Translator
from bot.reports.kpi import (
    RATE_NAMES,
    Figures,
    GridRow,
    OrderFacts,
    Ratio,
    Report,
    Scope,
    fmt_minutes,
)

#: Rates shown in the summary (all of them, in the vocabulary's order).
SUMMARY_RATES = RATE_NAMES
DATE_FORMAT = "yyyy-mm-dd hh:mm"
PERCENT_FORMAT = "0.0%"
_HEAD_FONT = Font(bold=True)
_HEAD_FILL = PatternFill("solid", fgColor="DDEBF7")
_TITLE_FONT = Font(bold=True, size=13)


class Labels:
    """Column titles and names in one language (from the catalogs: ``report.*`` keys)."""

    def __init__(self, tr: Translator, lang: str) -> None:
        self.tr, self.lang = tr, lang

    def __call__(self, key: str, **args: Any) -> str:
        return self.tr.t(self.lang, f"report.{key}", **args)

    def rate(self, name: str) -> str:
        """A rate's name (响应率 …)."""
        return self(f"rate.{name}")

    def category(self, code: str) -> str:
        """A category's display name."""
        return self.tr.t(self.lang, f"category.{code}")

    def status(self, status: str) -> str:
        """An order status as the ledger names it."""
        return self(f"status.{status}")


def _local(when: datetime | None, report: Report) -> datetime | None:
    """A naive local time for a spreadsheet cell (Excel has no time zones)."""
    if when is None:
        return None
    tz = report.period.start.tzinfo
    return when.astimezone(tz).replace(tzinfo=None)


def _ratio(cell_value: Ratio) -> float | str:
    v = cell_value.value
    return "—" if v is None else v


def _width(value: Any) -> int:
    text = value.strftime("%Y-%m-%d %H:%M") if isinstance(value, datetime) else str(value)
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _sheet(
    ws: Worksheet,
    title: str | None,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    formats: dict[int, str] | None = None,
) -> None:
    """Write an optional title line, a header row (frozen, bold) and the rows; size columns."""
    top = 1
    if title:
        ws.cell(row=1, column=1, value=title).font = _TITLE_FONT
        top = 2
    for col, text in enumerate(headers, 1):
        cell = ws.cell(row=top, column=col, value=text)
        cell.font, cell.fill = _HEAD_FONT, _HEAD_FILL
        cell.alignment = Alignment(horizontal="center", vertical="center", wrap_text=True)
    for r, values in enumerate(rows, top + 1):
        for col, value in enumerate(values, 1):
            cell = ws.cell(row=r, column=col, value=value)
            fmt = (formats or {}).get(col)
            if isinstance(value, datetime):
                cell.number_format = DATE_FORMAT
            elif fmt and isinstance(value, float | int):
                cell.number_format = fmt
    ws.freeze_panes = ws.cell(row=top + 1, column=1)
    for col, text in enumerate(headers, 1):
        widest = max([_width(text)] + [_width(v) for row in rows for v in row[col - 1 : col]])
        ws.column_dimensions[get_column_letter(col)].width = min(max(widest + 2, 8), 48)


def summary_rows(report: Report, lb: Labels) -> tuple[list[str], list[list[Any]], dict[int, str]]:
    """The 汇总 sheet: the subtree and each child grid, ranked, with the period before."""
    headers = [lb("col.rank"), lb("col.grid_code"), lb("col.grid"), lb("col.score"),
               lb("col.score_prev"), lb("col.received"), lb("col.received_prev")]
    for name in SUMMARY_RATES:
        headers += [lb.rate(name), lb("col.prev", what=lb.rate(name))]
    headers += [lb("col.median_dispatch"), lb("col.median_done"), lb("col.p90_done"),
                lb("col.escalated"), lb("col.auto_closed"), lb("col.revisits_open"),
                lb("col.below")]
    formats = {col: PERCENT_FORMAT for col in range(8, 8 + 2 * len(SUMMARY_RATES))}
    from bot.reports.kpi import score

    def line(row: GridRow, rank: Any) -> list[Any]:
        f, p = row.figures, row.previous
        weights = report.weights
        prev_score = score(p, weights)
        values: list[Any] = [
            rank, row.code, row.name,
            "—" if row.score is None else round(row.score, 1),
            "—" if prev_score is None else round(prev_score, 1),
            f.received, p.received,
        ]
        for name in SUMMARY_RATES:
            values += [_ratio(f.rate(name)), _ratio(p.rate(name))]
        values += [fmt_minutes(f.times.get("dispatch", {}).get("median")),
                   fmt_minutes(f.times.get("done", {}).get("median")),
                   fmt_minutes(f.times.get("done", {}).get("p90")),
                   f.escalated, f.auto_closed, f.revisits_open,
                   "、".join(lb.rate(n) for n, _, _ in row.below)]
        return values

    rows = [line(report.total, lb("total"))]
    rows += [line(r, r.rank if r.rank is not None else "—") for r in report.children]
    return headers, rows, formats


def order_rows(
    report: Report, lb: Labels, contacts: dict[int, str | None] | None
) -> tuple[list[str], list[list[Any]]]:
    """The 工单 sheet: one row per order of the period, every timestamp."""
    headers = [lb("col.number"), lb("col.category"), lb("col.grid"), lb("col.building"),
               lb("col.channel"), lb("col.source"), lb("col.submitted"), lb("col.dispatched"),
               lb("col.accepted"), lb("col.done"), lb("col.rated"), lb("col.closed"),
               lb("col.handler"), lb("col.member"), lb("col.stars"), lb("col.outcome"),
               lb("col.escalations")]
    if contacts is not None:
        headers += [lb("col.phone"), lb("col.room")]
    grids = report.scope.grids
    rows = []
    for o in report.orders:
        building = report.buildings_by_id.get(o.building_id)
        row: list[Any] = [
            o.number, lb.category(o.category),
            grids[o.grid_id].name if o.grid_id in grids else o.grid_id,
            building.name if building else o.building_id,
            o.channel or "—", lb(f"source.{o.source}"),
            _local(o.submitted_at, report), _local(o.dispatched_at, report),
            _local(o.accepted_at, report), _local(o.done_at, report),
            _local(o.rated_at, report), _local(o.closed_at, report),
            report.names.get(o.handler_id or 0, ""), report.names.get(o.member_id or 0, ""),
            o.stars if o.stars is not None else "", lb.status(o.status), o.escalations,
        ]
        if contacts is not None:
            row += [contacts.get(o.resident_id or 0) or "", o.room or ""]
        rows.append(row)
    return headers, rows


def duty_rows(report: Report, lb: Labels) -> tuple[list[str], list[list[Any]], dict[int, str]]:
    """The 巡查与走访 sheet: per grid, then per visit plan."""
    headers = [lb("col.grid"), lb("col.patrols_due"), lb("col.patrols_done"),
               lb("col.patrols_late"), lb("col.patrols_missed"), lb.rate("patrol_coverage"),
               lb("col.visits_due"), lb("col.visits_logged"), lb.rate("visit_completion"),
               lb("col.households_overdue"), lb.rate("whistle_answer")]

    def line(row: GridRow) -> list[Any]:
        f = row.figures
        return [row.name, f.patrol_coverage.den, f.patrol_coverage.num, f.patrols_late,
                f.patrols_missed, _ratio(f.patrol_coverage), f.visit_completion.den,
                f.visit_completion.num, _ratio(f.visit_completion), f.households_overdue,
                _ratio(f.whistle_answer)]

    rows = [line(report.total)] + [line(r) for r in report.children]
    return headers, rows, {6: PERCENT_FORMAT, 9: PERCENT_FORMAT, 11: PERCENT_FORMAT}


def points_rows(report: Report, lb: Labels) -> tuple[list[str], list[list[Any]]]:
    """The 党员积分 sheet: members by points."""
    headers = [lb("col.rank"), lb("col.member"), lb("col.grid"), lb("col.m_accepted"),
               lb("col.m_done"), lb("col.m_rating"), lb("col.visits_due"),
               lb("col.visits_logged"), lb("col.points")]
    grids = report.scope.grids
    rows = [
        # Competition ranking: equal points share the better rank (10, 8, 8, 5 → 1, 2, 2, 4).
        [1 + sum(o.points > m.points for o in report.members), m.name,
         grids[m.grid_id].name if m.grid_id in grids else "", m.accepted, m.done,
         "—" if m.mean_rating is None else round(m.mean_rating, 2), m.visits_due,
         m.visits_logged, m.points]
        for m in report.members
    ]
    return headers, rows


def together(reports: Sequence[Report]) -> Report:
    """Several reports of one period, of subtrees apart, as one for the rows that are not per
    grid: every order (by number, as one report's sheet lists them), every member (by points),
    every visit plan, with the grids, buildings and names to show them. Its figures (``total``,
    ``children``) stay the first report's: the per-grid sheets take each report's own. One
    report is returned as it is."""
    if len(reports) == 1:
        return reports[0]
    first = reports[0]
    grids = {k: v for r in reports for k, v in r.scope.grids.items()}
    levels = {k: v for r in reports for k, v in r.scope.levels.items()}
    return replace(
        first,
        scope=Scope(None, grids, levels),
        orders=sorted((o for r in reports for o in r.orders), key=lambda o: o.id),
        members=sorted((m for r in reports for m in r.members),
                       key=lambda m: (-m.points, m.name, m.person_id)),
        visits=[v for r in reports for v in r.visits],
        names={k: v for r in reports for k, v in r.names.items()},
        buildings_by_id={k: v for r in reports for k, v in r.buildings_by_id.items()},
    )


def title(reports: Report | Sequence[Report], lb: Labels) -> str:
    """The workbook's title: its grid (or grids) and period."""
    several = [reports] if isinstance(reports, Report) else list(reports)
    grids = lb("name_sep").join(r.total.name for r in several)
    return lb("title", grid=grids, period=several[0].period.label)


def write_xlsx(
    report: Report | Sequence[Report],
    tr: Translator,
    lang: str,
    *,
    contacts: dict[int, str | None] | None = None,
) -> bytes:
    """The workbook: 汇总, 工单, 巡查与走访, 党员积分 (names in ``lang``); of one report, or
    of several of one period (subtrees apart): the summary and duty sheets have each one's
    grids in turn, the order and points sheets :func:`together`'s rows."""
    reports = [report] if isinstance(report, Report) else list(report)
    lb = Labels(tr, lang)
    wb = Workbook()
    heading = title(reports, lb)
    ws = wb.active
    assert ws is not None
    ws.title = lb("sheet.summary")
    summaries = [summary_rows(r, lb) for r in reports]
    headers, _, formats = summaries[0]
    rows = [row for _, some, _ in summaries for row in some]
    _sheet(ws, heading + " · " + lb("vs", period=reports[0].previous.label), headers, rows,
           formats)
    all_of = together(reports)
    ws = wb.create_sheet(lb("sheet.orders"))
    oh, orows = order_rows(all_of, lb, contacts)
    note = heading + (" · " + lb("with_contacts") if contacts is not None else "")
    _sheet(ws, note, oh, orows)
    ws = wb.create_sheet(lb("sheet.duties"))
    duties = [duty_rows(r, lb) for r in reports]
    dh, _, dformats = duties[0]
    drows = [row for _, some, _ in duties for row in some]
    _sheet(ws, heading, dh, drows, dformats)
    start = len(drows) + 4
    plan_headers = [lb("col.household"), lb("col.member"), lb("col.grid"),
                    lb("col.visits_due"), lb("col.visits_logged")]
    names = dict((m.person_id, m.name) for m in all_of.members)
    for col, text in enumerate(plan_headers, 1):
        cell = ws.cell(row=start, column=col, value=text)
        cell.font, cell.fill = _HEAD_FONT, _HEAD_FILL
    grids = all_of.scope.grids
    for r, v in enumerate(all_of.visits, start + 1):
        values = [v.household, names.get(v.member_id, str(v.member_id)),
                  grids[v.grid_id].name if v.grid_id in grids else "", v.due, v.logged]
        for col, value in enumerate(values, 1):
            ws.cell(row=r, column=col, value=value)
    ws = wb.create_sheet(lb("sheet.points"))
    ph, prows = points_rows(all_of, lb)
    _sheet(ws, heading, ph, prows)
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def _cell_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value * 100:.1f}%" if 0 <= value <= 1 else f"{value:.1f}"
    return "" if value is None else str(value)


def write_csv(report: Report, tr: Translator, lang: str) -> str:
    """The summary (汇总) as CSV: one line per grid, rates as percentages."""
    headers, rows, formats = summary_rows(report, Labels(tr, lang))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(headers)
    for row in rows:
        writer.writerow(
            [_cell_text(v) if (i + 1) in formats else ("" if v is None else v)
             for i, v in enumerate(row)]
        )
    return out.getvalue()


def write_table(report: Report, tr: Translator, lang: str) -> str:
    """The summary as an aligned text table (rates as percentages), for a terminal."""
    lb = Labels(tr, lang)
    headers = [lb("col.rank"), lb("col.grid"), lb("col.score"), lb("col.received")] + [
        lb.rate(n) for n in ("response", "on_time_completion", "resolution", "satisfaction")
    ]

    def line(row: GridRow, rank: str) -> list[str]:
        f = row.figures
        return [rank, row.name, "—" if row.score is None else f"{row.score:.1f}",
                str(f.received)] + [
            f.rate(n).percent()
            for n in ("response", "on_time_completion", "resolution", "satisfaction")
        ]

    rows = [line(report.total, lb("total"))] + [
        line(r, str(r.rank) if r.rank else "—") for r in report.children
    ]
    widths = [max(_width(x) for x in col) for col in zip(headers, *rows, strict=False)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c + " " * (w - _width(c)) for c, w in zip(cells, widths, strict=False))

    title = lb("title", grid=report.total.name, period=report.period.label)
    return "\n".join([title, fmt(headers), *(fmt(r) for r in rows)]) + "\n"


def _json_dt(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def to_json(report: Report, *, contacts: dict[int, str | None] | None = None) -> dict[str, Any]:
    """Everything, with every rate's numerator and denominator; times in ISO 8601."""

    def grid(row: GridRow) -> dict[str, Any]:
        return {
            "code": row.code, "name": row.name, "rank": row.rank,
            "score": None if row.score is None else round(row.score, 2),
            "below_floors": [n for n, _, _ in row.below],
            "figures": row.figures.to_json(), "previous": row.previous.to_json(),
        }

    def order(o: OrderFacts) -> dict[str, Any]:
        grid = report.scope.grids.get(o.grid_id)
        building = report.buildings_by_id.get(o.building_id)
        data = {
            "number": o.number, "category": o.category,
            "grid": grid.code if grid else o.grid_id,
            "building": building.code if building else o.building_id,
            "channel": o.channel, "source": o.source,
            "submitted_at": _json_dt(o.submitted_at), "dispatched_at": _json_dt(o.dispatched_at),
            "accepted_at": _json_dt(o.accepted_at), "done_at": _json_dt(o.done_at),
            "rated_at": _json_dt(o.rated_at), "closed_at": _json_dt(o.closed_at),
            "handler": report.names.get(o.handler_id or 0),
            "member": report.names.get(o.member_id or 0),
            "stars": o.stars, "status": o.status, "escalations": o.escalations,
        }
        if contacts is not None:
            data["phone"] = contacts.get(o.resident_id or 0)
            data["room"] = o.room
        return data

    return {
        "period": {"label": report.period.label, "start": report.period.start.isoformat(),
                   "end": report.period.end.isoformat()},
        "previous": report.previous.label,
        "total": grid(report.total),
        "children": [grid(r) for r in report.children],
        "orders": [order(o) for o in report.orders],
        "members": [
            {"name": m.name, "accepted": m.accepted, "done": m.done,
             "mean_rating": m.mean_rating, "visits_due": m.visits_due,
             "visits_logged": m.visits_logged, "points": m.points}
            for m in report.members
        ],
        "with_contacts": contacts is not None,
    }


def dumps(report: Report, *, contacts: dict[int, str | None] | None = None) -> str:
    """:func:`to_json` as text."""
    return json.dumps(to_json(report, contacts=contacts), ensure_ascii=False, indent=2)


#: Writers of the text formats by name (xlsx is bytes: :func:`write_xlsx`).
TEXT_FORMATS: dict[str, Callable[[Report, Translator, str], str]] = {
    "table": write_table,
    "csv": write_csv,
}

__all__ = ["Figures", "Labels", "dumps", "fmt_minutes", "title", "to_json", "together",
           "write_csv", "write_table", "write_xlsx"]
