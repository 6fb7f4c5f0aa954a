"""Writing a checked plan: rows are matched by code (grids, buildings, categories) or key
(people) and upserted in place, only what differs is set, and what the import did is counted
in an :class:`ImportReport`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.admin.clock_store import write_clock_setting
from bot.admin.importer.plan import MISSING, CategoryLine, GridSpec, default_categories
from bot.admin.importer.validator import CheckedPlan
from bot.admin.rows import assign_changed
from models.grid import Building, Category, Community, Grid
from models.people import Person, Role

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

DEFAULT_TIMEZONE = "Asia/Shanghai"


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


async def write_plan(session: AsyncSession, checked: CheckedPlan, report: ImportReport) -> None:
    """Apply ``checked`` in the caller's transaction, counting into ``report``."""
    await _Writer(session, checked, report)._write()


class _Writer:
    def __init__(self, session: AsyncSession, checked: CheckedPlan, report: ImportReport) -> None:
        self.s = session
        self.plan = checked.plan
        self.report = report
        self.community = checked.community
        self.grids = checked.grids
        self.grids_by_id = checked.grids_by_id
        self.buildings = checked.buildings
        self.people = checked.people
        self.roles = checked.roles
        self.categories = checked.categories
        self.resolved_roles = checked.resolved_roles
        self.clock_depths = checked.clock_depths
        self.moving_roles = checked.moving_roles
        self.adds_default_categories = checked.adds_default_categories

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
        elif assign_changed(c, **values):
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
        by_depth: dict[int, list[GridSpec]] = {}
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
                elif assign_changed(
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
            if assign_changed(grid, path=path, depth=depth) and grid.code not in created:
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
            if spec.address is not MISSING:
                values["address"] = spec.address or ""
            if spec.coords is not MISSING:
                lat, lon = spec.coords if spec.coords is not None else (None, None)
                values.update(latitude=lat, longitude=lon)
            if assign_changed(b, **values):
                counts.updated += 1
            else:
                counts.unchanged += 1
        if new:
            await self.s.flush()
            for b in new:
                self.buildings[b.code] = b
        role_counts = self.report.counts["roles"]
        for role, grid_code in self.moving_roles:
            if assign_changed(role, grid_id=self.grids[grid_code].id):
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
            if spec.phone is not MISSING:
                values["phone"] = spec.phone
            if spec.locale is not MISSING:
                values["locale"] = spec.locale
            if assign_changed(person, **values):
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
                elif assign_changed(role, building_id=building_id, room=rr.room):
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
            if not self.adds_default_categories:
                return
            lines = [CategoryLine(spec, i, 0) for i, spec in enumerate(default_categories())]
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
            elif assign_changed(cat, **values):
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
