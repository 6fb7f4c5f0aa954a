"""Import a community file (YAML, or flat CSV lists) into the database.

The YAML file describes one community: its level names, order categories, the grid tree (any
depth, nested with ``children``), the buildings, the people with their roles and, optionally,
order clocks per category and level (``clocks:``, rows of ``clock_setting``). CSV files carry
flat lists of buildings (``code,grid,name,address[,latitude,longitude]``) or people
(``key,name,phone,role,grid,building,room``, one row per role) that refer to grids and buildings
already in the database. Buildings may carry coordinates and categories their Open311
``group``, ``keywords`` and ``attributes`` (what the city platform reads and fills in).

Rules the importer keeps:

* Everything is validated before the first write; a bad file raises :class:`CommunityFileError`
  naming the file, the line and the reason, and leaves the session untouched.
* Rows are matched by ``code`` (grids, buildings, categories) or ``key`` (people) and updated in
  place; re-importing the same file changes nothing.
* The file is the truth for the people it lists: their roles that the file does not mention are
  removed (the caller hands their open work over: :attr:`ImportReport.lost_roles`). People the
  file does not list are left alone (the report names them: ``gridbot person remove`` removes
  someone), and so are grids and buildings.
* An optional field (a person's ``phone`` or ``locale``, a building's ``address``, the
  community's ``timezone`` or ``levels``) that a YAML file leaves out is left as it is;
  ``phone: ""`` or ``phone: null`` clears it. In CSV an empty cell leaves the value alone.
* ``Grid.path`` (``/1/4/17/``) and ``Grid.depth`` are recomputed for every grid whose ancestry
  changed, including grids the file does not list.
* A ``clocks:`` item is matched by its (category, level) and sets the durations it names; a
  duration it leaves out is left as it is, ``null`` clears it, and a row left with no duration
  is removed. Clock rows the file does not list are left alone.
"""

from __future__ import annotations

import csv
import enum
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from models.duties import ClockSetting
from models.grid import Building, Category, Community, Grid
from models.people import (
    ROLE_ADMIN,
    ROLE_HEAD,
    ROLE_MEMBER,
    ROLE_RESIDENT,
    ROLE_WORKER,
    ROLES,
    Person,
    Role,
)

#: The kinds of rows an import touches, in report order.
KINDS: tuple[str, ...] = (
    "communities",
    "grids",
    "buildings",
    "people",
    "roles",
    "categories",
    "clocks",
)

#: The durations of an order clock row (``clock_setting``): unit, and the largest value taken
#: (a year: larger ones would only overflow the scheduler's date arithmetic).
CLOCK_FIELDS: dict[str, tuple[str, int]] = {
    "dispatch_minutes": ("minutes", 525_600),
    "accept_minutes": ("minutes", 525_600),
    "deadline_hours": ("hours", 8_760),
    "overdue_escalate_minutes": ("minutes", 525_600),
    "rate_days": ("days", 365),
}

DEFAULT_TIMEZONE = "Asia/Shanghai"
CODE_RE = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")
PHONE_RE = re.compile(r"[0-9+\- ]{1,20}\Z")
LOCALE_RE = re.compile(r"[A-Za-z]{2,3}(?:[_-][A-Za-z0-9]{2,8}){0,2}\Z")

_CHUNK = 500
_T = TypeVar("_T")


class CommunityFileError(Exception):
    """A community file was rejected; ``str()`` reads ``file:line: reason``."""

    def __init__(self, message: str, line: int | None = None, file: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.file = file

    def __str__(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        return f"{where}: {self.message}"


@dataclass
class KindCounts:
    """How many rows of one kind an import created, updated, left unchanged or removed."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0

    @property
    def changed(self) -> bool:
        """Whether any row of this kind was written."""
        return bool(self.created or self.updated or self.removed)


@dataclass
class ImportReport:
    """What one import did, per kind of row; ``str()`` is a short human summary."""

    source: str
    fmt: str
    community: str | None = None
    counts: dict[str, KindCounts] = field(default_factory=lambda: {k: KindCounts() for k in KINDS})
    ignored: list[str] = field(default_factory=list)
    #: People who lost a role in this import (their open work must be handed over).
    lost_roles: set[int] = field(default_factory=set)
    #: Keys of people with roles in the file's community whom the file does not list (kept).
    unlisted: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether the import wrote anything at all."""
        return any(c.changed for c in self.counts.values())

    def __getitem__(self, kind: str) -> KindCounts:
        return self.counts[kind]

    def __str__(self) -> str:
        head = f"{self.source} ({self.fmt}"
        head += f", community {self.community})" if self.community else ")"
        head += ": imported" if self.changed else ": no changes"
        lines = [head]
        for kind in KINDS:
            c = self.counts[kind]
            if not (c.changed or c.unchanged):
                continue
            lines.append(
                f"  {kind + ':':<12} {c.created} created, {c.updated} updated, "
                f"{c.unchanged} unchanged, {c.removed} removed"
            )
        if self.ignored:
            lines.append(f"  ignored sections: {', '.join(self.ignored)}")
        if self.unlisted:
            shown = ", ".join(self.unlisted[:10]) + (" …" if len(self.unlisted) > 10 else "")
            lines.append(
                f"  not in this file, kept: {len(self.unlisted)} people with roles here "
                f"({shown}); `gridbot person remove KEY` removes one"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class CategorySpec:
    """An order category as a file (or the defaults) describes it."""

    code: str
    urgent: bool = False
    deadline_hours: int = 72
    points: int = 10


def default_categories() -> list[CategorySpec]:
    """The six categories a community gets when its file lists none."""
    return [
        CategorySpec("repair", urgent=False, deadline_hours=48, points=10),
        CategorySpec("safety", urgent=True, deadline_hours=4, points=20),
        CategorySpec("elderly", urgent=False, deadline_hours=24, points=15),
        CategorySpec("dispute", urgent=False, deadline_hours=72, points=10),
        CategorySpec("sanitation", urgent=False, deadline_hours=48, points=5),
        CategorySpec("other", urgent=False, deadline_hours=72, points=5),
    ]


# --------------------------------------------------------------------------------------------
# Parsed plan: what the file says, with the line of every item.


class _Missing(enum.Enum):
    MISSING = 0


_MISSING = _Missing.MISSING
_OptText = str | None | Literal[_Missing.MISSING]


@dataclass
class _CommunitySpec:
    code: str
    name: str
    timezone: str | None  # None: not in the file
    levels: list[str] | None  # None: not in the file
    line: int


@dataclass
class _GridSpec:
    code: str
    name: str
    parent: str | None
    depth: int
    line: int


@dataclass
class _BuildingSpec:
    code: str
    grid: str
    name: str
    address: _OptText
    line: int
    grid_line: int
    #: (latitude, longitude); None clears them; missing leaves them as they are.
    coords: tuple[float, float] | Literal[_Missing.MISSING] | None = _Missing.MISSING


@dataclass
class _RoleSpec:
    role: str
    grid: str | None
    building: str | None
    room: str | None
    line: int


@dataclass
class _PersonSpec:
    key: str
    name: str
    phone: _OptText
    locale: _OptText
    roles: list[_RoleSpec]
    line: int


@dataclass
class _CategoryLine:
    spec: CategorySpec
    sort: int
    line: int
    #: Open311 fields the file gives (``service_group``, ``keywords``, ``attributes``); one it
    #: leaves out is left as it is.
    service: dict[str, Any] = field(default_factory=dict)


@dataclass
class _ClockSpec:
    category: str | None
    level: str | int | None  # a level name, a depth, or None (any level)
    values: dict[str, int | None]  # None: clear that duration
    line: int
    category_line: int
    level_line: int


@dataclass
class _Plan:
    community: _CommunitySpec | None = None
    grids: list[_GridSpec] = field(default_factory=list)
    buildings: list[_BuildingSpec] = field(default_factory=list)
    people: list[_PersonSpec] = field(default_factory=list)
    categories: list[_CategoryLine] = field(default_factory=list)
    clocks: list[_ClockSpec] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# YAML with line numbers.


class _Map(dict[str, Any]):
    """A YAML mapping that remembers its start line and the line of each key."""

    line: int = 1
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader whose mappings record where they start; duplicate keys are an error."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.Node) -> _Map:
    assert isinstance(node, yaml.MappingNode)
    loader.flatten_mapping(node)
    result = _Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        raw = loader.construct_object(key_node, deep=True)
        key = raw if isinstance(raw, str) else str(raw)
        line = key_node.start_mark.line + 1
        if key in result:
            raise CommunityFileError(f"duplicate key '{key}'", line)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _check_keys(m: _Map, allowed: Iterable[str], what: str) -> None:
    allowed = tuple(allowed)
    for key in m:
        if key not in allowed:
            raise CommunityFileError(
                f"unknown key '{key}' in {what} (expected {', '.join(allowed)})", m.line_of(key)
            )


def _scalar_text(value: Any) -> str | None:
    """A YAML scalar as text: numbers are accepted (unquoted phones, rooms), booleans are not."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float):
        return str(value)
    return None


def _req_text(m: _Map, key: str, what: str, max_len: int = 200) -> str:
    if key not in m or m[key] is None or m[key] == "":
        raise CommunityFileError(f"{what} is missing '{key}'", m.line)
    text = _scalar_text(m[key])
    if not text:
        raise CommunityFileError(f"{what}: '{key}' must be text", m.line_of(key))
    if len(text) > max_len:
        raise CommunityFileError(
            f"{what}: '{key}' is longer than {max_len} characters", m.line_of(key)
        )
    return text


def _opt_text(m: _Map, key: str, what: str, max_len: int = 200) -> _OptText:
    if key not in m:
        return _MISSING
    if m[key] is None or m[key] == "":
        return None
    text = _scalar_text(m[key])
    if text is None:
        raise CommunityFileError(f"{what}: '{key}' must be text", m.line_of(key))
    if len(text) > max_len:
        raise CommunityFileError(
            f"{what}: '{key}' is longer than {max_len} characters", m.line_of(key)
        )
    return text or None


def _opt_ref(m: _Map, key: str, what: str, max_len: int = 64) -> str | None:
    value = _opt_text(m, key, what, max_len)
    return None if value is _MISSING else value


def _check_code(code: str, what: str, line: int) -> str:
    if not CODE_RE.match(code):
        raise CommunityFileError(f"bad {what} '{code}' (1-32 characters of A-Z a-z 0-9 _ -)", line)
    return code


def _check_phone(phone: _OptText, line: int) -> _OptText:
    if isinstance(phone, str) and not PHONE_RE.match(phone):
        raise CommunityFileError(
            f"bad phone '{phone}' (digits, +, - and spaces, at most 20)", line
        )
    return phone


def _check_locale(locale: _OptText, line: int) -> _OptText:
    if isinstance(locale, str) and not LOCALE_RE.match(locale):
        raise CommunityFileError(f"bad locale '{locale}' (like zh_CN or en)", line)
    return locale


def _as_list(m: _Map, key: str, what: str) -> list[Any]:
    value = m.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise CommunityFileError(f"'{key}' of {what} must be a list", m.line_of(key))
    return value


def _as_map(value: Any, what: str, line: int) -> _Map:
    if not isinstance(value, _Map):
        raise CommunityFileError(f"each {what} must be a mapping (key: value, ...)", line)
    return value


def _int(m: _Map, key: str, what: str, default: int, minimum: int) -> int:
    if key not in m or m[key] is None:
        return default
    value = m[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CommunityFileError(
            f"{what}: '{key}' must be a whole number ≥ {minimum}", m.line_of(key)
        )
    return value


def _bool(m: _Map, key: str, what: str, default: bool) -> bool:
    if key not in m or m[key] is None:
        return default
    value = m[key]
    if not isinstance(value, bool):
        raise CommunityFileError(f"{what}: '{key}' must be true or false", m.line_of(key))
    return value


def _number(value: Any, what: str, line: int) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise CommunityFileError(f"{what} must be a number", line) from None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise CommunityFileError(f"{what} must be a number", line)
    return float(value)


def _coords(
    lat: Any, lon: Any, what: str, line: int
) -> tuple[float, float] | Literal[_Missing.MISSING] | None:
    """A building's optional coordinates: both or neither; ``None`` in both clears them."""
    if lat is _MISSING and lon is _MISSING:
        return _MISSING
    if lat is None and lon is None:
        return None
    if lat is _MISSING or lon is _MISSING or lat is None or lon is None:
        raise CommunityFileError(f"{what}: give both latitude and longitude, or neither", line)
    la = _number(lat, f"{what}: latitude", line)
    lo = _number(lon, f"{what}: longitude", line)
    if not (-90 <= la <= 90 and -180 <= lo <= 180):
        raise CommunityFileError(f"{what}: latitude/longitude out of range", line)
    return la, lo


#: Open311 attribute datatypes a category may ask for.
ATTRIBUTE_DATATYPES = (
    "string",
    "number",
    "datetime",
    "text",
    "singlevaluelist",
    "multivaluelist",
)


def _service_fields(cm: _Map, code: str) -> dict[str, Any]:
    """A category's Open311 fields the file gives: ``group``, ``keywords`` (a list or a
    comma-separated text) and ``attributes`` (what the city fills in)."""
    what = f"category {code}"
    out: dict[str, Any] = {}
    group = _opt_text(cm, "group", what, 100)
    if group is not _MISSING:
        out["service_group"] = group
    if "keywords" in cm:
        raw = cm["keywords"]
        words = raw if isinstance(raw, list) else [] if raw is None else str(raw).split(",")
        words = [str(w).strip() for w in words if str(w).strip()]
        text = ",".join(words)
        if len(text) > 300:
            raise CommunityFileError(f"{what}: 'keywords' are longer than 300 characters", cm.line)
        out["keywords"] = text or None
    if "attributes" in cm:
        if cm["attributes"] is None:
            out["attributes"] = None
            return out
        attributes: list[dict[str, Any]] = []
        seen: set[str] = set()
        for item in _as_list(cm, "attributes", what):
            am = _as_map(item, f"an attribute of {what}", cm.line_of("attributes"))
            _check_keys(
                am,
                ("code", "description", "datatype", "required", "datatype_description", "values"),
                f"an attribute of {what}",
            )
            acode = _check_code(
                _req_text(am, "code", f"an attribute of {what}", 32), "attribute code", am.line
            )
            if acode in seen:
                raise CommunityFileError(f"{what}: attribute {acode} appears twice", am.line)
            seen.add(acode)
            awhat = f"attribute {acode} of {what}"
            datatype = _opt_ref(am, "datatype", awhat, 20) or "string"
            if datatype not in ATTRIBUTE_DATATYPES:
                raise CommunityFileError(
                    f"{awhat}: datatype must be one of {', '.join(ATTRIBUTE_DATATYPES)}",
                    am.line_of("datatype"),
                )
            spec: dict[str, Any] = {
                "code": acode,
                "description": _req_text(am, "description", awhat, 500),
                "datatype": datatype,
                "required": _bool(am, "required", awhat, False),
                "datatype_description": _opt_ref(am, "datatype_description", awhat, 200) or "",
                "values": [],
            }
            for value in am.get("values") or []:
                vm = _as_map(value, f"a value of {awhat}", am.line_of("values"))
                _check_keys(vm, ("key", "name"), f"a value of {awhat}")
                key = _req_text(vm, "key", f"a value of {awhat}", 64)
                spec["values"].append({"key": key, "name": _opt_ref(vm, "name", awhat) or key})
            if datatype.endswith("valuelist") and not spec["values"]:
                raise CommunityFileError(f"{awhat}: a {datatype} needs values", am.line)
            attributes.append(spec)
        out["attributes"] = attributes or None
    return out


class _Seen:
    """First line of each code, to report duplicates."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.lines: dict[str, int] = {}

    def add(self, code: str, line: int) -> None:
        first = self.lines.get(code)
        if first is not None:
            raise CommunityFileError(f"duplicate {self.what} {code} (first at line {first})", line)
        self.lines[code] = line


_TOP_KEYS = ("community", "levels", "categories", "grids", "buildings", "people", "clocks")


def _parse_yaml(text: str) -> _Plan:
    try:
        data = yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise CommunityFileError(f"malformed YAML: {exc.problem or exc}", line) from exc
    except yaml.YAMLError as exc:
        raise CommunityFileError(f"malformed YAML: {exc}") from exc
    if data is None:
        raise CommunityFileError("the file is empty", 1)
    if not isinstance(data, _Map):
        raise CommunityFileError(
            "a community file is a mapping with community:, levels:, grids:, buildings:, people:",
            1,
        )
    plan = _Plan(ignored=[k for k in data if k not in _TOP_KEYS])

    levels: list[str] = []
    for value in _as_list(data, "levels", "the file"):
        name = _scalar_text(value)
        if not name or "/" in name:
            raise CommunityFileError(
                "each level must be a name without '/'", data.line_of("levels")
            )
        levels.append(name)

    if "community" in data:
        cm = _as_map(data["community"], "community", data.line_of("community"))
        _check_keys(cm, ("code", "name", "timezone"), "community")
        code = _check_code(_req_text(cm, "code", "community", 64), "community code", cm.line)
        name = _req_text(cm, "name", f"community {code}")
        tz = _opt_text(cm, "timezone", f"community {code}", 64)
        timezone = tz if isinstance(tz, str) else None
        try:
            if timezone is not None:
                ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise CommunityFileError(
                f"unknown time zone '{timezone}'", cm.line_of("timezone")
            ) from exc
        if len("/".join(levels)) > 500:
            raise CommunityFileError("level names are too long", data.line_of("levels"))
        plan.community = _CommunitySpec(
            code, name, timezone, levels if "levels" in data else None, cm.line
        )
    elif levels:
        raise CommunityFileError("'levels' needs a 'community' section", data.line_of("levels"))

    seen_cat = _Seen("category")
    for index, item in enumerate(_as_list(data, "categories", "the file")):
        cm = _as_map(item, "category", data.line_of("categories"))
        _check_keys(
            cm,
            ("code", "urgent", "deadline_hours", "points", "group", "keywords", "attributes"),
            "category",
        )
        code = _check_code(_req_text(cm, "code", "category", 32), "category code", cm.line)
        seen_cat.add(code, cm.line)
        spec = CategorySpec(
            code,
            urgent=_bool(cm, "urgent", f"category {code}", False),
            deadline_hours=_int(cm, "deadline_hours", f"category {code}", 72, 1),
            points=_int(cm, "points", f"category {code}", 10, 0),
        )
        plan.categories.append(_CategoryLine(spec, index, cm.line, _service_fields(cm, code)))

    seen_grid = _Seen("grid code")

    def walk(items: list[Any], parent: str | None, depth: int, line: int) -> None:
        for item in items:
            gm = _as_map(item, "grid", line)
            _check_keys(gm, ("code", "name", "children"), "grid")
            code = _check_code(_req_text(gm, "code", "grid", 64), "grid code", gm.line_of("code"))
            seen_grid.add(code, gm.line)
            name = _req_text(gm, "name", f"grid {code}")
            plan.grids.append(_GridSpec(code, name, parent, depth, gm.line))
            walk(_as_list(gm, "children", f"grid {code}"), code, depth + 1, gm.line)

    walk(_as_list(data, "grids", "the file"), None, 0, data.line_of("grids"))
    if plan.grids and plan.community is None:
        raise CommunityFileError("'grids' needs a 'community' section", data.line_of("grids"))

    seen_building = _Seen("building code")
    for item in _as_list(data, "buildings", "the file"):
        bm = _as_map(item, "building", data.line_of("buildings"))
        _check_keys(bm, ("code", "grid", "name", "address", "latitude", "longitude"), "building")
        code = _check_code(
            _req_text(bm, "code", "building", 64), "building code", bm.line_of("code")
        )
        seen_building.add(code, bm.line)
        grid = _req_text(bm, "grid", f"building {code}", 64)
        plan.buildings.append(
            _BuildingSpec(
                code,
                grid,
                _req_text(bm, "name", f"building {code}"),
                _opt_text(bm, "address", f"building {code}", 500),
                bm.line,
                bm.line_of("grid"),
                _coords(
                    bm.get("latitude", _MISSING),
                    bm.get("longitude", _MISSING),
                    f"building {code}",
                    bm.line,
                ),
            )
        )

    seen_person = _Seen("person key")
    for item in _as_list(data, "people", "the file"):
        pm = _as_map(item, "person", data.line_of("people"))
        _check_keys(pm, ("key", "name", "phone", "locale", "roles"), "person")
        key = _check_code(_req_text(pm, "key", "person", 64), "person key", pm.line_of("key"))
        seen_person.add(key, pm.line)
        what = f"person {key}"
        roles: list[_RoleSpec] = []
        for role_item in _as_list(pm, "roles", what):
            rm = _as_map(role_item, "role", pm.line_of("roles"))
            _check_keys(rm, ("role", "grid", "building", "room"), f"a role of {what}")
            roles.append(
                _RoleSpec(
                    role=_req_text(rm, "role", f"a role of {what}", 16),
                    grid=_opt_ref(rm, "grid", what),
                    building=_opt_ref(rm, "building", what),
                    room=_opt_ref(rm, "room", what, 32),
                    line=rm.line,
                )
            )
        plan.people.append(
            _PersonSpec(
                key=key,
                name=_req_text(pm, "name", what, 100),
                phone=_check_phone(_opt_text(pm, "phone", what, 100), pm.line_of("phone")),
                locale=_check_locale(_opt_text(pm, "locale", what, 16), pm.line_of("locale")),
                roles=roles,
                line=pm.line,
            )
        )

    for item in _as_list(data, "clocks", "the file"):
        plan.clocks.append(_parse_clock(_as_map(item, "clock", data.line_of("clocks"))))
    return plan


def _parse_clock(km: _Map) -> _ClockSpec:
    _check_keys(km, ("category", "level", *CLOCK_FIELDS), "a clock")
    category = _opt_ref(km, "category", "a clock", 32)
    level: str | int | None = None
    raw = km.get("level")
    if isinstance(raw, bool) or (isinstance(raw, int) and raw < 0):
        raise CommunityFileError(
            "a clock: 'level' must be a level name or a depth (0 = the top)", km.line_of("level")
        )
    if isinstance(raw, int):
        level = raw
    elif raw is not None:
        level = _opt_ref(km, "level", "a clock", 100)
    values: dict[str, int | None] = {}
    for name, (unit, most) in CLOCK_FIELDS.items():
        if name not in km:
            continue
        value = km[name]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most
        ):
            raise CommunityFileError(
                f"a clock: '{name}' must be a whole number of {unit} from 1 to {most} "
                "(or null to clear it)",
                km.line_of(name),
            )
        values[name] = value
    if not values:
        raise CommunityFileError(
            f"a clock names no duration (one or more of {', '.join(CLOCK_FIELDS)})", km.line
        )
    return _ClockSpec(
        category, level, values, km.line, km.line_of("category"), km.line_of("level")
    )


# --------------------------------------------------------------------------------------------
# CSV.

_BUILDING_COLUMNS = ("code", "grid", "name", "address")
_PEOPLE_COLUMNS = ("key", "name", "phone", "locale", "role", "grid", "building", "room")


def open_csv(text: str) -> tuple[Any, list[str]]:
    """A CSV reader positioned after the header, and the header's column names (lower case);
    :class:`CommunityFileError` for an empty or malformed header."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise CommunityFileError("the file is empty", 1) from None
    except csv.Error as exc:
        raise CommunityFileError(f"malformed CSV: {exc}", reader.line_num) from exc
    return reader, [h.strip().lower() for h in header]


def check_columns(
    columns: list[str], kind: str, required: tuple[str, ...], allowed: tuple[str, ...] = ()
) -> None:
    """Refuse a header without a ``required`` column, with a column twice, or (when
    ``allowed`` is given) with a column outside it."""
    for col in required:
        if col not in columns:
            raise CommunityFileError(f"CSV of {kind} needs a '{col}' column", 1)
    for col in columns:
        if col and columns.count(col) > 1:
            raise CommunityFileError(f"column '{col}' appears twice", 1)
        if col and allowed and col not in allowed:
            raise CommunityFileError(f"unknown column '{col}' in a CSV of {kind}", 1)


def csv_rows(
    reader: Any, columns: list[str], required: tuple[str, ...]
) -> Iterator[tuple[int, dict[str, str]]]:
    """The data rows after the header as (line, column → stripped value); blank rows are
    skipped, a row without a ``required`` value or malformed CSV is refused at its line."""
    while True:
        try:
            raw = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise CommunityFileError(f"malformed CSV: {exc}", reader.line_num) from exc
        line = reader.line_num
        if not any(cell.strip() for cell in raw):
            continue
        row = {col: (raw[i].strip() if i < len(raw) else "") for i, col in enumerate(columns)}
        for col in required:
            if not row[col]:
                raise CommunityFileError(f"row is missing '{col}'", line)
        yield line, row


def _parse_csv(text: str) -> _Plan:
    reader, columns = open_csv(text)
    required: tuple[str, ...]
    if "key" in columns:
        kind, required = "people", ("key", "name")
    elif "code" in columns and "grid" in columns:
        kind, required = "buildings", ("code", "grid", "name")
    else:
        raise CommunityFileError(
            "unknown CSV header: expected code,grid,name,address (buildings) or "
            "key,name,phone,role,grid,building,room (people)",
            1,
        )
    check_columns(columns, kind, required)

    plan = _Plan()
    seen_building = _Seen("building code")
    people: dict[str, _PersonSpec] = {}
    row_lines: dict[str, int] = {}
    for line, row in csv_rows(reader, columns, required):
        if kind == "buildings":
            code = _check_code(row["code"], "building code", line)
            seen_building.add(code, line)
            for col, limit in (("grid", 64), ("name", 200), ("address", 500)):
                if len(row.get(col, "")) > limit:
                    raise CommunityFileError(
                        f"building {code}: '{col}' is longer than {limit} characters", line
                    )
            plan.buildings.append(
                _BuildingSpec(
                    code,
                    row["grid"],
                    row["name"],
                    row.get("address") or _MISSING,
                    line,
                    line,
                    _coords(
                        row.get("latitude") or _MISSING,
                        row.get("longitude") or _MISSING,
                        f"building {code}",
                        line,
                    ),
                )
            )
            continue
        key = _check_code(row["key"], "person key", line)
        what = f"person {key}"
        if len(row["name"]) > 100:
            raise CommunityFileError(f"{what}: 'name' is longer than 100 characters", line)
        phone = _check_phone(row.get("phone") or _MISSING, line)
        locale = _check_locale(row.get("locale") or _MISSING, line)
        person = people.get(key)
        if person is None:
            person = people[key] = _PersonSpec(key, row["name"], phone, locale, [], line)
            row_lines[key] = line
        else:
            first = row_lines[key]
            if row["name"] != person.name:
                raise CommunityFileError(
                    f"{what}: name differs from line {first} ('{person.name}')", line
                )
            for attr, value in (("phone", phone), ("locale", locale)):
                known = getattr(person, attr)
                if value is _MISSING:
                    continue
                if known is _MISSING:
                    setattr(person, attr, value)
                elif known != value:
                    raise CommunityFileError(
                        f"{what}: {attr} differs from line {first} ('{known}')", line
                    )
        if row.get("role"):
            for col, limit in (("grid", 64), ("building", 64), ("room", 32)):
                if len(row.get(col, "")) > limit:
                    raise CommunityFileError(
                        f"{what}: '{col}' is longer than {limit} characters", line
                    )
            person.roles.append(
                _RoleSpec(
                    role=row["role"],
                    grid=row.get("grid") or None,
                    building=row.get("building") or None,
                    room=row.get("room") or None,
                    line=line,
                )
            )
        elif row.get("grid") or row.get("building") or row.get("room"):
            raise CommunityFileError(f"{what}: row names a grid or building but no role", line)
    plan.people = list(people.values())
    return plan


# --------------------------------------------------------------------------------------------
# Validation against the database, then the writes.


def _chunks(items: Sequence[_T], size: int = _CHUNK) -> Iterable[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class _ResolvedRole:
    role: str
    grid: str
    building: str | None
    room: str | None
    line: int


class _Importer:
    """Validates a plan against the database (reads only), then applies it."""

    def __init__(self, session: AsyncSession, plan: _Plan, report: ImportReport) -> None:
        self.s = session
        self.plan = plan
        self.report = report
        self.community: Community | None = None
        self.grids: dict[str, Grid] = {}
        self.grids_by_id: dict[int, Grid] = {}
        self.buildings: dict[str, Building] = {}
        self.people: dict[str, Person] = {}
        self.roles: dict[int, list[Role]] = {}
        self.categories: dict[str, Category] = {}
        self.file_grids = {g.code: g for g in plan.grids}
        self.file_buildings = {b.code: b for b in plan.buildings}
        self.resolved_roles: dict[str, list[_ResolvedRole]] = {}
        self.clock_depths: list[int | None] = []  # per clock of the plan, once validated
        # Residents not listed in the file whose building moves to another grid.
        self.moving_roles: list[tuple[Role, str]] = []

    async def run(self) -> None:
        await self._load()
        await self._validate()
        await self._write()

    async def _load(self) -> None:
        s, plan = self.s, self.plan
        if plan.community is not None:
            self.community = await s.scalar(
                select(Community).where(Community.code == plan.community.code)
            )
        for grid in await s.scalars(select(Grid)):
            self.grids[grid.code] = grid
            self.grids_by_id[grid.id] = grid
        codes = set(self.file_buildings)
        codes.update(r.building for p in plan.people for r in p.roles if r.building)
        for chunk in _chunks(sorted(codes)):
            for b in await s.scalars(select(Building).where(Building.code.in_(chunk))):
                self.buildings[b.code] = b
        keys = [p.key for p in plan.people]
        for chunk in _chunks(keys):
            for person in await s.scalars(select(Person).where(Person.key.in_(chunk))):
                assert person.key is not None
                self.people[person.key] = person
        ids = [p.id for p in self.people.values()]
        for chunk_ids in _chunks(ids):
            for role in await s.scalars(select(Role).where(Role.person_id.in_(chunk_ids))):
                self.roles.setdefault(role.person_id, []).append(role)
        for cat in await s.scalars(select(Category)):
            self.categories[cat.code] = cat

    def _grid_known(self, code: str) -> bool:
        return code in self.file_grids or code in self.grids

    def _building_grid(self, code: str) -> str | None:
        """The grid code a building will belong to after the import (None if unknown)."""
        spec = self.file_buildings.get(code)
        if spec is not None:
            return spec.grid
        b = self.buildings.get(code)
        if b is None:
            return None
        return self.grids_by_id[b.grid_id].code

    async def _validate(self) -> None:
        plan = self.plan
        if plan.community is not None:
            cid = self.community.id if self.community else None
            owners = {c.id: c.code for c in await self.s.scalars(select(Community))}
            for g in plan.grids:
                existing = self.grids.get(g.code)
                if existing is not None and existing.community_id != cid:
                    owner = owners.get(existing.community_id, "?")
                    raise CommunityFileError(
                        f"grid {g.code} already belongs to community {owner}", g.line
                    )
        for b in plan.buildings:
            if not self._grid_known(b.grid):
                raise CommunityFileError(
                    f"building {b.code} refers to unknown grid {b.grid}", b.grid_line
                )
        for p in plan.people:
            resolved: list[_ResolvedRole] = []
            seen: dict[tuple[str, str], int] = {}
            for r in p.roles:
                resolved_role = self._resolve_role(p.key, r)
                ident = (resolved_role.role, resolved_role.grid)
                if ident in seen:
                    raise CommunityFileError(
                        f"person {p.key} has the role {r.role} on grid {resolved_role.grid} "
                        f"twice (first at line {seen[ident]})",
                        r.line,
                    )
                seen[ident] = r.line
                resolved.append(resolved_role)
            self.resolved_roles[p.key] = resolved
        await self._check_moving_buildings()
        await self._validate_clocks()

    async def _validate_clocks(self) -> None:
        """Categories and levels of the clocks exist (after this import); one item per scope."""
        plan = self.plan
        if not plan.clocks:
            return
        categories = set(self.categories) | {c.spec.code for c in plan.categories}
        if self._adds_default_categories():
            categories |= {c.code for c in default_categories()}
        # Level names are this file's community's; without a community section, those of
        # every stored community (a name they disagree on must be given as a depth).
        if plan.community is not None and plan.community.levels is not None:
            level_lists = [plan.community.levels]
        elif plan.community is not None:
            level_lists = [self.community.level_names.split("/")] if self.community else []
        else:
            level_lists = [
                c.level_names.split("/")
                for c in await self.s.scalars(select(Community))
                if c.level_names
            ]
        depths = {g.depth for g in self.grids.values()} | {g.depth for g in plan.grids}
        seen: dict[tuple[str | None, int | None], int] = {}
        for clock in plan.clocks:
            if clock.category is not None and clock.category not in categories:
                raise CommunityFileError(
                    f"a clock refers to unknown category {clock.category}", clock.category_line
                )
            depth = None
            if clock.level is not None:
                try:
                    depth = resolve_level(clock.level, level_lists, depths)
                except ValueError as exc:
                    raise CommunityFileError(f"a clock: {exc}", clock.level_line) from None
            scope = (clock.category, depth)
            if scope in seen:
                raise CommunityFileError(
                    f"a second clock for {clock_scope(clock.category, depth)} "
                    f"(first at line {seen[scope]})",
                    clock.line,
                )
            seen[scope] = clock.line
            self.clock_depths.append(depth)

    def _adds_default_categories(self) -> bool:
        """Whether this import creates the default categories (a new YAML community)."""
        return (
            not self.plan.categories
            and self.report.fmt == "yaml"
            and self.plan.community is not None
            and not self.categories
        )

    def _resolve_role(self, key: str, r: _RoleSpec) -> _ResolvedRole:
        what = f"person {key}"
        if r.role not in ROLES:
            raise CommunityFileError(
                f"{what}: unknown role '{r.role}' (one of {', '.join(ROLES)})", r.line
            )
        if r.building is not None and self._building_grid(r.building) is None:
            raise CommunityFileError(f"{what} refers to unknown building {r.building}", r.line)
        if r.role == ROLE_RESIDENT:
            if r.building is None:
                raise CommunityFileError(f"{what}: a resident role needs a building", r.line)
            grid = self._building_grid(r.building)
            assert grid is not None
            if r.grid is not None and r.grid != grid:
                raise CommunityFileError(
                    f"{what}: building {r.building} is in grid {grid}, not {r.grid}", r.line
                )
            return _ResolvedRole(r.role, grid, r.building, r.room, r.line)
        if r.grid is None:
            raise CommunityFileError(f"{what}: a {r.role} role needs a grid", r.line)
        if not self._grid_known(r.grid):
            raise CommunityFileError(f"{what} refers to unknown grid {r.grid}", r.line)
        return _ResolvedRole(r.role, r.grid, r.building, r.room, r.line)

    async def _check_moving_buildings(self) -> None:
        """Residents the file does not list follow their building to its new grid."""
        moved: dict[int, _BuildingSpec] = {}
        for spec in self.plan.buildings:
            b = self.buildings.get(spec.code)
            if b is not None and self.grids_by_id[b.grid_id].code != spec.grid:
                moved[b.id] = spec
        if not moved:
            return
        listed = {p.id for p in self.people.values()}
        stmt = select(Role).where(Role.role == ROLE_RESIDENT, Role.building_id.in_(list(moved)))
        # (person, target grid) -> the building that takes them there
        targets: dict[tuple[int, str], _BuildingSpec] = {}
        for role in await self.s.scalars(stmt):
            if role.person_id in listed or role.building_id is None:
                continue
            spec = moved[role.building_id]
            ident = (role.person_id, spec.grid)
            if ident in targets:
                raise _two_homes(spec)
            targets[ident] = spec
            self.moving_roles.append((role, spec.grid))
        moving_ids = {role.id for role, _ in self.moving_roles}
        person_ids = sorted({role.person_id for role, _ in self.moving_roles})
        for chunk in _chunks(person_ids):
            stmt = select(Role).where(Role.role == ROLE_RESIDENT, Role.person_id.in_(chunk))
            for other in await self.s.scalars(stmt):
                ident = (other.person_id, self.grids_by_id[other.grid_id].code)
                if other.id not in moving_ids and ident in targets:
                    raise _two_homes(targets[ident])

    # ---- writes --------------------------------------------------------------------------

    async def _write(self) -> None:
        await self._write_community()
        await self._write_grids()
        await self._write_buildings()
        await self._write_people()
        await self._write_categories()
        await self._write_clocks()
        await self.s.flush()
        await self._note_unlisted()

    async def _note_unlisted(self) -> None:
        """People keyed by an earlier import, holding roles in this file's community, whom
        this file (a whole community, with people) does not list: they are kept, and the
        report says so (removing someone is ``gridbot person remove``)."""
        if self.community is None or not self.plan.people or self.report.fmt != "yaml":
            return
        listed = {p.key for p in self.plan.people}
        keys = await self.s.scalars(
            select(Person.key)
            .join(Role, Role.person_id == Person.id)
            .join(Grid, Grid.id == Role.grid_id)
            .where(Grid.community_id == self.community.id, Person.key.is_not(None))
            .distinct()
            .order_by(Person.key)
        )
        self.report.unlisted = [k for k in keys if k and k not in listed]

    async def _write_community(self) -> None:
        spec = self.plan.community
        if spec is None:
            return
        counts = self.report.counts["communities"]
        values: dict[str, Any] = {"name": spec.name}
        if spec.levels is not None:
            values["level_names"] = "/".join(spec.levels)
        if spec.timezone is not None:
            values["timezone"] = spec.timezone
        c = self.community
        if c is None:
            c = Community(
                code=spec.code,
                level_names=values.pop("level_names", ""),
                timezone=values.pop("timezone", DEFAULT_TIMEZONE),
                **values,
            )
            self.s.add(c)
            await self.s.flush()
            self.community = c
            counts.created += 1
        elif _assign(c, **values):
            counts.updated += 1
        else:
            counts.unchanged += 1

    async def _write_grids(self) -> None:
        if not self.plan.grids:
            return
        assert self.community is not None
        counts = self.report.counts["grids"]
        created: set[str] = set()
        updated: set[str] = set()
        by_depth: dict[int, list[_GridSpec]] = {}
        for g in self.plan.grids:
            by_depth.setdefault(g.depth, []).append(g)
        for depth in sorted(by_depth):
            new: list[Grid] = []
            for spec in by_depth[depth]:
                parent_id = self.grids[spec.parent].id if spec.parent else None
                grid = self.grids.get(spec.code)
                if grid is None:
                    grid = Grid(
                        community_id=self.community.id,
                        code=spec.code,
                        name=spec.name,
                        parent_id=parent_id,
                        depth=depth,
                        path="/",
                    )
                    self.s.add(grid)
                    new.append(grid)
                    created.add(spec.code)
                elif _assign(
                    grid, name=spec.name, parent_id=parent_id, community_id=self.community.id
                ):
                    updated.add(spec.code)
            if new:
                await self.s.flush()
                for grid in new:
                    self.grids[grid.code] = grid
                    self.grids_by_id[grid.id] = grid
        # Recompute the materialised paths of every grid (moves carry whole subtrees).
        paths: dict[int, tuple[str, int]] = {}

        def path_of(grid: Grid) -> tuple[str, int]:
            chain: list[Grid] = []
            node: Grid | None = grid
            while node is not None and node.id not in paths:
                chain.append(node)
                node = self.grids_by_id.get(node.parent_id) if node.parent_id else None
            base, depth = paths[node.id] if node is not None else ("/", -1)
            for item in reversed(chain):
                base, depth = f"{base}{item.id}/", depth + 1
                paths[item.id] = (base, depth)
            return paths[grid.id]

        for grid in self.grids_by_id.values():
            path, depth = path_of(grid)
            if _assign(grid, path=path, depth=depth) and grid.code not in created:
                updated.add(grid.code)
        counts.created += len(created)
        counts.updated += len(updated)
        counts.unchanged += sum(
            1 for g in self.plan.grids if g.code not in created and g.code not in updated
        )

    async def _write_buildings(self) -> None:
        counts = self.report.counts["buildings"]
        new: list[Building] = []
        for spec in self.plan.buildings:
            grid_id = self.grids[spec.grid].id
            b = self.buildings.get(spec.code)
            if b is None:
                address = spec.address if isinstance(spec.address, str) else ""
                lat, lon = spec.coords if isinstance(spec.coords, tuple) else (None, None)
                b = Building(
                    code=spec.code,
                    grid_id=grid_id,
                    name=spec.name,
                    address=address,
                    latitude=lat,
                    longitude=lon,
                )
                self.s.add(b)
                new.append(b)
                counts.created += 1
                continue
            values: dict[str, Any] = {"grid_id": grid_id, "name": spec.name}
            if spec.address is not _MISSING:
                values["address"] = spec.address or ""
            if spec.coords is not _MISSING:
                lat, lon = spec.coords if spec.coords is not None else (None, None)
                values.update(latitude=lat, longitude=lon)
            if _assign(b, **values):
                counts.updated += 1
            else:
                counts.unchanged += 1
        if new:
            await self.s.flush()
            for b in new:
                self.buildings[b.code] = b
        role_counts = self.report.counts["roles"]
        for role, grid_code in self.moving_roles:
            if _assign(role, grid_id=self.grids[grid_code].id):
                role_counts.updated += 1

    async def _write_people(self) -> None:
        counts = self.report.counts["people"]
        role_counts = self.report.counts["roles"]
        new: list[Person] = []
        for spec in self.plan.people:
            person = self.people.get(spec.key)
            if person is None:
                person = Person(
                    key=spec.key,
                    name=spec.name,
                    phone=spec.phone if isinstance(spec.phone, str) else None,
                    locale=spec.locale if isinstance(spec.locale, str) else None,
                )
                self.s.add(person)
                new.append(person)
                counts.created += 1
                continue
            values: dict[str, Any] = {"name": spec.name}
            if spec.phone is not _MISSING:
                values["phone"] = spec.phone
            if spec.locale is not _MISSING:
                values["locale"] = spec.locale
            if _assign(person, **values):
                counts.updated += 1
            else:
                counts.unchanged += 1
        if new:
            await self.s.flush()
            for person in new:
                assert person.key is not None
                self.people[person.key] = person
        for spec in self.plan.people:
            person = self.people[spec.key]
            existing = {(r.role, r.grid_id): r for r in self.roles.get(person.id, [])}
            wanted: set[tuple[str, int]] = set()
            for rr in self.resolved_roles[spec.key]:
                grid_id = self.grids[rr.grid].id
                building_id = self.buildings[rr.building].id if rr.building else None
                ident = (rr.role, grid_id)
                wanted.add(ident)
                role = existing.get(ident)
                if role is None:
                    self.s.add(
                        Role(
                            person_id=person.id,
                            grid_id=grid_id,
                            role=rr.role,
                            building_id=building_id,
                            room=rr.room,
                        )
                    )
                    role_counts.created += 1
                elif _assign(role, building_id=building_id, room=rr.room):
                    role_counts.updated += 1
                else:
                    role_counts.unchanged += 1
            for ident, role in existing.items():
                if ident not in wanted:
                    await self.s.delete(role)
                    role_counts.removed += 1
                    self.report.lost_roles.add(person.id)

    async def _write_categories(self) -> None:
        counts = self.report.counts["categories"]
        lines = self.plan.categories
        if not lines:
            if not self._adds_default_categories():
                return
            lines = [_CategoryLine(spec, i, 0) for i, spec in enumerate(default_categories())]
        for item in lines:
            spec = item.spec
            values = {
                "urgent": spec.urgent,
                "deadline_hours": spec.deadline_hours,
                "points": spec.points,
                "sort": item.sort,
                **item.service,
            }
            cat = self.categories.get(spec.code)
            if cat is None:
                self.s.add(Category(code=spec.code, **values))
                counts.created += 1
            elif _assign(cat, **values):
                counts.updated += 1
            else:
                counts.unchanged += 1

    async def _write_clocks(self) -> None:
        counts = self.report.counts["clocks"]
        for clock, depth in zip(self.plan.clocks, self.clock_depths, strict=True):
            outcome = await write_clock_setting(self.s, clock.category, depth, clock.values)
            if outcome == "created":
                counts.created += 1
            elif outcome == "updated":
                counts.updated += 1
            elif outcome == "removed":
                counts.removed += 1
            else:
                counts.unchanged += 1


# --------------------------------------------------------------------------------------------
# Order clocks (``clock_setting``), shared with ``gridbot clocks``.


def resolve_level(
    level: str | int, level_lists: Sequence[Sequence[str]], depths: Iterable[int]
) -> int:
    """The tree depth ``level`` stands for: a depth (a number, 0 = the top), or a level name
    of the communities whose level names are ``level_lists``.

    A depth must be named by some community or held by some grid (``depths``); a name must
    mean one depth in every community that has it. Raises :class:`ValueError` with the reason.
    """
    labels = level_labels(level_lists, depths)
    known = ", ".join(f"{d} {n}".rstrip() for d, n in sorted(labels.items())) or "none yet"
    if isinstance(level, int) or level.isdigit():
        depth = int(level)
        if depth not in labels:
            raise ValueError(f"unknown level {depth} (levels: {known})")
        return depth
    found = {i for names in level_lists for i, name in enumerate(names) if name == level}
    if not found:
        raise ValueError(f"unknown level '{level}' (levels: {known})")
    if len(found) > 1:
        raise ValueError(
            f"level '{level}' is at depths {', '.join(map(str, sorted(found)))} in different "
            "communities: give the depth instead"
        )
    return found.pop()


def level_labels(level_lists: Sequence[Sequence[str]], depths: Iterable[int]) -> dict[int, str]:
    """Every known depth with its level name(s) (``a|b`` where communities differ, ``""``
    for a depth that grids have but no community names)."""
    names: dict[int, list[str]] = {d: [] for d in depths}
    for level_names in level_lists:
        for depth, name in enumerate(level_names):
            if name and name not in names.setdefault(depth, []):
                names[depth].append(name)
    return {d: "|".join(n) for d, n in sorted(names.items())}


def clock_scope(category: str | None, depth: int | None, level: str = "") -> str:
    """A clock row's scope in words: ``category safety at depth 3 (微网格)``."""
    what = f"category {category}" if category is not None else "any category"
    if depth is None:
        return f"{what} at any level"
    return f"{what} at depth {depth}" + (f" ({level})" if level else "")


async def clock_rows(
    session: AsyncSession, category: str | None, depth: int | None
) -> list[ClockSetting]:
    """The rows of one scope, oldest first; ``None`` matches NULL (``IS NULL``), because the
    unique constraint on (category, depth) does not stop two rows with a NULL in them."""
    stmt = (
        select(ClockSetting)
        .where(
            ClockSetting.category.is_(None)
            if category is None
            else ClockSetting.category == category,
            ClockSetting.depth.is_(None) if depth is None else ClockSetting.depth == depth,
        )
        .order_by(ClockSetting.id)
    )
    return list(await session.scalars(stmt))


async def lock_clock_settings(session: AsyncSession) -> None:
    """Serialise writers of ``clock_setting`` until the transaction ends, so that two of them
    cannot both find no row for a scope with a NULL and both insert one. (SQLite has one writer
    at a time anyway; readers are not blocked.)"""
    conn = await session.connection()
    if conn.dialect.name == "postgresql":
        await session.execute(text("LOCK TABLE clock_setting IN SHARE ROW EXCLUSIVE MODE"))


async def write_clock_setting(
    session: AsyncSession,
    category: str | None,
    depth: int | None,
    values: dict[str, int | None],
) -> str:
    """Set (a number) or clear (``None``) durations of the row for (category, depth), in the
    caller's transaction; tell what happened: created, updated, removed or unchanged.

    A row left with no duration is deleted. Duplicate rows of the scope (possible only from
    before this check) are folded into the oldest: the newest value of each duration wins, as
    it did when the clocks read them.
    """
    await lock_clock_settings(session)
    rows = await clock_rows(session, category, depth)
    if not rows:
        wanted = {k: v for k, v in values.items() if v is not None}
        if not wanted:
            return "unchanged"
        session.add(ClockSetting(category=category, depth=depth, **wanted))
        return "created"
    row, *extra = rows
    for dup in extra:
        for name in CLOCK_FIELDS:
            if getattr(dup, name) is not None:
                setattr(row, name, getattr(dup, name))
        await session.delete(dup)
    changed = _assign(row, **values) or bool(extra)
    if all(getattr(row, name) is None for name in CLOCK_FIELDS):
        await session.delete(row)
        return "removed"
    return "updated" if changed else "unchanged"


async def delete_clock_setting(
    session: AsyncSession, category: str | None, depth: int | None
) -> int:
    """Delete the row(s) of one scope; how many there were."""
    await lock_clock_settings(session)
    rows = await clock_rows(session, category, depth)
    for row in rows:
        await session.delete(row)
    return len(rows)


def _two_homes(spec: _BuildingSpec) -> CommunityFileError:
    return CommunityFileError(
        f"moving building {spec.code} to grid {spec.grid} would give one of its residents two "
        "homes on that grid",
        spec.grid_line,
    )


def _assign(obj: object, **values: Any) -> bool:
    """Set the attributes that differ; tell whether any did (so unchanged rows stay clean)."""
    changed = False
    for name, value in values.items():
        if getattr(obj, name) != value:
            setattr(obj, name, value)
            changed = True
    return changed


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CommunityFileError(f"cannot read the file: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        # Spreadsheets saved on Chinese Windows default to GB18030 (a superset of GBK).
        return data.decode("gb18030")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CommunityFileError("the file is neither UTF-8 nor GB18030 text", line) from exc


def _guess_format(path: Path) -> str:
    return "csv" if path.suffix.lower() == ".csv" else "yaml"


async def import_community(
    session: AsyncSession, source: Path | str, *, fmt: str | None = None
) -> ImportReport:
    """Load a community file into the database, in the caller's transaction.

    ``fmt`` is ``"yaml"`` or ``"csv"`` (default: from the file suffix). Raises
    :class:`CommunityFileError` before writing anything when the file is bad.
    """
    path = Path(source)
    label = str(source)
    kind = (fmt or _guess_format(path)).lower()
    if kind == "yml":
        kind = "yaml"
    try:
        if kind not in ("yaml", "csv"):
            raise CommunityFileError(f"unknown format '{fmt}' (yaml or csv)")
        text = _read_text(path)
        plan = _parse_yaml(text) if kind == "yaml" else _parse_csv(text)
        report = ImportReport(
            source=label,
            fmt=kind,
            community=plan.community.code if plan.community else None,
            ignored=plan.ignored,
        )
        await _Importer(session, plan, report).run()
    except CommunityFileError as exc:
        exc.file = exc.file or label
        raise
    return report


# --------------------------------------------------------------------------------------------
# Queries for the admin CLI.

_COUNT_KEYS = ("buildings", "admins", "heads", "workers", "members", "residents")
_ROLE_KEYS = {
    ROLE_ADMIN: "admins",
    ROLE_HEAD: "heads",
    ROLE_WORKER: "workers",
    ROLE_MEMBER: "members",
    ROLE_RESIDENT: "residents",
}


async def grid_tree(session: AsyncSession) -> list[dict[str, Any]]:
    """The whole grid forest as nested dicts.

    Each node has ``code``, ``name``, ``level`` (the community's name for its depth), ``depth``,
    the grid's own counts ``buildings``, ``admins``, ``heads``, ``workers``, ``members``,
    ``residents``, the same counts over its subtree in ``totals``, ``building_list`` (the
    grid's own buildings: ``code``, ``name``, ``address``, by code) and ``children``.
    """
    building_rows: dict[int, list[dict[str, Any]]] = {}
    for b in await session.scalars(select(Building).order_by(Building.code)):
        building_rows.setdefault(b.grid_id, []).append(
            {"code": b.code, "name": b.name, "address": b.address}
        )
    levels = {
        c.id: (c.level_names.split("/") if c.level_names else [])
        for c in await session.scalars(select(Community))
    }
    buildings: dict[int, int] = {
        gid: n
        for gid, n in (
            await session.execute(
                select(Building.grid_id, func.count()).group_by(Building.grid_id)
            )
        )
    }
    roles: dict[tuple[int, str], int] = {
        (gid, role): n
        for gid, role, n in (
            await session.execute(
                select(Role.grid_id, Role.role, func.count()).group_by(Role.grid_id, Role.role)
            )
        )
    }
    nodes: dict[int, dict[str, Any]] = {}
    grids = list(await session.scalars(select(Grid).order_by(Grid.depth, Grid.id)))
    for g in grids:
        names = levels.get(g.community_id, [])
        node: dict[str, Any] = {
            "code": g.code,
            "name": g.name,
            "level": names[g.depth] if g.depth < len(names) else "",
            "depth": g.depth,
            "buildings": buildings.get(g.id, 0),
        }
        for role, key in _ROLE_KEYS.items():
            node[key] = roles.get((g.id, role), 0)
        node["building_list"] = building_rows.get(g.id, [])
        node["children"] = []
        nodes[g.id] = node
    roots: list[dict[str, Any]] = []
    for g in grids:
        parent = nodes.get(g.parent_id) if g.parent_id is not None else None
        (parent["children"] if parent is not None else roots).append(nodes[g.id])

    def total(node: dict[str, Any]) -> dict[str, int]:
        sums = {k: int(node[k]) for k in _COUNT_KEYS}
        for child in node["children"]:
            for k, v in total(child).items():
                sums[k] += v
        node["totals"] = sums
        return sums

    for root in roots:
        total(root)
    return roots


def _count_text(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {counts[k]}" for k in _COUNT_KEYS if counts.get(k))


def render_tree(tree: list[dict[str, Any]]) -> str:
    """Indented text of :func:`grid_tree`'s result, drawn like the ``tree`` command."""
    lines: list[str] = []

    def label(node: dict[str, Any]) -> str:
        text = f"{node['name']} [{node['code']}]"
        if node.get("level"):
            text += f" {node['level']}"
        own = _count_text(node)
        if own:
            text += f" — {own}"
        if node["children"] and any(node["totals"][k] != node[k] for k in _COUNT_KEYS):
            text += f" (subtree: {_count_text(node['totals'])})"
        return text

    def buildings(node: dict[str, Any], prefix: str) -> None:
        # The grid's own buildings, under its label (codes are what invites and files use).
        bar = "│   " if node["children"] else "    "
        for b in node.get("building_list", []):
            lines.append(f"{prefix}{bar}· {b['name']} [{b['code']}]")

    def walk(children: list[dict[str, Any]], prefix: str) -> None:
        for i, child in enumerate(children):
            last = i == len(children) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{label(child)}")
            inner = prefix + ("    " if last else "│   ")
            buildings(child, inner)
            walk(child["children"], inner)

    for root in tree:
        lines.append(label(root))
        buildings(root, "")
        walk(root["children"], "")
    if not lines:
        return "(no grids yet: import a community file first)"
    return "\n".join(lines)
