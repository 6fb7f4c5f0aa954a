"""Routing a new order and dispatching it: assign, broadcast, handle myself, escalate."""

from __future__ import annotations

from sqlalchemy import select

from models import Grid, Offer, Order
from tests.conftest import Harness
from tests.flows.helpers import (
    conversation_of,
    find,
    new_order,
    payload_of,
    person,
    rows,
    snapshot,
    texts_since,
)

DISPATCH_BUTTONS = ["👤 指派", "📢 广播抢单", "🙋 我来处理", "⬆️ 上报"]
PHONE, ROOM = "13800000009", "2-301"  # 张阿姨's


async def grid_id(harness: Harness, code: str) -> int:
    async with harness.app.sessionmaker() as session:
        found = await session.scalar(select(Grid.id).where(Grid.code == code))
        assert found is not None
        return found


# ---- responsibility ---------------------------------------------------------------------------


async def test_order_goes_to_the_micro_grid_worker(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    head = await harness.login("p-liu-wanggezhang")
    member = await harness.login("p-li-dangyuan")
    order = await new_order(harness, resident)

    card = worker.last()
    assert card.text.startswith("📥 新工单，请派单")
    assert "工单 000001 · 维修报修" in card.text
    assert PHONE in card.text and ROOM in card.text and "新华路12号" in card.text
    assert [b.label for b in card.buttons] == DISPATCH_BUTTONS
    assert [b.payload for b in card.buttons] == ["o:as:1", "o:bc:1", "o:me:1", "o:esc:1"]
    assert head.inbox == [] and member.inbox == []
    assert order.handling_grid_id == await grid_id(harness, "xh-g1-m1")


async def test_micro_grid_without_worker_goes_to_the_grid_head(harness: Harness) -> None:
    resident = await harness.login("p-pan-hui")
    head = await harness.login("p-luo-jianguo")
    other_worker = await harness.login("p-deng-wei")  # worker of the sibling xh-g2-m1
    order = await new_order(harness, resident)

    assert order.handling_grid_id == await grid_id(harness, "xh-g2")
    card = head.last()
    assert "📥 新工单，请派单" in card.text and "供销社家属院1栋" in card.text
    assert "13800000030" in card.text
    assert [b.label for b in card.buttons] == DISPATCH_BUTTONS
    assert other_worker.inbox == []
    # The head can dispatch it to the members of his grid's subtree.
    await head.press("指派", message=card)
    names = [b.label.split("（")[0] for b in head.last().buttons]
    assert sorted(names) == sorted(["黄德明", "吴静", "郑志愿者"])


async def test_an_order_is_never_dropped(harness: Harness) -> None:
    # Nobody responsible for 潘慧's micro-grid has opened a chat yet: the order is still stored
    # and waits in the head's queue.
    resident = await harness.login("p-pan-hui")
    order = await new_order(harness, resident)
    assert order.status == "submitted"
    assert "工单号 000001" in find(resident, "工单号").text

    head = await harness.login("p-luo-jianguo")
    await head.send("/queue")
    assert "000001 维修报修 · 供销社家属院1栋 · 待派单" in head.last().text
    await head.press("查看 000001")
    assert [b.label for b in head.last().buttons] == DISPATCH_BUTTONS
    # The community admin sees it in the queue too; a worker elsewhere does not.
    admin = await harness.login("p-chen-shuji")
    await admin.send("/queue")
    assert "000001" in admin.last().text
    other = await harness.login("p-yang-li")
    await other.send("/queue")
    assert "目前没有待派或处理中的工单" in other.last().text


# ---- assign -----------------------------------------------------------------------------------


async def test_assign_list_shows_members_with_their_open_load(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    li = await harness.login("p-li-dangyuan")
    first = await new_order(harness, resident)
    await worker.press("指派", message=find(worker, "工单 000001"))
    await worker.press("李党员")
    await li.press("接单")
    assert (await harness.order(first.id)).status == "accepted"

    await new_order(harness, resident, text="二楼水管漏水")
    await worker.press("指派", message=find(worker, "工单 000002"))
    pick = worker.last()
    assert "工单 000002：请选择指派给谁" in pick.text
    labels = [b.label for b in pick.buttons]
    assert set(labels) == {"王网格员（0单）", "赵志愿者（0单）", "李党员（1单）"}
    assert labels[-1] == "李党员（1单）", "least loaded first"
    li_id = (await person(harness, "p-li-dangyuan")).id
    assert payload_of(pick, "李党员") == f"oa:2:{li_id}"


async def test_assign_offers_the_order_to_one_member(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    li = await harness.login("p-li-dangyuan")
    zhao = await harness.login("p-zhao-zhiyuanzhe")
    order = await new_order(harness, resident)
    await worker.press("指派")
    toast = await worker.press("李党员")
    assert toast == "已指派"
    assert "工单 000001 已指派给李党员，等待接单" in worker.last().text

    offer = li.last()
    assert offer.text.startswith("📌 网格员指派给您一张工单")
    assert PHONE not in offer.text and ROOM not in offer.text
    assert [b.label for b in offer.buttons] == ["✋ 接单", "婉拒"]
    assert zhao.inbox == []
    stored = await harness.order(order.id)
    assert (stored.status, stored.assignee_id) == ("dispatched", None)
    offers = await rows(harness, Offer, Offer.order_id == order.id)
    assert [(o.person_id, o.status) for o in offers] == [
        ((await person(harness, "p-li-dangyuan")).id, "open")
    ]
    # Pressing "assign" again once the order is out is refused.
    before = await snapshot(harness)
    # (an old copy of the dispatch card may still show the buttons)
    await worker.press_payload(f"o:as:{order.id}")
    assert "这张工单已经派出" in worker.last().text
    await worker.press_payload(f"o:bc:{order.id}")
    assert "这张工单已经派出" in worker.last().text
    assert await snapshot(harness) == before


async def test_assign_to_someone_who_is_not_a_member_here(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    order = await new_order(harness, resident)
    wu = await person(harness, "p-wu-jing")  # a member, but of xh-g2-m2
    before = await snapshot(harness)
    await worker.press_payload(f"oa:{order.id}:{wu.id}")
    assert "这位不是本网格的党员/志愿者" in worker.last().text
    await worker.press_payload(f"oa:{order.id}:999999")
    assert "这位不是本网格的党员/志愿者" in worker.last().text
    assert await snapshot(harness) == before


async def test_assign_to_a_member_without_a_chat_is_refused(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    order = await new_order(harness, resident)
    zhao = await person(harness, "p-zhao-zhiyuanzhe")  # never opened a chat
    before = await snapshot(harness)
    await worker.press_payload(f"oa:{order.id}:{zhao.id}")
    assert "赵志愿者还没有开通消息" in worker.last().text
    assert await snapshot(harness) == before


# ---- broadcast --------------------------------------------------------------------------------


async def test_broadcast_reaches_every_member_of_the_subtree(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    members = [await harness.login(k) for k in ("p-li-dangyuan", "p-zhao-zhiyuanzhe")]
    outsider = await harness.login("p-sun-jianhua")  # member of xh-g1-m3: not in the subtree
    order = await new_order(harness, resident)
    mark = len(worker.inbox)
    toast = await worker.press("广播")
    assert toast == "已广播"
    # 王网格员 is a member of the micro-grid as well, so he gets an offer of his own.
    assert "已广播给 3 位党员/志愿者" in texts_since(worker, mark)
    for user in [*members, worker]:
        offer = find(user, "📢 新的服务需求")
        assert "楼道灯坏了" in offer.text and "翠屏小区1栋" in offer.text
        for secret in (PHONE, ROOM, "新华路12号"):
            assert secret not in offer.text
        assert [b.label for b in offer.buttons] == ["✋ 接单", "婉拒"]
    assert outsider.inbox == []
    stored = await harness.order(order.id)
    assert stored.status == "dispatched"
    offers = await rows(harness, Offer, Offer.order_id == order.id)
    assert len(offers) == 3 and {o.status for o in offers} == {"open"}
    assert [a for a, _, _ in await harness.events(order.id)] == ["submit", "broadcast"]


async def test_broadcast_after_escalation_covers_the_whole_grid(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    head = await harness.login("p-liu-wanggezhang")
    sun = await harness.login("p-sun-jianhua")  # xh-g1-m3, inside 第一网格
    he = await harness.login("p-he-xiuying")  # 第三网格: outside
    await new_order(harness, resident)
    await worker.press("上报")
    await worker.send("需要物业配合")
    await head.press("广播")
    assert "📢 新的服务需求" in sun.last().text
    assert he.inbox == []


# ---- handle myself ----------------------------------------------------------------------------


async def test_worker_handles_it_himself(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    order = await new_order(harness, resident)
    wang = await person(harness, "p-wang")
    toast = await worker.press("我来处理")
    assert toast == "由您处理"
    stored = await harness.order(order.id)
    assert (stored.status, stored.assignee_id) == ("accepted", wang.id)
    task = worker.last()
    assert task.text.startswith("✋ 接单成功") and PHONE in task.text
    assert [b.label for b in task.buttons] == ["✅ 已完成"]
    assert "您的工单 000001 已由王网格员接单" in resident.last().text
    assert (await harness.events(order.id))[-1] == ("handle", "submitted", "accepted")
    # A second press changes nothing.
    before = await snapshot(harness)
    await worker.press_payload(f"o:me:{order.id}")
    assert "这张工单已经有人接了" in worker.last().text
    assert await snapshot(harness) == before


# ---- escalate ---------------------------------------------------------------------------------


async def test_escalate_with_a_reason_goes_to_the_head_above(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    head = await harness.login("p-liu-wanggezhang")
    order = await new_order(harness, resident)
    await worker.press("上报")
    assert "请写一句上报原因" in worker.last().text
    assert head.inbox == []
    await worker.send("x")  # too short: asked again
    assert "请写一句上报原因" in worker.last().text
    await worker.press_payload("f:skip")
    assert "请写一句上报原因" in worker.last().text
    assert (await harness.order(order.id)).status == "submitted"

    await worker.send("涉及公共电路，需要物业和街道协调")
    assert "工单 000001 已上报" in worker.last().text
    card = head.last()
    assert card.text.startswith("⬆️ 王网格员上报的工单（到第一网格），原因：涉及公共电路")
    assert [b.label for b in card.buttons] == DISPATCH_BUTTONS
    assert PHONE in card.text
    assert "您的工单 000001 已转到第一网格处理" in resident.last().text
    stored = await harness.order(order.id)
    assert stored.status == "escalated"
    assert stored.handling_grid_id == await grid_id(harness, "xh-g1")
    assert (await harness.events(order.id))[-1] == ("escalate", "submitted", "escalated")

    # The worker below no longer manages it; the head does.
    before = await snapshot(harness)
    await worker.press_payload(f"o:as:{order.id}")
    assert "这个操作不属于您" in worker.last().text
    assert await snapshot(harness) == before
    await head.press("我来处理")
    assert (await harness.order(order.id)).status == "accepted"


async def test_escalating_a_broadcast_withdraws_the_offers(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    await harness.login("p-liu-wanggezhang")
    li = await harness.login("p-li-dangyuan")
    order = await new_order(harness, resident)
    await worker.press("广播")
    offer = find(li, "📢 新的服务需求")
    # A dispatched order may still be escalated (the card's button, as first sent).
    await worker.press_payload(f"o:esc:{order.id}")
    await worker.send("居民要求社区出面")
    assert offer.edits == 1 and offer.text.startswith("这张工单已收回")
    assert offer.buttons == []
    before = await snapshot(harness)
    await li.press_payload(f"o:acc:{order.id}")
    assert "这个派单已结束" in li.last().text
    assert await snapshot(harness) == before


async def test_escalate_to_the_top_then_refused(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    head = await harness.login("p-liu-wanggezhang")
    top = await harness.login("p-zhou-zhuren")
    order = await new_order(harness, resident)
    await worker.press("上报")
    await worker.send("第一次上报")
    await head.press("上报")
    await head.send("需要社区出面协调")
    card = top.last()
    assert card.text.startswith("⬆️ 刘网格长上报的工单（到新华社区）")
    assert [b.label for b in card.buttons] == DISPATCH_BUTTONS
    stored = await harness.order(order.id)
    assert stored.handling_grid_id == await grid_id(harness, "xinhua")

    before = await snapshot(harness)
    await top.press("上报", message=card)
    assert "已经是最高一级，不能再上报" in top.last().text
    assert await snapshot(harness) == before
    # He is not left inside a flow that can only fail: his next words are not a "reason".
    await top.send("那我自己来处理")
    assert "已经是最高一级" not in top.last().text
    assert await snapshot(harness) == before
    assert [a for a, _, _ in await harness.events(order.id)] == [
        "submit",
        "escalate",
        "escalate",
    ]


async def test_escalate_flow_can_be_cancelled(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    head = await harness.login("p-liu-wanggezhang")
    order = await new_order(harness, resident)
    await worker.press("上报")
    await worker.press("取消")
    assert "已取消" in worker.last().text and worker.last().message.menu
    assert (await harness.order(order.id)).status == "submitted"
    assert head.inbox == []


async def test_others_pressing_dispatch_buttons_are_refused(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    card_owner = worker
    order = await new_order(harness, resident)
    card = find(card_owner, "新工单")
    intruders = [
        resident,
        await harness.login("p-li-dangyuan"),  # member of the same micro-grid
        await harness.login("p-yang-li"),  # worker of a sibling micro-grid
        await harness.login("p-he-xiuying"),  # head of another grid
    ]
    before = await snapshot(harness)
    for user in intruders:
        for button in card.buttons:
            await user.press_payload(button.payload)
            assert "这个操作不属于您" in user.last().text, (user.user_id, button.payload)
        li_id = (await person(harness, "p-li-dangyuan")).id
        await user.press_payload(f"oa:{order.id}:{li_id}")
        assert "这个操作不属于您" in user.last().text
    assert await snapshot(harness) == before
    assert (await harness.order(order.id)).status == "submitted"
    assert await harness.count(Order) == 1


async def test_escalating_an_accepted_order_releases_the_member(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    head = await harness.login("p-liu-wanggezhang")
    li = await harness.login("p-li-dangyuan")
    order = await new_order(harness, resident)
    await worker.press("指派")
    await worker.press("李党员")
    await li.press("接单")
    task = li.last()
    done = payload_of(task, "已完成")
    await worker.press_payload(f"o:esc:{order.id}")
    await worker.send("需要专业电工")
    assert "工单 000001 已上报到上一级处理，您不用再跟进了" in li.last().text
    stored = await harness.order(order.id)
    assert (stored.status, stored.assignee_id) == ("escalated", None)
    assert (await harness.events(order.id))[-1] == ("escalate", "accepted", "escalated")
    assert "⬆️ 王网格员上报的工单" in head.last().text
    before = await snapshot(harness)
    await li.press_payload(done)
    assert "这个操作不属于您" in li.last().text
    assert await snapshot(harness) == before


async def test_order_changing_under_a_short_flow_ends_the_flow(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    order = await new_order(harness, resident)
    await worker.press("上报")
    await resident.press_payload(f"o:cxy:{order.id}")  # meanwhile the resident withdraws it
    before = await snapshot(harness)
    await worker.send("需要物业配合处理")
    assert "这张工单已被居民撤回" in worker.last().text
    assert await conversation_of(harness, worker) is None, "the worker is not kept in the flow"
    await worker.send("好的")
    assert "没有看懂您的意思" in worker.last().text
    after = await snapshot(harness)
    assert after["orders"] == before["orders"] and after["events"] == before["events"]
