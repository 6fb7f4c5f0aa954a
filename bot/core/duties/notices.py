"""Notices to residents: sent to a subtree, then reported to the sender once delivered."""

from __future__ import annotations

from sqlalchemy import func, select, update

from bot.core.duties.base import DutyBase
from bot.core.orders import OrderError
from bot.ports import Outbound
from models import Grid, Notice, OutboxMessage, Person, Role, refs
from models.messaging import OUT_FAILED, OUT_PENDING, OUT_SENDING, OUT_SENT
from models.people import ROLE_RESIDENT


class NoticeDuties(DutyBase):
    """Notices (通知) from a head to every resident of a subtree, and the sender's report."""

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
                ref=refs.notice(notice.id),
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
                        .where(OutboxMessage.ref == refs.notice(notice.id))
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
