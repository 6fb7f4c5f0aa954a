"""A resident on Telegram sends a voice message instead of typing: it starts an order, is kept in
the media store, and the grid worker hears it with the order card (sendVoice)."""

from __future__ import annotations

from sqlalchemy import select

from models import Identity, Person, utcnow
from tests.conftest import Harness
from tests.fakes.telegram_server import FakeTelegramServer
from tests.support.messages import has

RESIDENT, WORKER = 3001, 3002
#: An OGG/Opus recording, as Telegram's voice messages are (the header is what is checked).
OGG = b"OggS\x00\x02" + b"\x00" * 20 + b"OpusHead" + b"\x01" * 64



async def chatting(h: Harness, key: str, user_id: int) -> None:
    """The demo person ``key`` has opened a Telegram chat with the bot (already bound)."""
    async with h.app.sessionmaker() as session, session.begin():
        person = await session.scalar(select(Person).where(Person.key == key))
        assert person is not None
        session.add(Identity(person_id=person.id, channel="telegram", external_id=str(user_id),
                             chat_id=str(user_id), last_inbound_at=utcnow()))


async def test_a_voice_message_reaches_the_worker(
    tg_app: tuple[Harness, FakeTelegramServer],
) -> None:
    h, tg = tg_app
    resident = tg.user(RESIDENT, "张阿姨", language_code="zh-hans")
    tg.user(WORKER, "王网格员")
    await chatting(h, "p-zhang-ayi", RESIDENT)
    await chatting(h, "p-wang", WORKER)

    await resident.send_voice("voice-lamp", OGG)
    ask = await tg.wait_for(RESIDENT, has("请选择问题类别"))
    await resident.press_label(ask, "维修报修")
    await resident.press_label(await tg.wait_for(RESIDENT, has("照片")), "跳过")
    await tg.wait_for(RESIDENT, has("位置"))
    await resident.send_text("跳过")
    confirm = await tg.wait_for(RESIDENT, has("请确认"))
    assert "🎤 附有语音" in (confirm.text or "")
    await resident.press_label(confirm, "✅ 提交")
    await tg.wait_for(RESIDENT, has("工单号"))
    # The confirmation was edited into a record of what was sent, its buttons gone.
    await tg.wait_until(lambda: confirm.edited)
    assert confirm.inline_keyboard == [] and "已提交 000001" in (confirm.text or "")

    (order,) = await h.orders()
    assert order.voice is not None and order.voice.startswith("media:")
    stored = h.app.media.path(order.voice)
    assert stored is not None and stored.suffix == ".ogg" and stored.read_bytes() == OGG

    card = await tg.wait_for(WORKER, has("工单 000001"))
    assert "🎤 附有语音" in (card.text or "")
    voices = [m for m in tg.sent(WORKER) if m.voice is not None]
    assert len(voices) == 1 and tg.file(voices[0].voice or "") == OGG
    assert voices[0].message_id < card.message_id  # heard first, then the card's buttons
