"""Duties and timers, the domain side: patrols, visits, order clocks, quiet hours, the whistle,
notices and digests.

Everything here runs inside the caller's transaction and writes outbox rows through the
:class:`~bot.core.notify.Notifier`, like the order state machine. Scheduled actions are guarded
against running twice by a unique row (:class:`~models.DutyFire` or the patrol run itself)
inserted in the same transaction as what they do.
"""

from __future__ import annotations

import asyncio
import calendar
import functools
import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, inspect, or_, select, update
from sqlalchemy import insert as sa_insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from bot.core import cards, points
from bot.core.cards import number
from bot.core.notify import Notifier
from bot.core.order_clocks import Clocks, resolve_clocks
from bot.core.orders import NewOrder, OrderError, OrderService
from bot.core.overdue import due_at as order_due_at
from bot.core.overdue import overdue_by
from bot.core.points import PointsRules
from bot.core.quiet_hours import community_quiet_end
from bot.core.routing import (
    ancestors,
    can_manage,
    escalation_target,
    members_in_subtree,
    path_ids,
    people_with_role,
    route_new_order,
)
from bot.i18n import Translator
from bot.ports import Button, Outbound
from models import (
    Building,
    Category,
    DutyFire,
    Grid,
    Household,
    Notice,
    Order,
    OutboxMessage,
    PatrolPlan,
    PatrolRun,
    Person,
    Role,
    VisitLog,
    VisitPlan,
    Whistle,
    WhistleAnswer,
    utcnow,
)
from models.duties import (
    ANSWER_CANNOT,
    ANSWER_COMING,
    FREQUENCIES,
    HOUSEHOLD_KINDS,
    RUN_CHECKED_IN,
    RUN_DUE,
    RUN_MISSED,
    RUN_SKIPPED,
    VISIT_FINE,
    VISIT_HELP,
)
from models.messaging import OUT_FAILED, OUT_PENDING, OUT_SENDING, OUT_SENT
from models.orders import (
    ACCEPTED,
    AUTO_CLOSED,
    AWAITING_DISPATCH,
    DISPATCHED,
    DONE,
    ESCALATED,
    OFFER_WITHDRAWN,
    OPEN_STATES,
    SOURCE_VISIT,
)
from models.people import ROLE_ADMIN, ROLE_HEAD, ROLE_MEMBER, ROLE_RESIDENT, ROLE_WORKER

log = logging.getLogger(__name__)

PERIODS = {"weekly": timedelta(weeks=1), "fortnightly": timedelta(weeks=2)}

#: In a burst's batch of reminders, yield to the event loop after this many (and between the
#: batch's statements: see :meth:`DutyService._load`).
YIELD_EVERY = 10


# ---- payloads of duty buttons (parsed in bot.core.payloads) --------------------------------


def checkin_payload(run_id: int) -> str:
    """Payload of "check in" on a patrol reminder."""
    return f"dp:ci:{run_id}"


def visit_payload(action: str, plan_id: int) -> str:
    """Payload of "all fine" (``ok``) / "needs help" (``help``) on a visit reminder."""
    return f"dv:{action}:{plan_id}"


def whistle_payload(action: str, whistle_id: int) -> str:
    """Payload of "on my way" (``on``) / "cannot" (``no``) on a whistle."""
    return f"dw:{action}:{whistle_id}"


def whistle_ref(whistle_id: int) -> str:
    """Outbox ref of the caller's live roll-call message."""
    return f"whistle:{whistle_id}"


def notice_ref(notice_id: int) -> str:
    """Outbox ref of every copy of a notice (counted for the sender's report)."""
    return f"notice:{notice_id}"


# ---- time helpers -----------------------------------------------------------------------------


def previous_due(frequency: str, due_at: datetime, tz: ZoneInfo) -> datetime:
    """The due time one period before ``due_at`` (same local wall time)."""
    local = due_at.astimezone(tz)
    if frequency == "monthly":
        year, month = (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)
        day = min(local.day, calendar.monthrange(year, month)[1])
        return local.replace(year=year, month=month, day=day)
    return datetime.combine(local.date() - PERIODS[frequency], local.timetz())


class DutyService:
    """Duty actions on behalf of the scheduler or a person, at a given time, in one transaction."""

    def __init__(
        self,
        session: AsyncSession,
        notifier: Notifier,
        tr: Translator,
        settings: Settings,
        now: datetime,
    ) -> None:
        self.session = session
        self.notify = notifier
        self.tr = tr
        self.settings = settings
        self.now = now
        self.points = PointsRules.from_settings(settings)
        self.orders = OrderService(session, notifier, tr, now, self.points)
        self._quiet: dict[int, datetime | None] = {}
        self._held: list[Any] = []

    # ---- small helpers ------------------------------------------------------------------------

    def say(self, key: str, **args: str) -> Callable[[str], Outbound]:
        """A render function: the sentence ``key`` in the recipient's language."""
        return lambda lang: Outbound(self.tr.t(lang, key, **args))

    @property
    def dialect(self) -> str:
        """Name of the database dialect."""
        bind = self.session.bind
        return bind.dialect.name if bind is not None else "sqlite"

    async def fire_once(self, kind: str, key: str, due_at: datetime, late: bool = False) -> bool:
        """Record that ``(kind, key, due_at)`` happens now; ``False`` if it already did."""
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        result = await self.session.execute(
            insert(DutyFire)
            .values(kind=kind, key=key, due_at=due_at, fired_at=self.now, late=late)
            .on_conflict_do_nothing()
            .returning(DutyFire.id)
        )
        return result.first() is not None

    def local(self, when: datetime, tz: str | None = None) -> datetime:
        """``when`` in a plan's (or the service's) time zone."""
        return when.astimezone(ZoneInfo(tz) if tz else self.settings.tz)

    async def heads_for(self, grid: Grid) -> list[int]:
        """The nearest heads at or above ``grid`` (admins when there is no head at all)."""
        for g in [grid, *await ancestors(self.session, grid)]:
            heads = await people_with_role(self.session, g.id, ROLE_HEAD)
            if heads:
                return heads
        for g in [grid, *await ancestors(self.session, grid)]:
            admins = await people_with_role(self.session, g.id, ROLE_ADMIN)
            if admins:
                return admins
        return []

    async def quiet_until(self, grid_id: int) -> datetime | None:
        """End of the quiet hours of the grid's community, if it is quiet now (looked up once
        per community and transaction)."""
        grid = await self.session.get(Grid, grid_id)
        key = grid.community_id if grid is not None else -grid_id
        if key not in self._quiet:
            self._quiet[key] = await self._quiet_until(grid_id)
        return self._quiet[key]

    async def prefetch_patrols(self, plan_ids: list[int]) -> dict[int, PatrolPlan]:
        """Load a burst's patrol plans, their grids and workers (and where their pushes go) in
        a few queries; the reminders then find them in the session instead of querying one by
        one. Kept referenced until the transaction ends (see :meth:`_load`)."""
        plans = await self._load(select(PatrolPlan).where(PatrolPlan.id.in_(plan_ids)))
        await self._prefetch_grids({p.grid_id for p in plans})
        await self._prefetch_people({p.person_id for p in plans})
        return {p.id: p for p in plans}

    async def prefetch_visits(self, plan_ids: list[int]) -> dict[int, VisitPlan]:
        """Load a burst's visit plans, households, grids and members in a few queries."""
        plans = await self._load(select(VisitPlan).where(VisitPlan.id.in_(plan_ids)))
        household_ids = {p.household_id for p in plans}
        if household_ids:
            households = await self._load(select(Household).where(Household.id.in_(household_ids)))
            await self._prefetch_grids({h.grid_id for h in households})
        await self._prefetch_people({p.member_id for p in plans})
        return {p.id: p for p in plans}

    async def _load(self, stmt: Any) -> list[Any]:
        """Run a query for a batch, keep its objects referenced for the rest of the
        transaction, and let the loop run.

        The session's identity map holds objects only weakly: a prefetched row nobody
        references is dropped at once, and the ``session.get`` meant to find it queries again
        (that made the prefetch of a batch useless: three queries per reminder were still
        made). And on SQLite a statement inside a transaction may run on the loop's own thread
        without suspending (:mod:`models.sqlite_async`): a batch yields between its steps
        itself, or runs start to end without letting anything else run."""
        rows = list((await self.session.scalars(stmt)).all())
        self._held.extend(rows)
        await asyncio.sleep(0)
        return rows

    async def _prefetch_grids(self, grid_ids: set[int]) -> None:
        if grid_ids:
            await self._load(select(Grid).where(Grid.id.in_(grid_ids)))

    async def _prefetch_people(self, person_ids: set[int]) -> None:
        # The notifier loads and keeps the people with where their pushes go.
        await self.notify.prefetch(person_ids)
        await asyncio.sleep(0)

    async def _quiet_until(self, grid_id: int) -> datetime | None:
        return await community_quiet_end(self.session, self.settings, grid_id, self.now)

    async def hold(self, rows: list[OutboxMessage], grid_id: int, urgent: bool = False) -> None:
        """Quiet hours: non-urgent pushes wait until the morning (urgent ones never wait)."""
        if urgent or not rows:
            return
        until = await self.quiet_until(grid_id)
        if until is None:
            return
        for row in rows:
            row.not_before = until

    async def _push(
        self,
        person_id: int,
        render: Any,
        grid_id: int,
        *,
        urgent: bool = False,
        ref: str | None = None,
    ) -> OutboxMessage | None:
        row = await self.notify.to_person(person_id, render, ref=ref)
        if row is not None:
            await self.hold([row], grid_id, urgent)
        return row

    # ---- patrols ------------------------------------------------------------------------------

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
                    [[Button(self.tr.t(lang, "btn.check_in"), checkin_payload(run))]],
                )

            await self._push(plan.person_id, render, plan.grid_id, ref=f"patrol:{run_id}")
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

    # ---- visits -------------------------------------------------------------------------------

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

    async def _insert_pending(self, rows: list[OutboxMessage]) -> None:
        """Write a batch's new outbox rows with one multi-row INSERT. The ORM's flush would
        insert them one statement each on SQLite (it needs every new id back, and SQLite's
        multi-row RETURNING does not promise their order): 2,500 round trips to the database
        thread per 1,000 reminders. Rows already flushed (a query in between autoflushed them)
        are left as they are."""
        pending = [row for row in rows if inspect(row).pending]
        if not pending:
            return
        now = utcnow()
        for row in pending:
            self.session.expunge(row)
        # One multi-row statement (VALUES …, …): one step of SQLite, where an executemany
        # steps once per row (and each step hands the GIL over and waits to get it back).
        await self.session.execute(
            sa_insert(OutboxMessage).values(
                [
                    {
                        "channel": row.channel,
                        "chat_id": row.chat_id,
                        "person_id": row.person_id,
                        "payload": row.payload,
                        "ref": row.ref,
                        "edit_ref": row.edit_ref,
                        "status": OUT_PENDING,
                        "attempts": 0,
                        "not_before": row.not_before or now,
                        "created_at": now,
                    }
                    for row in pending
                ]
            )
        )

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
                        Button(self.tr.t(lang, "btn.visit_fine"), visit_payload("ok", plan_id)),
                        Button(self.tr.t(lang, "btn.visit_help"), visit_payload("help", plan_id)),
                    ]
                ],
            )

        await self._push(plan.member_id, render, household.grid_id, ref=f"visit:{plan.id}")

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

    # ---- order clocks -------------------------------------------------------------------------

    async def clocks_for(self, category: str, depth: int, cache: dict[Any, Any]) -> Clocks:
        """The clocks of a category at a level (see :func:`resolve_clocks`)."""
        return await resolve_clocks(self.session, self.settings, category, depth, cache)

    async def order_clocks(self) -> dict[str, int]:
        """One pass over open orders: auto-broadcast, escalate, remind, auto-close.

        Non-urgent orders' clocks do not act during quiet hours (nobody could have answered).
        """
        done: dict[str, int] = defaultdict(int)
        cache: dict[Any, Any] = {}
        orders = (
            await self.session.scalars(
                select(Order).where(Order.status.in_(OPEN_STATES)).order_by(Order.id)
            )
        ).all()
        for order in orders:
            cat = await self.session.scalar(
                select(Category).where(Category.code == order.category)
            )
            urgent = bool(cat and cat.urgent)
            if not urgent and await self.quiet_until(order.grid_id) is not None:
                continue
            grid = await self.session.get(Grid, order.handling_grid_id)
            assert grid is not None
            clocks = await self.clocks_for(order.category, grid.depth, cache)
            age = self.now - order.updated_at
            try:
                async with self.session.begin_nested():
                    action = await self._clock(order, grid, clocks, age, urgent)
            except OrderError as err:  # a concurrent human action won: nothing to do
                log.info("order clock on %s gave way: %s", order.id, err.key)
                continue
            if action:
                done[action] += 1
        return dict(done)

    async def _clock(
        self, order: Order, grid: Grid, c: Clocks, age: timedelta, urgent: bool
    ) -> str | None:
        due = order_due_at(order, c)  # the one definition of "overdue" (also /queue's)
        if order.status in AWAITING_DISPATCH and due is not None and self.now >= due:
            return await self.auto_broadcast(order, grid, urgent)
        if order.status == DISPATCHED and due is not None and self.now >= due:
            return await self.auto_escalate(order, grid, "clock.reason_accept", urgent)
        if order.status == ACCEPTED and due is not None:
            deadline = due
            if self.now >= deadline + timedelta(minutes=c.overdue_escalate_minutes):
                return await self.auto_escalate(order, grid, "clock.reason_overdue", urgent)
            if (
                self.now >= deadline
                and order.assignee_id
                and await self.fire_once("overdue", str(order.id), deadline)
            ):
                await self._push(
                    order.assignee_id,
                    lambda lang: Outbound(self.tr.t(lang, "clock.overdue", number=number(order))),
                    order.grid_id,
                    urgent=urgent,
                )
                return "reminded"
        if order.status == DONE and age >= timedelta(days=c.rate_days):
            return await self.auto_close(order)
        return None

    async def auto_broadcast(self, order: Order, grid: Grid, urgent: bool) -> str | None:
        """Nobody dispatched in time: offer to every member of the handling grid's subtree."""
        members = await members_in_subtree(self.session, grid)
        if not members:
            return await self.auto_escalate(order, grid, "clock.reason_no_members", urgent)
        start = len(self.notify.written)
        old = await self.orders._transition(order, AWAITING_DISPATCH, DISPATCHED, assignee_id=None)
        self.orders._event(order, None, "auto_broadcast", old, note=str(len(members)))
        await self.orders._offer(order, [m.person_id for m in members], assigned=False)
        target = await route_new_order(self.session, grid)
        for pid in target.person_ids if target else []:
            await self.notify.to_person(
                pid,
                lambda lang: Outbound(
                    self.tr.t(
                        lang, "clock.auto_broadcast", number=number(order), count=str(len(members))
                    )
                ),
            )
        await self.hold(self.notify.written[start:], order.grid_id, urgent)
        return "broadcast"

    async def auto_escalate(
        self, order: Order, grid: Grid, reason_key: str, urgent: bool
    ) -> str | None:
        """Escalate one level up the tree (the ladder); at the top, tell whoever is there once."""
        start = len(self.notify.written)
        target = await escalation_target(self.session, grid)
        if target is None:
            if await self.fire_once("top", str(order.id), order.updated_at):
                here = await route_new_order(self.session, grid)
                for pid in here.person_ids if here else []:
                    await self.notify.to_person(
                        pid,
                        lambda lang: Outbound(
                            self.tr.t(lang, "clock.at_top", number=number(order))
                        ),
                    )
                await self.hold(self.notify.written[start:], order.grid_id, urgent)
                return "top"
            return None
        reason = self.tr.t(self.settings.default_locale, reason_key)
        allowed = (*AWAITING_DISPATCH, DISPATCHED, ACCEPTED)
        previous = order.assignee_id
        old = await self.orders._transition(
            order, allowed, ESCALATED, handling_grid_id=target.grid.id, assignee_id=None
        )
        self.orders._event(order, None, "auto_escalate", old, note=reason)
        await self.orders._close_open_offers(order, OFFER_WITHDRAWN, "offer.withdrawn")
        if previous:
            await self.notify.to_person(
                previous,
                lambda lang: Outbound(
                    self.tr.t(lang, "member.escalated_away", number=number(order))
                ),
            )
        by = self.tr.t(self.settings.default_locale, "clock.by_system")
        await self.orders._notify_handlers(
            order,
            target.person_ids,
            "dispatch.escalated",
            reason=reason,
            by=by,
            level=target.grid.name,
        )
        await self.orders._tell_resident(order, "resident.escalated", grid=target.grid.name)
        await self.hold(self.notify.written[start:], order.grid_id, urgent)
        return "escalated"

    async def auto_close(self, order: Order) -> str:
        """Done but never rated: close it; the rating card loses its buttons."""
        start = len(self.notify.written)
        old = await self.orders._transition(order, (DONE,), AUTO_CLOSED)
        self.orders._event(order, None, "auto_close", old)
        await self.orders._award_points(order)
        view = await self.orders.view(order)
        await self.notify.edit_for_person(
            order.resident_id,
            f"rate:{order.id}",
            lambda lang: Outbound(cards.card_text(self.tr, lang, view, contact=False, full=True)),
        )
        await self.orders._tell_resident(order, "clock.auto_closed")
        await self.hold(self.notify.written[start:], order.grid_id)
        return "auto_closed"

    # ---- whistle ------------------------------------------------------------------------------

    async def managed_grid(self, person: Person) -> Grid:
        """The highest grid a head or admin looks after (the whistle/notice subtree)."""
        grids = (
            await self.session.scalars(
                select(Grid)
                .join(Role, Role.grid_id == Grid.id)
                .where(Role.person_id == person.id, Role.role.in_((ROLE_HEAD, ROLE_ADMIN)))
                .order_by(Grid.depth, Grid.id)
            )
        ).all()
        if not grids:
            raise OrderError("whistle.not_allowed")
        return grids[0]

    async def _manages(self, person: Person, grid: Grid) -> bool:
        """Whether ``person`` is head or admin of ``grid`` or of a grid above it."""
        found = await self.session.scalar(
            select(func.count())
            .select_from(Role)
            .join(Grid, Grid.id == Role.grid_id)
            .where(
                Role.person_id == person.id,
                Role.role.in_((ROLE_HEAD, ROLE_ADMIN)),
                Grid.id.in_(path_ids(grid)),
            )
        )
        return bool(found)

    async def blow_whistle(self, caller: Person, message: str, chat: tuple[str, str]) -> Whistle:
        """Call every member and worker of the caller's grid subtree; the caller's message
        (``chat``) becomes the live roll-call."""
        grid = await self.managed_grid(caller)
        people = list(
            dict.fromkeys(
                (
                    await self.session.scalars(
                        select(Role.person_id)
                        .join(Grid, Grid.id == Role.grid_id)
                        .where(
                            Grid.path.startswith(grid.path),
                            Role.role.in_((ROLE_MEMBER, ROLE_WORKER)),
                            Role.person_id != caller.id,
                        )
                        .order_by(Role.person_id)
                    )
                ).all()
            )
        )
        whistle = Whistle(
            grid_id=grid.id, caller_id=caller.id, message=message, created_at=self.now
        )
        self.session.add(whistle)
        await self.session.flush()
        for pid in people:
            self.session.add(WhistleAnswer(whistle_id=whistle.id, person_id=pid))
        await self.session.flush()
        for pid in people:
            await self.notify.to_person(
                pid, lambda lang: self._whistle_card(lang, whistle, caller)
            )
        channel, chat_id = chat
        lang = await self.notify.locale_of(caller.id)
        self.notify.to_chat(
            channel,
            chat_id,
            Outbound(await self.roll_call(lang, whistle)),
            person_id=caller.id,
            ref=whistle_ref(whistle.id),
        )
        return whistle

    def _whistle_card(
        self, lang: str, whistle: Whistle, caller: Person, key: str = "whistle.call"
    ) -> Outbound:
        return Outbound(
            self.tr.t(lang, key, name=caller.name, message=whistle.message),
            [
                [
                    Button(self.tr.t(lang, "btn.whistle_on"), whistle_payload("on", whistle.id)),
                    Button(self.tr.t(lang, "btn.whistle_no"), whistle_payload("no", whistle.id)),
                ]
            ],
        )

    async def roll_call(self, lang: str, whistle: Whistle) -> str:
        """The caller's live view: who is coming, who cannot, how many have not answered."""
        rows = (
            await self.session.execute(
                select(WhistleAnswer.answer, Person.name)
                .join(Person, Person.id == WhistleAnswer.person_id)
                .where(WhistleAnswer.whistle_id == whistle.id)
                .order_by(WhistleAnswer.answered_at, Person.id)
            )
        ).all()
        coming = [name for answer, name in rows if answer == ANSWER_COMING]
        cannot = [name for answer, name in rows if answer == ANSWER_CANNOT]
        silent = sum(1 for answer, _ in rows if answer is None)
        return self.tr.t(
            lang,
            "whistle.roll_call",
            message=whistle.message,
            coming=str(len(coming)),
            total=str(len(rows)),
            names="、".join(coming) or "-",
            cannot="、".join(cannot) or "-",
            silent=str(silent),
        )

    async def answer_whistle(self, person: Person, whistle_id: int, action: str) -> str:
        """Record an answer and update the caller's roll-call. Concurrent answers serialise on
        the whistle row (``FOR UPDATE`` on PostgreSQL; SQLite has one writer), so the last
        edit always shows every answer."""
        stmt = select(Whistle).where(Whistle.id == whistle_id)
        if self.dialect == "postgresql":
            stmt = stmt.with_for_update()
        whistle = (
            await self.session.scalars(stmt.execution_options(populate_existing=True))
        ).first()
        if whistle is None:
            raise OrderError("error.button_invalid")
        answer = ANSWER_COMING if action == "on" else ANSWER_CANNOT
        result = await self.session.execute(
            update(WhistleAnswer)
            .where(WhistleAnswer.whistle_id == whistle_id, WhistleAnswer.person_id == person.id)
            .values(answer=answer, answered_at=self.now)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise OrderError("error.not_your_button")
        whistle.version += 1
        await self.session.flush()
        if answer == ANSWER_COMING:  # 报到 earns points once per whistle, even if re-answered
            await points.award(
                self.session,
                person_id=person.id,
                points=self.points.whistle,
                reason=points.WHISTLE,
                key=f"{points.WHISTLE}:{whistle.id}:{person.id}",
                now=self.now,
            )
        lang = await self.notify.locale_of(whistle.caller_id)
        text = await self.roll_call(lang, whistle)
        await self.notify.edit_for_person(
            whistle.caller_id, whistle_ref(whistle.id), lambda _lang: Outbound(text)
        )
        return answer

    async def whistle_reminders(self) -> int:
        """Remind, once, everyone who has not answered a whistle after the set minutes."""
        cutoff = self.now - timedelta(minutes=self.settings.whistle_remind_minutes)
        whistles = (
            await self.session.scalars(
                select(Whistle).where(Whistle.reminded_at.is_(None), Whistle.created_at <= cutoff)
            )
        ).all()
        for whistle in whistles:
            result = await self.session.execute(
                update(Whistle)
                .where(Whistle.id == whistle.id, Whistle.reminded_at.is_(None))
                .values(reminded_at=self.now)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                continue
            caller = await self.session.get(Person, whistle.caller_id)
            assert caller is not None
            silent = (
                await self.session.scalars(
                    select(WhistleAnswer.person_id).where(
                        WhistleAnswer.whistle_id == whistle.id, WhistleAnswer.answer.is_(None)
                    )
                )
            ).all()
            for pid in silent:
                await self.notify.to_person(
                    pid,
                    functools.partial(
                        self._whistle_card, whistle=whistle, caller=caller, key="whistle.reminder"
                    ),
                )
        return len(whistles)

    # ---- notices ------------------------------------------------------------------------------

    async def notice_residents(self, grid: Grid) -> list[int]:
        """Who a notice of ``grid`` goes to: every resident of its subtree, once each (the
        count the sender confirms and the notice's ``recipients``)."""
        return list(
            dict.fromkeys(
                (
                    await self.session.scalars(
                        select(Role.person_id)
                        .join(Grid, Grid.id == Role.grid_id)
                        .where(Grid.path.startswith(grid.path), Role.role == ROLE_RESIDENT)
                        .order_by(Role.person_id)
                    )
                ).all()
            )
        )

    async def send_notice(self, sender: Person, text: str, *, grid: Grid | None = None) -> Notice:
        """Queue a notice to every resident of the sender's subtree (paced by delivery), or of
        ``grid`` when given: it must be in that subtree (the console lets a head pick a part of
        theirs), else :class:`OrderError` and nothing is sent."""
        managed = await self.managed_grid(sender)
        if grid is None:
            grid = managed
        elif not await self._manages(sender, grid):
            raise OrderError("whistle.not_allowed")
        residents = await self.notice_residents(grid)
        notice = Notice(
            grid_id=grid.id,
            sender_id=sender.id,
            text=text,
            recipients=len(residents),
            created_at=self.now,
        )
        self.session.add(notice)
        await self.session.flush()
        rows = []
        for pid in residents:
            row = await self.notify.to_person(
                pid,
                lambda lang: Outbound(self.tr.t(lang, "notice.text", grid=grid.name, text=text)),
                ref=notice_ref(notice.id),
            )
            if row is not None:
                rows.append(row)
        notice.unreachable = len(residents) - len(rows)
        await self.hold(rows, grid.id)
        return notice

    async def notice_reports(self) -> int:
        """Tell each sender how their notice went once every copy is delivered or failed."""
        notices = (
            await self.session.scalars(select(Notice).where(Notice.reported_at.is_(None)))
        ).all()
        reported = 0
        for notice in notices:
            counts = dict(
                (
                    await self.session.execute(
                        select(OutboxMessage.status, func.count())
                        .where(OutboxMessage.ref == notice_ref(notice.id))
                        .group_by(OutboxMessage.status)
                    )
                ).all()
            )
            if counts.get(OUT_PENDING) or counts.get(OUT_SENDING):
                continue
            delivered = int(counts.get(OUT_SENT, 0))
            unreachable = int(notice.unreachable or 0) + int(counts.get(OUT_FAILED, 0))
            result = await self.session.execute(
                update(Notice)
                .where(Notice.id == notice.id, Notice.reported_at.is_(None))
                .values(reported_at=self.now, delivered=delivered, unreachable=unreachable)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                continue
            await self.notify.to_person(
                notice.sender_id,
                self.say(
                    "notice.report",
                    delivered=str(delivered),
                    unreachable=str(unreachable),
                    total=str(notice.recipients),
                ),
            )
            reported += 1
        return reported

    # ---- digests ------------------------------------------------------------------------------

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
        clock_cache: dict[Any, Any] = {}
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
                clocks = await self.clocks_for(order.category, handling, clock_cache)
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

    # ---- chat administration ------------------------------------------------------------------

    async def _managed_grid(self, person: Person, grid_id: int) -> Grid:
        """The grid, if ``person`` is a worker, head or admin of it or above; else refuse."""
        grid = await self.session.get(Grid, grid_id)
        assert grid is not None
        if not await can_manage(self.session, person.id, grid):
            raise OrderError("error.not_a_manager")
        return grid

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


__all__ = [
    "VISIT_FINE",
    "VISIT_HELP",
    "DutyService",
    "checkin_payload",
    "notice_ref",
    "previous_due",
    "visit_payload",
    "whistle_payload",
    "whistle_ref",
]
