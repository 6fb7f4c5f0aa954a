"""Sending on WeCom: the shared access token, WeCom's error codes as the deliverer knows them,
images and files through media/upload, and a WeCom member's identity joined to WeChat."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from bot.channels.base import DeliveryError, RetryAfter, Unreachable
from bot.channels.wecom import WeComApi, WeComChannel
from bot.ports import Button, Outbound
from models import Identity
from tests.fakes.wechat_server import PNG
from tests.wecom.conftest import WC


def adapter(wc: WC) -> WeComChannel:
    return wc.app.channel(WeComChannel)


async def test_instances_share_one_access_token_and_refresh_it_once_when_expired(
    wc: WC,
) -> None:
    other = WeComApi(wc.api.corp_id, wc.api.agent_id, wc.api.secret, wc.app.sessionmaker,
                     base_url=wc.api.base_url)
    try:
        first = await adapter(wc).api.access_token()
        assert await other.access_token() == first  # from the database, not from WeCom
        assert wc.api.token_calls == 1

        wc.api.expire_token()  # 42001 on the next call
        sent = await adapter(wc).send("lidangyuan", Outbound(text="您好"))
        assert sent.startswith("msg:")
        assert wc.api.token_calls == 2 and wc.api.texts("lidangyuan") == ["您好"]
    finally:
        await other.close()


async def test_wecoms_error_codes_become_the_deliverers_errors(wc: WC) -> None:
    channel = adapter(wc)
    wc.api.script("lidangyuan", 45009)
    with pytest.raises(RetryAfter) as limit:
        await channel.send("lidangyuan", Outbound(text="通知"))
    assert limit.value.seconds > 0

    wc.api.script("lidangyuan", 60020)
    with pytest.raises(DeliveryError) as ip:
        await channel.send("lidangyuan", Outbound(text="通知"))
    assert ip.value.permanent and not isinstance(ip.value, Unreachable)

    wc.api.outsiders.add("left-the-office")
    with pytest.raises(Unreachable):
        await channel.send("left-the-office", Outbound(text="通知"))

    wc.api.script("lidangyuan", -1)
    with pytest.raises(DeliveryError) as busy:
        await channel.send("lidangyuan", Outbound(text="通知"))
    assert not busy.value.permanent
    assert wc.api.texts("lidangyuan") == []


async def test_photos_go_as_images_and_files_as_files_uploaded_once(wc: WC) -> None:
    channel = adapter(wc)
    photo = await wc.app.media.save(PNG)
    ledger = await wc.app.media.save_document(b"PK\x03\x04 ledger", "xlsx")
    card = Outbound(text="工单 000001\n内容：楼道灯坏了", photo=photo,
                    buttons=[[Button("✋ 接单", "o:acc:1")]])
    sent = await channel.send("wangwangge", card)
    assert sent.startswith("card:")
    await channel.send("wangwangge", Outbound(text="再看一次", photo=photo, document=ledger,
                                              document_name="台账.xlsx"))
    kinds = [s.kind for s in wc.api.sent if s.touser == "wangwangge"]
    assert kinds == ["image", "template_card", "image", "text", "file"]
    assert [kind for kind, _ in wc.api.uploads.values()] == ["image", "file"]  # cached
    assert wc.api.uploads["WC-UP-1"][1] == PNG


async def test_a_long_text_with_buttons_is_sent_whole_before_its_card(wc: WC) -> None:
    long = "工单 000002 · 维修报修\n" + "内容：" + "楼道灯坏了，" * 60
    escalate = [[Button("⬆️ 上报", "o:esc:2")]]
    await adapter(wc).send("wangwangge", Outbound(text=long, buttons=escalate))
    texts = wc.api.texts("wangwangge")
    assert texts[0] == long  # nothing lost
    card = wc.api.cards_of("wangwangge")[0]
    assert card.title == "工单 000002 · 维修报修" and [k for _, k in card.buttons] == ["o:esc:2"]


async def test_an_edit_of_a_card_nobody_pressed_is_dropped_not_sent_again(wc: WC) -> None:
    channel = adapter(wc)
    offer = Outbound(text="待接单", buttons=[[Button("✋ 接单", "o:acc:9")]])
    sent = await channel.send("lidangyuan", offer)
    assert await channel.edit("lidangyuan", sent, Outbound(text="已被接单")) == "dropped"
    assert wc.api.updates == [] and wc.api.texts("lidangyuan") == ["待接单\n[✋ 接单]"]


async def test_a_wecom_member_links_their_wechat(wc: WC) -> None:
    await wc.bind("lidangyuan", "member")
    assert (await wc.sender.text("lidangyuan", "/link")).status_code == 200
    text = await wc.api.wait_for("lidangyuan", lambda t: re.search(r"\b\d{6}\b", t) is not None)
    match = re.search(r"\b(\d{6})\b", text)
    assert match
    joined = await wc.wx.sender.text("o-li-weixin", f"/link {match.group(1)}")
    assert joined.status == 200
    await wc.settle()
    async with wc.app.sessionmaker() as session:
        rows = (await session.scalars(select(Identity))).all()
        mine = {(i.channel, i.external_id): i.person_id for i in rows}
    assert mine[("wechat", "o-li-weixin")] == mine[("wecom", "lidangyuan")]


async def test_a_pressed_card_is_updated_once_and_a_failed_update_is_tried_again(
    wc: WC,
) -> None:
    channel = adapter(wc)
    offer = Outbound(text="待接单", buttons=[[Button("✋ 接单", "o:acc:9")]])
    sent = await channel.send("lidangyuan", offer)
    card = wc.api.cards_of("lidangyuan")[0]
    await wc.press(card, "✋ 接单")  # (the core answers about an order that does not exist)
    await wc.settle()

    wc.api.update_errors.append(-1)  # WeCom is busy: the deliverer will try again
    with pytest.raises(DeliveryError) as busy:
        await channel.edit("lidangyuan", sent, Outbound(text="✅ 已由您接单"))
    assert not busy.value.permanent
    assert await channel.edit("lidangyuan", sent, Outbound(text="✅ 已由您接单")) == sent
    assert card.title == "✅ 已由您接单" and card.grey == "已处理"
    # The press's code is used: a further refresh waits for a further press.
    assert await channel.edit("lidangyuan", sent, Outbound(text="又一次")) == "dropped"
    assert card.title == "✅ 已由您接单" and len(wc.api.updates) == 1
