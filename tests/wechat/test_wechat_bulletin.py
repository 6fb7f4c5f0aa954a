"""The monthly bulletin on WeChat, which cannot send files: the community admin asks for it in
the 公众号 and gets the chart as an image and the figures as text; the ledger is skipped
(its outbox row is done, nothing was sent for it)."""

from __future__ import annotations

from sqlalchemy import select

from models import Identity, OutboxMessage, Person
from models.messaging import OUT_SENT
from tests.reports.history import write_history
from tests.wechat.conftest import WX

CHEN = "o-chen-shuji"


async def test_bulletin_is_a_picture_and_text_on_wechat(wx: WX) -> None:
    await write_history(wx.app.sessionmaker)
    async with wx.app.sessionmaker() as session, session.begin():
        chen = await session.scalar(select(Person).where(Person.key == "p-chen-shuji"))
        assert chen is not None
        session.add(Identity(person_id=chen.id, channel="wechat", external_id=CHEN,
                             chat_id=CHEN, last_inbound_at=wx.app.clock()))
    reply = await wx.sender.text(CHEN, "/bulletin 2026-10")
    assert reply.text == "📊 正在发送新华社区 2026-10 月初通报……"
    await wx.settle()
    sent = [s for s in wx.api.sent if s.touser == CHEN]
    assert [s.kind for s in sent] == ["image", "text", "text", "text"]
    assert sent[1].text.startswith("📊 新华社区 2026-10 月初通报")
    assert "1. 第一网格：78.3 分" in sent[2].text
    assert sent[3].text.startswith("四、热点")
    assert all(len(s.text.encode()) < 2000 and not s.text.endswith("…") for s in sent[1:])
    assert len(wx.api.uploads) == 1  # the chart, uploaded as an image
    async with wx.app.sessionmaker() as session:
        rows = (await session.scalars(select(OutboxMessage).where(
            OutboxMessage.chat_id == CHEN).order_by(OutboxMessage.id))).all()
    ledger = rows[-1]
    assert ledger.payload.get("document") and ledger.status == OUT_SENT
    assert ledger.platform_message_id == "dropped"
