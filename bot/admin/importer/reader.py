"""Reading a community file: its text (UTF-8 or GB18030), YAML with line numbers or flat CSV
lists, checked item by item into a :class:`~bot.admin.importer.plan.Plan`.

The reader checks what the file alone can tell (keys, types, codes, phones, duplicates); what
needs the database is :mod:`bot.admin.importer.validator`'s. The CSV helpers
(:func:`open_csv`, :func:`check_columns`, :func:`csv_rows`) and :func:`read_text` serve the
duty lists too (:mod:`bot.admin.duty_import`).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from bot.admin.clock_store import CLOCK_FIELDS
from bot.admin.importer.errors import CommunityFileError
from bot.admin.importer.plan import (
    MISSING,
    BuildingSpec,
    CategoryLine,
    CategorySpec,
    ClockSpec,
    CommunitySpec,
    GridSpec,
    Missing,
    OptText,
    PersonSpec,
    Plan,
    RoleSpec,
)

CODE_RE = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")
PHONE_RE = re.compile(r"[0-9+\- ]{1,20}\Z")
LOCALE_RE = re.compile(r"[A-Za-z]{2,3}(?:[_-][A-Za-z0-9]{2,8}){0,2}\Z")


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


def _opt_text(m: _Map, key: str, what: str, max_len: int = 200) -> OptText:
    if key not in m:
        return MISSING
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
    return None if value is MISSING else value


def _check_code(code: str, what: str, line: int) -> str:
    if not CODE_RE.match(code):
        raise CommunityFileError(f"bad {what} '{code}' (1-32 characters of A-Z a-z 0-9 _ -)", line)
    return code


def _check_phone(phone: OptText, line: int) -> OptText:
    if isinstance(phone, str) and not PHONE_RE.match(phone):
        raise CommunityFileError(
            f"bad phone '{phone}' (digits, +, - and spaces, at most 20)", line
        )
    return phone


def _check_locale(locale: OptText, line: int) -> OptText:
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
) -> tuple[float, float] | Literal[Missing.MISSING] | None:
    """A building's optional coordinates: both or neither; ``None`` in both clears them."""
    if lat is MISSING and lon is MISSING:
        return Missing.MISSING
    if lat is None and lon is None:
        return None
    if lat is MISSING or lon is MISSING or lat is None or lon is None:
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
    if group is not MISSING:
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


def parse_yaml(text: str) -> Plan:
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
    plan = Plan(ignored=[k for k in data if k not in _TOP_KEYS])

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
        plan.community = CommunitySpec(
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
        plan.categories.append(CategoryLine(spec, index, cm.line, _service_fields(cm, code)))

    seen_grid = _Seen("grid code")

    def walk(items: list[Any], parent: str | None, depth: int, line: int) -> None:
        for item in items:
            gm = _as_map(item, "grid", line)
            _check_keys(gm, ("code", "name", "children"), "grid")
            code = _check_code(_req_text(gm, "code", "grid", 64), "grid code", gm.line_of("code"))
            seen_grid.add(code, gm.line)
            name = _req_text(gm, "name", f"grid {code}")
            plan.grids.append(GridSpec(code, name, parent, depth, gm.line))
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
            BuildingSpec(
                code,
                grid,
                _req_text(bm, "name", f"building {code}"),
                _opt_text(bm, "address", f"building {code}", 500),
                bm.line,
                bm.line_of("grid"),
                _coords(
                    bm.get("latitude", MISSING),
                    bm.get("longitude", MISSING),
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
        roles: list[RoleSpec] = []
        for role_item in _as_list(pm, "roles", what):
            rm = _as_map(role_item, "role", pm.line_of("roles"))
            _check_keys(rm, ("role", "grid", "building", "room"), f"a role of {what}")
            roles.append(
                RoleSpec(
                    role=_req_text(rm, "role", f"a role of {what}", 16),
                    grid=_opt_ref(rm, "grid", what),
                    building=_opt_ref(rm, "building", what),
                    room=_opt_ref(rm, "room", what, 32),
                    line=rm.line,
                )
            )
        plan.people.append(
            PersonSpec(
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


def _parse_clock(km: _Map) -> ClockSpec:
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
    return ClockSpec(category, level, values, km.line, km.line_of("category"), km.line_of("level"))


# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# CSV.


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


def parse_csv(text: str) -> Plan:
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

    plan = Plan()
    seen_building = _Seen("building code")
    people: dict[str, PersonSpec] = {}
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
                BuildingSpec(
                    code,
                    row["grid"],
                    row["name"],
                    row.get("address") or MISSING,
                    line,
                    line,
                    _coords(
                        row.get("latitude") or MISSING,
                        row.get("longitude") or MISSING,
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
        phone = _check_phone(row.get("phone") or MISSING, line)
        locale = _check_locale(row.get("locale") or MISSING, line)
        person = people.get(key)
        if person is None:
            person = people[key] = PersonSpec(key, row["name"], phone, locale, [], line)
            row_lines[key] = line
        else:
            first = row_lines[key]
            if row["name"] != person.name:
                raise CommunityFileError(
                    f"{what}: name differs from line {first} ('{person.name}')", line
                )
            for attr, value in (("phone", phone), ("locale", locale)):
                known = getattr(person, attr)
                if value is MISSING:
                    continue
                if known is MISSING:
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
                RoleSpec(
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


# --------------------------------------------------------------------------------------------
# Text and format.


def read_text(path: Path) -> str:
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


def guess_format(path: Path) -> str:
    return "csv" if path.suffix.lower() == ".csv" else "yaml"
