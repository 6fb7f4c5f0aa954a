"""Who people are to each other: a name (称呼) asked at binding, mainland mobile numbers only,
``/me`` to see and change name, phone and room; the menu rides on the last real message; a
rating is thanked at once and said truly; a first ``/start`` is a hello; help shows buttons."""

from __future__ import annotations

from sqlalchemy import select, update

from bot.channels.memory import MemoryUser
from models import Category, Identity, OutboxMessage, Person, PointsEntry, Role
from tests.conftest import Harness
from tests.flows.helpers import (
    conversation_of,
    find,
    new_order,
    person,
    rows,
    snapshot,
    texts_since,
)


async def _me(harness: Harness, user: MemoryUser) -> Person:
    async with harness.app.sessionmaker() as session:
        ident = await session.scalar(
            select(Identity).where(Identity.external_id == user.user_id)
        )
        assert ident is not None
        found = await session.get(Person, ident.person_id)
        assert found is not None
        return found


async def test_member_binds_with_the_name_residents_will_see(harness: Harness) -> None:
    # Telegram gives "U7104"; he would rather be called 王建国, and residents read that.
    token = await harness.invite("member", "xh-g1-m1")
    member = harness.user("tg-7104", name="U7104")
    await member.send(f"/start {token}")
    assert "请问怎么称呼您" in member.last().text
    await member.send("王建国")
    await member.press("跳过")
    assert (await _me(harness, member)).name == "王建国"

    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    order = await new_order(harness, resident)
    await worker.press("指派")
    await worker.press("王建国")
    await member.press("接单")
    assert "已由王建国接单" in find(resident, "接单").text
    assert "U7104" not in "\n".join(resident.texts())
    assert (await harness.order(order.id)).status == "accepted"


async def test_me_shows_and_changes_name_phone_and_room(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    await resident.send("👤 我的信息")  # the menu button
    card = resident.last()
    assert "称呼：张阿姨" in card.text and "电话：13800000009" in card.text
    assert "翠屏小区1栋" in card.text
    assert [b.label for b in card.buttons] == ["改称呼", "改电话", "改房号"]

    await resident.press("改电话", message=card)
    assert "请回复新的手机号码" in resident.last().text
    before = await snapshot(harness)
    for bad in ("1391234", "12345678901", "电话"):
        await resident.send(bad)
        assert "这不是手机号码" in resident.last().text, bad
    after = await snapshot(harness)
    assert after["person"] == before["person"]
    await resident.send("139 1234 5678")
    assert "✅ 已保存" in resident.last().text and "电话：13912345678" in resident.last().text
    assert (await person(harness, "p-zhang-ayi")).phone == "13912345678"
    assert await conversation_of(harness, resident) is None

    await resident.press("改称呼", message=card)
    await resident.send("/start")  # a command leaves the question; nothing changes
    assert (await person(harness, "p-zhang-ayi")).name == "张阿姨"
    await resident.press("改称呼", message=card)
    await resident.send("张奶奶")
    assert "称呼：张奶奶" in resident.last().text

    await resident.press("改房号", message=card)
    await resident.send("302室!!")
    assert "房号格式不对" in resident.last().text
    await resident.send("5-301")
    assert "5-301" in resident.last().text
    residence = (await rows(harness, Role, Role.role == "resident"))
    assert "5-301" in [r.room for r in residence]

    # Commands too: /phone with the number, /phone with a wrong one (refused, unstored).
    await resident.send("/phone 1391234")
    assert "这不是手机号码" in resident.last().text
    assert (await person(harness, "p-zhang-ayi")).phone == "13912345678"
    await resident.send("/cancel")
    await resident.send("/phone +86 137-0000-1111")
    assert "电话：13700001111" in resident.last().text
    await resident.send("/me")
    assert "称呼：张奶奶" in resident.last().text

    # The next order's handlers see the new name, phone and room; a member offered it before
    # accepting sees neither phone nor room.
    worker = await harness.login("p-wang")
    await harness.login("p-li-dangyuan")
    await new_order(harness, resident)
    dispatch = find(worker, "新工单")
    assert "张奶奶" in dispatch.text
    assert "13700001111" in dispatch.text and "5-301" in dispatch.text
    await worker.press("广播", message=dispatch)
    offer = find(harness.user("p-li-dangyuan"), "先接先得")
    assert "13700001111" not in offer.text and "5-301" not in offer.text


async def test_a_member_has_no_room_to_change(harness: Harness) -> None:
    member = await harness.login("p-li-dangyuan")
    await member.send("/me")
    assert [b.label for b in member.last().buttons] == ["改称呼", "改电话"]
    before = await snapshot(harness)
    await member.send("/room 3-502")
    assert "只有登记了住址的居民才有房号" in member.last().text
    await member.press_payload("f:me:room")
    assert "只有登记了住址的居民才有房号" in member.last().text
    assert await snapshot(harness) == before


async def test_finished_flows_carry_the_menu_on_their_last_message(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    await new_order(harness, resident)
    receipt = find(resident, "工单号")
    # The receipt is the last message and brings the menu back with its own button.
    assert resident.last() is receipt
    assert receipt.message.menu and "📝 我要报事" in receipt.message.menu[0]
    assert [b.label for b in receipt.buttons] == ["撤回工单"]
    assert receipt.message.menu_note  # for platforms that cannot show both on one message
    assert "请选择：" not in resident.texts()

    await resident.send("/lang")
    await resident.press("中文")
    assert resident.last().message.menu and "请选择：" not in resident.texts()


async def test_five_stars_thank_at_once_and_edit_the_receipt_once(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    li = await harness.login("p-li-dangyuan")
    order = await new_order(harness, resident)
    await worker.press("指派")
    await worker.press("李党员")
    await li.press("接单")
    await li.press("已完成")
    await li.press("跳过")
    receipt = find(resident, "工单号")
    edits, log = receipt.edits, len(harness.channel.log)

    await resident.press("★★★★★")
    mine = [entry for entry in harness.channel.log[log:] if entry[1] == resident.chat_id]
    # First the thanks, then the receipt's one edit (to "closed").
    assert mine[0][0] == "send"
    assert "感谢您的评价 ★★★★★" in next(m for m in resident.inbox if m.id == mine[0][2]).text
    assert [op for op, _chat, _id in mine] == ["send", "edit"]
    assert receipt.edits == edits + 1
    assert "已办结" in receipt.text
    shown = [version.text for version in receipt.history] + [receipt.text]
    assert not any("待回访" in text for text in shown)
    async with harness.app.sessionmaker() as session:
        payloads = (await session.scalars(select(OutboxMessage.payload))).all()
    assert not any("待回访" in str(p) for p in payloads)
    assert (await harness.order(order.id)).status == "closed"


async def test_low_rating_says_what_is_true_about_points(harness: Harness) -> None:
    # The repair category earns no points here: nothing is credited, nothing is claimed.
    async with harness.app.sessionmaker() as session, session.begin():
        await session.execute(update(Category).where(Category.code == "repair").values(points=0))
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    li = await harness.login("p-li-dangyuan")
    await new_order(harness, resident)
    await worker.press("指派")
    await worker.press("李党员")
    await li.press("接单")
    await li.press("已完成")
    await li.press("跳过")
    mark = len(li.inbox)
    await resident.press("★★")
    told = texts_since(li, mark)
    assert "工单 000001 获得居民评价 ★★。" in told and "网格长会回访居民" in told
    assert "积分" not in told
    assert await rows(harness, PointsEntry) == []
    assert "网格长会联系您" in find(resident, "感谢您的评价 ★★").text


async def test_first_start_is_a_hello_and_later_ones_welcome_back(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    async with harness.app.sessionmaker() as session, session.begin():
        # Imported with her account, never written to us before.
        await session.execute(
            update(Identity).where(Identity.external_id == "p-zhang-ayi").values(
                last_inbound_at=None
            )
        )
    await resident.send("/start")
    assert "张阿姨，您好！欢迎使用社区网格服务" in resident.last().text
    assert "欢迎回来" not in resident.last().text
    assert resident.last().message.menu
    await resident.send("/start")
    assert "张阿姨，欢迎回来！" in resident.last().text


async def test_help_describes_the_buttons_first_then_the_commands(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    await resident.send("❓ 帮助")
    shown = resident.last()
    labels = [label for row in shown.message.menu or [] for label in row]
    assert "📝 我要报事" in labels and "👤 我的信息" in labels
    for label in labels:
        assert f"“{label}”" in shown.text, label
    # Every button is described before any command is named.
    first_command = shown.text.index("/")
    assert all(shown.text.index(f"“{label}”") < first_command for label in labels)
    assert "/order" in shown.text and "/me" in shown.text

    worker = await harness.login("p-wang")
    await worker.send("/help")
    labels = [label for row in worker.last().message.menu or [] for label in row]
    assert "📥 待派工单" in labels and "“📥 待派工单”" in worker.last().text
    assert "“📝 我要报事”" not in worker.last().text
