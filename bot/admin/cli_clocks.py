"""``gridbot clocks …``: order clocks per category and tree level (rows of ``clock_setting``).

``clocks list`` prints the defaults (``GRIDBOT_ORDER_*`` and each category's deadline) and every
row; ``clocks set`` creates or updates the row of one (category, level) scope; ``clocks unset``
clears durations of a row or deletes it. How the order clocks read the rows:
:meth:`bot.core.order_clocks.OrderClocks.clocks_for`.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.admin.cli_admin import CliError, _run
from bot.admin.clock_store import (
    CLOCK_FIELDS,
    clock_rows,
    clock_scope,
    delete_clock_setting,
    level_labels,
    resolve_level,
    write_clock_setting,
)
from bot.config import Settings
from bot.i18n import Translator
from models.duties import ClockSetting
from models.grid import Category, Community, Grid

#: Exit status of a request the operator must correct (unknown category or level, no duration).
USAGE = 2

#: Short column titles and units of the durations, in CLOCK_FIELDS order.
_COLUMNS = {
    "dispatch_minutes": ("dispatch", "min"),
    "accept_minutes": ("accept", "min"),
    "deadline_hours": ("deadline", "h"),
    "overdue_escalate_minutes": ("overdue", "min"),
    "rate_days": ("rate", "d"),
}

_EXPLAIN = """\
Order clocks act on open orders at the level (tree depth) of the grid handling them:
  dispatch_minutes          not dispatched in this time: broadcast to every member below
  accept_minutes            not accepted in this time: escalate one level up the tree
  deadline_hours            accepted but not done by then: remind the member ...
  overdue_escalate_minutes  ... and this long after the deadline: escalate
  rate_days                 done but not rated in this time: close the order
Defaults: GRIDBOT_ORDER_DISPATCH_MINUTES, _ACCEPT_MINUTES, _OVERDUE_ESCALATE_MINUTES,
_RATE_DAYS, and each category's own deadline (deadline_hours in the community file).

A row sets some durations for a category (or any category) at a level (or any level). For
each duration the most specific row that sets it wins: category and level, then category
alone, then level alone, then the row for any category at any level, then the defaults. A
level is a level name as `gridbot grids` shows it (微网格) or a depth (0 = the top).
The same rows can be written by the `clocks:` section of a community file (`gridbot import`).
"""


# --------------------------------------------------------------------------------------------
# Reading the scope: categories, levels, names.


class _Context:
    """Categories, level names and existing rows, read once per command."""

    def __init__(self) -> None:
        self.categories: dict[str, Category] = {}
        self.level_lists: list[list[str]] = []
        self.depths: set[int] = set()
        self.rows: list[ClockSetting] = []

    @classmethod
    async def load(cls, session: AsyncSession) -> _Context:
        ctx = cls()
        cats = await session.scalars(select(Category).order_by(Category.sort, Category.id))
        ctx.categories = {c.code: c for c in cats}
        ctx.level_lists = [
            c.level_names.split("/")
            for c in await session.scalars(select(Community).order_by(Community.id))
            if c.level_names
        ]
        ctx.depths = set(await session.scalars(select(Grid.depth).distinct()))
        ctx.rows = list(await session.scalars(select(ClockSetting).order_by(ClockSetting.id)))
        return ctx

    def labels(self) -> dict[int, str]:
        return level_labels(self.level_lists, self.depths)

    def category(self, code: str | None, *, stale_ok: bool = False) -> str | None:
        """A known category code; with ``stale_ok`` also one that only a clock row names."""
        if code is None or code in self.categories:
            return code
        if stale_ok and any(r.category == code for r in self.rows):
            return code
        known = ", ".join(self.categories) or "none yet: import a community file first"
        raise CliError(f"unknown category {code} (categories: {known})")

    def depth(self, level: str | None, *, stale_ok: bool = False) -> int | None:
        """The depth a level name or number stands for."""
        if level is None:
            return None
        try:
            return resolve_level(level, self.level_lists, self.depths)
        except ValueError as exc:
            if stale_ok and level.isdigit() and any(r.depth == int(level) for r in self.rows):
                return int(level)
            raise CliError(str(exc)) from None


def _category_names(settings: Settings) -> Callable[[str], str]:
    """Display name of a category code in the default language ("" when unknown)."""
    try:
        tr = Translator.load(settings.locales_dir, settings.default_locale)
    except (OSError, ValueError):
        return lambda code: ""

    def name(code: str) -> str:
        key = f"category.{code}"
        return tr.t(settings.default_locale, key) if tr.has(key) else ""

    return name


# --------------------------------------------------------------------------------------------
# list


def _row_dict(row: ClockSetting, ctx: _Context, names: Callable[[str], str]) -> dict[str, Any]:
    labels = ctx.labels()
    info: dict[str, Any] = {
        "id": row.id,
        "category": row.category,
        "category_name": None,
        "depth": row.depth,
        "level": None,
    }
    if row.category is not None and row.category in ctx.categories:
        info["category_name"] = names(row.category) or row.category
    if row.depth is not None:
        info["level"] = labels.get(row.depth) or None
    for name in CLOCK_FIELDS:
        info[name] = getattr(row, name)
    return info


def _specificity(row: dict[str, Any]) -> tuple[bool, bool, str, int]:
    """Order of the rows as the clocks apply them: least specific first."""
    return (
        row["category"] is not None,
        row["depth"] is not None,
        row["category"] or "",
        -1 if row["depth"] is None else row["depth"],
    )


def clock_table(settings: Settings, ctx: _Context) -> dict[str, Any]:
    """Defaults, categories (with their deadlines) and rows, as ``clocks list --json`` prints."""
    names = _category_names(settings)
    return {
        "defaults": {
            "dispatch_minutes": settings.order_dispatch_minutes,
            "accept_minutes": settings.order_accept_minutes,
            "deadline_hours": None,  # each category's own
            "overdue_escalate_minutes": settings.order_overdue_escalate_minutes,
            "rate_days": settings.order_rate_days,
        },
        "categories": [
            {
                "code": c.code,
                "name": names(c.code) or c.code,
                "urgent": c.urgent,
                "deadline_hours": c.deadline_hours,
            }
            for c in ctx.categories.values()
        ],
        "levels": [{"depth": d, "level": n} for d, n in ctx.labels().items()],
        "rows": sorted((_row_dict(r, ctx, names) for r in ctx.rows), key=_specificity),
    }


def _width(text: str) -> int:
    """Columns a terminal uses for ``text`` (CJK characters take two)."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int, right: bool = False) -> str:
    fill = " " * max(0, width - _width(text))
    return fill + text if right else text + fill


def render_clock_table(table: dict[str, Any]) -> str:
    """The text of ``clocks list``."""

    def scope(row: dict[str, Any]) -> str:
        if row["category"] is None:
            what = "any category"
        elif row["category_name"] is None:
            what = f"{row['category']} (unknown category)"
        elif row["category_name"] != row["category"]:
            what = f"{row['category']} {row['category_name']}"
        else:
            what = row["category"]
        if row["depth"] is None:
            return f"{what} · any level"
        return f"{what} · depth {row['depth']}" + (f" {row['level']}" if row["level"] else "")

    def cells(values: dict[str, Any], blank: str) -> list[str]:
        out = []
        for name, (_title, unit) in _COLUMNS.items():
            value = values.get(name)
            out.append(blank if value is None else f"{value} {unit}")
        return out

    lines_in: list[tuple[str, list[str]]] = [
        ("defaults (GRIDBOT_ORDER_*)", cells(table["defaults"], "category")),
    ]
    lines_in += [(scope(r), cells(r, "-")) for r in table["rows"]]
    header = ("scope", [title for title, _unit in _COLUMNS.values()])
    widths = [max(_width(s) for s, _ in [header, *lines_in])]
    for i in range(len(_COLUMNS)):
        widths.append(max(_width(c[i]) for _, c in [header, *lines_in]))

    def line(first: str, rest: list[str], right: bool) -> str:
        parts = [_pad(first, widths[0])]
        parts += [_pad(c, w, right) for c, w in zip(rest, widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(header[0], header[1], True)]
    out += [line(first, rest, True) for first, rest in lines_in]
    if not table["rows"]:
        out.append("(no clock rows: the defaults apply everywhere)")
    cats = ", ".join(
        f"{c['code']} {c['deadline_hours']} h" + (" (urgent)" if c["urgent"] else "")
        for c in table["categories"]
    )
    out.append("")
    out.append(f"category deadlines: {cats or 'no categories yet'}")
    levels = ", ".join(f"{lv['depth']} {lv['level']}".rstrip() for lv in table["levels"])
    out.append(f"levels: {levels or 'no grids yet'}")
    out.append(
        "A blank (-) takes the duration from a less specific row, then the defaults; the most "
        "specific row wins\n(category and level, category, level, any). See gridbot clocks "
        "--help."
    )
    return "\n".join(out)


def cmd_clocks_list(settings: Settings, args: argparse.Namespace) -> int:
    """Print the defaults and every clock row."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        return clock_table(settings, await _Context.load(session))

    table = _run(settings, work)
    if getattr(args, "json", False):
        print(json.dumps(table, ensure_ascii=False, indent=2))
    else:
        print(render_clock_table(table))
    return 0


# --------------------------------------------------------------------------------------------
# set / unset


def _usage(message: str) -> int:
    print(f"error: {message}\nnothing was changed", file=sys.stderr)
    return USAGE


def _describe(row: ClockSetting | None) -> str:
    if row is None:
        return "no durations (the row is gone)"
    parts = []
    for name, (title, unit) in _COLUMNS.items():
        value = getattr(row, name)
        if value is not None:
            parts.append(f"{title} {value} {unit}")
    return ", ".join(parts)


def cmd_clocks_set(settings: Settings, args: argparse.Namespace) -> int:
    """Create or update the row of one scope with the durations given."""
    values = {name: getattr(args, name) for name in CLOCK_FIELDS}
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        flags = ", ".join("--" + n.replace("_", "-") for n in CLOCK_FIELDS)
        return _usage(f"say which durations to set ({flags})")

    async def work(session: AsyncSession) -> tuple[str, str, ClockSetting | None, bool]:
        ctx = await _Context.load(session)
        category = ctx.category(args.category)
        depth = ctx.depth(args.level)
        outcome = await write_clock_setting(session, category, depth, dict(values))
        await session.flush()
        rows = await _row_of(session, category, depth)
        label = ctx.labels().get(depth, "") if depth is not None else ""
        return outcome, clock_scope(category, depth, label), rows, category is None

    try:
        outcome, scope, row, any_category = _run(settings, work)
    except CliError as exc:
        return _usage(str(exc))
    print(f"clock for {scope}: {outcome} — {_describe(row)}")
    if any_category and "deadline_hours" in values:
        print(
            "note: a deadline on a row without a category replaces each category's own "
            "deadline wherever the row applies",
            file=sys.stderr,
        )
    return 0


def _field_name(text: str) -> str | None:
    name = text.lstrip("-").replace("-", "_").lower()
    return name if name in CLOCK_FIELDS else None


def cmd_clocks_unset(settings: Settings, args: argparse.Namespace) -> int:
    """Clear some durations of a row (FIELD …), or delete the row (no FIELD)."""
    fields: list[str] = []
    for text in args.fields:
        name = _field_name(text)
        if name is None:
            return _usage(f"unknown duration '{text}' (one of {', '.join(CLOCK_FIELDS)})")
        fields.append(name)

    async def work(session: AsyncSession) -> tuple[str, str, ClockSetting | None]:
        ctx = await _Context.load(session)
        category = ctx.category(args.category, stale_ok=True)
        depth = ctx.depth(args.level, stale_ok=True)
        label = ctx.labels().get(depth, "") if depth is not None else ""
        scope = clock_scope(category, depth, label)
        if not fields:
            deleted = await delete_clock_setting(session, category, depth)
            return ("removed" if deleted else "absent"), scope, None
        if not await _row_of(session, category, depth):
            return "absent", scope, None
        outcome = await write_clock_setting(session, category, depth, dict.fromkeys(fields))
        await session.flush()
        return outcome, scope, await _row_of(session, category, depth)

    try:
        outcome, scope, row = _run(settings, work)
    except CliError as exc:
        return _usage(str(exc))
    if outcome == "absent":
        print(f"clock for {scope}: no such row, nothing to unset")
    elif outcome == "removed":
        print(f"clock for {scope}: removed (the less specific rows and defaults apply)")
    else:
        print(f"clock for {scope}: {outcome} — {_describe(row)}")
    return 0


async def _row_of(
    session: AsyncSession, category: str | None, depth: int | None
) -> ClockSetting | None:
    rows = await clock_rows(session, category, depth)
    return rows[0] if rows else None


# --------------------------------------------------------------------------------------------
# registration


def _duration(name: str) -> Callable[[str], int]:
    unit, most = CLOCK_FIELDS[name]

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not 1 <= value <= most:
            raise argparse.ArgumentTypeError(
                f"must be a whole number of {unit} from 1 to {most}, not {value}"
            )
        return value

    return parse


def _scope_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--category",
        metavar="CODE",
        help="category code (repair, safety, …; see `clocks list`); default: any category",
    )
    p.add_argument(
        "--level",
        metavar="NAME_OR_DEPTH",
        help="level name as `gridbot grids` shows it (微网格) or tree depth (0 = the top); "
        "default: any level",
    )


def add_clock_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``clocks [list|set|unset]`` on the main CLI's subparsers."""
    clocks = subparsers.add_parser(
        "clocks",
        help="order clocks per category and level: list, set, unset",
        description="Order clock durations per category and tree level (without an action: "
        "list).\n\n" + _EXPLAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    clocks.set_defaults(func=cmd_clocks_list, json=False)
    sub = clocks.add_subparsers(dest="clocks_command", metavar="ACTION")

    p = sub.add_parser(
        "list",
        help="print the defaults and every clock row",
        description="Print the defaults (settings and category deadlines), the levels, and "
        "every clock row, least specific first.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_clocks_list)

    p = sub.add_parser(
        "set",
        help="set durations for a category and/or level (creates or updates its row)",
        description="Set durations of the clock row for one scope: --category and --level\n"
        "narrow it (leave both out for every order). Durations not given keep their value.\n"
        "Unknown categories or levels, and no duration at all, are refused (exit status 2)\n"
        "and nothing changes.\n\n" + _EXPLAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _scope_arguments(p)
    for name, (unit, most) in CLOCK_FIELDS.items():
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=_duration(name),
            metavar="N",
            help=f"{unit}, 1 to {most}",
        )
    p.set_defaults(func=cmd_clocks_set)

    p = sub.add_parser(
        "unset",
        help="clear durations of a row, or delete the row",
        description="Clear the durations named (they fall back to less specific rows and the "
        "defaults), or delete the row of the scope when none is named. A row left with no "
        "duration is deleted; a scope without a row is reported and left alone. Unknown "
        "categories, levels or durations are refused (exit status 2) and nothing changes.",
    )
    _scope_arguments(p)
    p.add_argument(
        "fields",
        nargs="*",
        metavar="FIELD",
        help=f"durations to clear: {', '.join(CLOCK_FIELDS)} (or with dashes)",
    )
    p.set_defaults(func=cmd_clocks_unset)
