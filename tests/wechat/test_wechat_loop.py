"""The whole order loop with the resident on WeChat and the worker and member on Telegram."""

from __future__ import annotations

import re
from pathlib import Path

from tests.fakes.telegram_server import FakeTelegramServer
from tests.support.messages import has
from tests.wechat.conftest import WX, wechat_stack

RESIDENT = "o-resident-zhang"
WORKER, MEMBER = 2002, 2003


def option(text: str, label: str) -> str:
    """The number offered for ``label`` in a numbered-options text."""
    match = re.search(rf"回复 (\d+) {re.escape(label)}", text)
    assert match, f"no option {label!r} in {text!r}"
    return match.group(1)


async def place_order(wx: WX, openid: str, description: str) -> str:
    """A bound resident places an order through numbered options; return the receipt."""
    ask = await wx.sender.text(openid, "/order")
    assert ask.text and "类别" in ask.text
    described = await wx.sender.text(openid, option(ask.text, "维修报修"))
    assert described.text and "描述" in described.text
    photo_q = await wx.sender.text(openid, description)
    assert photo_q.text and "照片" in photo_q.text
    loc_q = await wx.sender.text(openid, option(photo_q.text, "跳过"))
    assert loc_q.text and "位置" in loc_q.text and "＋" in loc_q.text
    located = await wx.sender.location(openid, 31.2096, 107.4680)
    assert located.text and "请确认" in located.text and "31.20960" in located.text
    receipt = await wx.sender.text(openid, option(located.text, "✅ 提交"))
    assert receipt.text and "工单号" in receipt.text
    return receipt.text


async def test_resident_on_wechat_member_on_telegram(database_url: str, tmp_path: Path) -> None:
    async with wechat_stack(database_url, tmp_path, telegram=True) as wx:
        tg = wx.tg
        assert isinstance(tg, FakeTelegramServer)
        worker, member = tg.user(WORKER, "王网格员"), tg.user(MEMBER, "李党员")
        await worker.send_command("start", await wx.h.invite("worker", "xh-g1-m1"))
        await tg.wait_for(WORKER, has("网格员"))
        await member.send_command("start", await wx.h.invite("member", "xh-g1-m1"))
        await tg.wait_for(MEMBER, has("党员"))
        await wx.bind_resident(RESIDENT)

        await place_order(wx, RESIDENT, "3单元楼道灯坏了")
        orders = await wx.h.orders()
        assert len(orders) == 1 and orders[0].latitude is not None
        card = await tg.wait_for(WORKER, has("3单元楼道灯坏了"))
        await worker.press_label(card, "📢 广播抢单")
        offer = await tg.wait_for(MEMBER, has("先接先得"))
        await member.press_label(offer, "✋ 接单")
        task = await tg.wait_for(MEMBER, has("接单成功"))
        accepted = await wx.api.wait_for(RESIDENT, lambda t: "已由" in t)
        assert "李党员" in accepted

        await member.press_label(task, "✅ 已完成")
        note_q = await tg.wait_for(MEMBER, has("处理结果"))
        await member.press_label(note_q, "跳过")
        rate = await wx.api.wait_for(RESIDENT, lambda t: "请确认并评价" in t)
        thanks = await wx.sender.text(RESIDENT, option(rate, "★★★★★"))
        assert thanks.text and "感谢您的评价" in thanks.text
        assert (await wx.h.order(orders[0].id)).status == "closed"
        await wx.settle()
        # Every push to the resident went through the customer-service API, within the quota.
        assert all(s.kind == "text" for s in wx.api.sent)
