"""``gridbot duties …``: duty lists from the command line (``duties import FILE…``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from bot.admin.cli_admin import _fail, _run
from bot.admin.duty_import import DutyImportReport, import_duties
from bot.admin.importer import CommunityFileError
from bot.config import Settings


def cmd_duties_import(settings: Settings, args: argparse.Namespace) -> int:
    """Import duty CSVs (households, visit plans, patrol plans) in one transaction."""

    async def work(session: AsyncSession) -> list[DutyImportReport]:
        return [await import_duties(session, Path(f)) for f in args.files]

    try:
        reports = _run(settings, work)
    except CommunityFileError as exc:
        return _fail(f"{exc}\nnothing was imported")
    for report in reports:
        print(report)
    return 0


def add_duty_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``duties import`` on the main CLI's subparsers."""
    duties = subparsers.add_parser("duties", help="duty lists: households, visit and patrol plans")
    sub = duties.add_subparsers(dest="duties_command", metavar="ACTION")
    p = sub.add_parser(
        "import",
        help="import CSVs of households, visit plans or patrol plans (kind told by the header)",
        description="Import duty CSVs in one transaction: a bad file rejects them all. "
        "Households: key,building,kind,name,address,notes,private[,resident]. "
        "Visit plans: household,member,frequency,start[,timezone,active]. "
        "Patrol plans: key,grid,schedule,who,deadline_minutes[,timezone,active].",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="households.csv, visits.csv, …")
    p.set_defaults(func=cmd_duties_import)
