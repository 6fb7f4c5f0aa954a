"""``gridbot duties …``: duty lists from the command line (``duties import FILE…``)."""

from __future__ import annotations

import argparse

from bot.admin.cli_admin import import_files
from bot.admin.duty_import import import_duties
from bot.config import Settings


def cmd_duties_import(settings: Settings, args: argparse.Namespace) -> int:
    """Import duty CSVs (households, visit plans, patrol plans) in one transaction."""
    return import_files(settings, args.files, import_duties)


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
