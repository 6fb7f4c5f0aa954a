"""The delivery worker keeps under Telegram's limits, measured by a fake that enforces them."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select

from bot.channels.telegram import TelegramChannel
from bot.delivery import Deliverer
from bot.ports import HandleResult, Inbound
from models import OutboxMessage
from tests.conftest import Harness
from tests.fakes.telegram_server import FakeTelegramServer


async def _no_intake(event: Inbound) -> HandleResult:
    return HandleResult()


async def test_burst_to_many_chats_and_one_chat_gets_no_429(harness: Harness) -> None:
    async with FakeTelegramServer(enforce_limits=True) as tg:
        chats = [2000 + i for i in range(40)]
        for uid in chats:
            tg.user(uid, f"u{uid}")
        channel = TelegramChannel(
            tg.token, _no_intake, base_url=tg.base_url, base_file_url=tg.file_url
        )
        await channel.application.initialize()
        try:
            async with harness.app.sessionmaker() as session, session.begin():
                for uid in chats:
                    session.add(
                        OutboxMessage(
                            channel="telegram",
                            chat_id=str(uid),
                            payload={"text": f"通知 {uid}"},
                            not_before=datetime(2026, 1, 1, tzinfo=UTC),
                        )
                    )
                for n in range(3):
                    session.add(
                        OutboxMessage(
                            channel="telegram",
                            chat_id=str(chats[0]),
                            payload={"text": f"连续 {n}"},
                            not_before=datetime(2026, 1, 1, tzinfo=UTC),
                        )
                    )
            deliverer = Deliverer(harness.app.sessionmaker, {"telegram": channel})
            while await deliverer.drain_once():
                pass
        finally:
            await channel.application.shutdown()
        assert tg.too_many_requests == 0
        assert sum(len(tg.sent(uid)) for uid in chats) == 43
        async with harness.app.sessionmaker() as session:
            unsent = await session.scalar(
                select(func.count())
                .select_from(OutboxMessage)
                .where(OutboxMessage.status != "sent")
            )
        assert unsent == 0
