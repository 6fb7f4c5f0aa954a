"""What a community file says, as the reader parses it: the plan, each item with its line.

Optional fields that a file leaves out are :data:`MISSING` (left as they are by the writer),
as opposed to ``None`` (cleared).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal


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


class Missing(enum.Enum):
    MISSING = 0


MISSING = Missing.MISSING
OptText = str | None | Literal[Missing.MISSING]


@dataclass
class CommunitySpec:
    code: str
    name: str
    timezone: str | None  # None: not in the file
    levels: list[str] | None  # None: not in the file
    line: int


@dataclass
class GridSpec:
    code: str
    name: str
    parent: str | None
    depth: int
    line: int


@dataclass
class BuildingSpec:
    code: str
    grid: str
    name: str
    address: OptText
    line: int
    grid_line: int
    #: (latitude, longitude); None clears them; missing leaves them as they are.
    coords: tuple[float, float] | Literal[Missing.MISSING] | None = Missing.MISSING


@dataclass
class RoleSpec:
    role: str
    grid: str | None
    building: str | None
    room: str | None
    line: int


@dataclass
class PersonSpec:
    key: str
    name: str
    phone: OptText
    locale: OptText
    roles: list[RoleSpec]
    line: int


@dataclass
class CategoryLine:
    spec: CategorySpec
    sort: int
    line: int
    #: Open311 fields the file gives (``service_group``, ``keywords``, ``attributes``); one it
    #: leaves out is left as it is.
    service: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClockSpec:
    category: str | None
    level: str | int | None  # a level name, a depth, or None (any level)
    values: dict[str, int | None]  # None: clear that duration
    line: int
    category_line: int
    level_line: int


@dataclass
class Plan:
    community: CommunitySpec | None = None
    grids: list[GridSpec] = field(default_factory=list)
    buildings: list[BuildingSpec] = field(default_factory=list)
    people: list[PersonSpec] = field(default_factory=list)
    categories: list[CategoryLine] = field(default_factory=list)
    clocks: list[ClockSpec] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
