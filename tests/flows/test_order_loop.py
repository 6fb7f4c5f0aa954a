"""The order loop end to end through the in-memory channel."""

from __future__ import annotations

from tests.conftest import Harness
from tests.flows.helpers import tap


async def place_order(
    resident, category: str = "维修", text: str = "楼道灯坏了，晚上很黑"
) -> None:
    await resident.send("/order")
    await resident.press(category)
    await resident.send(text)
    await resident.press("跳过")  # photo
    await tap(resident, "跳过")  # location: a reply-keyboard key
    await resident.press("提交")


async def test_resident_order_reaches_worker_and_member_accepts(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    member = await harness.login("p-li-dangyuan")

    await place_order(resident)
    assert any("工单号 000001" in t for t in resident.texts()[-2:])
    order = (await harness.orders())[0]
    assert order.status == "submitted"
    card = worker.last()
    assert "楼道灯坏了" in card.text and "13800000009" in card.text  # worker sees contact

    await worker.press("指派", message=card)
    await worker.press("李党员")
    offer = member.last()
    assert "接单" in " ".join(b.label for b in offer.buttons)
    assert "13800000009" not in offer.text and "2-301" not in offer.text  # no phone, no room

    await member.press("接单", message=offer)
    order = await harness.order(order.id)
    assert order.status == "accepted"
    assert "13800000009" in member.last().text  # the acceptor sees the contact
    assert any("李党员" in t for t in resident.texts())

    await member.press("已完成")
    await member.send("灯泡换好了")
    rating = resident.last()
    assert "★★★★★" in [b.label for b in rating.buttons]
    await resident.press("★★★★★", message=rating)
    order = await harness.order(order.id)
    assert order.status == "closed" and order.rating == 5
    actions = [a for a, _, _ in await harness.events(order.id)]
    assert actions == ["submit", "assign", "accept", "done", "rate", "close"]
