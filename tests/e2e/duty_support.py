"""What the duty tests over the fake Bot API server share: the service on the demo community
with people given Telegram identities, a manual scheduler on the test's clock, and helpers to
wait on and count what reached a chat."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select

from bot.app import Gridbot
from bot.channels.base import Limits
from bot.config import load_settings
from models import Identity, OutboxMessage, Person
from tests.fakes.telegram_server import FakeTelegramServer, FakeUser, SentMessage
from tests.support.clock import SH, Clock

S = TypeVar("S", bound="DutyService")


class DutyService:
    """The running service, the fake server and the clock."""

    def __init__(self, app: Gridbot, tg: FakeTelegramServer, clock: Clock) -> None:
        self.app, self.tg, self.clock = app, tg, clock
        self.duties: Any = None
        self.users: dict[int, FakeUser] = {}

    async def tick(self) -> None:
        """One scheduler pass at the clock's time."""
        await self.duties.tick()

    async def at(self, *local: int) -> None:
        """Move the clock to a Shanghai wall time and run one scheduler pass."""
        self.clock.set(*local)
        await self.tick()

    def last_id(self, uid: int) -> int:
        sent = self.tg.sent(uid)
        return sent[-1].message_id if sent else 0

    def texts(self, uid: int, part: str) -> list[SentMessage]:
        return [m for m in self.tg.sent(uid) if part in (m.text or "")]

    async def queued(self, uid: int, *parts: str) -> int:
        """Outbox rows for this chat whose text holds every part (exactly-once checks)."""
        async with self.app.sessionmaker() as session:
            rows = (await session.scalars(select(OutboxMessage).where(
                OutboxMessage.channel == "telegram", OutboxMessage.chat_id == str(uid)))).all()
        return sum(all(p in str(r.payload.get("text")) for p in parts) for r in rows)


@contextlib.asynccontextmanager
async def running(
    kind: type[S], database_url: str, tmp_path: Path, people: Mapping[int, str], **settings: Any
) -> AsyncIterator[S]:
    """The demo community on the fake server, ``people`` (Telegram id → person key) given a
    Telegram identity and a fake-server user each (``users``), the scheduler started by hand,
    the clock at 08:00 on 1 March 2027 (Shanghai). Quiet hours 22:00-07:00 unless
    ``settings`` say otherwise."""
    clock = Clock(datetime(2027, 3, 1, 8, 0, tzinfo=SH))
    async with FakeTelegramServer() as tg:
        app = Gridbot(
            load_settings(
                database_url=database_url, demo=True, secret_key="e2e", telegram_token=tg.token,
                telegram_api_url=tg.base_url, telegram_file_url=tg.file_url,
                media_dir=tmp_path / "media", **{"quiet_hours": "22:00-07:00", **settings},
            ),
            clock=clock,
        )
        await app.prepare()
        service = kind(app, tg, clock)
        async with app.sessionmaker() as session, session.begin():
            for uid, key in people.items():
                person = await session.scalar(select(Person).where(Person.key == key))
                assert person is not None, key
                session.add(Identity(person_id=person.id, channel="telegram",
                                     external_id=str(uid), chat_id=str(uid),
                                     last_inbound_at=clock()))
                service.users[uid] = tg.user(uid, person.name)
        app.enable("telegram").limits = Limits(per_chat_interval=0.01, global_per_second=1000)
        await app.start()
        try:
            service.duties = await app.start_duties(manual=True)
            yield service
        finally:
            await app.stop()
