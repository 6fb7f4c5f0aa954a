"""The daily digest to each grid head: new, open, overdue, done and missed duties, tomorrow's."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select

from bot.core.duties.base import DutyBase
from bot.core.order_clocks import ClockCache, resolve_clocks
from bot.core.overdue import overdue_by
from models import Grid, Household, Order, PatrolRun, Role, VisitLog
from models.duties import RUN_MISSED, RUN_SKIPPED
from models.orders import ACCEPTED, OPEN_STATES
from models.people import ROLE_HEAD


class DigestDuties(DutyBase):
    """The daily digest (每日简报) to each grid head."""

    async def daily_digest(self, due_tomorrow: dict[int, int]) -> int:
        """The daily summary to each grid head, for the head's subtree over the last day.

        ``due_tomorrow`` maps grid ids to the number of duties falling due tomorrow (computed by
        the scheduler from the plans' triggers)."""
        since = self.now - timedelta(days=1)
        # Once per grid a head leads per LOCAL day (the community's time zone, not UTC).
        local = self.now.astimezone(self.settings.tz)
        today = datetime.combine(local.date(), time(0), self.settings.tz)
        heads = (
            await self.session.execute(
                select(Role.person_id, Grid)
                .join(Grid, Grid.id == Role.grid_id)
                .where(Role.role == ROLE_HEAD)
                .order_by(Grid.depth, Grid.id)
            )
        ).all()
        grids = (await self.session.scalars(select(Grid))).all()
        depths = {g.id: g.depth for g in grids}
        clock_cache = ClockCache()
        sent = 0
        for head_id, grid in heads:
            subtree = select(Grid.id).where(Grid.path.startswith(grid.path))

            async def count(stmt: Any) -> int:
                return int(await self.session.scalar(stmt) or 0)

            new = await count(
                select(func.count())
                .select_from(Order)
                .where(Order.grid_id.in_(subtree), Order.created_at >= since)
            )
            open_ = await count(
                select(func.count())
                .select_from(Order)
                .where(Order.grid_id.in_(subtree), Order.status.in_(OPEN_STATES))
            )
            overdue = 0
            accepted = await self.session.scalars(
                select(Order).where(Order.grid_id.in_(subtree), Order.status == ACCEPTED)
            )
            for order in accepted.all():
                # The deadline the order clock applies: clock settings, then the category's.
                handling = depths.get(order.handling_grid_id, 0)
                clocks = await resolve_clocks(
                    self.session, self.settings, order.category, handling, clock_cache
                )
                overdue += overdue_by(order, clocks, self.now) is not None
            patrols_done = await count(
                select(func.count())
                .select_from(PatrolRun)
                .where(PatrolRun.grid_id.in_(subtree), PatrolRun.checked_in_at >= since)
            )
            visits_done = await count(
                select(func.count())
                .select_from(VisitLog)
                .join(Household, Household.id == VisitLog.household_id)
                .where(Household.grid_id.in_(subtree), VisitLog.created_at >= since)
            )
            missed = await count(
                select(func.count())
                .select_from(PatrolRun)
                .where(
                    PatrolRun.grid_id.in_(subtree),
                    PatrolRun.status.in_((RUN_MISSED, RUN_SKIPPED)),
                    PatrolRun.due_at >= since,
                )
            )
            tomorrow = sum(
                n
                for gid, n in due_tomorrow.items()
                if any(g.id == gid and g.path.startswith(grid.path) for g in grids)
            )
            figures = (new, open_, overdue, patrols_done + visits_done, missed, tomorrow)
            # Keyed by head AND grid: a person heading two grids gets the digest of each.
            if not await self.fire_once("digest", f"{head_id}:{grid.id}", today):
                continue
            await self.notify.to_person(
                head_id,
                self.say(
                    "digest.daily",
                    grid=grid.name,
                    new=str(figures[0]),
                    open=str(figures[1]),
                    overdue=str(figures[2]),
                    done=str(figures[3]),
                    missed=str(figures[4]),
                    tomorrow=str(figures[5]),
                ),
            )
            sent += 1
        return sent
