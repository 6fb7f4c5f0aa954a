"""What every handler gets: the event, who sent it, their language, and the services."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from bot.core.duties.service import DutyService
from bot.core.notify import Notifier
from bot.core.orders import OrderService
from bot.core.payloads import Payload
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

    async def set_conversation(self, flow: Flow, state: Step, data: dict[str, Any]) -> None:
        """Enter (or move within) a flow."""
        assert state in FLOW_STEPS[flow], (flow, state)
        assert self.identity is not None
        conv = await self.conversation()
        if conv is None:
            conv = Conversation(identity_id=self.identity.id, flow=flow.value, state=state.value)
            self.session.add(conv)
            self._conv = conv
        conv.flow, conv.state = flow.value, state.value
        conv.data, conv.updated_at = dict(data), self.now

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


class Flow(StrEnum):
    """The conversation flows; the value is kept in ``conversation.flow``."""

    BIND = "bind"
    ORDER = "order"
    ESCALATE = "esc"
    DONE = "done"
    REVISIT = "revisit"
    CHECKIN = "checkin"
    VISIT = "visit"
    NOTICE = "notice"
    HOUSEHOLD = "household"
    VISITPLAN = "visitplan"
    PROFILE = "me"


class Step(StrEnum):
    """Where in its flow a conversation is; the value is kept in ``conversation.state``."""

    NAME = "name"
    ROOM = "room"
    PHONE = "phone"
    CATEGORY = "category"
    DESCRIPTION = "description"
    PHOTO = "photo"
    LOCATION = "location"
    CONFIRM = "confirm"
    DUPLICATE = "duplicate"
    REASON = "reason"
    NOTE = "note"
    BUILDING = "building"
    KIND = "kind"
    HOUSEHOLD = "household"
    MEMBER = "member"
    FREQUENCY = "frequency"


#: The steps of each flow (the step functions are in ``handlers.flows``' table).
FLOW_STEPS: dict[Flow, frozenset[Step]] = {
    Flow.BIND: frozenset({Step.NAME, Step.ROOM, Step.PHONE}),
    Flow.ORDER: frozenset(
        {Step.CATEGORY, Step.DESCRIPTION, Step.PHOTO, Step.LOCATION, Step.CONFIRM, Step.DUPLICATE}
    ),
    Flow.ESCALATE: frozenset({Step.REASON}),
    Flow.DONE: frozenset({Step.NOTE}),
    Flow.REVISIT: frozenset({Step.NOTE}),
    Flow.CHECKIN: frozenset({Step.NOTE, Step.PHOTO, Step.LOCATION}),
    Flow.VISIT: frozenset({Step.NOTE}),
    Flow.NOTICE: frozenset({Step.CONFIRM}),
    Flow.HOUSEHOLD: frozenset({Step.BUILDING, Step.KIND}),
    Flow.VISITPLAN: frozenset({Step.HOUSEHOLD, Step.MEMBER, Step.FREQUENCY}),
    Flow.PROFILE: frozenset({Step.NAME, Step.PHONE, Step.ROOM}),
}

def declared_step(flow: str, state: str) -> bool:
    """Whether a stored conversation's ``flow`` and ``state`` are a declared step."""
    try:
        return Step(state) in FLOW_STEPS.get(Flow(flow), frozenset())
    except ValueError:
        return False


#: A flow's step function: (context, current step, the flow's data, the button pressed if any).
FlowStep = Callable[[Ctx, str, dict[str, Any], Payload | None], Awaitable[None]]

