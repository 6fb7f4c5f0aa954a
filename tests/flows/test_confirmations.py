"""Help shows heads and admins /whistle and /notice; /notice shows how many residents it
reaches and sends only on 确认发送; 撤回工单 asks before it withdraws. Forged, foreign and
repeated confirmation buttons are answered politely and change nothing."""

from __future__ import annotations

from sqlalchemy import func, select

from models import Grid, Notice, OutboxMessage, Role
from tests.conftest import Harness
from tests.flows.helpers import find, new_order, payload_of, snapshot


async def residents_under(harness: Harness, code: str) -> int:
    """Distinct residents of a grid's subtree, counted here by hand."""
    async with harness.app.sessionmaker() as session:
        grid = await session.scalar(select(Grid).where(Grid.code == code))
        assert grid is not None
        roles = (await session.execute(
            select(Role.person_id, Grid.path).join(Grid, Grid.id == Role.grid_id)
            .where(Role.role == "resident"))).all()
        return len({pid for pid, path in roles if path.startswith(grid.path)})


async def notices(harness: Harness) -> tuple[int, int]:
    async with harness.app.sessionmaker() as session:
        count = await session.scalar(select(func.count()).select_from(Notice)) or 0
        copies = await session.scalar(
            select(func.count()).select_from(OutboxMessage)
            .where(OutboxMessage.ref.like("notice:%"))) or 0
        return count, copies


async def test_help_per_role(harness: Harness) -> None:
    head = await harness.login("p-liu-wanggezhang")
    await head.send("/help")
    assert "/whistle" in head.last().text and "/notice" in head.last().text
    admin = await harness.login("p-chen-shuji")
    await admin.send("/help")
    assert "/whistle" in admin.last().text and "/notice" in admin.last().text
    worker = await harness.login("p-wang")
    await worker.send("/help")
    assert "/household" in worker.last().text and "/visitplan" in worker.last().text
    assert "/whistle" not in worker.last().text and "/notice" not in worker.last().text
    member = await harness.login("p-li-dangyuan")
    await member.send("/help")
    for command in ("/whistle", "/notice", "/household"):
        assert command not in member.last().text
    resident = await harness.login("p-zhang-ayi")
    await resident.send("/help")
    assert "/notice" not in resident.last().text and "/household" not in resident.last().text


async def test_notice_is_sent_only_after_confirming_the_count(harness: Harness) -> None:
    head = await harness.login("p-liu-wanggezhang")
    resident = await harness.login("p-zhang-ayi")
    total = await residents_under(harness, "xh-g1")
    assert total >= 2
    mark = len(resident.inbox)
    await head.send("/notice 明晚8点停水检修，请提前储水")
    ask = head.last()
    assert ask.text == (f"📢 这条通知将发给第一网格的 {total} 位居民：\n\n"
                        "明晚8点停水检修，请提前储水\n\n确认发送吗？")
    assert [b.label for b in ask.buttons] == ["确认发送", "取消"]
    assert await notices(harness) == (0, 0)
    assert len(resident.inbox) == mark
    # A confirmation button of something else (the order flow's 提交) or a forged code: no.
    before = await snapshot(harness)
    for forged in ("f:ok", "nc:00000000", "nc:" + "a" * 8):
        await head.press_payload(forged)
        assert "确认按钮已失效，通知没有发送" in head.last().text, forged
    assert await notices(harness) == (0, 0) and await snapshot(harness) == before
    # Typing meanwhile asks again.
    await head.send("好的")
    assert "请点“确认发送”或“取消”" in head.last().text

    confirm = payload_of(ask, "确认发送")
    await head.press("确认发送", message=ask)
    assert f"通知正在发送给 {total} 位居民" in head.last().text
    assert ask.buttons == [] and ask.text.startswith("📢 已确认发送")
    assert "停水检修" in resident.last().text
    sent = await notices(harness)
    assert sent[0] == 1
    # The same button again (a double tap, an old client): nothing more is sent.
    await head.press_payload(confirm)
    assert head.last().text == "这条通知已经处理过了（已发送或已取消），不会重复发送。"
    assert await notices(harness) == sent
    assert sum("停水检修" in t for t in resident.texts()) == 1


async def test_notice_can_be_cancelled(harness: Harness) -> None:
    admin = await harness.login("p-chen-shuji")
    await admin.send("/notice 周六上午社区义诊")
    assert "确认发送吗" in admin.last().text
    confirm = payload_of(admin.last(), "确认发送")
    await admin.press("取消")
    await admin.press_payload(confirm)
    assert "已经处理过了" in admin.last().text
    assert await notices(harness) == (0, 0)
    # Only heads and admins may send one.
    worker = await harness.login("p-wang")
    await worker.send("/notice 测试")
    assert "只有网格长" in worker.last().text


async def test_withdrawing_an_order_asks_first(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    other = await harness.login("p-pan-hui")
    order = await new_order(harness, resident)
    before = await snapshot(harness)
    await resident.press("撤回工单", message=find(resident, "工单号"))
    ask = resident.last()
    assert ask.text == "确定要撤回工单 000001 吗？撤回后网格员将不再处理。"
    assert [b.label for b in ask.buttons] == ["确认撤回", "不撤回"]
    assert await snapshot(harness) == before  # one tap changes nothing
    await resident.press("不撤回", message=ask)
    assert (await harness.order(order.id)).status == "submitted"
    assert "撤回工单" in [b.label for b in resident.last().buttons]

    confirm = payload_of(ask, "确认撤回")
    # Someone else's confirmation, or a forged one, is refused and changes nothing.
    for user in (worker, other):
        await user.press_payload(confirm)
        assert "这个操作不属于您" in user.last().text
    await resident.press_payload("o:cxy:999999")
    assert resident.last().text == "找不到这张工单。"
    assert await snapshot(harness) == before

    await resident.press("确认撤回", message=ask)
    assert (await harness.order(order.id)).status == "cancelled"
    assert ask.buttons == [] and ask.text == "工单 000001 已撤回。"
    assert "居民已撤回工单 000001" in worker.last().text
    after = await snapshot(harness)
    await resident.press_payload(confirm)  # pressed again
    assert resident.last().text == "您已撤回工单 000001。"  # says what came of it
    assert await snapshot(harness) == after
