"""``gridbot points …``: the points ledger from the command line.

``points adjust --person KEY --delta N --reason TEXT`` adds one adjustment row (who: the OS user
or ``--by``); ``points list`` prints each member's and worker's points of a month and in total,
ranked (``--grid`` for a subtree, ``--month YYYY-MM``, ``--json``); ``points list --person KEY``
prints that person's ledger, newest first. Bad arguments exit with status 2 and change nothing.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.admin.cli_admin import CliError, _run
from bot.config import Settings
from bot.core import points
from models.base import utcnow
from models.grid import Grid
from models.orders import PointsEntry
from models.people import Person, Role

USAGE = 2


def _usage(message: str) -> int:
    print(f"error: {message}\nnothing was changed", file=sys.stderr)
    return USAGE


async def _person(session: AsyncSession, key: str) -> Person:
    person = await session.scalar(select(Person).where(Person.key == key))
    if person is None:
        raise CliError(f"unknown person {key}")
    return person


def cmd_points_adjust(settings: Settings, args: argparse.Namespace) -> int:
    """Add or take away points with a reason; the row records who, when and why."""
    try:
        delta = points.parse_delta(args.delta)
        note = points.check_note(args.reason)
    except points.AdjustError as err:
        reasons = {
            "points.bad_delta": f"--delta must be a whole number like +5 or -3, "
            f"not 0, at most {points.MAX_ADJUST} either way",
            "points.no_reason": "--reason must not be empty",
            "points.reason_too_long": f"--reason is longer than {points.MAX_NOTE} characters",
        }
        return _usage(reasons.get(err.key, err.key))
    by = args.by or f"cli:{getpass.getuser()}"

    async def work(session: AsyncSession) -> tuple[Person, int, PointsEntry]:
        person = await _person(session, args.person)
        entry = await points.adjust(
            session,
            person_id=person.id,
            delta=delta,
            note=note,
            now=utcnow(),
            actor_id=None,
            actor_name=by,
        )
        return person, await points.total(session, person.id), entry

    try:
        person, now_total, entry = _run(settings, work)
    except CliError as exc:
        return _usage(str(exc))
    print(
        f"{person.key} {person.name}: {delta:+d} ({note}) by {by}, entry #{entry.id}; "
        f"total now {now_total}"
    )
    return 0


def _month(text: str | None, settings: Settings) -> tuple[datetime, datetime]:
    if text is None:
        return points.month_bounds(utcnow(), settings.tz)
    try:
        first = datetime.strptime(text, "%Y-%m").replace(tzinfo=settings.tz)
    except ValueError as err:
        raise CliError(f"--month must look like 2026-11, not {text!r}") from err
    return points.month_bounds(first, settings.tz)


def cmd_points_list(settings: Settings, args: argparse.Namespace) -> int:
    """Print the ranking of a month (with totals), or one person's ledger."""
    try:
        start, end = _month(args.month, settings)
    except CliError as exc:
        return _usage(str(exc))

    async def ledger(session: AsyncSession) -> dict[str, Any]:
        person = await _person(session, args.person)
        rows = (
            await session.scalars(
                select(PointsEntry)
                .where(PointsEntry.person_id == person.id)
                .order_by(PointsEntry.created_at.desc(), PointsEntry.id.desc())
            )
        ).all()
        return {
            "person": person.key,
            "name": person.name,
            "total": await points.total(session, person.id),
            "entries": [
                {
                    "id": e.id,
                    "at": e.created_at.astimezone(settings.tz).isoformat(),
                    "points": e.points,
                    "reason": e.reason,
                    "event": e.award_key,
                    "note": e.note,
                    "by": e.actor_name,
                }
                for e in rows
            ],
        }

    async def ranking(session: AsyncSession) -> dict[str, Any]:
        if args.grid:
            top = await session.scalar(select(Grid).where(Grid.code == args.grid))
            if top is None:
                raise CliError(f"unknown grid {args.grid}")
            stmt = select(Grid.id).where(Grid.path.startswith(top.path, autoescape=True))
        else:
            stmt = select(Grid.id)
        ids = list((await session.scalars(stmt)).all())
        table = await points.standings(session, ids, start, end)
        keys = dict(
            (
                await session.execute(
                    select(Person.id, Person.key).where(
                        Person.id.in_(select(Role.person_id).where(Role.grid_id.in_(ids)))
                    )
                )
            ).all()
        )
        return {
            "month": start.strftime("%Y-%m"),
            "grid": args.grid,
            "people": [
                {
                    "rank": points.rank_of(table, line.person_id),
                    "person": keys.get(line.person_id),
                    "name": line.name,
                    "month_points": line.points,
                    "total": await points.total(session, line.person_id),
                }
                for line in table
            ],
        }

    try:
        data = _run(settings, ledger if args.person else ranking)
    except CliError as exc:
        return _usage(str(exc))
    if args.json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0
    if args.person:
        print(f"{data['person']} {data['name']}: {data['total']} points")
        for e in data["entries"]:
            extra = f" — {e['note']} (by {e['by']})" if e["note"] else f" [{e['event']}]"
            print(f"  {e['at'][:16]}  {e['points']:+5d}  {e['reason']}{extra}")
        return 0
    print(f"points of {data['month']}" + (f" under {args.grid}" if args.grid else ""))
    print(f"{'rank':>4}  {'month':>6}  {'total':>6}  person")
    for p in data["people"]:
        print(
            f"{p['rank']:>4}  {p['month_points']:>6}  {p['total']:>6}  {p['name']} ({p['person']})"
        )
    return 0


def add_points_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``points adjust`` and ``points list`` on the main CLI's subparsers."""
    top = subparsers.add_parser("points", help="points (积分): ranking, ledger, adjustments")
    sub = top.add_subparsers(dest="points_command", metavar="ACTION", required=True)
    p = sub.add_parser(
        "adjust",
        help="add or take away points, with a reason (recorded with who and when)",
        description="Bad arguments are refused with exit status 2 and nothing changes.",
    )
    p.add_argument("--person", required=True, metavar="KEY", help="the person's import key")
    p.add_argument("--delta", required=True, metavar="N", help="+5, -3 …")
    p.add_argument("--reason", required=True, metavar="TEXT", help="why (kept in the ledger)")
    p.add_argument("--by", metavar="NAME", help="who adjusts (default: cli:<OS user>)")
    p.set_defaults(func=cmd_points_adjust)
    p = sub.add_parser("list", help="ranking of a month with totals, or one person's ledger")
    p.add_argument("--grid", metavar="CODE", help="only this grid's subtree")
    p.add_argument("--month", metavar="YYYY-MM", help="default: this month (community time)")
    p.add_argument("--person", metavar="KEY", help="print this person's ledger instead")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_points_list)
