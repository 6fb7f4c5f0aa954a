"""On WeChat, a member offered an order with a photo gets the photo as an image message right
before the offer's text (WeChat cannot put buttons under a picture), still without the
resident's phone or room."""

from __future__ import annotations

from tests.fakes.wechat_server import PNG
from tests.wechat.conftest import WX
from tests.wechat.test_wechat_loop import option
from tests.wechat.test_wechat_push import RESIDENT, WORKER, bind_worker_by_scan

MEMBER = "o-member-li"


async def test_the_offer_comes_with_the_photo_as_an_image(wx: WX) -> None:
    await bind_worker_by_scan(wx)
    token = await wx.h.invite("member", "xh-g1-m1")
    bound = await wx.sender.event(MEMBER, "subscribe", f"qrscene_{token}")
    assert bound.text and "党员" in bound.text
    await wx.bind_resident(RESIDENT)
    wx.api.media["MEDIA-9"] = PNG
    ask = await wx.sender.text(RESIDENT, "/order")
    assert ask.text
    await wx.sender.text(RESIDENT, option(ask.text, "维修报修"))
    await wx.sender.text(RESIDENT, "楼道灯坏了")
    loc_q = await wx.sender.image(RESIDENT, "MEDIA-9")
    assert loc_q.text
    confirm = await wx.sender.text(RESIDENT, option(loc_q.text, "跳过"))
    assert confirm.text
    await wx.sender.text(RESIDENT, option(confirm.text, "✅ 提交"))
    card = await wx.api.wait_for(WORKER, lambda t: "楼道灯坏了" in t and "广播" in t)
    await wx.settle()
    before = len([s for s in wx.api.sent if s.touser == MEMBER])
    await wx.sender.text(WORKER, option(card, "📢 广播抢单"))
    await wx.api.wait_for(MEMBER, lambda t: "先接先得" in t)
    await wx.settle()
    sent = [s for s in wx.api.sent if s.touser == MEMBER][before:]
    assert [s.kind for s in sent][:1] == ["image"], [s.kind for s in sent]
    assert wx.api.uploads[sent[0].body["image"]["media_id"]] == PNG
    offer = sent[1]
    assert "先接先得" in offer.text and "接单" in offer.text
    assert "2-301" not in offer.text and "139" not in offer.text
