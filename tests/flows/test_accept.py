"""Accepting and declining offers: first accept wins (also under concurrent presses), the other
offers turn into "taken by …", declines give the order back."""

from __future__ import annotations

import asyncio

from bot.channels.memory import MemoryUser, SentMessage
from models import Offer, Order, OrderEvent
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

MEMBERS = ("p-li-dangyuan", "p-zhao-zhiyuanzhe")


async def broadcast_order(harness: Harness) -> tuple[Order, MemoryUser, MemoryUser, list]:
    """张阿姨's order broadcast by 王网格员 to 李党员, 赵志愿者 and himself."""
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    members = [await harness.login(k) for k in MEMBERS]
    order = await new_order(harness, resident)
    await worker.press("广播")
    return order, resident, worker, [*members, worker]


def offer_for(user: MemoryUser, order_id: int) -> SentMessage:
    """The broadcast offer of ``order_id`` as ``user`` received it."""
    for sent in reversed(user.inbox):
        if sent.text.startswith("📢") and f"工单 {order_id:06d}" in sent.text:
            return sent
    raise AssertionError(f"{user.user_id} got no offer of {order_id}")


async def test_first_accept_wins_and_other_offers_turn_into_taken(harness: Harness) -> None:
    order, resident, worker, members = await broadcast_order(harness)
    li, zhao, _wang = members
    offers = {m.user_id: find(m, "📢 新的服务需求") for m in members}

    toast = await li.press("接单", message=offers["p-li-dangyuan"])
    assert toast == "接单成功 000001"
    stored = await harness.order(order.id)
    li_id = (await person(harness, "p-li-dangyuan")).id
    assert (stored.status, stored.assignee_id) == ("accepted", li_id)

    for key in ("p-zhao-zhiyuanzhe", "p-wang"):
        offer = offers[key]
        assert offer.edits == 1, key
        assert offer.text.startswith("✅ 已由李党员接单"), offer.text
        assert offer.buttons == []
        assert "13800000009" not in offer.text
    task = li.last()
    assert task.text.startswith("✋ 接单成功") and "13800000009" in task.text
    assert "2-301" in task.text
    assert "您的工单 000001 已由李党员接单" in resident.last().text
    assert "工单 000001 已由李党员接单" in find(worker, "已由李党员接单。").text
    statuses = {o.person_id: o.status for o in await rows(harness, Offer)}
    assert statuses[li_id] == "accepted"
    assert sorted(statuses.values()) == ["accepted", "taken", "taken"]

    # No message about the order still offers "accept".
    assert not [m for m in li.inbox + zhao.inbox if "接单" in str(m.buttons)]
    # A late accept (an old client, a forwarded button) is answered politely, changes nothing.
    before = await snapshot(harness)
    await zhao.press_payload(f"o:acc:{order.id}")
    assert "这张工单已经有人接了" in zhao.last().text
    await li.press_payload(f"o:acc:{order.id}")
    assert "您已经接了这张工单" in li.last().text
    await zhao.press_payload(f"o:dec:{order.id}")
    assert "这个派单已结束" in zhao.last().text
    assert await snapshot(harness) == before


async def test_concurrent_accepts_exactly_one_wins(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    members = [worker] + [await harness.login(k) for k in MEMBERS]
    ids = {(await person(harness, m.user_id)).id for m in members}
    for round_ in range(3):
        order = await new_order(harness, resident, text=f"第{round_ + 1}次：楼道灯坏了")
        await worker.press("广播", message=find(worker, f"工单 {order.id:06d}"))
        payloads = [payload_of(offer_for(m, order.id), "接单") for m in members]
        toasts = await asyncio.gather(
            *(m.press_payload(pl) for m, pl in zip(members, payloads, strict=True))
        )
        won = [t for t in toasts if t and t.startswith("接单成功")]
        assert len(won) == 1, toasts
        assert sorted(t for t in toasts if t not in won) == ["这张工单已经有人接了。"] * 2
        stored = await harness.order(order.id)
        assert stored.status == "accepted" and stored.assignee_id in ids
        accepts = [e for e in await full_events(harness, order.id) if e.action == "accept"]
        assert len(accepts) == 1 and accepts[0].actor_id == stored.assignee_id
        offers = await rows(harness, Offer, Offer.order_id == order.id)
        assert sorted(o.status for o in offers) == ["accepted", "taken", "taken"]
        assert [o.person_id for o in offers if o.status == "accepted"] == [stored.assignee_id]
        # The losers' offer messages now name the winner.
        winner = (await harness.order(order.id)).assignee_id
        for m in members:
            if (await person(harness, m.user_id)).id != winner:
                taken = [x for x in m.inbox if x.text.startswith("✅ 已由")]
                assert any(f"工单 {order.id:06d}" in x.text for x in taken), m.user_id


async def test_concurrent_accept_and_cancel_one_wins(harness: Harness) -> None:
    order, resident, _worker, members = await broadcast_order(harness)
    li = members[0]
    accept, cancel = await asyncio.gather(
        li.press_payload(f"o:acc:{order.id}"), resident.press_payload(f"o:cxy:{order.id}")
    )
    stored = await harness.order(order.id)
    actions = [e.action for e in await full_events(harness, order.id)]
    if stored.status == "accepted":
        # The resident is told it was taken (whichever refusal sentence applies).
        assert accept == "接单成功 000001"
        assert cancel in (
            "这张工单已经有人接了。",
            "已经有人接单，不能撤回了；如有需要请联系您的网格员。",
        )
        assert "cancel" not in actions
    else:
        assert stored.status == "cancelled"
        assert cancel == "已撤回" and accept and "撤回" in accept
        assert "accept" not in actions


async def test_declined_assignment_returns_to_the_worker(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    li = await harness.login("p-li-dangyuan")
    zhao = await harness.login("p-zhao-zhiyuanzhe")
    order = await new_order(harness, resident)
    await worker.press("指派")
    await worker.press("李党员")
    offer = li.last()
    cards_before = len([m for m in worker.inbox if m.buttons and "指派" in m.buttons[0].label])

    toast = await li.press("婉拒", message=offer)
    assert toast == "已婉拒"
    assert offer.edits == 1 and offer.text.startswith("您已婉拒这张工单") and offer.buttons == []
    stored = await harness.order(order.id)
    assert (stored.status, stored.assignee_id) == ("submitted", None)
    card = worker.last()
    assert card.text.startswith("李党员婉拒了这张工单，请重新派单")
    assert card.buttons[0].label == "👤 指派"
    cards_after = len([m for m in worker.inbox if m.buttons and "指派" in m.buttons[0].label])
    assert cards_after == cards_before + 1
    assert (await harness.events(order.id))[-2:] == [
        ("decline", "dispatched", "dispatched"),
        ("returned", "dispatched", "submitted"),
    ]
    # Declining twice changes nothing; the worker dispatches again, to someone else.
    before = await snapshot(harness)
    await li.press_payload(f"o:dec:{order.id}")
    assert "这个派单已结束" in li.last().text
    await li.press_payload(f"o:acc:{order.id}")
    assert "这个派单已结束" in li.last().text
    assert await snapshot(harness) == before
    await worker.press("指派", message=card)
    await worker.press("赵志愿者")
    await zhao.press("接单")
    stored = await harness.order(order.id)
    assert stored.assignee_id == (await person(harness, "p-zhao-zhiyuanzhe")).id
    rounds = sorted(o.round for o in await rows(harness, Offer, Offer.order_id == order.id))
    assert rounds == [1, 2]


async def test_one_decline_of_a_broadcast_leaves_the_others_open(harness: Harness) -> None:
    order, _resident, worker, members = await broadcast_order(harness)
    li, zhao, _wang = members
    mark = len(worker.inbox)
    await li.press("婉拒")
    stored = await harness.order(order.id)
    assert stored.status == "dispatched"
    assert not any("婉拒了这张工单" in m.text for m in worker.inbox[mark:])
    zhao_offer = find(zhao, "📢 新的服务需求")
    assert zhao_offer.edits == 0 and zhao_offer.buttons
    statuses = sorted(o.status for o in await rows(harness, Offer, Offer.order_id == order.id))
    assert statuses == ["declined", "open", "open"]
    await zhao.press("接单", message=zhao_offer)
    assert (await harness.order(order.id)).status == "accepted"
    # The decliner's message keeps saying he declined (it is not turned into "taken").
    assert find(li, "您已婉拒").edits == 1


async def test_everyone_declining_a_broadcast_returns_it(harness: Harness) -> None:
    order, _resident, worker, members = await broadcast_order(harness)
    for m in members:
        await m.press("婉拒", message=find(m, "📢 新的服务需求"))
    stored = await harness.order(order.id)
    assert stored.status == "submitted"
    assert "婉拒了这张工单，请重新派单" in worker.last().text
    returned = [e for e in await full_events(harness, order.id) if e.action == "returned"]
    assert len(returned) == 1


async def test_accept_on_a_cancelled_order_is_withdrawn(harness: Harness) -> None:
    _order, resident, _worker, members = await broadcast_order(harness)
    li = members[0]
    offer = find(li, "📢 新的服务需求")
    payload = payload_of(offer, "接单")
    await resident.press("撤回工单")
    await resident.press("确认撤回")
    assert offer.text.startswith("居民已撤回这张工单") and offer.buttons == []
    before = await snapshot(harness)
    await li.press_payload(payload)
    assert "这张工单已被居民撤回" in li.last().text
    assert await snapshot(harness) == before


async def test_only_offered_members_may_accept(harness: Harness) -> None:
    order, resident, _worker, _members = await broadcast_order(harness)
    outsiders = [resident, await harness.login("p-sun-jianhua"), await harness.login("p-wu-jing")]
    before = await snapshot(harness)
    for user in outsiders:
        await user.press_payload(f"o:acc:{order.id}")
        assert "这个操作不属于您" in user.last().text, user.user_id
        await user.press_payload(f"o:dec:{order.id}")
        assert "这个操作不属于您" in user.last().text, user.user_id
    assert await snapshot(harness) == before
    assert await harness.count(OrderEvent) == 2  # submit, broadcast
