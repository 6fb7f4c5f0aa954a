"""``gridbot report``: the KPIs of a grid subtree for a month or a span of days, as a table,
JSON, CSV or the Excel ledger (台账).

The figures come from :mod:`bot.reports.kpi` and the files from :mod:`bot.reports.ledger`;
this module only reads the arguments. Bad arguments (a month 2026-13, an unknown grid, a start
after the end) are refused with the reason and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.admin.cli_admin import _run
from bot.config import Settings
from bot.i18n import SUPPORTED, Translator, normalize_locale
from bot.reports.kpi import Period, Report, build_report, load_scope, month_before, parse_month
from bot.reports.ledger import TEXT_FORMATS, dumps, write_xlsx
from models import Community, Person
from models.base import utcnow

#: Exit status of arguments the operator must correct.
USAGE = 2
FORMATS = ("table", "json", "csv", "xlsx")


class ReportArgumentError(ValueError):
    """An argument that cannot be used; the message says why."""


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return USAGE


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ReportArgumentError(f"not a date (YYYY-MM-DD): {text!r}") from None


def period_of(args: argparse.Namespace, tz: ZoneInfo) -> Period:
    """The period the arguments name: ``--month``, ``--from``/``--to``, else last month."""
    if args.month and (args.date_from or args.date_to):
        raise ReportArgumentError("give --month or --from/--to, not both")
    if args.month:
        try:
            return parse_month(args.month, tz)
        except ValueError as err:
            raise ReportArgumentError(str(err)) from None
    if args.date_from or args.date_to:
        if not (args.date_from and args.date_to):
            raise ReportArgumentError("--from and --to go together")
        first, last = _day(args.date_from), _day(args.date_to)
        if first > last:
            raise ReportArgumentError(f"--from {first} is after --to {last}")
        return Period.days(first, last, tz)
    return month_before(utcnow(), tz)


async def make_report(
    session: AsyncSession, settings: Settings, args: argparse.Namespace
) -> tuple[Report, dict[int, str | None] | None]:
    """The report the arguments ask for, and the residents' phones when asked for."""
    try:
        scope = await load_scope(session, args.grid)
    except LookupError:
        raise ReportArgumentError(f"unknown grid {args.grid!r} (see `gridbot grids`)") from None
    tz = settings.tz
    if scope.root is not None:
        community = await session.get(Community, scope.root.community_id)
        if community is not None:
            tz = ZoneInfo(community.timezone)
    period = period_of(args, tz)
    report = await build_report(session, settings, scope, period, utcnow())
    contacts = None
    if args.with_contacts:
        ids = {o.resident_id for o in report.orders if o.resident_id}
        rows = (
            await session.execute(select(Person.id, Person.phone).where(Person.id.in_(ids)))
        ).all() if ids else []
        contacts = {pid: phone for pid, phone in rows}
    return report, contacts


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    """Print or write the report."""
    lang = normalize_locale(args.lang, settings.default_locale)
    if args.lang and not args.lang.lower().startswith(("zh", "en")):
        return _usage(f"unknown language {args.lang!r}; one of {', '.join(SUPPORTED)}")
    try:
        # The period is checked before the database is touched where it can be.
        period_of(args, settings.tz)
        report, contacts = _run(settings, lambda s: make_report(s, settings, args))
    except ReportArgumentError as err:
        return _usage(str(err))
    tr = Translator.load(settings.locales_dir, settings.default_locale)
    fmt = args.format
    if fmt == "xlsx":
        data = write_xlsx(report, tr, lang, contacts=contacts)
        out = Path(args.out or f"ledger-{report.total.code.strip('*') or 'all'}-"
                   f"{report.period.label}.xlsx")
        out.write_bytes(data)
        print(f"wrote {out}" + (" (with phone numbers and rooms)" if contacts is not None else ""))
        return 0
    if fmt == "json":
        text = dumps(report, contacts=contacts) + "\n"
    else:
        if contacts is not None:
            return _usage("--with-contacts needs --format json or xlsx (the orders' rows)")
        text = TEXT_FORMATS[fmt](report, tr, lang)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def add_report_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``gridbot report``."""
    p = subparsers.add_parser(
        "report",
        help="KPIs of a grid subtree for a month or days: table, JSON, CSV or the Excel ledger",
        description="The figures of accountability (响应率, 解决率, 满意率 …, defined in the "
        "README's 'Reports and the monthly bulletin') for a grid and everything below it.",
    )
    p.add_argument("--month", help="a local calendar month, YYYY-MM (default: last month)")
    p.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD", help="first day")
    p.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD", help="last day (included)")
    p.add_argument("--grid", help="grid code: that grid and its subtree (default: all)")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format")
    p.add_argument("--out", help="write to this file (xlsx: default ledger-<grid>-<period>)")
    p.add_argument("--lang", help="language of names and headers: zh_CN (default) or en")
    p.add_argument(
        "--with-contacts",
        action="store_true",
        help="include residents' phone numbers and rooms (json, xlsx; the sheet says so)",
    )
    p.set_defaults(func=cmd_report)
