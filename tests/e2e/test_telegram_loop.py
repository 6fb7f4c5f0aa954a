"""The whole order loop through the real python-telegram-bot against the fake Bot API server."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from models import OrderEvent, ProcessedUpdate
from tests.conftest import Harness
from tests.fakes.telegram_server import FakeTelegramServer, FakeUser, SentMessage
from tests.support.messages import has

RESIDENT, WORKER, HEAD = 1001, 1002, 1006
MEMBERS = (1003, 1004, 1005)



async def bind(tg: FakeTelegramServer, h: Harness, user: FakeUser, role: str, grid: str,
               building: str | None = None) -> None:
    """Scan the invite and keep the Telegram name as 称呼; others than residents also skip
    the phone (a resident's room and phone questions are left to the test)."""
    token = await h.invite(role, grid, building)
    await user.send_command("start", token)
    ask_name = await tg.wait_for(user.chat_id, has("怎么称呼"))
    await user.press_label(ask_name, f"就叫“{user.first_name}”")
    if role != "resident":
        await user.press_label(await tg.wait_for(user.chat_id, has("手机号码")), "跳过")
        await tg.wait_for(user.chat_id, has("好了"))


async def test_whole_loop_on_telegram(tg_app: tuple[Harness, FakeTelegramServer]) -> None:
    h, tg = tg_app
    resident = tg.user(RESIDENT, "张", language_code="zh-hans")
    worker = tg.user(WORKER, "王网格员")
    members = [tg.user(uid, f"党员{uid}") for uid in MEMBERS]
    head = tg.user(HEAD, "刘网格长")

    await bind(tg, h, resident, "resident", "xh-g1-m1", "xh-b01")
    await tg.wait_for(RESIDENT, has("房号"))
    await resident.send_text("2-301")
    await tg.wait_for(RESIDENT, has("电话"))
    await resident.send_text("13912345678")
    await tg.wait_for(RESIDENT, has("好了"))
    await bind(tg, h, worker, "worker", "xh-g1-m1")
    await tg.wait_for(WORKER, has("网格员"))
    for uid, member in zip(MEMBERS, members, strict=True):
        await bind(tg, h, member, "member", "xh-g1-m1")
        await tg.wait_for(uid, has("党员"))
    await bind(tg, h, head, "head", "xh-g1")
    await tg.wait_for(HEAD, has("网格长"))

    # Resident places an order.
    await resident.send_command("order")
    ask = await tg.wait_for(RESIDENT, has("类别"))
    await resident.press_label(ask, "维修报修")
    await tg.wait_for(RESIDENT, has("描述"))
    await resident.send_text("3单元楼道灯坏了，老人晚上看不见")
    photo_q = await tg.wait_for(RESIDENT, has("照片"))
    await resident.press_label(photo_q, "跳过")
    loc_q = await tg.wait_for(RESIDENT, has("位置"))
    await resident.send_location(31.2096, 107.4680)
    confirm = await tg.wait_for(RESIDENT, has("请确认"))
    await resident.press_label(confirm, "✅ 提交")
    received = await tg.wait_for(RESIDENT, has("工单号"))
    assert loc_q.message_id < received.message_id
    orders = await h.orders()
    assert len(orders) == 1 and orders[0].latitude == pytest.approx(31.2096)
    order_id = orders[0].id

    # The worker broadcasts; three members press accept at the same moment.
    card = await tg.wait_for(WORKER, has("新工单"))
    assert "13912345678" in (card.text or "")
    await worker.press_label(card, "📢 广播抢单")
    offers: list[SentMessage] = []
    for uid in MEMBERS:
        offer = await tg.wait_for(uid, has("先接先得"))
        assert "13912345678" not in (offer.text or "") and "2-301" not in (offer.text or "")
        offers.append(offer)
    updates = []
    answered = len(tg.callback_answers)  # earlier taps (binding, the order) are answered too
    for member, offer in zip(members, offers, strict=True):
        updates.append(await member.press(offer, offer.payload_for("✋ 接单")))
    await tg.wait_until(lambda: len(tg.callback_answers) >= answered + 3, timeout=10)
    order = await h.order(order_id)
    assert order.status == "accepted"
    def winners() -> list[int]:
        return [uid for uid in MEMBERS if any("接单成功" in (m.text or "") for m in tg.sent(uid))]

    await tg.wait_until(lambda: bool(winners()), timeout=10)
    assert len(winners()) == 1
    winner_uid = winners()[0]
    async with h.app.sessionmaker() as session:
        accepts = await session.scalar(select(func.count()).select_from(OrderEvent).where(
            OrderEvent.order_id == order_id, OrderEvent.action == "accept"))
    assert accepts == 1
    for uid, offer in zip(MEMBERS, offers, strict=True):
        if uid != winner_uid:
            await tg.wait_until(lambda o=offer: "已由" in (o.text or ""), timeout=10)
            assert offer.edited
    winner_task = await tg.wait_for(winner_uid, has("接单成功"))
    assert "13912345678" in (winner_task.text or "")
    await tg.wait_for(RESIDENT, has("已由"))

    # Done, then the resident rates.
    await members[MEMBERS.index(winner_uid)].press_label(winner_task, "✅ 已完成")
    note_q = await tg.wait_for(winner_uid, has("处理结果"))
    await members[MEMBERS.index(winner_uid)].press_label(note_q, "跳过")
    rate = await tg.wait_for(RESIDENT, has("请确认并评价"))
    await resident.press_label(rate, "★★★★★")
    await tg.wait_for(RESIDENT, has("感谢您的评价"))
    assert (await h.order(order_id)).status == "closed"

    # A second order is escalated by the worker to the grid head.
    await resident.send_command("order")
    ask = await tg.wait_for(RESIDENT, lambda m: "类别" in (m.text or "")
                            and m.message_id > rate.message_id)
    await resident.press_label(ask, "邻里纠纷")
    await tg.wait_for(RESIDENT, has("【邻里纠纷】"))
    await resident.send_text("楼上深夜噪音，沟通无果")
    photo_q = await tg.wait_for(RESIDENT, lambda m: "照片" in (m.text or "")
                                and m.message_id > ask.message_id)
    await resident.press_label(photo_q, "跳过")
    loc_q = await tg.wait_for(RESIDENT, lambda m: "位置" in (m.text or "")
                              and m.message_id > photo_q.message_id)
    assert loc_q.keyboard and loc_q.keyboard[0][0].get("request_location")
    await resident.send_text("跳过")  # the reply-keyboard key under "send location"
    confirm = await tg.wait_for(RESIDENT, lambda m: "请确认" in (m.text or "")
                                and m.message_id > loc_q.message_id)
    await resident.press_label(confirm, "✅ 提交")
    card2 = await tg.wait_for(WORKER, lambda m: "邻里纠纷" in (m.text or "")
                              and "新工单" in (m.text or ""))
    await worker.press_label(card2, "⬆️ 上报")
    await tg.wait_for(WORKER, has("上报原因"))
    await worker.send_text("需要网格长出面协调")
    escalated = await tg.wait_for(HEAD, has("需要网格长出面协调"))
    assert [label for label, _ in escalated.buttons] == [
        "👤 指派", "📢 广播抢单", "🙋 我来处理", "⬆️ 上报"]
    second = (await h.orders())[-1]
    assert second.status == "escalated"


async def test_redelivered_update_creates_one_order(
    tg_app: tuple[Harness, FakeTelegramServer],
) -> None:
    h, tg = tg_app
    resident = tg.user(RESIDENT, "张")
    await bind(tg, h, resident, "resident", "xh-g1-m1", "xh-b01")
    q = await tg.wait_for(RESIDENT, has("房号"))
    await resident.press_label(q, "跳过")
    q = await tg.wait_for(RESIDENT, has("电话"))
    await resident.press_label(q, "跳过")
    await resident.send_command("order")
    ask = await tg.wait_for(RESIDENT, has("类别"))
    await resident.press_label(ask, "环境卫生")
    await tg.wait_for(RESIDENT, has("描述"))
    await resident.send_text("垃圾桶满了")
    q = await tg.wait_for(RESIDENT, has("照片"))
    await resident.press_label(q, "跳过")
    await tg.wait_for(RESIDENT, has("位置"))
    await resident.send_text("跳过")
    confirm = await tg.wait_for(RESIDENT, has("请确认"))
    press = await resident.press(confirm, confirm.payload_for("✅ 提交"))
    await tg.inject(press)  # Telegram delivers the very same update again
    await tg.wait_for(RESIDENT, has("工单号"))
    await tg.wait_until(lambda: tg.pending_updates == 0, timeout=10)
    await asyncio.sleep(0)  # let the second handler finish its transaction
    async with h.app.sessionmaker() as session:
        dupes = await session.scalar(select(func.count()).select_from(ProcessedUpdate))
    assert len(await h.orders()) == 1
    assert len([m for m in tg.sent(RESIDENT) if "工单号" in (m.text or "")]) == 1
    assert dupes and dupes > 0



PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c63f8cfc0f01f0005000201e2aa46b70000000049454e44ae426082"
)


async def test_photo_reaches_the_worker_through_the_media_store(
    tg_app: tuple[Harness, FakeTelegramServer],
) -> None:
    h, tg = tg_app
    resident, worker = tg.user(RESIDENT, "张"), tg.user(WORKER, "王网格员")
    await bind(tg, h, worker, "worker", "xh-g1-m1")
    await tg.wait_for(WORKER, has("网格员"))
    await bind(tg, h, resident, "resident", "xh-g1-m1", "xh-b01")
    await resident.press_label(await tg.wait_for(RESIDENT, has("房号")), "跳过")
    await resident.press_label(await tg.wait_for(RESIDENT, has("电话")), "跳过")
    await resident.send_command("order")
    await resident.press_label(await tg.wait_for(RESIDENT, has("类别")), "安全隐患")
    await tg.wait_for(RESIDENT, has("描述"))
    await resident.send_text("电动车在楼道充电")
    await tg.wait_for(RESIDENT, has("照片"))
    tg.add_file("resident-photo", PNG)
    await resident.send_photo("resident-photo")
    await tg.wait_for(RESIDENT, has("位置"))
    await resident.send_text("跳过")
    await resident.press_label(await tg.wait_for(RESIDENT, has("请确认")), "✅ 提交")
    card = await tg.wait_for(WORKER, has("电动车在楼道充电"))
    order = (await h.orders())[0]
    assert order.photo is not None and order.photo.startswith("media:")
    assert h.app.media.path(order.photo) is not None
    assert card.photo is not None  # sent as an upload of the stored bytes
    assert tg._files[card.photo] == PNG
    assert "紧急" in (card.text or "")  # safety hazards are urgent
