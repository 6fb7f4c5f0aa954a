"""Patrols: a worker's patrol of a grid falls due, is checked in, or is missed (the head is
told)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite

from bot.core import payloads, points
from bot.core.duties.base import YIELD_EVERY, DutyBase
from bot.core.orders import OrderError
from bot.core.responsibility import can_manage
from bot.ports import Button, Outbound
from models import Grid, PatrolPlan, PatrolRun, Person, refs
from models.duties import RUN_CHECKED_IN, RUN_DUE, RUN_MISSED, RUN_SKIPPED


class PatrolDuties(DutyBase):
    """Patrols (巡查): the reminder with its check-in button, the check-in, missed patrols."""

    async def prefetch_patrols(self, plan_ids: list[int]) -> dict[int, PatrolPlan]:
        """Load a burst's patrol plans, their grids and workers (and where their pushes go) in
        a few queries; the reminders then find them in the session instead of querying one by
        one. Kept referenced until the transaction ends (see :meth:`_load`)."""
        plans = await self._load(select(PatrolPlan).where(PatrolPlan.id.in_(plan_ids)))
        await self._prefetch_grids({p.grid_id for p in plans})
        await self._prefetch_people({p.person_id for p in plans})
        return {p.id: p for p in plans}

    async def patrol_due(self, plan_id: int, due_at: datetime) -> int | None:
        """A patrol starts: open its run (once) and remind the patrol worker; the run's id, or
        ``None`` when it already fired."""
        return (await self.patrols_due([(plan_id, due_at)])).get((plan_id, due_at))

    async def patrols_due(
        self, due: list[tuple[int, datetime]]
    ) -> dict[tuple[int, datetime], int]:
        """Patrols start (one, or a 09:00 burst's batch): open their runs (once each) and remind
        the patrol workers. The runs are inserted by one multi-row statement; a run already
        there (fired before) is skipped. Returns (plan id, due time) → run id of the runs
        opened now."""
        plans = await self.prefetch_patrols([plan_id for plan_id, _ in due])
        todo = [
            (plan, due_at, due_at + timedelta(minutes=plan.deadline_minutes))
            for plan_id, due_at in due
            if (plan := plans.get(plan_id)) is not None and plan.active
        ]
        if not todo:
            return {}
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        result = await self.session.execute(
            insert(PatrolRun)
            .on_conflict_do_nothing()
            .returning(PatrolRun.id, PatrolRun.plan_id, PatrolRun.due_at),
            [
                {
                    "plan_id": plan.id,
                    "grid_id": plan.grid_id,
                    "person_id": plan.person_id,
                    "due_at": due_at,
                    "deadline_at": deadline,
                    "status": RUN_DUE,
                    "created_at": self.now,
                }
                for plan, due_at, deadline in todo
            ],
        )
        opened = {(plan_id, due_at): run_id for run_id, plan_id, due_at in result.all()}
        await asyncio.sleep(0)
        for grid_id in {plan.grid_id for plan, _, _ in todo}:
            await self.quiet_until(grid_id)  # looked up once per community, before any row
        written = len(self.notify.written)
        for n, (plan, due_at, deadline) in enumerate(todo):
            run_id = opened.get((plan.id, due_at))
            if run_id is None:
                continue  # already fired for this due time
            grid = await self.session.get(Grid, plan.grid_id)
            assert grid is not None
            until = self.local(deadline, plan.timezone).strftime("%H:%M")

            def render(
                lang: str, grid: Grid = grid, until: str = until, run: int = run_id
            ) -> Outbound:
                return Outbound(
                    self.tr.t(lang, "patrol.reminder", grid=grid.name, deadline=until),
                    [[Button(self.tr.t(lang, "btn.check_in"), payloads.check_in(run))]],
                )

            await self._push(plan.person_id, render, plan.grid_id, ref=refs.patrol(run_id))
            if n % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)  # a burst's batch: let chat replies run in between
        await self._insert_pending(self.notify.written[written:])
        return opened

    async def patrol_skipped(self, plan_id: int, due_at: datetime) -> None:
        """The reminder was missed beyond the grace: record it (the digest shows it)."""
        plan = await self.session.get(PatrolPlan, plan_id)
        if plan is None:
            return
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        await self.session.execute(
            insert(PatrolRun)
            .values(
                plan_id=plan.id,
                grid_id=plan.grid_id,
                person_id=plan.person_id,
                due_at=due_at,
                deadline_at=due_at,
                status=RUN_SKIPPED,
                created_at=self.now,
            )
            .on_conflict_do_nothing()
        )

    async def start_check_in(self, person: Person, run_id: int) -> PatrolRun:
        """May ``person`` check in for this run? (before asking for the note)"""
        run = await self.session.get(PatrolRun, run_id)
        if run is None:
            raise OrderError("error.button_invalid")
        if run.person_id != person.id:
            grid = await self.session.get(Grid, run.grid_id)
            if grid is None or not await can_manage(self.session, person.id, grid):
                raise OrderError("error.not_your_button")
        if run.status == RUN_CHECKED_IN:
            raise OrderError("patrol.already_checked_in")
        return run

    async def check_in(
        self,
        person: Person,
        run_id: int,
        note: str | None,
        photo: str | None,
        location: tuple[float, float] | None,
    ) -> PatrolRun:
        """Record the check-in (a late one after a miss is kept, and marked late)."""
        run = await self.start_check_in(person, run_id)
        on_time = run.status == RUN_DUE and self.now <= run.deadline_at
        result = await self.session.execute(
            update(PatrolRun)
            .where(PatrolRun.id == run.id, PatrolRun.status.in_((RUN_DUE, RUN_MISSED)))
            .values(
                status=RUN_CHECKED_IN,
                checked_in_at=self.now,
                checked_in_by=person.id,
                note=note,
                photo=photo,
                latitude=location[0] if location else None,
                longitude=location[1] if location else None,
            )
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise OrderError("patrol.already_checked_in")
        await self.session.refresh(run)
        if on_time:
            await points.award(
                self.session,
                person_id=person.id,
                points=self.points.patrol,
                reason=points.PATROL,
                key=f"{points.PATROL}:{run.id}",
                now=self.now,
            )
        return run

    async def patrol_deadlines(self) -> int:
        """Runs not checked in by their deadline: mark missed and tell the grid head, once."""
        runs = (
            await self.session.scalars(
                select(PatrolRun).where(
                    PatrolRun.status == RUN_DUE, PatrolRun.deadline_at <= self.now
                )
            )
        ).all()
        told = 0
        for run in runs:
            result = await self.session.execute(
                update(PatrolRun)
                .where(PatrolRun.id == run.id, PatrolRun.status == RUN_DUE)
                .values(status=RUN_MISSED, head_told_at=self.now)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                continue
            grid = await self.session.get(Grid, run.grid_id)
            person = await self.session.get(Person, run.person_id)
            plan = await self.session.get(PatrolPlan, run.plan_id)
            if grid is None or person is None or plan is None:
                continue
            due = self.local(run.due_at, plan.timezone).strftime("%m-%d %H:%M")
            for head in await self.heads_for(grid):
                await self._push(
                    head,
                    lambda lang, g=grid, p=person, d=due: Outbound(
                        self.tr.t(lang, "patrol.missed", grid=g.name, name=p.name, due=d)
                    ),
                    grid.id,
                )
            told += 1
        return told
