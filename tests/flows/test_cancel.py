"""The resident withdraws an order: before acceptance only, and only their own."""

from __future__ import annotations

from models import Offer
from tests.conftest import Harness
from tests.flows.helpers import (
    find,
    full_events,
    new_order,
    payload_of,
    person,
    rows,
    snapshot,
)


async def test_cancel_a_submitted_order(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    order = await new_order(harness, resident)
    card_payloads = [b.payload for b in find(worker, "新工单").buttons]
    assert len(card_payloads) == 4
    cancel = payload_of(find(resident, "工单号"), "撤回工单")
    await resident.press_payload(cancel)
    toast = await resident.press("确认撤回")
    assert toast == "已撤回"
    assert "工单 000001 已撤回" in resident.last().text
    assert "居民已撤回工单 000001" in worker.last().text
    assert (await harness.order(order.id)).status == "cancelled"
    zhang = await person(harness, "p-zhang-ayi")
    last = (await full_events(harness, order.id))[-1]
    assert (last.action, last.actor_id, last.from_status, last.to_status) == (
        "cancel",
        zhang.id,
        "submitted",
        "cancelled",
    )
    # The worker's dispatch buttons are now answered politely and change nothing.
    before = await snapshot(harness)
    for payload in card_payloads:
        await worker.press_payload(payload)
        assert "这张工单已被居民撤回" in worker.last().text, payload
    assert await snapshot(harness) == before
    # A second tap on "withdraw" says so, rather than claiming someone took it.
    await resident.press_payload(cancel)
    assert "您已撤回工单 000001" in resident.last().text
    assert await snapshot(harness) == before
    await resident.send("/myorders")
    assert "000001 · 维修报修 · 已撤回" in resident.last().text
    assert resident.last().buttons == []


async def test_cancel_a_broadcast_withdraws_every_offer(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    members = [await harness.login(k) for k in ("p-li-dangyuan", "p-zhao-zhiyuanzhe")]
    order = await new_order(harness, resident)
    await worker.press("广播")
    offers = [find(m, "📢 新的服务需求") for m in [*members, worker]]
    await resident.send("/myorders")
    await resident.press("撤回 000001")
    await resident.press("确认撤回")
    assert "工单 000001 已撤回" in resident.last().text
    for offer in offers:
        assert offer.edits == 1
        assert offer.text.startswith("居民已撤回这张工单") and offer.buttons == []
    statuses = {o.status for o in await rows(harness, Offer, Offer.order_id == order.id)}
    assert statuses == {"withdrawn"}
    assert (await harness.events(order.id))[-1] == ("cancel", "dispatched", "cancelled")


async def test_cannot_cancel_after_acceptance(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    li = await harness.login("p-li-dangyuan")
    order = await new_order(harness, resident)
    cancel = payload_of(find(resident, "工单号"), "撤回工单")
    await worker.press("指派")
    await worker.press("李党员")
    await li.press("接单")
    before = await snapshot(harness)
    await resident.press_payload(cancel)
    assert "已经有人接单，不能撤回了" in resident.last().text
    assert await snapshot(harness) == before
    assert (await harness.order(order.id)).status == "accepted"
    await resident.send("/myorders")
    assert "已接单，处理中" in resident.last().text
    assert resident.last().buttons == []  # no withdraw button any more


async def test_someone_else_cannot_cancel(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    order = await new_order(harness, resident)
    others = [
        worker,
        await harness.login("p-pan-hui"),  # another resident
        await harness.login("p-li-dangyuan"),
        await harness.login("p-chen-shuji"),  # even the admin
    ]
    before = await snapshot(harness)
    for user in others:
        await user.press_payload(f"o:cx:{order.id}")
        assert "这个操作不属于您" in user.last().text, user.user_id
    assert await snapshot(harness) == before
    assert (await harness.order(order.id)).status == "submitted"
