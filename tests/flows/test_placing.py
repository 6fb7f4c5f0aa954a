"""Placing an order: each step of the flow, what is re-asked, cancelling, and the result."""

from __future__ import annotations

import asyncio
import re

from models import Conversation, Order
from tests.conftest import Harness
from tests.flows.helpers import (
    LIGHT,
    conversation_of,
    find,
    new_order,
    person,
    place_order,
    since,
    snapshot,
    tap,
    texts_since,
)


async def test_each_step_asks_the_next_question(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    await resident.send("/order")
    ask = resident.last()
    assert "请选择问题类别" in ask.text
    labels = [b.label for b in ask.buttons]
    for name in ("维修报修", "安全隐患", "助老帮扶", "邻里纠纷", "环境卫生", "其他", "取消"):
        assert name in labels
    assert await conversation_of(harness, resident) == ("order", "category")

    await resident.press("助老帮扶")
    assert "【助老帮扶】请用文字简要描述问题" in resident.last().text
    assert await conversation_of(harness, resident) == ("order", "description")
    await resident.send("帮忙买点菜和药")
    assert "可以发一张照片吗" in resident.last().text
    assert await conversation_of(harness, resident) == ("order", "photo")
    await resident.press("跳过")
    assert "需要发送位置吗" in resident.last().text
    assert resident.last().message.ask_location == "📍 发送位置"
    await tap(resident, "跳过")
    confirm = resident.last()
    assert "请确认您的报事" in confirm.text
    assert "类别：助老帮扶" in confirm.text and "描述：帮忙买点菜和药" in confirm.text
    assert await harness.count(Order) == 0, "nothing is stored before the confirmation"

    mark = len(resident.inbox)
    await resident.press("提交")
    reply = find(resident, "工单号")
    assert reply in since(resident, mark)
    match = re.search(r"工单号 (\d{6})", reply.text)
    assert match, reply.text
    # The order row exists with the number the reply quotes (same transaction as the reply).
    order = await harness.order(int(match.group(1)))
    zhang = await person(harness, "p-zhang-ayi")
    assert (order.status, order.category, order.description) == (
        "submitted",
        "elderly",
        "帮忙买点菜和药",
    )
    assert order.resident_id == zhang.id and order.room == "2-301"
    assert order.photo is None and order.latitude is None
    assert await conversation_of(harness, resident) is None
    assert [b.label for b in reply.buttons] == ["撤回工单"]
    assert await harness.events(order.id) == [("submit", None, "submitted")]


async def test_free_text_where_a_button_is_expected_re_asks(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    await resident.send("/order")
    before = await snapshot(harness)
    await resident.send("我家灯坏了")  # a category button is expected
    assert "请选择问题类别" in resident.last().text
    assert await snapshot(harness) == before
    await resident.press_payload("f:cat:nosuch")
    assert "没有这个类别" in resident.last().text
    assert await snapshot(harness) == before
    await resident.press_payload("f:skip")  # a button of another step
    assert "请选择问题类别" in resident.last().text
    assert await snapshot(harness) == before

    await resident.press("维修")
    await resident.send(LIGHT)
    before = await snapshot(harness)
    await resident.send("没照片")  # the photo step expects a photo or "skip"
    assert "请发送一张照片，或点“跳过”" in resident.last().text
    assert await snapshot(harness) == before
    await resident.press("跳过")
    before = await snapshot(harness)
    await resident.send("在1栋")  # the location step expects a location or "skip"
    assert "请发送位置，或点“跳过”" in resident.last().text
    assert await snapshot(harness) == before
    await tap(resident, "跳过")
    before = await snapshot(harness)
    await resident.send("好的")  # the confirmation expects the button
    assert "请确认您的报事" in resident.last().text
    assert await snapshot(harness) == before
    await resident.press("提交")
    assert await harness.count(Order) == 1


async def test_description_too_short_is_asked_again(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    await resident.send("/order")
    await resident.press("维修")
    for short in ("灯", "  ", "a"):
        await resident.send(short)
        assert "至少两个字" in resident.last().text
        assert await conversation_of(harness, resident) == ("order", "description")
    await resident.send("灯坏")
    assert "可以发一张照片吗" in resident.last().text


async def test_photo_and_location_are_stored_on_the_order(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    await resident.send("/order")
    await resident.press("安全隐患")
    await resident.send("楼道里有人飞线给电动车充电")
    await resident.photo("tg-file-AgACphoto1")
    assert "需要发送位置吗" in resident.last().text
    await resident.location(31.21345, 107.50789)
    confirm = resident.last()
    assert "📷 附有照片" in confirm.text and "位置：31.21345, 107.50789" in confirm.text
    await resident.press("提交")
    order = (await harness.orders())[-1]
    assert order.photo == "tg-file-AgACphoto1"
    assert (order.latitude, order.longitude) == (31.21345, 107.50789)
    card = worker.last()
    assert card.message.photo == "tg-file-AgACphoto1"
    assert "⚠️ 紧急" in card.text and "位置：31.21345, 107.50789" in card.text


async def test_photo_with_caption_at_description_step(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    await resident.send("/order")
    await resident.press("环境卫生")
    await resident.photo("tg-file-trash", caption="垃圾桶满了没人清")
    assert "需要发送位置吗" in resident.last().text  # photo given: its step is skipped
    await tap(resident, "跳过")
    await resident.press("提交")
    order = (await harness.orders())[-1]
    assert (order.photo, order.description) == ("tg-file-trash", "垃圾桶满了没人清")


async def test_cancel_mid_flow_with_button_and_command(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    await resident.send("/order")
    await resident.press("维修")
    await resident.press("取消")
    # "已取消" itself brings the menu back: no bare "请选择：" follows it.
    assert "已取消" in resident.last().text
    assert resident.last().message.menu
    assert "请选择：" not in resident.texts()
    assert await conversation_of(harness, resident) is None

    await resident.send("/order")
    await resident.press("维修")
    await resident.send(LIGHT)
    await resident.press("跳过")
    await resident.send("/cancel")
    assert "已取消" in resident.last().text and resident.last().message.menu
    assert await conversation_of(harness, resident) is None
    await resident.send("/cancel")
    assert "当前没有进行中的操作" in resident.last().text
    assert await harness.count(Order) == 0
    assert await harness.count(Conversation) == 0

    # The confirmation's own cancel button, too.
    await resident.send("/order")
    await resident.press("维修")
    await resident.send(LIGHT)
    await resident.press("跳过")
    await tap(resident, "跳过")
    confirm = resident.last()
    await resident.press("取消", message=confirm)
    assert await harness.count(Order) == 0
    # ... after which the confirmation's submit button is stale.
    await resident.press("提交", message=confirm)
    assert "这个按钮已过期" in resident.last().text
    assert await harness.count(Order) == 0


async def test_menu_label_and_another_command_leave_the_flow(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    await resident.send("/order")
    await resident.press("维修")
    await resident.send("📋 我的工单")
    assert "您还没有工单" in resident.last().text
    assert await conversation_of(harness, resident) is None
    await resident.send("/order")
    await resident.send("/mygrid")
    assert await conversation_of(harness, resident) is None
    text = resident.last().text
    assert "翠屏小区1栋" in text and "王网格员" in text


async def test_myorders_lists_the_order(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    await resident.send("/myorders")
    assert "您还没有工单" in resident.last().text
    order = await new_order(harness, resident)
    await resident.send("/myorders")
    listing = resident.last()
    assert "000001 · 维修报修 · 待派单" in listing.text
    labels = [b.label for b in listing.buttons]
    assert labels == ["查看 000001", "撤回 000001"]
    await resident.press("查看 000001")
    assert LIGHT in resident.last().text and "状态：待派单" in resident.last().text
    assert order.id == 1


async def test_non_resident_cannot_order(harness: Harness) -> None:
    for key in ("p-li-dangyuan", "p-wang", "p-liu-wanggezhang", "p-chen-shuji"):
        user = await harness.login(key)
        before = await snapshot(harness)
        await user.send("/order")
        assert "只有已绑定住址的居民可以报事" in user.last().text, key
        assert await snapshot(harness) == before
        await user.press_payload("m:order")
        assert "只有已绑定住址的居民可以报事" in user.last().text, key
        assert await snapshot(harness) == before


async def test_order_in_english(harness: Harness) -> None:
    # 潘慧 has no preferred language stored: her chat's language (en) is used.
    resident = await harness.login("p-pan-hui", locale="en")
    head = await harness.login("p-luo-jianguo")
    await resident.send("/order")
    assert "What kind of problem is it?" in resident.last().text
    await resident.press("Repairs")
    assert "[Repairs] Please describe the problem" in resident.last().text
    await resident.send("x")
    assert "at least two characters" in resident.last().text
    await resident.send("The water pipe in the stairwell is leaking")
    assert "add a photo" in resident.last().text
    await resident.press("Skip")
    assert "Share your location" in resident.last().text
    await tap(resident, "Skip")
    assert "Please check your request" in resident.last().text
    mark = len(resident.inbox)
    await resident.press("Submit")
    assert "Received! Request number 000001" in texts_since(resident, mark)
    await resident.send("/myorders")
    assert "000001 · Repairs" in resident.last().text
    # The head reads Chinese.
    assert "📥 新工单，请派单" in head.last().text
    assert "The water pipe" in head.last().text
    # Pushes to her are in English too.
    await head.press("我来处理")
    assert "Your request 000001 was taken by 罗建国" in resident.last().text


async def test_two_orders_in_a_row_get_their_own_numbers(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    await place_order(resident)
    await place_order(resident, "邻里纠纷", "楼上半夜很吵")
    assert "工单号 000002" in find(resident, "工单号").text
    orders = await harness.orders()
    assert [(o.id, o.category) for o in orders] == [(1, "repair"), (2, "dispute")]


async def test_double_tap_on_submit_stores_one_order(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    await resident.send("/order")
    await resident.press("维修")
    await resident.send(LIGHT)
    await resident.press("跳过")
    await tap(resident, "跳过")
    mark = len(resident.inbox)
    confirm = resident.last()
    submit = next(b.payload for b in confirm.buttons if "提交" in b.label)
    # Two deliveries (two taps, not a redelivery) arriving at once.
    toasts = await asyncio.gather(
        resident.press_payload(submit, confirm.id), resident.press_payload(submit, confirm.id)
    )
    assert await harness.count(Order) == 1
    # The second is told what came of the first, not "expired" (which invites a new order).
    assert sorted(t or "" for t in toasts) == [
        "已提交 000001",
        "已提交，工单号 000001（待派单），不会重复报。",
    ]
    assert len([m for m in since(resident, mark) if "已收到！工单号" in m.text]) == 1
