"""Writing messages into the outbox, in the same transaction as the change they report."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.i18n import Translator
from bot.ports import Outbound
from models import Identity, OutboxMessage, Person

#: Builds a message in the recipient's language.
Render = Callable[[str], Outbound]


class Notifier:
    """Addresses people (by their preferred identity) or chats, in their language."""

    def __init__(self, session: AsyncSession, tr: Translator, default_locale: str) -> None:
        self.session = session
        self.tr = tr
        self.default_locale = default_locale
        self.written: list[OutboxMessage] = []
        #: Identities looked up in bulk by :meth:`prefetch` (reminder bursts), and the people
        #: loaded with them (held here: the session's identity map keeps objects weakly, and
        #: :meth:`locale_of` finds them there instead of querying again).
        self._prefetched: dict[int, Identity | None] = {}
        self._people: dict[int, Person] = {}

    async def prefetch(self, person_ids: Iterable[int]) -> None:
        """Look up where many people's pushes go in two queries instead of two per person
        (the same choice as :meth:`identity_of`); later lookups of them hit this cache."""
        ids = set(person_ids) - self._prefetched.keys()
        if not ids:
            return
        people = {
            p.id: p for p in (await self.session.scalars(select(Person).where(Person.id.in_(ids))))
        }
        self._people.update(people)
        idents = (
            await self.session.scalars(
                select(Identity)
                .where(Identity.person_id.in_(ids))
                .order_by(
                    Identity.person_id,
                    Identity.last_inbound_at.desc().nulls_last(),
                    Identity.id.desc(),
                )
            )
        ).all()
        best: dict[int, Identity] = {}
        chosen: dict[int, Identity] = {}
        for ident in idents:
            best.setdefault(ident.person_id, ident)
            person = people.get(ident.person_id)
            if person is not None and ident.channel == person.preferred_channel:
                chosen.setdefault(ident.person_id, ident)
        for pid in ids:
            self._prefetched[pid] = chosen.get(pid) or best.get(pid)

    async def identity_of(self, person_id: int) -> Identity | None:
        """Where pushes to a person go: the channel they chose (``/push``), else the identity
        they used last."""
        if person_id in self._prefetched:
            return self._prefetched[person_id]
        person = await self.session.get(Person, person_id)
        if person is not None and person.preferred_channel:
            chosen = await self.session.scalar(
                select(Identity)
                .where(
                    Identity.person_id == person_id,
                    Identity.channel == person.preferred_channel,
                )
                .order_by(Identity.last_inbound_at.desc().nulls_last(), Identity.id.desc())
                .limit(1)
            )
            if chosen is not None:
                return chosen
        return await self.session.scalar(
            select(Identity)
            .where(Identity.person_id == person_id)
            .order_by(Identity.last_inbound_at.desc().nulls_last(), Identity.id.desc())
            .limit(1)
        )

    async def locale_of(self, person_id: int) -> str:
        """The language to address a person in."""
        ident = await self.identity_of(person_id)
        person = await self.session.get(Person, person_id)
        return self._locale(ident, person)

    def _locale(self, ident: Identity | None, person: Person | None) -> str:
        if person is not None and person.locale:
            return person.locale
        if ident is not None and ident.locale:
            return ident.locale
        return self.default_locale

    def to_chat(
        self,
        channel: str,
        chat_id: str,
        message: Outbound,
        *,
        person_id: int | None = None,
        ref: str | None = None,
        edit_ref: str | None = None,
    ) -> OutboxMessage:
        """Queue a message (or an edit of the message named ``edit_ref``) for one chat."""
        row = OutboxMessage(
            channel=channel,
            chat_id=chat_id,
            person_id=person_id,
            payload=message.to_payload(),
            ref=ref,
            edit_ref=edit_ref,
        )
        self.session.add(row)
        self.written.append(row)
        return row

    async def to_person(
        self,
        person_id: int,
        render: Render,
        *,
        ref: str | None = None,
        edit_ref: str | None = None,
    ) -> OutboxMessage | None:
        """Queue a message for a person; ``None`` when they have never opened a chat with us."""
        ident = await self.identity_of(person_id)
        if ident is None:
            return None
        person = await self.session.get(Person, person_id)
        message = render(self._locale(ident, person))
        return self.to_chat(
            ident.channel, ident.chat_id, message, person_id=person_id, ref=ref, edit_ref=edit_ref
        )

    async def edit_for_person(self, person_id: int, ref: str, render: Render) -> None:
        """Replace the message named ``ref`` that this person received."""
        sent = await self.session.scalar(
            select(OutboxMessage)
            .where(OutboxMessage.ref == ref, OutboxMessage.person_id == person_id)
            .order_by(OutboxMessage.id.desc())
            .limit(1)
        )
        if sent is None:
            return
        person = await self.session.get(Person, person_id)
        ident = await self.session.scalar(
            select(Identity).where(
                Identity.person_id == person_id,
                Identity.channel == sent.channel,
                Identity.chat_id == sent.chat_id,
            )
        )
        self.to_chat(
            sent.channel,
            sent.chat_id,
            render(self._locale(ident, person)),
            person_id=person_id,
            edit_ref=ref,
        )
