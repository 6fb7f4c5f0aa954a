"""A resident on WeChat speaks instead of typing: the voice message (and WeChat's recognition of
it) starts an order; the grid worker on WeChat hears it (uploaded as voice media, sent as a
voice customer-service message) before the order card."""

from __future__ import annotations

from sqlalchemy import select

from models import Identity, Person, utcnow
from tests.wechat.conftest import WX
from tests.wechat.test_wechat_loop import option

RESIDENT, WORKER = "o-voice-res", "o-voice-worker"
#: An AMR recording, as WeChat's voice messages are (the header is what is checked).
AMR = b"#!AMR\n" + b"\x3c" * 96


async def chatting(wx: WX, key: str, openid: str) -> None:
    """The demo person ``key`` follows the account and wrote recently (already bound)."""
    async with wx.app.sessionmaker() as session, session.begin():
        person = await session.scalar(select(Person).where(Person.key == key))
        assert person is not None
        session.add(Identity(person_id=person.id, channel="wechat", external_id=openid,
                             chat_id=openid, last_inbound_at=utcnow()))


async def test_a_voice_message_reaches_the_worker_as_voice(wx: WX) -> None:
    await chatting(wx, "p-zhang-ayi", RESIDENT)
    await chatting(wx, "p-wang", WORKER)
    wx.api.media["VOICE-1"] = AMR

    ask = await wx.sender.voice(RESIDENT, "VOICE-1", recognition="楼下的路灯坏了好几天了")
    assert ask.text and "楼下的路灯坏了好几天了" in ask.text and "【维修报修】" in ask.text
    photo_q = await wx.sender.text(RESIDENT, option(ask.text, "✅ 是，维修报修"))
    assert photo_q.text and "照片" in photo_q.text
    loc_q = await wx.sender.text(RESIDENT, option(photo_q.text, "跳过"))
    assert loc_q.text and "位置" in loc_q.text
    confirm = await wx.sender.text(RESIDENT, option(loc_q.text, "跳过"))
    assert confirm.text and "🎤 附有语音" in confirm.text
    receipt = await wx.sender.text(RESIDENT, option(confirm.text, "✅ 提交"))
    assert receipt.text and "工单号 000001" in receipt.text
    await wx.settle()

    (order,) = await wx.h.orders()
    assert order.description == "楼下的路灯坏了好几天了"
    assert order.voice is not None and order.voice.startswith("media:")
    stored = wx.app.media.path(order.voice)
    assert stored is not None and stored.suffix == ".amr" and stored.read_bytes() == AMR

    to_worker = [s for s in wx.api.sent if s.touser == WORKER]
    kinds = [s.kind for s in to_worker]
    assert "voice" in kinds, kinds
    voice = to_worker[kinds.index("voice")]
    media_id = voice.body["voice"]["media_id"]
    assert wx.api.upload_types[media_id] == "voice" and wx.api.uploads[media_id] == AMR
    card = next(i for i, s in enumerate(to_worker) if "工单 000001" in s.text)
    assert kinds.index("voice") < card  # heard first, then the card with its options
    assert "🎤 附有语音" in to_worker[card].text


async def test_a_voice_message_without_recognition_asks_the_category(wx: WX) -> None:
    await chatting(wx, "p-zhang-ayi", RESIDENT)
    wx.api.media["VOICE-2"] = AMR
    ask = await wx.sender.voice(RESIDENT, "VOICE-2")
    assert ask.text and "（语音）" in ask.text and "请选择问题类别" in ask.text
