"""Visits of key households (走访): due reminders, the visit log, the month end (月末预提醒)."""

from __future__ import annotations

import asyncio
import calendar
from collections import defaultdict
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from bot.core import payloads, points
from bot.core.duties.base import YIELD_EVERY, DutyBase
from bot.core.orders import NewOrder, OrderError
from bot.core.responsibility import can_manage
from bot.ports import Button, Outbound
from models import (
    Building,
    Category,
    DutyFire,
    Grid,
    Household,
    Order,
    Person,
    VisitLog,
    VisitPlan,
    refs,
)
from models.duties import FREQUENCIES, HOUSEHOLD_KINDS, VISIT_HELP
from models.orders import SOURCE_VISIT

PERIODS = {"weekly": timedelta(weeks=1), "fortnightly": timedelta(weeks=2)}


def previous_due(frequency: str, due_at: datetime, tz: ZoneInfo) -> datetime:
    """The due time one period before ``due_at`` (same local wall time)."""
    local = due_at.astimezone(tz)
    if frequency == "monthly":
        year, month = (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)
        day = min(local.day, calendar.monthrange(year, month)[1])
        return local.replace(year=year, month=month, day=day)
    return datetime.combine(local.date() - PERIODS[frequency], local.timetz())


class VisitDuties(DutyBase):
    """Visits (走访) of key households by their paired members: reminders, the visit log (a
    call for help becomes an order), the month-end pre-reminder, and households and visit
    plans added from the chat."""

    async def prefetch_visits(self, plan_ids: list[int]) -> dict[int, VisitPlan]:
        """Load a burst's visit plans, households, grids and members in a few queries."""
        plans = await self._load(select(VisitPlan).where(VisitPlan.id.in_(plan_ids)))
        household_ids = {p.household_id for p in plans}
        if household_ids:
            households = await self._load(select(Household).where(Household.id.in_(household_ids)))
            await self._prefetch_grids({h.grid_id for h in households})
        await self._prefetch_people({p.member_id for p in plans})
        return {p.id: p for p in plans}

    def household_text(self, lang: str, household: Household) -> str:
        """A household with its address and notes (only for paired member, worker, head)."""
        kind = self.tr.t(lang, f"household.kind.{household.kind}")
        text = self.tr.t(
            lang,
            "visit.household",
            name=household.name,
            kind=kind,
            address=household.address or "-",
        )
        if household.notes:
            text += "\n" + self.tr.t(lang, "visit.notes", notes=household.notes)
        return text

    async def visit_due(self, plan_id: int, due_at: datetime) -> bool:
        """A visit falls due: tell the head if the last period went unvisited, then remind the
        paired member. ``False`` when it already fired."""
        return bool(await self.visits_due([(plan_id, due_at)]))

    async def visits_due(self, due: list[tuple[int, datetime]]) -> set[tuple[int, datetime]]:
        """Visits fall due (one, or a burst's batch): for each, record it (once: one multi-row
        ``duty_fire`` insert for the batch), tell the head if the last period went unvisited,
        and remind the paired member. Returns the (plan id, due time) that fired now."""
        plans = await self.prefetch_visits([plan_id for plan_id, _ in due])
        todo = [
            (plan, due_at)
            for plan_id, due_at in due
            if (plan := plans.get(plan_id)) is not None and plan.active
        ]
        if not todo:
            return set()
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        result = await self.session.execute(
            insert(DutyFire).on_conflict_do_nothing().returning(DutyFire.key, DutyFire.due_at),
            [
                {"kind": "visit", "key": str(plan.id), "due_at": due_at, "fired_at": self.now}
                for plan, due_at in todo
            ],
        )
        fired = {(int(key), due_at) for key, due_at in result.all()}
        await asyncio.sleep(0)
        for plan, _ in todo:
            household = await self.session.get(Household, plan.household_id)
            if household is not None:
                await self.quiet_until(household.grid_id)  # once per community, before any row
        written = len(self.notify.written)
        for n, (plan, due_at) in enumerate(todo):
            if (plan.id, due_at) not in fired:
                continue  # already fired for this due time
            await self._visit_reminder(plan, due_at)
            if n % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)  # a burst's batch: let chat replies run in between
        await self._insert_pending(self.notify.written[written:])
        return fired

    async def _visit_reminder(self, plan: VisitPlan, due_at: datetime) -> None:
        household = await self.session.get(Household, plan.household_id)
        assert household is not None
        tz = ZoneInfo(plan.timezone)
        before = previous_due(plan.frequency, due_at, tz)
        if before >= plan.starts_at and (
            plan.last_visit_at is None or plan.last_visit_at < before
        ):
            await self._visit_overdue(plan, household, before)
        plan_id = plan.id

        def render(lang: str) -> Outbound:
            return Outbound(
                self.tr.t(lang, "visit.reminder") + "\n" + self.household_text(lang, household),
                [
                    [
                        Button(self.tr.t(lang, "btn.visit_fine"), payloads.visit("ok", plan_id)),
                        Button(self.tr.t(lang, "btn.visit_help"), payloads.visit("help", plan_id)),
                    ]
                ],
            )

        await self._push(plan.member_id, render, household.grid_id, ref=refs.visit(plan.id))

    async def _visit_overdue(self, plan: VisitPlan, household: Household, since: datetime) -> None:
        grid = await self.session.get(Grid, household.grid_id)
        member = await self.session.get(Person, plan.member_id)
        if grid is None or member is None:
            return
        day = self.local(since, plan.timezone).strftime("%m-%d")
        for head in await self.heads_for(grid):
            await self._push(
                head,
                lambda lang: Outbound(
                    self.tr.t(lang, "visit.overdue", name=member.name, since=day)
                    + "\n"
                    + self.household_text(lang, household)
                ),
                grid.id,
            )

    async def start_visit(self, person: Person, plan_id: int) -> tuple[VisitPlan, Household]:
        """May ``person`` log a visit for this plan?"""
        plan = await self.session.get(VisitPlan, plan_id)
        if plan is None:
            raise OrderError("error.button_invalid")
        household = await self.session.get(Household, plan.household_id)
        assert household is not None
        if plan.member_id != person.id:
            grid = await self.session.get(Grid, household.grid_id)
            if grid is None or not await can_manage(self.session, person.id, grid):
                raise OrderError("error.not_your_button")
        return plan, household

    async def log_visit(
        self, person: Person, plan_id: int, outcome: str, note: str | None
    ) -> VisitLog:
        """Record a visit; "needs help" becomes an order in the household's grid."""
        plan, household = await self.start_visit(person, plan_id)
        order_id = None
        if outcome == VISIT_HELP:
            order = await self._help_order(person, household, note or "")
            order_id = order.id
        entry = VisitLog(
            plan_id=plan.id,
            household_id=household.id,
            member_id=person.id,
            outcome=outcome,
            note=note,
            order_id=order_id,
            created_at=self.now,
        )
        self.session.add(entry)
        plan.last_visit_at = self.now
        await self.session.flush()
        # One visit a day per plan earns points, however often it is logged that day.
        day = self.local(self.now, plan.timezone).date().isoformat()
        await points.award(
            self.session,
            person_id=person.id,
            points=self.points.visit,
            reason=points.VISIT,
            key=f"{points.VISIT}:{plan.id}:{day}",
            now=self.now,
        )
        return entry

    async def _help_order(self, person: Person, household: Household, note: str) -> Order:
        building = await self.session.get(Building, household.building_id)
        assert building is not None
        codes = set((await self.session.scalars(select(Category.code))).all())
        category = (
            "elderly"
            if "elderly" in codes and household.kind in ("elderly_alone", "empty_nest")
            else ("other" if "other" in codes else min(codes))
        )
        resident = await self.session.get(Person, household.person_id or person.id)
        assert resident is not None
        description = self.tr.t(
            self.settings.default_locale, "visit.order_text", name=household.name, note=note
        )
        return await self.orders.submit(
            resident,
            building,
            None,
            NewOrder(category=category, description=description, source=SOURCE_VISIT),
        )

    async def month_end(self, local_day: date) -> int:
        """Month-end pre-reminder (月末预提醒): each member's households not visited this month,
        and each head's count. Returns the number of owed visits."""
        first = datetime.combine(local_day.replace(day=1), time(0), self.settings.tz)
        rows = (
            await self.session.execute(
                select(VisitPlan, Household)
                .join(Household, Household.id == VisitPlan.household_id)
                .where(
                    VisitPlan.active.is_(True),
                    VisitPlan.starts_at < first + timedelta(days=31),
                    or_(VisitPlan.last_visit_at.is_(None), VisitPlan.last_visit_at < first),
                )
                .order_by(VisitPlan.member_id, Household.id)
            )
        ).all()
        by_member: dict[int, list[Household]] = defaultdict(list)
        by_grid: dict[int, int] = defaultdict(int)
        for plan, household in rows:
            by_member[plan.member_id].append(household)
            by_grid[household.grid_id] += 1
        for member_id, households in by_member.items():
            names = "、".join(h.name for h in households)
            owed = str(len(households))
            await self._push(
                member_id,
                lambda lang, n=names, c=owed: Outbound(
                    self.tr.t(lang, "visit.month_end", count=c, names=n)
                ),
                households[0].grid_id,
            )
        heads: dict[int, int] = defaultdict(int)
        for grid_id, count in by_grid.items():
            grid = await self.session.get(Grid, grid_id)
            if grid is not None:
                for head in await self.heads_for(grid):
                    heads[head] += count
        for head, count in heads.items():
            await self.notify.to_person(
                head,
                self.say("visit.month_end_head", count=str(count)),
            )
        return len(rows)

    # ---- chat administration --------------------------------------------------------------

    async def add_household(
        self,
        person: Person,
        building_code: str,
        kind: str,
        name: str,
        address: str,
        notes: str = "",
    ) -> Household:
        """A worker (or head/admin) adds a key household in a building they look after."""
        building = await self.session.scalar(
            select(Building).where(Building.code == building_code)
        )
        if building is None:
            raise OrderError("duty.unknown_building", code=building_code[:32])
        grid = await self._managed_grid(person, building.grid_id)
        if kind not in HOUSEHOLD_KINDS:
            raise OrderError("duty.unknown_kind", kinds=", ".join(HOUSEHOLD_KINDS))
        count = await self.session.scalar(select(func.count()).select_from(Household)) or 0
        household = Household(
            code=f"h{count + 1}-{building.code}"[:64],
            grid_id=grid.id,
            building_id=building.id,
            kind=kind,
            name=name,
            address=address,
            notes=notes,
            created_at=self.now,
        )
        self.session.add(household)
        await self.session.flush()
        return household

    async def add_visit_plan(
        self,
        person: Person,
        household_code: str,
        member_name: str | Person,
        frequency: str,
        starts_at: datetime,
    ) -> VisitPlan:
        """A worker pairs a member (a person, or their key or name) with a household at a
        frequency."""
        household = await self.session.scalar(
            select(Household).where(Household.code == household_code)
        )
        if household is None:
            raise OrderError("duty.unknown_household", code=household_code[:32])
        await self._managed_grid(person, household.grid_id)
        if frequency not in FREQUENCIES:
            raise OrderError("duty.unknown_frequency", frequencies=", ".join(FREQUENCIES))
        member = (
            member_name
            if isinstance(member_name, Person)
            else await self.session.scalar(
                select(Person)
                .where(or_(Person.key == member_name, Person.name == member_name))
                .order_by(Person.id)
                .limit(1)
            )
        )
        if member is None:
            raise OrderError("duty.unknown_member", name=str(member_name)[:32])
        plan = VisitPlan(
            household_id=household.id,
            member_id=member.id,
            frequency=frequency,
            starts_at=starts_at,
            timezone=self.settings.timezone,
            created_at=self.now,
            updated_at=self.now,
        )
        self.session.add(plan)
        await self.session.flush()
        return plan
