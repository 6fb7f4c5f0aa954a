"""Leases: one process at a time does a job (leads the scheduler, polls a Telegram bot).

A lease is a row (table ``scheduler_lease``, keyed by the job's name) naming its holder and
until when it holds. The holder renews it well before it runs out; another process takes it
when it has run out, or at once when its holder is known to be dead (:mod:`bot.instance`);
a clean stop releases it. Every step is one conditional statement, safe on PostgreSQL with
several instances and on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.instance import holder_is_gone
from models import SchedulerLease

log = logging.getLogger(__name__)


class Lease:
    """One row per ``name`` names the process allowed to do that job, until when."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        name: str,
        holder: str,
        ttl: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self.sessionmaker = sessionmaker
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self.clock = clock

    async def acquire(self) -> bool:
        """Take or renew the lease; ``False`` when another live holder has it."""
        now = self.clock()
        async with self.sessionmaker() as session, session.begin():
            dialect = session.bind.dialect.name if session.bind else "sqlite"
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            created = await session.scalar(
                insert(SchedulerLease)
                .values(
                    name=self.name, holder=self.holder, expires_at=now + self.ttl, acquired_at=now
                )
                .on_conflict_do_nothing()
                .returning(SchedulerLease.name)
            )
            if created:
                return True
            result = await session.execute(
                update(SchedulerLease)
                .where(
                    SchedulerLease.name == self.name,
                    (SchedulerLease.holder == self.holder) | (SchedulerLease.expires_at < now),
                )
                .values(holder=self.holder, expires_at=now + self.ttl)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                return True
            # Held and not expired: still ours to take if its holder's process is gone (a
            # restart after kill -9 on this host must not wait for the dead lease).
            holder = await session.scalar(
                select(SchedulerLease.holder).where(SchedulerLease.name == self.name)
            )
            if holder is None or not holder_is_gone(holder):
                return False
            result = await session.execute(
                update(SchedulerLease)
                .where(SchedulerLease.name == self.name, SchedulerLease.holder == holder)
                .values(holder=self.holder, expires_at=now + self.ttl, acquired_at=now)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                log.warning("%s lease holder %s is gone (no such process): taking over",
                            self.name, holder)
                return True
            return False

    async def current(self) -> SchedulerLease | None:
        """The lease row as stored."""
        async with self.sessionmaker() as session:
            return await session.get(SchedulerLease, self.name)

    async def release(self) -> None:
        """Give the lease up (on a clean stop) so a standby can take over at once."""
        async with self.sessionmaker() as session, session.begin():
            await session.execute(
                update(SchedulerLease)
                .where(SchedulerLease.name == self.name, SchedulerLease.holder == self.holder)
                .values(expires_at=self.clock() - timedelta(seconds=1))
            )

    def keep(self, *, on_lost: Callable[[], None], name: str) -> asyncio.Task[None]:
        """Renew the (held) lease every third of its TTL until the task is cancelled, then
        release it. ``on_lost`` is called each time a renewal finds another holder."""

        async def renew() -> None:
            try:
                while True:
                    await asyncio.sleep(max(self.ttl.total_seconds() / 3, 0.5))
                    try:
                        if not await self.acquire():
                            on_lost()
                    except Exception:
                        log.exception("could not renew the %s lease", self.name)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.release())

        return asyncio.create_task(renew(), name=name)
