"""The grid tree report (``gridbot grids``): the grid forest with each grid's level, buildings
and role counts, and the same counts over its subtree, as data or drawn as text."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from models.grid import Building, Community, Grid
from models.people import ROLE_ADMIN, ROLE_HEAD, ROLE_MEMBER, ROLE_RESIDENT, ROLE_WORKER, Role

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
