"""Checking a parsed plan against the database, before anything is written.

Reads only: loads the rows the plan refers to (community, grids, buildings, people and their
roles, categories), resolves each role to its grid, resolves the clocks' levels to depths and
finds the residents who follow a moving building. Anything that would make the import wrong
raises :class:`~bot.admin.importer.errors.CommunityFileError` at the file's line, so a bad
file changes nothing. The result, :class:`CheckedPlan`, is what the writer applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.admin.clock_store import clock_scope, resolve_level
from bot.admin.importer.errors import CommunityFileError
from bot.admin.importer.plan import BuildingSpec, Plan, RoleSpec, default_categories
from models.grid import Building, Category, Community, Grid
from models.people import ROLE_RESIDENT, ROLES, Person, Role

_CHUNK = 500
_T = TypeVar("_T")


def _chunks(items: Sequence[_T], size: int = _CHUNK) -> Iterable[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class ResolvedRole:
    """A role of a person in the file, with the grid it is on (a resident's: their building's)."""

    role: str
    grid: str
    building: str | None
    room: str | None
    line: int


@dataclass
class CheckedPlan:
    """A plan that passed every check, with the rows it refers to as loaded (the writer adds
    the rows it creates to these maps)."""

    plan: Plan
    fmt: str
    community: Community | None
    grids: dict[str, Grid]
    grids_by_id: dict[int, Grid]
    buildings: dict[str, Building]
    people: dict[str, Person]
    roles: dict[int, list[Role]]
    categories: dict[str, Category]
    resolved_roles: dict[str, list[ResolvedRole]]
    #: Per clock of the plan, the depth its level stands for.
    clock_depths: list[int | None]
    #: Residents not listed in the file whose building moves to another grid (role, grid code).
    moving_roles: list[tuple[Role, str]]
    #: Whether the import creates the default categories (a new YAML community without any).
    adds_default_categories: bool


async def check_plan(session: AsyncSession, plan: Plan, fmt: str) -> CheckedPlan:
    """Check ``plan`` (read from a ``fmt`` file) against the database; reads only."""
    v = _Validator(session, plan, fmt)
    await v._load()
    await v._validate()
    return CheckedPlan(
        plan=plan,
        fmt=fmt,
        community=v.community,
        grids=v.grids,
        grids_by_id=v.grids_by_id,
        buildings=v.buildings,
        people=v.people,
        roles=v.roles,
        categories=v.categories,
        resolved_roles=v.resolved_roles,
        clock_depths=v.clock_depths,
        moving_roles=v.moving_roles,
        adds_default_categories=v._adds_default_categories(),
    )


def two_homes(spec: BuildingSpec) -> CommunityFileError:
    return CommunityFileError(
        f"moving building {spec.code} to grid {spec.grid} would give one of its residents two "
        "homes on that grid",
        spec.grid_line,
    )


class _Validator:
    def __init__(self, session: AsyncSession, plan: Plan, fmt: str) -> None:
        self.s = session
        self.plan = plan
        self.fmt = fmt
        self.community: Community | None = None
        self.grids: dict[str, Grid] = {}
        self.grids_by_id: dict[int, Grid] = {}
        self.buildings: dict[str, Building] = {}
        self.people: dict[str, Person] = {}
        self.roles: dict[int, list[Role]] = {}
        self.categories: dict[str, Category] = {}
        self.file_grids = {g.code: g for g in plan.grids}
        self.file_buildings = {b.code: b for b in plan.buildings}
        self.resolved_roles: dict[str, list[ResolvedRole]] = {}
        self.clock_depths: list[int | None] = []  # per clock of the plan, once validated
        # Residents not listed in the file whose building moves to another grid.
        self.moving_roles: list[tuple[Role, str]] = []

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
            resolved: list[ResolvedRole] = []
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
            and self.fmt == "yaml"
            and self.plan.community is not None
            and not self.categories
        )

    def _resolve_role(self, key: str, r: RoleSpec) -> ResolvedRole:
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
            return ResolvedRole(r.role, grid, r.building, r.room, r.line)
        if r.grid is None:
            raise CommunityFileError(f"{what}: a {r.role} role needs a grid", r.line)
        if not self._grid_known(r.grid):
            raise CommunityFileError(f"{what} refers to unknown grid {r.grid}", r.line)
        return ResolvedRole(r.role, r.grid, r.building, r.room, r.line)

    async def _check_moving_buildings(self) -> None:
        """Residents the file does not list follow their building to its new grid."""
        moved: dict[int, BuildingSpec] = {}
        for spec in self.plan.buildings:
            b = self.buildings.get(spec.code)
            if b is not None and self.grids_by_id[b.grid_id].code != spec.grid:
                moved[b.id] = spec
        if not moved:
            return
        listed = {p.id for p in self.people.values()}
        stmt = select(Role).where(Role.role == ROLE_RESIDENT, Role.building_id.in_(list(moved)))
        # (person, target grid) -> the building that takes them there
        targets: dict[tuple[int, str], BuildingSpec] = {}
        for role in await self.s.scalars(stmt):
            if role.person_id in listed or role.building_id is None:
                continue
            spec = moved[role.building_id]
            ident = (role.person_id, spec.grid)
            if ident in targets:
                raise two_homes(spec)
            targets[ident] = spec
            self.moving_roles.append((role, spec.grid))
        moving_ids = {role.id for role, _ in self.moving_roles}
        person_ids = sorted({role.person_id for role, _ in self.moving_roles})
        for chunk in _chunks(person_ids):
            stmt = select(Role).where(Role.role == ROLE_RESIDENT, Role.person_id.in_(chunk))
            for other in await self.s.scalars(stmt):
                ident = (other.person_id, self.grids_by_id[other.grid_id].code)
                if other.id not in moving_ids and ident in targets:
                    raise two_homes(targets[ident])
