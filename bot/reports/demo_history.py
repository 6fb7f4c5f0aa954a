"""An invented month of orders for the demo community, so that ``gridbot report`` and the
monthly bulletin (``/bulletin`` from 陈书记 in the web chat) have figures to show.

Written straight into the order tables with their event trail (the same rows the order state
machine writes: submit, assign/broadcast, accept, done, rate/close, revisit, reopen, escalate,
cancel, auto-close), for the calendar month before ``now`` in the community's time zone, with
a fixed random seed: the same month always gets the same orders. Nothing is sent: the people
of a fresh demo have no chat yet. Loaded with the demo community when ``demo_history`` is on.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.responsibility import path_ids
from bot.reports.kpi import month_before
from models import Building, Category, Grid, Order, OrderEvent, Person, PointsEntry, Revisit, Role
from models.people import ROLE_HEAD, ROLE_MEMBER, ROLE_RESIDENT, ROLE_WORKER

ORDERS = 36
#: Category codes and how often residents pick them.
CATEGORY_WEIGHTS = {"repair": 10, "sanitation": 5, "elderly": 4, "dispute": 3, "safety": 2,
                    "other": 2}
DESCRIPTIONS = {
    "repair": ["楼道灯坏了", "单元门禁打不开", "厨房水管漏水", "楼顶防水层渗水"],
    "sanitation": ["垃圾桶满了没人清", "楼道里堆满杂物", "小广告贴满了墙"],
    "elderly": ["想请人帮忙买菜", "需要陪同去医院复查", "家里老人需要探望"],
    "dispute": ["楼上半夜噪音很大", "邻居占用了公共通道"],
    "safety": ["楼道里有电动车飞线充电", "闻到燃气味"],
    "other": ["想咨询社保办理", "小区路灯太暗"],
}


class _Trail:
    """An order's events as they are invented, each some minutes after the one before."""

    def __init__(self, at: datetime) -> None:
        self.t = at
        self.events: list[tuple[datetime, int | None, str, str, str | None]] = []

    def step(
        self, minutes: float, actor: int | None, action: str, to: str, note: str | None = None
    ) -> None:
        self.t = self.t + timedelta(minutes=minutes)
        self.events.append((self.t, actor, action, to, note))


async def load_demo_history(session: AsyncSession, now: datetime, tz: ZoneInfo) -> int:
    """Write last month's invented orders; returns how many."""
    period = month_before(now, tz)
    rng = random.Random(period.label)
    grids = {g.id: g for g in (await session.scalars(select(Grid))).all()}
    cats = {c.code: c for c in (await session.scalars(select(Category))).all()}
    buildings = {b.id: b for b in (await session.scalars(select(Building))).all()}
    roles: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    residents: list[tuple[int, int, str | None]] = []
    for role in (await session.scalars(select(Role).order_by(Role.id))).all():
        if role.role == ROLE_RESIDENT and role.building_id:
            residents.append((role.person_id, role.building_id, role.room))
        else:
            roles[role.role][role.grid_id].append(role.person_id)
    if not residents or not cats:
        return 0

    def nearest(role: str, grid: Grid) -> tuple[Grid, list[int]]:
        """The nearest grid at or above ``grid`` with someone holding ``role``."""
        for gid in reversed(path_ids(grid)):
            if roles[role].get(gid):
                return grids[gid], roles[role][gid]
        return grid, []

    def members_near(grid: Grid) -> list[int]:
        for gid in reversed(path_ids(grid)):
            found = [p for g in grids.values() if g.path.startswith(grids[gid].path)
                     for p in roles[ROLE_MEMBER].get(g.id, [])]
            if found:
                return sorted(set(found))
        return []

    codes = [c for c in CATEGORY_WEIGHTS if c in cats]
    days = (period.end - period.start).days
    written = 0
    for _ in range(ORDERS):
        resident, building_id, room = rng.choice(residents)
        grid = grids[buildings[building_id].grid_id]
        code = rng.choices(codes, [CATEGORY_WEIGHTS[c] for c in codes])[0]
        at = period.start + timedelta(days=rng.randrange(days), hours=rng.randint(7, 21),
                                      minutes=rng.randrange(60))
        handling, handlers = nearest(ROLE_WORKER, grid)
        if not handlers:
            handling, handlers = nearest(ROLE_HEAD, grid)
        members = members_near(grid)
        if not handlers or not members:
            continue
        order = Order(resident_id=resident, building_id=building_id, room=room, grid_id=grid.id,
                      handling_grid_id=handling.id, category=code,
                      description=rng.choice(DESCRIPTIONS[code]), status="submitted",
                      created_at=at, updated_at=at)
        session.add(order)
        await session.flush()
        trail = _Trail(at)
        trail.step(0, resident, "submit", "submitted")
        step = trail.step
        story = rng.random()
        handler = rng.choice(handlers)
        member = rng.choice(members)
        rating: int | None = None
        if story < 0.08:
            step(rng.randint(2, 20), resident, "cancel", "cancelled")
        else:
            if story < 0.18:  # the worker cannot: up to the head above, who takes it himself
                step(rng.randint(10, 60), handler, "escalate", "escalated", "需要上级协调")
                parent = grids.get(handling.parent_id or 0, handling)
                handling, heads = nearest(ROLE_HEAD, parent)
                order.handling_grid_id = handling.id
                member = (heads or [handler])[0]
                step(rng.randint(20, 240), member, "handle", "accepted")
            else:
                action = rng.choice(("assign", "broadcast"))
                step(rng.choice((5, 10, 20, 25, 45, 90)), handler, action, "dispatched")
                step(rng.choice((5, 15, 30, 50, 120)), member, "accept", "accepted")
            hours = cats[code].deadline_hours
            step(60 * rng.uniform(0.1, 1.3) * hours, member, "done", "done")
            if 0.18 <= story < 0.26:  # "not solved", then done again
                step(rng.randint(60, 600), resident, "reopen", "accepted")
                step(rng.randint(60, 1200), member, "done", "done")
            if story > 0.93:
                step(60 * 24 * 7, None, "auto_close", "auto_closed")
            else:
                rating = rng.choices((5, 4, 3, 2), (60, 25, 10, 5))[0]
                step(rng.randint(30, 1440), resident, "rate", "confirmed", str(rating))
                if rating > 3:
                    step(0, resident, "close", "closed")
        kept = [e for e in trail.events if e[0] <= now]
        previous: str | None = None
        for when, actor, action, to, note in kept:
            session.add(OrderEvent(order_id=order.id, actor_id=actor, action=action,
                                   from_status=previous, to_status=to, note=note,
                                   created_at=when))
            previous = to
            if action in ("rate", "auto_close") and cats[code].points > 0:
                session.add(PointsEntry(person_id=member, order_id=order.id,
                                        points=cats[code].points, reason="order_done",
                                        created_at=when))
                await session.execute(update(Person).where(Person.id == member)
                                      .values(points=Person.points + cats[code].points))
            if action == "rate" and rating is not None and rating <= 3:
                head_grid, heads = nearest(ROLE_HEAD, grid)
                done_at = when + timedelta(hours=rng.randint(2, 30))
                visited = done_at <= now
                session.add(Revisit(order_id=order.id, grid_id=head_grid.id,
                                    head_id=heads[0] if heads else None,
                                    status="done" if visited else "open", created_at=when,
                                    done_at=done_at if visited else None,
                                    note="已电话回访" if visited else None))
                if visited:
                    session.add(OrderEvent(order_id=order.id, actor_id=heads[0] if heads else None,
                                           action="revisit", from_status="confirmed",
                                           to_status="closed", note="已电话回访",
                                           created_at=done_at))
                    previous = "closed"
        order.status = previous or "submitted"
        order.updated_at = kept[-1][0]
        order.assignee_id = member if order.status not in ("submitted", "cancelled",
                                                           "dispatched", "escalated") else None
        order.rating = rating if order.status in ("confirmed", "closed") else None
        written += 1
    return written
