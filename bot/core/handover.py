"""Someone lost roles (``gridbot person remove``, or a community file that drops them): their
open work goes to whoever is responsible now, and their duty plans stop reminding them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.notify import Notifier
from bot.core.orders import OrderService, Released
from bot.core.responsibility import path_ids
from bot.i18n import Translator
from models import Grid, Person, Role
from models.duties import Household, PatrolPlan, VisitPlan
from models.people import ROLE_RESIDENT


async def _serves(session: AsyncSession, person_id: int, grid_id: int) -> bool:
    """Whether the person holds a role other than resident on the grid or one above it."""
    grid = await session.get(Grid, grid_id)
    if grid is None:
        return False
    found = await session.scalar(
        select(func.count())
        .select_from(Role)
        .where(
            Role.person_id == person_id,
            Role.grid_id.in_(path_ids(grid)),
            Role.role != ROLE_RESIDENT,
        )
    )
    return bool(found)


async def pause_plans(session: AsyncSession, person: Person, now: datetime) -> int:
    """Pause the active visit and patrol plans of ``person`` for grids they no longer serve
    (``active`` off, so the scheduler drops their jobs at its next sweep); how many. The
    plans stay, to be paired with someone else."""
    paused = 0
    visits = await session.execute(
        select(VisitPlan, Household.grid_id)
        .join(Household, Household.id == VisitPlan.household_id)
        .where(VisitPlan.member_id == person.id, VisitPlan.active.is_(True))
    )
    for plan, grid_id in visits.all():
        if not await _serves(session, person.id, grid_id):
            plan.active, plan.updated_at = False, now
            paused += 1
    patrols = await session.scalars(
        select(PatrolPlan).where(PatrolPlan.person_id == person.id, PatrolPlan.active.is_(True))
    )
    for patrol in patrols.all():
        if not await _serves(session, person.id, patrol.grid_id):
            patrol.active, patrol.updated_at = False, now
            paused += 1
    await session.flush()
    return paused


async def hand_over(
    session: AsyncSession,
    tr: Translator,
    default_locale: str,
    now: datetime,
    person: Person,
) -> Released:
    """Everything :meth:`OrderService.release_person` does, then :func:`pause_plans`; in the
    caller's transaction. Call after the roles were deleted."""
    service = OrderService(session, Notifier(session, tr, default_locale), tr, now)
    released = await service.release_person(person)
    released.plans_paused = await pause_plans(session, person, now)
    return released
