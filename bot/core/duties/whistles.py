"""The whistle (吹哨报到): call, answers, the caller's live roll-call, one reminder."""

from __future__ import annotations

import functools
from datetime import timedelta

from sqlalchemy import select, update

from bot.core import payloads, points
from bot.core.duties.base import DutyBase
from bot.core.orders import OrderError
from bot.ports import Button, Outbound
from models import Grid, Person, Role, Whistle, WhistleAnswer, refs
from models.duties import ANSWER_CANNOT, ANSWER_COMING
from models.people import ROLE_MEMBER, ROLE_WORKER


class WhistleDuties(DutyBase):
    """The whistle (吹哨): a head calls every member and worker of their subtree; the answers
    make the caller's live roll-call."""

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
            ref=refs.whistle(whistle.id),
        )
        return whistle

    def _whistle_card(
        self, lang: str, whistle: Whistle, caller: Person, key: str = "whistle.call"
    ) -> Outbound:
        return Outbound(
            self.tr.t(lang, key, name=caller.name, message=whistle.message),
            [
                [
                    Button(self.tr.t(lang, "btn.whistle_on"), payloads.whistle("on", whistle.id)),
                    Button(self.tr.t(lang, "btn.whistle_no"), payloads.whistle("no", whistle.id)),
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
            whistle.caller_id, refs.whistle(whistle.id), lambda _lang: Outbound(text)
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
