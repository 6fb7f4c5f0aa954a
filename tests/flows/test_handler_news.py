"""The grid worker who dispatched an order hears what became of it: done, rated, reopened.
A worker who handled it personally is not told about his own work twice."""

from __future__ import annotations

from tests.conftest import Harness
from tests.flows.helpers import find, new_order, texts_since
from tests.flows.test_completion import accepted_order


async def test_worker_hears_done_and_rating(harness: Harness) -> None:
    order, resident, worker, li = await accepted_order(harness)
    mark = len(worker.inbox)
    await li.press("已完成")
    await li.send("灯泡换好了")
    done = find(worker, "处理完成")
    assert done.text == "✅ 工单 000001 已由李党员处理完成，等待居民确认评价。"
    assert [b.payload for b in done.buttons] == [f"o:view:{order.id}"]
    await resident.press("★★★★", message=find(resident, "请确认并评价"))
    assert "⭐ 工单 000001（李党员处理）获得居民评价 ★★★★。" in texts_since(worker, mark)
    # The member hears about his rating as before.
    assert "获得居民评价 ★★★★" in find(li, "获得居民评价").text
    # The news button opens the order for the worker (the full card, with the contact).
    await worker.press("查看 000001", message=done)
    assert "13800000009" in worker.last().text


async def test_worker_hears_when_the_resident_reopens(harness: Harness) -> None:
    _order, resident, worker, li = await accepted_order(harness)
    await li.press("已完成")
    await li.press("跳过")
    mark = len(worker.inbox)
    await resident.press("没解决", message=find(resident, "请确认并评价"))
    assert texts_since(worker, mark) == "↩️ 居民反馈工单 000001 还没解决，已退回李党员继续处理。"
    assert "居民反馈问题还没解决" in li.last().text


async def test_a_worker_handling_it_himself_is_not_told_twice(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    await new_order(harness, resident)
    await worker.press("我来处理")
    await worker.press("已完成", message=find(worker, "接单成功"))
    mark = len(worker.inbox)
    await worker.press("跳过")
    await resident.press("★★★★★", message=find(resident, "请确认并评价"))
    news = texts_since(worker, mark)
    assert "处理完成，等待居民" not in news and "⭐ 工单" not in news
    assert "获得居民评价 ★★★★★" in news  # as the one who did it
