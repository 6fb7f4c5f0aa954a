"""Import duty lists from CSV: key households, visit plans and patrol plans (``gridbot duties
import``).

The kind of file is told by its header:

* households: ``key,building,kind,name,address,notes,private[,resident]`` — ``kind`` is a code
  (``elderly_alone`` …) or its Chinese name (独居老人 …); ``private`` is yes/no (default yes);
  ``resident`` optionally links the household to a person key;
* visit plans: ``household,member,frequency,start[,timezone,active]`` — ``frequency`` is
  weekly/fortnightly/monthly (or 每周/每两周/每月), ``start`` the first due time
  ``YYYY-MM-DD HH:MM`` in the plan's time zone (default Asia/Shanghai); one plan per
  (household, member);
* patrol plans: ``key,grid,schedule,who,deadline_minutes[,timezone,active]`` — ``schedule`` is a
  5-field cron line (``0 9 * * *``, ``30 8 * * mon,wed,fri``), ``who`` a person key.

Same rules as ``gridbot import``: everything is validated before the first write and a bad file
raises :class:`~bot.admin.importer.errors.CommunityFileError` (``file:line: reason``), leaving the
session untouched; rows are matched by their key and updated in place; re-importing the same
file changes nothing. A changed plan gets a new ``updated_at``, which the running scheduler
notices on its next sweep (the job store is reconciled from the plans).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.admin.importer.errors import CommunityFileError
from bot.admin.importer.reader import CODE_RE, check_columns, csv_rows, open_csv, read_text
from models import Building, Grid, Household, PatrolPlan, Person, VisitPlan, utcnow
from models.duties import (
    DEFAULT_TZ,
    FREQUENCIES,
    FREQUENCY_NAMES,
    HOUSEHOLD_KINDS,
    KIND_NAMES,
)

YES = {"1", "yes", "y", "true", "是", "x"}
NO = {"0", "no", "n", "false", "否"}

#: kind → (required columns, optional columns)
LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "households": (
        ("key", "building", "kind", "name"),
        ("address", "notes", "private", "resident"),
    ),
    "visit plans": (("household", "member", "frequency", "start"), ("timezone", "active")),
    "patrol plans": (
        ("key", "grid", "schedule", "who"),
        ("deadline_minutes", "timezone", "active"),
    ),
}


@dataclass
class DutyImportReport:
    """What one duty file did."""

    source: str
    kind: str
    created: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        """Whether anything was written."""
        return bool(self.created or self.updated)

    def __str__(self) -> str:
        verdict = "imported" if self.changed else "no changes"
        return (
            f"{self.source} ({self.kind}): {verdict}: {self.created} created, "
            f"{self.updated} updated, {self.unchanged} unchanged"
        )


@dataclass
class _Row:
    line: int
    values: dict[str, str]
    resolved: dict[str, Any] = field(default_factory=dict)


def _kind_of(columns: list[str]) -> str:
    if "schedule" in columns:
        return "patrol plans"
    if "household" in columns and "member" in columns:
        return "visit plans"
    if "building" in columns and "kind" in columns:
        return "households"
    raise CommunityFileError(
        "unknown CSV header: expected key,building,kind,name,address,notes,private "
        "(households), household,member,frequency,start (visit plans) or "
        "key,grid,schedule,who,deadline_minutes,timezone (patrol plans)",
        1,
    )


def _parse(text: str) -> tuple[str, list[_Row]]:
    reader, columns = open_csv(text)
    kind = _kind_of(columns)
    required, optional = LAYOUTS[kind]
    check_columns(columns, kind, required, required + optional)
    return kind, [_Row(line, values) for line, values in csv_rows(reader, columns, required)]


def _zone(value: str, line: int) -> str:
    zone = value or DEFAULT_TZ
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise CommunityFileError(f"unknown time zone '{zone[:64]}'", line) from None
    return zone


def _flag(value: str, what: str, default: bool, line: int) -> bool:
    if not value:
        return default
    low = value.lower()
    if low in YES:
        return True
    if low in NO:
        return False
    raise CommunityFileError(f"'{what}' must be yes or no, not '{value[:20]}'", line)


def _text(row: _Row, col: str, limit: int) -> str:
    value = row.values.get(col, "")
    if len(value) > limit:
        raise CommunityFileError(f"'{col}' is longer than {limit} characters", row.line)
    return value


def _key(row: _Row, col: str) -> str:
    value = row.values[col]
    if not CODE_RE.match(value):
        raise CommunityFileError(
            f"{col} '{value[:40]}' may only hold letters, digits, '-' and '_' (1-32)", row.line
        )
    return value


class _Lookups:
    """Codes and keys the rows refer to, loaded once."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def ids(self, column: Any, key_col: Any, keys: set[str]) -> dict[str, Any]:
        if not keys:
            return {}
        rows = await self.session.execute(select(key_col, column).where(key_col.in_(keys)))
        return {k: v for k, v in rows.all()}


def _check_unique(rows: list[_Row], cols: tuple[str, ...], what: str) -> None:
    seen: dict[tuple[str, ...], int] = {}
    for row in rows:
        key = tuple(row.values[c] for c in cols)
        if key in seen:
            raise CommunityFileError(
                f"{what} {'/'.join(key)} already on line {seen[key]}", row.line
            )
        seen[key] = row.line


async def _households(session: AsyncSession, rows: list[_Row], report: DutyImportReport) -> None:
    _check_unique(rows, ("key",), "household")
    look = _Lookups(session)
    buildings = {
        code: (bid, gid)
        for code, bid, gid in (
            await session.execute(
                select(Building.code, Building.id, Building.grid_id).where(
                    Building.code.in_({r.values["building"] for r in rows})
                )
            )
        ).all()
    }
    residents = await look.ids(
        Person.id, Person.key, {r.values["resident"] for r in rows if r.values.get("resident")}
    )
    for row in rows:
        v = row.values
        key = _key(row, "key")
        if v["building"] not in buildings:
            raise CommunityFileError(f"unknown building '{v['building'][:40]}'", row.line)
        kind = KIND_NAMES.get(v["kind"], v["kind"])
        if kind not in HOUSEHOLD_KINDS:
            raise CommunityFileError(
                f"unknown kind '{v['kind'][:20]}' (one of {', '.join(KIND_NAMES)} or "
                f"{', '.join(HOUSEHOLD_KINDS)})",
                row.line,
            )
        resident = None
        if v.get("resident"):
            resident = residents.get(v["resident"])
            if resident is None:
                raise CommunityFileError(f"unknown person '{v['resident'][:40]}'", row.line)
        bid, gid = buildings[v["building"]]
        row.resolved = {
            "code": key,
            "building_id": bid,
            "grid_id": gid,
            "kind": kind,
            "name": _text(row, "name", 100),
            "address": _text(row, "address", 500),
            "notes": _text(row, "notes", 2000),
            "private": _flag(v.get("private", ""), "private", True, row.line),
        }
        if "resident" in v:
            row.resolved["person_id"] = resident
    existing = {
        h.code: h
        for h in (
            await session.scalars(
                select(Household).where(Household.code.in_({r.values["key"] for r in rows}))
            )
        ).all()
    }
    _upsert(session, Household, existing, lambda v: v["code"], rows, report)


def _start(row: _Row, zone: str) -> datetime:
    value = row.values["start"]
    for fmt in ("%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            naive = datetime.strptime(value, fmt)
        except ValueError:
            continue
        if fmt == "%Y-%m-%d":
            naive = naive.replace(hour=9)
        return naive.replace(tzinfo=ZoneInfo(zone))
    raise CommunityFileError(
        f"start '{value[:30]}' is not a date and time like 2027-03-01 09:00", row.line
    )


async def _visits(session: AsyncSession, rows: list[_Row], report: DutyImportReport) -> None:
    _check_unique(rows, ("household", "member"), "visit plan")
    look = _Lookups(session)
    households = await look.ids(
        Household.id, Household.code, {r.values["household"] for r in rows}
    )
    members = await look.ids(Person.id, Person.key, {r.values["member"] for r in rows})
    for row in rows:
        v = row.values
        if v["household"] not in households:
            raise CommunityFileError(f"unknown household '{v['household'][:40]}'", row.line)
        if v["member"] not in members:
            raise CommunityFileError(f"unknown person '{v['member'][:40]}'", row.line)
        frequency = FREQUENCY_NAMES.get(v["frequency"], v["frequency"].lower())
        if frequency not in FREQUENCIES:
            raise CommunityFileError(
                f"unknown frequency '{v['frequency'][:20]}' ({', '.join(FREQUENCIES)})", row.line
            )
        zone = _zone(v.get("timezone", ""), row.line)
        row.resolved = {
            "household_id": households[v["household"]],
            "member_id": members[v["member"]],
            "frequency": frequency,
            "starts_at": _start(row, zone),
            "timezone": zone,
            "active": _flag(v.get("active", ""), "active", True, row.line),
        }
    existing = {
        (p.household_id, p.member_id): p
        for p in (
            await session.scalars(
                select(VisitPlan).where(VisitPlan.household_id.in_(set(households.values())))
            )
        ).all()
    }
    _upsert(
        session, VisitPlan, existing, lambda v: (v["household_id"], v["member_id"]), rows, report
    )


async def _patrols(session: AsyncSession, rows: list[_Row], report: DutyImportReport) -> None:
    from bot.scheduler.triggers import patrol_trigger

    _check_unique(rows, ("key",), "patrol plan")
    look = _Lookups(session)
    grids = await look.ids(Grid.id, Grid.code, {r.values["grid"] for r in rows})
    people = await look.ids(Person.id, Person.key, {r.values["who"] for r in rows})
    for row in rows:
        v = row.values
        key = _key(row, "key")
        if v["grid"] not in grids:
            raise CommunityFileError(f"unknown grid '{v['grid'][:40]}'", row.line)
        if v["who"] not in people:
            raise CommunityFileError(f"unknown person '{v['who'][:40]}'", row.line)
        zone = _zone(v.get("timezone", ""), row.line)
        schedule = " ".join(v["schedule"].split())
        try:
            patrol_trigger(schedule, zone)
        except ValueError as exc:
            raise CommunityFileError(
                f"schedule '{schedule[:40]}' is not a 5-field cron line: {exc}", row.line
            ) from None
        minutes = v.get("deadline_minutes") or "240"
        if not minutes.isdigit() or not 1 <= int(minutes) <= 7 * 24 * 60:
            raise CommunityFileError(
                f"deadline_minutes '{minutes[:10]}' must be a number of minutes (1-10080)",
                row.line,
            )
        row.resolved = {
            "code": key,
            "grid_id": grids[v["grid"]],
            "person_id": people[v["who"]],
            "schedule": schedule,
            "deadline_minutes": int(minutes),
            "timezone": zone,
            "active": _flag(v.get("active", ""), "active", True, row.line),
        }
    existing = {
        p.code: p
        for p in (
            await session.scalars(
                select(PatrolPlan).where(PatrolPlan.code.in_({r.values["key"] for r in rows}))
            )
        ).all()
    }
    _upsert(session, PatrolPlan, existing, lambda v: v["code"], rows, report)


def _upsert(
    session: AsyncSession,
    model: type[Any],
    existing: Mapping[Any, Any],
    key: Callable[[dict[str, Any]], Any],
    rows: list[_Row],
    report: DutyImportReport,
) -> None:
    """Create each row's object, or update the existing one (found by ``key``) in place, and
    count which in ``report``. Models with ``updated_at`` get it stamped on create and change."""
    now = utcnow()
    stamped = hasattr(model, "updated_at")
    stamps = {"created_at": now, **({"updated_at": now} if stamped else {})}
    for row in rows:
        values = row.resolved
        obj = existing.get(key(values))
        if obj is None:
            session.add(model(**values, **stamps))
            report.created += 1
        elif _assign(obj, values):
            if stamped:
                obj.updated_at = now
            report.updated += 1
        else:
            report.unchanged += 1


def _assign(obj: object, values: dict[str, Any]) -> bool:
    changed = False
    for name, value in values.items():
        if getattr(obj, name) != value:
            setattr(obj, name, value)
            changed = True
    return changed


async def import_duties(session: AsyncSession, source: Path | str) -> DutyImportReport:
    """Load one duty CSV (households, visit plans or patrol plans) in the caller's transaction.

    Raises :class:`CommunityFileError` before writing anything when the file is bad."""
    label = str(source)
    try:
        kind, rows = _parse(read_text(Path(source)))
        report = DutyImportReport(label, kind)
        work = {"households": _households, "visit plans": _visits, "patrol plans": _patrols}
        await work[kind](session, rows, report)
        await session.flush()
    except CommunityFileError as exc:
        exc.file = exc.file or label
        raise
    return report
