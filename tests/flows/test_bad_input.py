"""Bad input: unknown commands, oversized text, tampered or stale buttons. Every one gets a
polite answer and changes nothing."""

from __future__ import annotations

from sqlalchemy import update

from models import Conversation, Order
from tests.conftest import Harness
from tests.flows.helpers import LIGHT, conversation_of, new_order, person, snapshot

INVALID = "这个按钮已失效"
STALE = "这个按钮已过期"
NOT_YOURS = "这个操作不属于您"
NOT_FOUND = "找不到这张工单"


async def test_unknown_command(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    before = await snapshot(harness)
    await resident.send("/frobnicate")
    assert "不认识命令 /frobnicate" in resident.last().text
    await resident.send("/FOO@gridbot_bot now")
    assert "不认识命令 /foo" in resident.last().text
    await resident.send("/" + "x" * 100)
    assert "不认识命令 /" + "x" * 32 + "。" in resident.last().text
    await resident.send("/")
    assert "不认识命令" in resident.last().text
    await resident.press_payload("m:nosuch")
    assert "不认识命令 /nosuch" in resident.last().text
    assert await snapshot(harness) == before


async def test_pleasantries_and_a_location_outside_a_flow(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    before = await snapshot(harness)
    await resident.send("你好")
    assert "不客气" in resident.last().text and resident.last().message.menu
    await resident.location(1.0, 2.0)
    assert "没有看懂您的意思" in resident.last().text
    assert resident.last().message.menu
    assert await snapshot(harness) == before


async def test_oversized_text_is_refused_and_changes_nothing(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    before = await snapshot(harness)
    toast = await resident.send("灯" * 2001)
    assert toast == "内容太长"
    assert "内容太长了（最多 2000 字）" in resident.last().text
    await resident.send("/order " + "x" * 2100)  # even a command
    assert "内容太长了" in resident.last().text
    assert await snapshot(harness) == before
    assert await harness.count(Conversation) == 0

    # In the middle of a flow the step stays where it was.
    await resident.send("/order")
    await resident.press("维修")
    before = await snapshot(harness)
    await resident.send("漏" * 5000)
    assert "内容太长了" in resident.last().text
    assert await snapshot(harness) == before
    assert await conversation_of(harness, resident) == ("order", "description")
    assert await harness.count(Order) == 0
    # Exactly the limit is fine.
    await resident.send("漏" * 2000)
    assert "可以发一张照片吗" in resident.last().text

    # A stranger sending a huge text is told the same, and stays a stranger.
    stranger = harness.user("tg-huge")
    before = await snapshot(harness)
    await stranger.send("x" * 3000)
    assert "内容太长了" in stranger.last().text
    assert await snapshot(harness) == before


async def test_tampered_buttons_are_refused(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    member = await harness.login("p-li-dangyuan")
    order = await new_order(harness, resident)
    li_id = (await person(harness, "p-li-dangyuan")).id
    invalid = [
        "",
        "hello",
        "o:acc",
        "o:acc:abc",
        "o:acc:-1",
        "o:acc:1:2",
        "o:zz:1",
        "o:ACC:1",
        "o:acc:1 ",
        "o:acc:1\n",
        "oa:1",
        "oa:x:y",
        "or:1:0",
        "or:1:6",
        "or:1:55",
        "rv:",
        "rv:abc",
        "f:",
        "f:nosuchact",
        "f:cat:../../etc",
        "m:",
        "m:UPPER",
        "💥💥💥",
        "o:acc:" + "1" * 13,
        "o:acc:1" + " " * 63,
        "x" * 70,
        "o:acc:" + "9" * 64,
        "'; DROP TABLE orders; --",
    ]
    before = await snapshot(harness)
    # Parsing does not depend on who presses: the whole list once, a sample for the others.
    presses = [(worker, raw) for raw in invalid]
    presses += [(user, raw) for user in (member, resident) for raw in invalid[::7]]
    for user, raw in presses:
        await user.press_payload(raw)
        assert INVALID in user.last().text, (user.user_id, raw, user.last().text)
    assert await snapshot(harness) == before

    # Well-formed, but naming nothing that exists (or nothing of theirs).
    cases = [
        (worker, "o:acc:999999", NOT_FOUND),
        (worker, "o:as:999999", NOT_FOUND),
        (worker, "o:view:999999", NOT_FOUND),
        (worker, "o:acc:2147483647", NOT_FOUND),
        (worker, "o:acc:2147483648", INVALID),  # beyond a 32-bit id
        (worker, "o:acc:999999999999", INVALID),
        (worker, f"oa:{order.id}:999999999999", INVALID),
        (worker, f"oa:{order.id}:99999", "这位不是本网格的党员/志愿者"),
        (member, f"oa:{order.id}:{li_id}", NOT_YOURS),
        (resident, f"oa:{order.id}:99999", NOT_YOURS),
        (member, "oa:1:99999", NOT_YOURS),
        (member, f"o:acc:{order.id}", NOT_YOURS),
        (member, f"o:view:{order.id}", NOT_YOURS),
        (member, "rv:99999", "这次回访已经记录过了"),
        (resident, "f:lang:xx", INVALID),
        (resident, "f:ok", STALE),
        (resident, "f:skip", STALE),
        (resident, "f:x", STALE),
        (resident, "f:cat:repair", STALE),
    ]
    for user, raw, answer in cases:
        await user.press_payload(raw)
        assert answer in user.last().text, (user.user_id, raw, user.last().text)
    assert await snapshot(harness) == before


async def test_another_resident_cannot_see_an_order(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    order = await new_order(harness, resident, text=LIGHT)
    neighbour = await harness.login("p-zhong-daye")  # same micro-grid, another resident
    await neighbour.press_payload(f"o:view:{order.id}")
    assert NOT_YOURS in neighbour.last().text
    assert "13800000009" not in "".join(neighbour.texts())


async def test_stale_flow_buttons(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    await resident.send("/order")
    ask = resident.last()
    await resident.send("/cancel")
    before = await snapshot(harness)
    await resident.press("维修", message=ask)
    assert STALE in resident.last().text
    await resident.press("取消", message=ask)
    assert STALE in resident.last().text
    assert await snapshot(harness) == before


async def test_a_conversation_in_a_step_no_longer_declared_starts_afresh(harness: Harness) -> None:
    """A conversation row written by another version (a step this one does not declare) is
    left politely: the sender gets the menu hint, the row goes, nothing else changes."""
    resident = await harness.login("p-zhang-ayi")
    await resident.send("/order")
    await resident.press("维修")
    assert await conversation_of(harness, resident) == ("order", "description")
    async with harness.app.sessionmaker() as session, session.begin():
        await session.execute(update(Conversation).values(state="retired_step"))
    orders = await harness.count(Order)

    await resident.send("楼道灯坏了")
    assert "没有看懂您的意思" in resident.last().text and resident.last().message.menu
    assert await conversation_of(harness, resident) is None
    assert await harness.count(Order) == orders
