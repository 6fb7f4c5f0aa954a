"""Done, confirm and rate: notes and photos, points, revisits for low ratings, "not solved"."""

from __future__ import annotations

from bot.channels.memory import MemoryUser
from models import Order, PointsEntry, Revisit
from tests.conftest import Harness
from tests.flows.helpers import (
    conversation_of,
    find,
    full_events,
    new_order,
    payload_of,
    person,
    rows,
    snapshot,
)

STARS = ["★", "★★", "★★★", "★★★★", "★★★★★", "❌ 没解决"]


async def accepted_order(harness: Harness) -> tuple[Order, MemoryUser, MemoryUser, MemoryUser]:
    """张阿姨's repair order, assigned by 王网格员 to 李党员, who accepted it."""
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    li = await harness.login("p-li-dangyuan")
    order = await new_order(harness, resident)
    await worker.press("指派")
    await worker.press("李党员")
    await li.press("接单")
    return await harness.order(order.id), resident, worker, li


async def test_done_with_a_note_asks_the_resident_to_rate(harness: Harness) -> None:
    order, resident, _worker, li = await accepted_order(harness)
    await li.press("已完成")
    ask = li.last()
    assert "请简单说明处理结果" in ask.text
    assert [b.label for b in ask.buttons] == ["跳过", "取消"]
    assert (await harness.order(order.id)).status == "accepted"
    await li.location(31.2, 107.5)  # neither a note nor a photo: asked again
    assert "请简单说明处理结果" in li.last().text
    await li.send("灯泡换好了，顺便修了开关")
    assert "谢谢！工单 000001 已标记完成" in li.last().text
    assert await conversation_of(harness, li) is None

    stored = await harness.order(order.id)
    assert (stored.status, stored.done_note, stored.done_photo) == (
        "done",
        "灯泡换好了，顺便修了开关",
        None,
    )
    card = resident.last()
    assert card.text.startswith("您的工单 000001 已由李党员处理完成。请确认并评价")
    assert "处理说明：灯泡换好了，顺便修了开关" in card.text
    assert [b.label for b in card.buttons] == STARS
    assert [b.payload for b in card.buttons][:5] == [f"or:{order.id}:{n}" for n in range(1, 6)]
    assert (await harness.events(order.id))[-1] == ("done", "accepted", "done")


async def test_done_with_a_photo(harness: Harness) -> None:
    order, resident, _worker, li = await accepted_order(harness)
    await li.press("已完成")
    await li.photo("tg-file-after-repair")
    stored = await harness.order(order.id)
    assert (stored.status, stored.done_note, stored.done_photo) == (
        "done",
        None,
        "tg-file-after-repair",
    )
    assert resident.last().message.photo == "tg-file-after-repair"


async def test_done_skipping_the_note(harness: Harness) -> None:
    order, resident, _worker, li = await accepted_order(harness)
    await li.press("已完成")
    await li.press("跳过")
    stored = await harness.order(order.id)
    assert (stored.status, stored.done_note, stored.done_photo) == ("done", None, None)
    assert "处理说明" not in resident.last().text


async def test_done_flow_can_be_cancelled(harness: Harness) -> None:
    order, resident, _worker, li = await accepted_order(harness)
    await li.press("已完成")
    await li.press("取消")
    assert (await harness.order(order.id)).status == "accepted"
    assert await conversation_of(harness, li) is None
    assert not any("请确认并评价" in t for t in resident.texts())


async def test_only_the_assignee_may_finish_and_only_once(harness: Harness) -> None:
    order, resident, worker, li = await accepted_order(harness)
    zhao = await harness.login("p-zhao-zhiyuanzhe")
    before = await snapshot(harness)
    for user in (zhao, worker, resident):
        await user.press_payload(f"o:done:{order.id}")
        assert "这个操作不属于您" in user.last().text, user.user_id
    assert await snapshot(harness) == before
    await li.press("已完成")
    await li.press("跳过")
    before = await snapshot(harness)
    await li.press_payload(f"o:done:{order.id}")
    assert "这张工单现在不能标记完成" in li.last().text
    assert await snapshot(harness) == before


async def test_five_stars_close_the_order_and_credit_points(harness: Harness) -> None:
    order, resident, worker, li = await accepted_order(harness)
    li_person = await person(harness, "p-li-dangyuan")
    await li.press("已完成")
    await li.send("换好了")
    rating = resident.last()
    toast = await resident.press("★★★★★", message=rating)
    assert toast == "已评价"
    assert "感谢您的评价 ★★★★★" in resident.last().text
    stored = await harness.order(order.id)
    assert (stored.status, stored.rating) == ("closed", 5)
    # The repair category's 10 points and the ≥ 4 ★ bonus (GRIDBOT_POINTS_RATING_BONUS, 5).
    assert (await person(harness, "p-li-dangyuan")).points == li_person.points + 15
    entries = await rows(harness, PointsEntry)
    assert [(e.person_id, e.order_id, e.points, e.reason) for e in entries] == [
        (li_person.id, order.id, 10, "order_done"),
        (li_person.id, order.id, 5, "rating_bonus"),
    ]
    # What was credited, in figures: 10 for the order, 5 for the rating.
    assert li.last().text == "工单 000001 获得居民评价 ★★★★★。积分 +15 已记入。"
    assert await harness.count(Revisit) == 0
    assert (await harness.events(order.id))[-2:] == [
        ("rate", "done", "confirmed"),
        ("close", "confirmed", "closed"),
    ]

    # Rating again, or by someone else, is refused and changes nothing.
    before = await snapshot(harness)
    await resident.press_payload(payload_of(rating, "★★★★★"))
    assert "您已评价过工单 000001（★★★★★）" in resident.last().text  # says what happened
    await resident.press_payload(f"o:ns:{order.id}")
    assert "这张工单现在不能评价" in resident.last().text
    for other in (li, worker):
        await other.press_payload(payload_of(rating, "★★★★★"))
        assert "这个操作不属于您" in other.last().text
    assert await snapshot(harness) == before


async def test_rating_by_someone_else_before_the_resident(harness: Harness) -> None:
    order, resident, worker, li = await accepted_order(harness)
    await li.press("已完成")
    await li.press("跳过")
    before = await snapshot(harness)
    for user in (li, worker):
        await user.press_payload(f"or:{order.id}:5")
        assert "这个操作不属于您" in user.last().text
        await user.press_payload(f"o:ns:{order.id}")
        assert "这个操作不属于您" in user.last().text
    await resident.press_payload(f"or:{order.id}:9")  # no such rating
    assert "这个按钮已失效" in resident.last().text
    assert await snapshot(harness) == before
    assert (await harness.order(order.id)).status == "done"


async def test_rating_before_done_is_refused(harness: Harness) -> None:
    order, resident, _worker, _li = await accepted_order(harness)
    before = await snapshot(harness)
    await resident.press_payload(f"or:{order.id}:5")
    assert "这张工单现在不能评价" in resident.last().text
    await resident.press_payload(f"o:ns:{order.id}")
    assert "这张工单现在不能评价" in resident.last().text
    assert await snapshot(harness) == before


async def test_low_rating_opens_a_revisit_for_the_grid_head(harness: Harness) -> None:
    order, resident, worker, li = await accepted_order(harness)
    head = await harness.login("p-liu-wanggezhang")
    await li.press("已完成")
    await li.press("跳过")
    await resident.press("★★")
    stored = await harness.order(order.id)
    assert (stored.status, stored.rating) == ("confirmed", 2)
    # Points are still credited for the completed work.
    assert len(await rows(harness, PointsEntry)) == 1

    task = head.last()
    assert task.text.startswith("📞 工单 000001 居民评价 ★★，请您回访")
    assert "13800000009" in task.text  # the head calls the resident back
    assert [b.label for b in task.buttons] == ["📞 已回访"]
    revisits = await rows(harness, Revisit)
    liu = await person(harness, "p-liu-wanggezhang")
    assert [(r.order_id, r.head_id, r.status) for r in revisits] == [(order.id, liu.id, "open")]

    # Only a manager of the head's grid may record it (the micro-grid's worker may not).
    before = await snapshot(harness)
    for user in (worker, resident, li):
        await user.press_payload(payload_of(task, "已回访"))
        assert "这个操作不属于您" in user.last().text, user.user_id
    assert await snapshot(harness) == before

    await head.press("已回访")
    assert "请简单记录回访情况" in head.last().text
    await head.send("已电话回访，居民表示理解，灯已修好")
    assert "回访已记录，工单已办结" in head.last().text
    stored = await harness.order(order.id)
    assert stored.status == "closed"
    revisit = (await rows(harness, Revisit))[0]
    assert (revisit.status, revisit.note, revisit.head_id) == (
        "done",
        "已电话回访，居民表示理解，灯已修好",
        liu.id,
    )
    events = await full_events(harness, order.id)
    last = events[-1]
    assert (last.action, last.actor_id, last.from_status, last.to_status) == (
        "revisit",
        liu.id,
        "confirmed",
        "closed",
    )
    # Recording it twice is refused.
    before = await snapshot(harness)
    await head.press("已回访", message=task)
    assert "这次回访已经记录过了" in head.last().text
    assert await snapshot(harness) == before


async def test_revisit_can_be_recorded_without_a_note(harness: Harness) -> None:
    order, resident, _worker, li = await accepted_order(harness)
    head = await harness.login("p-liu-wanggezhang")
    await li.press("已完成")
    await li.press("跳过")
    await resident.press("★★★")
    await head.press("已回访")
    await head.press("跳过")
    assert (await harness.order(order.id)).status == "closed"
    assert (await rows(harness, Revisit))[0].note is None


async def test_four_stars_close_without_a_revisit(harness: Harness) -> None:
    order, resident, _worker, li = await accepted_order(harness)
    await li.press("已完成")
    await li.press("跳过")
    await resident.press("★★★★")
    assert (await harness.order(order.id)).status == "closed"
    assert await harness.count(Revisit) == 0


async def test_not_solved_goes_back_to_the_same_member(harness: Harness) -> None:
    order, resident, _worker, li = await accepted_order(harness)
    li_id = (await person(harness, "p-li-dangyuan")).id
    await li.press("已完成")
    await li.send("换好了")
    await resident.press("没解决")
    assert "收到，工单 000001 已退回给处理人继续处理" in resident.last().text
    stored = await harness.order(order.id)
    assert (stored.status, stored.assignee_id) == ("accepted", li_id)
    card = li.last()
    assert card.text.startswith("居民反馈问题还没解决")
    assert [b.label for b in card.buttons] == ["✅ 已完成"]
    assert (await harness.events(order.id))[-1] == ("reopen", "done", "accepted")

    # Second round: done again, rated; points are credited once.
    await li.press("已完成", message=card)
    await li.send("这次把线路也换了")
    await resident.press("★★★★★")
    stored = await harness.order(order.id)
    assert (stored.status, stored.rating) == ("closed", 5)
    # Once: the order's points and its ≥ 4 ★ bonus, one ledger row each.
    assert [e.reason for e in await rows(harness, PointsEntry)] == ["order_done", "rating_bonus"]
    assert (await person(harness, "p-li-dangyuan")).points == 15
    assert find(resident, "请确认并评价").text.count("这次把线路也换了") == 1


async def test_worker_who_handled_it_gets_the_points(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    order = await new_order(harness, resident, category="安全隐患", text="电动车在楼道充电")
    await worker.press("我来处理")
    await worker.press("已完成")
    await worker.send("已劝离并贴了提示")
    await resident.press("★★★★★")
    assert (await harness.order(order.id)).status == "closed"
    assert (await person(harness, "p-wang")).points == 25  # safety: 20 points, 5 ★ bonus 5


async def test_done_flow_ends_when_the_order_was_escalated_away(harness: Harness) -> None:
    order, _resident, worker, li = await accepted_order(harness)
    await harness.login("p-liu-wanggezhang")
    await li.press("已完成")
    await worker.press_payload(f"o:esc:{order.id}")
    await worker.send("需要专业电工")
    await li.send("修好了")
    assert "这个操作不属于您" in li.last().text
    assert await conversation_of(harness, li) is None
    assert (await harness.order(order.id)).status == "escalated"
