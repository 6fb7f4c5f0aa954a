"""WeChat's push rules: the 48-hour window after a person's last message and its quota.

Inside the window (``Identity.last_inbound_at``) a person may be sent a few customer-service
messages (``Identity.window_pushes`` counts them, shared by every instance through the
database); every message they write starts a new window (:meth:`PushWindow.on_inbound`, called
by the intake in the transaction that stores the message). Outside it only a template message
reaches them, chosen by the kind of push (:func:`push_kind`). People who wrote but have no
identity yet (strangers who have not scanned a code) are counted in memory: they are owed the
answer to what they wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import Identity, OutboxMessage
from models.refs import RefKind, parse_ref

#: How long after a person's last message customer-service messages may reach them.
WINDOW = timedelta(hours=48)
#: Push kind of an outbox row by the kind of its ``ref`` (when the payload names none).
KIND_BY_REF = {
    RefKind.OFFER: "offer",
    RefKind.DISPATCH: "offer",
    RefKind.TASK: "accepted",
    RefKind.RATE: "rate",
}
#: Strangers remembered at most (the oldest is forgotten first).
STRANGERS = 10_000


def push_kind(row: OutboxMessage) -> str:
    """What kind of push a row is: from its payload's ``kind``, else its ref's kind."""
    kind = (row.payload or {}).get("kind")
    if kind:
        return str(kind)
    ref = parse_ref(row.ref)
    return KIND_BY_REF.get(ref.kind, "other") if ref is not None else "other"


class PushWindow:
    """The windows and their quota (``quota`` customer-service messages per window)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        quota: int,
        clock: Callable[[], datetime],
    ) -> None:
        self.sessionmaker = sessionmaker
        self.quota = quota
        self.clock = clock
        #: Last message time and pushes of users we have no identity for yet.
        self._strangers: dict[str, tuple[datetime, int]] = {}

    def on_inbound(self, identity: Identity, now: datetime) -> None:
        """A new 48-hour window with its quota of pushes starts with every message."""
        identity.window_pushes = 0

    def stranger_wrote(self, openid: str) -> None:
        """Somebody wrote (known or not): a stranger's window starts now."""
        self._strangers[openid] = (self.clock(), 0)
        if len(self._strangers) > STRANGERS:
            self._strangers.pop(next(iter(self._strangers)))

    def stranger_push(self, openid: str, now: datetime) -> bool:
        """Count one push to a stranger, if they wrote within the window and its quota has
        room; ``False`` otherwise (or if they never wrote)."""
        stranger = self._strangers.get(openid)
        if stranger is None:
            return False
        seen, pushes = stranger
        if now - seen < WINDOW and pushes < self.quota:
            self._strangers[openid] = (seen, pushes + 1)
            return True
        return False

    @staticmethod
    def is_open(identity: Identity, now: datetime) -> bool:
        """Whether ``identity`` wrote within the last 48 hours."""
        return identity.last_inbound_at is not None and now - identity.last_inbound_at < WINDOW

    async def reserve(self, identity_id: int) -> bool:
        """Count one customer-service message against the window's quota, if one is left."""
        async with self.sessionmaker() as session, session.begin():
            result = await session.execute(
                update(Identity)
                .where(Identity.id == identity_id, Identity.window_pushes < self.quota)
                .values(window_pushes=Identity.window_pushes + 1)
                .returning(Identity.id)
            )
            return result.first() is not None

    async def refund(self, identity_id: int) -> None:
        """Give back a push that was counted but not sent."""
        async with self.sessionmaker() as session, session.begin():
            await session.execute(
                update(Identity)
                .where(Identity.id == identity_id, Identity.window_pushes > 0)
                .values(window_pushes=Identity.window_pushes - 1)
            )

    async def used_up(self, identity_id: int) -> None:
        """WeChat says no more customer-service messages now: stop trying until they write."""
        async with self.sessionmaker() as session, session.begin():
            await session.execute(
                update(Identity)
                .where(Identity.id == identity_id)
                .values(window_pushes=self.quota)
            )
