"""On WeChat (which gives no name) a resident is asked how to be called, instead of
showing as "居民" to everyone; a wrong phone is refused; 我的信息 shows and changes it."""

from __future__ import annotations

from sqlalchemy import select

from models import Identity, Person
from tests.wechat.conftest import WX

OPENID = "o-liu-nainai"


async def _person(wx: WX) -> Person:
    async with wx.app.sessionmaker() as session:
        found = await session.scalar(
            select(Person)
            .join(Identity, Identity.person_id == Person.id)
            .where(Identity.external_id == OPENID)
        )
        assert found is not None
        return found


async def test_wechat_resident_gives_a_name_and_fixes_her_phone(wx: WX) -> None:
    token = await wx.h.invite("resident", "xh-g1-m1", "xh-b01", max_uses=None)
    first = await wx.sender.event(OPENID, "subscribe", f"qrscene_{token}")
    assert first.text and "怎么称呼您" in first.text
    assert (await _person(wx)).name == "居民"  # nothing better known yet
    room = await wx.sender.text(OPENID, "刘奶奶")
    assert room.text and "好的，刘奶奶" in room.text and "房号" in room.text
    phone_q = await wx.sender.text(OPENID, "2-101")
    assert phone_q.text and "电话" in phone_q.text
    refused = await wx.sender.text(OPENID, "1391234")
    assert refused.text and "这不是手机号码" in refused.text
    assert (await _person(wx)).phone is None
    done = await wx.sender.text(OPENID, "138-0000-5678")
    assert done.text and "好了" in done.text
    stored = await _person(wx)
    assert (stored.name, stored.phone) == ("刘奶奶", "13800005678")

    # The account menu's 我的信息: the card, then a change of phone by its numbered option.
    card = await wx.sender.event(OPENID, "CLICK", "me")
    assert card.text and "称呼：刘奶奶" in card.text and "电话：13800005678" in card.text
    assert "2-101" in card.text and "改电话" in card.text
    ask = await wx.sender.text(OPENID, "2")  # 2 = 改电话
    assert ask.text and "新的手机号码" in ask.text, ask
    saved = await wx.sender.text(OPENID, "+86 139 0000 1111")
    assert saved.text and "电话：13900001111" in saved.text
    assert (await _person(wx)).phone == "13900001111"
