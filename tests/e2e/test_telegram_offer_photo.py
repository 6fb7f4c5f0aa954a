"""On Telegram a member sees the resident's photo with the offer: one photo message, the
contact-free card as its caption and the accept/decline buttons under it; once someone else
takes the order, the same message's caption says so and its buttons are gone."""

from __future__ import annotations

from tests.conftest import Harness
from tests.e2e.test_telegram_loop import bind, has
from tests.fakes.telegram_server import FakeTelegramServer
from tests.fakes.wechat_server import PNG

RESIDENT, WORKER, LI, ZHAO = 1101, 1102, 1103, 1104


async def test_offer_is_a_photo_with_caption_and_buttons_edited_when_taken(
    tg_app: tuple[Harness, FakeTelegramServer],
) -> None:
    h, tg = tg_app
    resident = tg.user(RESIDENT, "张", language_code="zh-hans")
    worker = tg.user(WORKER, "王网格员")
    li, zhao = tg.user(LI, "李党员"), tg.user(ZHAO, "赵志愿者")
    await bind(tg, h, resident, "resident", "xh-g1-m1", "xh-b01")
    await tg.wait_for(RESIDENT, has("房号"))
    await resident.send_text("2-301")
    await tg.wait_for(RESIDENT, has("电话"))
    await resident.send_text("13912345678")
    await tg.wait_for(RESIDENT, has("好了"))
    await bind(tg, h, worker, "worker", "xh-g1-m1")
    await tg.wait_for(WORKER, has("网格员"))
    for uid, member in ((LI, li), (ZHAO, zhao)):
        await bind(tg, h, member, "member", "xh-g1-m1")
        await tg.wait_for(uid, has("党员"))

    await resident.send_command("order")
    ask = await tg.wait_for(RESIDENT, has("类别"))
    await resident.press_label(ask, "维修报修")
    await tg.wait_for(RESIDENT, has("描述"))
    await resident.send_text("3单元楼道灯坏了")
    await tg.wait_for(RESIDENT, has("照片"))
    tg.add_file("AgACdark", PNG)
    await resident.send_photo("AgACdark")
    loc_q = await tg.wait_for(RESIDENT, has("位置"))
    assert loc_q is not None
    await resident.send_text("跳过")
    confirm = await tg.wait_for(RESIDENT, has("请确认"))
    await resident.press_label(confirm, "✅ 提交")
    await tg.wait_for(RESIDENT, has("工单号"))

    card = await tg.wait_for(WORKER, has("新工单"))
    await worker.press_label(card, "📢 广播抢单")
    offers = {uid: await tg.wait_for(uid, has("先接先得")) for uid in (LI, ZHAO)}
    for offer in offers.values():
        assert offer.photo is not None, "the offer went out without its photo"
        assert tg.file(offer.photo) == PNG
        assert offer.buttons and [label for label, _ in offer.buttons] == ["✋ 接单", "婉拒"]
        assert "13912345678" not in (offer.text or "") and "2-301" not in (offer.text or "")

    await li.press(offers[LI], offers[LI].payload_for("✋ 接单"))
    await tg.wait_until(lambda: (tg.message(ZHAO, offers[ZHAO].message_id).text or "")
                        .startswith("✅ 已由李党员接单"), timeout=10)
    taken = tg.message(ZHAO, offers[ZHAO].message_id)
    assert taken.edited and taken.photo == offers[ZHAO].photo and taken.buttons == []
    # The member who took it gets the full task card (with the contact) as before.
    task = await tg.wait_for(LI, has("接单成功"))
    assert "13912345678" in (task.text or "")
