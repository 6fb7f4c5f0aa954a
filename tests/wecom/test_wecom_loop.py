"""The whole order loop with the resident on the WeChat Official Account and the grid worker
and the party member on 企业微信: buttons are template cards, a press comes back as the same
neutral payload, and the card the member pressed is updated the way Telegram edits an offer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.wechat.test_wechat_loop import option, place_order
from tests.wecom.conftest import wecom_stack

RESIDENT = "o-resident-zhang"
WORKER, MEMBER, LATE = "wangwangge", "lidangyuan", "zhaodangyuan"

pytestmark = pytest.mark.e2e  # the whole service (wecom_stack), not the ``wc`` fixture


async def test_resident_on_wechat_worker_and_member_on_wecom(
    database_url: str, tmp_path: Path
) -> None:
    async with wecom_stack(database_url, tmp_path) as wc:
        assert "网格员" in await wc.bind(WORKER, "worker")
        assert "党员" in await wc.bind(MEMBER, "member")
        assert "党员" in await wc.bind(LATE, "member")
        await wc.wx.bind_resident(RESIDENT)

        await place_order(wc.wx, RESIDENT, "3单元楼道灯坏了")
        orders = await wc.h.orders()
        assert len(orders) == 1

        dispatch = await wc.api.wait_for_card(
            WORKER, lambda c: any(label == "📢 广播抢单" for label, _ in c.buttons)
        )
        assert any("3单元楼道灯坏了" in t for t in wc.api.texts(WORKER))
        await wc.press(dispatch, "📢 广播抢单")

        offer = await wc.api.wait_for_card(
            MEMBER, lambda c: any(label == "✋ 接单" for label, _ in c.buttons)
        )
        assert "先接先得" in "\n".join(wc.api.texts(MEMBER))
        await wc.press(offer, "✋ 接单")
        await wc.api.wait_for(MEMBER, lambda t: "接单成功" in t)
        await wc.settle()
        # The offer card the member pressed now says it is theirs, with nothing left to press.
        assert offer.grey == "已处理" and "您已接下" in offer.title, offer
        # (Among the updates: the worker's dispatch card, updated when he broadcast, may be
        # delivered before or after it.)
        assert [MEMBER] in [u["userids"] for u in wc.api.updates]
        task = await wc.api.wait_for_card(
            MEMBER, lambda c: "接单成功" in c.title and c.grey is None
        )
        accepted = await wc.wx.api.wait_for(RESIDENT, lambda t: "已由" in t)
        assert "000001" in accepted
        # Zhao's offer could not be changed (nobody pressed it, WeCom has no code for it);
        # his late press is answered politely and changes nothing.
        late_offer = await wc.api.wait_for_card(
            LATE, lambda c: any(label == "✋ 接单" for label, _ in c.buttons)
        )
        await wc.press(late_offer, "✋ 接单")
        await wc.api.wait_for(LATE, lambda t: "已经有人接了" in t)
        # The worker's dispatch card lost its broadcast button once pressed.
        assert all(label != "📢 广播抢单" for label, _ in dispatch.buttons)

        await wc.press(task, "✅ 已完成")
        note_q = await wc.api.wait_for_card(
            MEMBER, lambda c: any(label == "跳过" for label, _ in c.buttons)
        )
        assert "处理结果" in note_q.title + note_q.subtitle
        await wc.press(note_q, "跳过")
        rate = await wc.wx.api.wait_for(RESIDENT, lambda t: "请确认并评价" in t)
        thanks = await wc.wx.sender.text(RESIDENT, option(rate, "★★★★★"))
        assert thanks.text and "感谢您的评价" in thanks.text
        order = await wc.h.order(orders[0].id)
        assert order.status == "closed"
        await wc.settle()
        # Every press came back as the neutral payload its card carried, and nothing went
        # wrong on the way: no card was refused, no update used a code twice.
        assert all(s.kind in ("text", "template_card") for s in wc.api.sent)
        assert len(wc.api.updates) >= 2
