"""The intake handles a redelivered event once; every transition leaves an event row."""

from __future__ import annotations

import itertools

from bot.ports import Inbound
from models import Order, OrderEvent, OutboxMessage, ProcessedUpdate
from tests.conftest import Harness
from tests.flows.helpers import LIGHT, find, full_events, new_order, person, snapshot, tap


def inbound(key: str, dedupe_key: str, **kwargs: object) -> Inbound:
    """An event as a channel adapter would build it from one platform delivery."""
    return Inbound(
        channel="memory",
        user_id=key,
        chat_id=key,
        dedupe_key=dedupe_key,
        locale="zh-hans",
        display_name="张阿姨",
        **kwargs,  # type: ignore[arg-type]
    )


async def test_redelivered_submit_creates_one_order_and_one_reply(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    await resident.send("/order")
    await resident.press("维修")
    await resident.send(LIGHT)
    await resident.press("跳过")
    await tap(resident, "跳过")
    mark, worker_mark = len(resident.inbox), len(worker.inbox)
    outbox = await harness.count(OutboxMessage)

    event = inbound("p-zhang-ayi", "update-424242", button="f:ok")
    first = await harness.intake(event)
    second = await harness.intake(event)
    assert not first.duplicate and first.outbox_ids
    assert second.duplicate and second.outbox_ids == [] and second.toast is None

    assert await harness.count(Order) == 1
    replies = [m for m in resident.inbox[mark:] if "工单号" in m.text]
    assert len(replies) == 1
    assert len(worker.inbox) == worker_mark + 1  # one dispatch card
    assert await harness.count(OutboxMessage) == outbox + len(first.outbox_ids)
    assert await harness.count(OrderEvent) == 1


async def test_redelivered_text_and_accept_are_handled_once(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    await harness.login("p-wang")
    before = await harness.count(ProcessedUpdate)
    event = inbound("p-zhang-ayi", "msg-1", text="/order")
    await harness.intake(event)
    await harness.intake(event)
    assert [t for t in resident.texts() if "请选择问题类别" in t] == ["请选择问题类别："]
    assert await harness.count(ProcessedUpdate) == before + 1

    # The same dedupe key on another channel is another delivery.
    other = Inbound(channel="web", user_id="w1", chat_id="w1", dedupe_key="msg-1", text="hi")
    assert not (await harness.app.handler(other)).duplicate


async def test_redelivered_accept_does_not_repeat_the_notifications(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    li = await harness.login("p-li-dangyuan")
    order = await new_order(harness, resident)
    await worker.press("广播")
    event = Inbound(
        channel="memory",
        user_id="p-li-dangyuan",
        chat_id="p-li-dangyuan",
        dedupe_key="cb-77",
        button=f"o:acc:{order.id}",
    )
    await harness.intake(event)
    before = await snapshot(harness)
    resident_seen, li_seen = len(resident.inbox), len(li.inbox)
    assert (await harness.intake(event)).duplicate
    assert await snapshot(harness) == before
    assert (len(resident.inbox), len(li.inbox)) == (resident_seen, li_seen)


async def test_every_transition_is_an_event_with_actor_from_and_to(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    head = await harness.login("p-liu-wanggezhang")
    li = await harness.login("p-li-dangyuan")
    sun = await harness.login("p-sun-jianhua")
    ids = {
        k: (await person(harness, k)).id
        for k in ("p-zhang-ayi", "p-wang", "p-liu-wanggezhang", "p-li-dangyuan", "p-sun-jianhua")
    }
    order = await new_order(harness, resident)
    await worker.press("上报")
    await worker.send("需要物业配合")
    await head.press("指派")
    await head.press("李党员")
    await li.press("婉拒")
    await head.press("广播", message=find(head, "婉拒了这张工单"))
    await sun.press("接单")
    await sun.press("已完成")
    await sun.send("修好了")
    await resident.press("没解决")
    await sun.press("已完成")
    await sun.press("跳过")
    await resident.press("★★")
    await head.press("已回访")
    await head.send("已回访")

    events = await full_events(harness, order.id)
    trail = [(e.action, e.actor_id, e.from_status, e.to_status) for e in events]
    z, w, h, li_id, s = (ids[k] for k in ids)
    assert trail == [
        ("submit", z, None, "submitted"),
        ("escalate", w, "submitted", "escalated"),
        ("assign", h, "escalated", "dispatched"),
        ("decline", li_id, "dispatched", "dispatched"),
        ("returned", li_id, "dispatched", "submitted"),
        ("broadcast", h, "submitted", "dispatched"),
        ("accept", s, "dispatched", "accepted"),
        ("done", s, "accepted", "done"),
        ("reopen", z, "done", "accepted"),
        ("done", s, "accepted", "done"),
        ("rate", z, "done", "confirmed"),
        ("revisit", h, "confirmed", "closed"),
    ]
    # The trail is a chain: each event starts where the previous one ended.
    for prev, nxt in itertools.pairwise(events):
        assert nxt.from_status == prev.to_status, (prev.action, nxt.action)
    assert events[1].note == "需要物业配合" and events[2].note == "李党员"
    assert events[7].note == "修好了" and events[10].note == "2"
    assert all(e.created_at is not None for e in events)
    assert (await harness.order(order.id)).status == "closed"


async def test_cancel_and_handle_trails(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    z, w = (await person(harness, "p-zhang-ayi")).id, (await person(harness, "p-wang")).id
    first = await new_order(harness, resident)
    await worker.press("我来处理")
    await worker.press("已完成")
    await worker.press("跳过")
    await resident.press("★★★★★")
    second = await new_order(harness, resident, text="门禁坏了")
    await worker.press("广播", message=find(worker, "门禁坏了"))
    await resident.press("撤回工单", message=find(resident, "工单号 000002"))
    await resident.press("确认撤回")

    def trail(events: list[OrderEvent]) -> list[tuple[object, ...]]:
        return [(e.action, e.actor_id, e.from_status, e.to_status) for e in events]

    assert trail(await full_events(harness, first.id)) == [
        ("submit", z, None, "submitted"),
        ("handle", w, "submitted", "accepted"),
        ("done", w, "accepted", "done"),
        ("rate", z, "done", "confirmed"),
        ("close", z, "confirmed", "closed"),
    ]
    assert trail(await full_events(harness, second.id)) == [
        ("submit", z, None, "submitted"),
        ("broadcast", w, "submitted", "dispatched"),
        ("cancel", z, "dispatched", "cancelled"),
    ]
