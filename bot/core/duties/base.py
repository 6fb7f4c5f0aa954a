"""Shared plumbing of the duty services: one transaction, one notifier, one time.

Everything here runs inside the caller's transaction and writes outbox rows through the
:class:`~bot.core.notify.Notifier`, like the order state machine. Scheduled actions are guarded
against running twice by a unique row (:class:`~models.DutyFire` or the patrol run itself)
inserted in the same transaction as what they do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, inspect, select
from sqlalchemy import insert as sa_insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from bot.core.notify import Notifier
from bot.core.orders import OrderError, OrderService
from bot.core.points import PointsRules
from bot.core.quiet_hours import community_quiet_end
from bot.core.responsibility import ancestors, can_manage, path_ids, people_with_role
from bot.i18n import Translator
from bot.ports import Outbound
from models import DutyFire, Grid, OutboxMessage, Person, Role, utcnow
from models.messaging import OUT_PENDING
from models.people import ROLE_ADMIN, ROLE_HEAD

log = logging.getLogger(__name__)

#: In a burst's batch of reminders, yield to the event loop after this many (and between the
#: batch's statements: see :meth:`DutyBase._load`).
YIELD_EVERY = 10


class DutyBase:
    """What every duty (and the order clocks) needs: the transaction, the notifier, the
    translator, the time, run-once records, quiet hours, batched pushes and who manages what.
    The duty kinds are mixins of this class; :class:`bot.core.duties.service.DutyService`
    combines them."""

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

    # ---- who manages what -----------------------------------------------------------------

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

    async def _managed_grid(self, person: Person, grid_id: int) -> Grid:
        """The grid, if ``person`` is a worker, head or admin of it or above; else refuse."""
        grid = await self.session.get(Grid, grid_id)
        assert grid is not None
        if not await can_manage(self.session, person.id, grid):
            raise OrderError("error.not_a_manager")
        return grid
