"""What every handler gets: the event, who sent it, their language, and the services."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from bot.core.duties.service import DutyService
from bot.core.notify import Notifier
from bot.core.orders import OrderService
from bot.i18n import Translator
from bot.ports import Button, Inbound, Outbound
from models import Conversation, Identity, Person, Role

_UNKNOWN = object()


@dataclass
class Ctx:
    """One inbound event being handled, inside one database transaction."""

    session: AsyncSession
    settings: Settings
    tr: Translator
    event: Inbound
    identity: Identity | None
    person: Person | None
    lang: str
    now: datetime
    notify: Notifier
    orders: OrderService
    toast: str | None = None
    #: The sender never wrote to us before this event (a first ``/start`` is a hello, not a
    #: welcome back).
    first_visit: bool = False
    _roles: list[Role] | None = field(default=None, repr=False)
    #: The sender's conversation row as far as this event knows it: ``_UNKNOWN`` until read,
    #: then the row or ``None`` (kept in step by the methods below, the only writers).
    _conv: Conversation | object | None = field(default=_UNKNOWN, repr=False)

    def t(self, key: str, **args: Any) -> str:
        """A sentence in the user's language."""
        return self.tr.t(self.lang, key, **args)

    def reply(
        self,
        text: str | Outbound,
        buttons: list[list[Button]] | None = None,
        *,
        ref: str | None = None,
        **extra: Any,
    ) -> None:
        """Answer in the chat the event came from (through the outbox); ``ref`` names the
        message so that it can be edited later."""
        message = text if isinstance(text, Outbound) else Outbound(text, buttons or [], **extra)
        self.notify.to_chat(
            self.event.channel,
            self.event.chat_id,
            message,
            person_id=self.person.id if self.person else None,
            ref=ref,
        )

    def say(self, key: str, buttons: list[list[Button]] | None = None, **args: Any) -> None:
        """Answer with the sentence ``key``."""
        self.reply(self.t(key, **args), buttons)

    def duties(self) -> DutyService:
        """The duty service inside this event's transaction."""
        return DutyService(self.session, self.notify, self.tr, self.settings, self.now)

    async def roles(self, refresh: bool = False) -> list[Role]:
        """The sender's roles (empty when unbound)."""
        if self.person is None:
            return []
        if self._roles is None or refresh:
            self._roles = list(
                (
                    await self.session.scalars(
                        select(Role).where(Role.person_id == self.person.id).order_by(Role.id)
                    )
                ).all()
            )
        return self._roles

    async def has_role(self, *names: str) -> bool:
        """Whether the sender holds any of the roles ``names``."""
        return any(r.role in names for r in await self.roles())

    # ---- conversation state (kept in the database) -----------------------------------------

    async def conversation(self) -> Conversation | None:
        """The flow the sender is in, if any (read once per event)."""
        if self.identity is None:
            return None
        if self._conv is _UNKNOWN:
            self._conv = await self.session.scalar(
                select(Conversation).where(Conversation.identity_id == self.identity.id)
            )
        assert self._conv is None or isinstance(self._conv, Conversation)
        return self._conv

    async def set_conversation(self, flow: str, state: str, data: dict[str, Any]) -> None:
        """Enter (or move within) a flow."""
        assert self.identity is not None
        conv = await self.conversation()
        if conv is None:
            conv = Conversation(identity_id=self.identity.id, flow=flow, state=state)
            self.session.add(conv)
            self._conv = conv
        conv.flow, conv.state, conv.data, conv.updated_at = flow, state, dict(data), self.now

    async def end_conversation(self) -> None:
        """Leave whatever flow the sender was in."""
        if self.identity is None or self._conv is None:
            return  # known to be in no flow
        pending = isinstance(self._conv, Conversation) and self._conv in self.session.new
        if isinstance(self._conv, Conversation):
            self.session.expunge(self._conv)  # whatever it had pending goes with it
        if not pending:
            await self.session.execute(
                delete(Conversation).where(Conversation.identity_id == self.identity.id)
            )
        self._conv = None


# Names of the conversation flows kept in the ``conversation`` table.
FLOW_BIND = "bind"
FLOW_ORDER = "order"
FLOW_ESCALATE = "esc"
FLOW_DONE = "done"
FLOW_REVISIT = "revisit"
FLOW_CHECKIN = "checkin"
FLOW_VISIT = "visit"
FLOW_NOTICE = "notice"
FLOW_HOUSEHOLD = "household"
FLOW_VISITPLAN = "visitplan"
FLOW_PROFILE = "me"
