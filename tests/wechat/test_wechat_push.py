"""Pushes under WeChat's rules: the 48-hour window and its quota, template fallback, the
"cannot be reached" notice, 45015 / -1 / expired tokens, late handlers, msgmenu, photos."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import select

from bot.channels.wechat import WeChatChannel
from bot.ports import Button, HandleResult, Inbound, Outbound
from models import Identity, OutboxMessage, Person
from models.messaging import OUT_FAILED
from tests.fakes.wechat_server import PNG
from tests.wechat.conftest import WX, wechat_stack
from tests.wechat.test_wechat_loop import option, place_order

RESIDENT, WORKER = "o-res", "o-worker"


async def bind_worker_by_scan(wx: WX) -> None:
    """An existing follower (subscribed before) scans a worker invite: a SCAN event."""
    hello = await wx.sender.event(WORKER, "subscribe")
    assert hello.text and "扫描" in hello.text
    token = await wx.h.invite("worker", "xh-g1-m1")
    bound = await wx.sender.event(WORKER, "SCAN", token, Ticket="gQ1")
    assert bound.text and "网格员" in bound.text
    await wx.settle()


async def order_with_worker_on_wechat(wx: WX) -> str:
    await bind_worker_by_scan(wx)
    await wx.bind_resident(RESIDENT)
    await place_order(wx, RESIDENT, "楼道灯坏了")
    return await wx.api.wait_for(WORKER, lambda t: "楼道灯坏了" in t and "我来处理" in t)


async def test_outside_the_window_without_template_the_worker_is_told(wx: WX) -> None:
    card = await order_with_worker_on_wechat(wx)
    await wx.settle()
    await wx.age_window(RESIDENT, 49)
    before = len(wx.api.texts(RESIDENT))
    await wx.sender.text(WORKER, option(card, "🙋 我来处理"))
    notice = await wx.api.wait_for(WORKER, lambda t: "无法向" in t)
    await wx.settle()
    assert "请电话联系" in notice
    assert len(wx.api.texts(RESIDENT)) == before  # nothing reached the resident
    async with wx.app.sessionmaker() as session:
        failed = (await session.scalars(
            select(OutboxMessage).where(OutboxMessage.status == OUT_FAILED))).all()
    assert [r.chat_id for r in failed] == [RESIDENT]
    assert "no open window" in (failed[0].error or "")


async def test_outside_the_window_the_template_is_used(database_url: str, tmp_path: Path) -> None:
    async with wechat_stack(database_url, tmp_path,
                            wechat_templates={"accepted": "TPL-ACCEPTED"}) as wx:
        card = await order_with_worker_on_wechat(wx)
        await wx.settle()
        await wx.age_window(RESIDENT, 49)
        await wx.sender.text(WORKER, option(card, "🙋 我来处理"))
        await wx.api.wait_for(RESIDENT, lambda t: "回复本公众号" in t)
        await wx.settle()
        template = [s for s in wx.api.sent if s.kind == "template"]
        assert [s.body["template_id"] for s in template] == ["TPL-ACCEPTED"]
        assert not [t for t in wx.api.texts(WORKER) if "无法向" in t]


async def test_45015_and_quota_fall_back_to_templates(database_url: str, tmp_path: Path) -> None:
    async with wechat_stack(database_url, tmp_path, wechat_push_quota=2,
                            wechat_templates={"other": "TPL-OTHER"}) as wx:
        await wx.bind_resident(RESIDENT)
        async with wx.app.sessionmaker() as session, session.begin():
            ident = await session.scalar(select(Identity).where(Identity.external_id == RESIDENT))
            assert ident is not None
            person_id = ident.person_id
            for n in range(3):
                session.add(OutboxMessage(channel="wechat", chat_id=RESIDENT,
                                          person_id=person_id,
                                          payload=Outbound(f"push {n}").to_payload()))
        wx.app.deliverer.wake()
        await wx.settle()
        kinds = {s.text.split("\n")[0]: s.kind for s in wx.api.sent if "push" in s.text}
        assert kinds == {"push 0": "text", "push 1": "text", "push 2": "template"}

        # WeChat says the window is closed although our clock says otherwise.
        await wx.sender.text(RESIDENT, "/mygrid")  # a new window, quota reset
        await wx.settle()
        wx.api.closed.add(RESIDENT)
        async with wx.app.sessionmaker() as session, session.begin():
            session.add(OutboxMessage(channel="wechat", chat_id=RESIDENT, person_id=person_id,
                                      payload=Outbound("after 45015").to_payload()))
        wx.app.deliverer.wake()
        await wx.settle()
        assert [s.kind for s in wx.api.sent if "after 45015" in s.text] == ["template"]
        async with wx.app.sessionmaker() as session:
            ident = await session.scalar(select(Identity).where(Identity.external_id == RESIDENT))
            assert ident is not None and ident.window_pushes == 2


async def test_busy_and_expired_token_are_retried_once(wx: WX) -> None:
    await wx.bind_resident(RESIDENT)
    async with wx.app.sessionmaker() as session, session.begin():
        ident = await session.scalar(select(Identity).where(Identity.external_id == RESIDENT))
        assert ident is not None
        session.add(OutboxMessage(channel="wechat", chat_id=RESIDENT, person_id=ident.person_id,
                                  payload=Outbound("busy then fine").to_payload()))
    wx.api.script(RESIDENT, -1)
    wx.app.deliverer.wake()
    await wx.api.wait_for(RESIDENT, lambda t: t == "busy then fine", timeout=15)
    fetches = len(wx.api.token_calls)
    wx.api.expire_token()
    async with wx.app.sessionmaker() as session, session.begin():
        session.add(OutboxMessage(channel="wechat", chat_id=RESIDENT, person_id=ident.person_id,
                                  payload=Outbound("after token expiry").to_payload()))
    wx.app.deliverer.wake()
    await wx.api.wait_for(RESIDENT, lambda t: t == "after token expiry")
    await wx.settle()
    assert len(wx.api.token_calls) == fetches + 1
    assert wx.api.token_calls[-1]["force_refresh"] is True
    assert [t for t in wx.api.texts(RESIDENT) if t == "busy then fine"] == ["busy then fine"]


async def test_late_handler_answers_success_then_pushes(wx: WX) -> None:
    wx.app.channel(WeChatChannel).reply_deadline = 0.2
    intake = wx.app.channel(WeChatChannel)._intake

    async def slow(event: Inbound) -> HandleResult:
        await asyncio.sleep(0.6)
        return await intake(event)

    wx.app.channel(WeChatChannel)._intake = slow
    reply = await wx.sender.text("o-late", "你好")
    assert reply.status == 200 and reply.body == "success"
    welcome = await wx.api.wait_for("o-late", lambda t: "扫描" in t)
    retry = await wx.sender.post_raw(wx.sender.xml("o-late", "text", Content="你好",
                                                   msg_id=4242))
    again = await wx.sender.post_raw(wx.sender.xml("o-late", "text", Content="你好",
                                                   msg_id=4242))
    assert retry.body == "success" and again.body == "success"
    await wx.settle()
    assert wx.api.texts("o-late").count(welcome) == 2  # the first message and msg 4242


async def test_msgmenu_tap_comes_back_as_the_button(database_url: str, tmp_path: Path) -> None:
    async with wechat_stack(database_url, tmp_path, wechat_msgmenu=True) as wx:
        token = await wx.h.invite("resident", "xh-g1-m1", "xh-b01", max_uses=None)
        first = await wx.sender.event(RESIDENT, "subscribe", f"qrscene_{token}")
        assert first.text and "怎么称呼您" in first.text
        # A passive reply cannot be a msgmenu: the room question comes as numbered text.
        room = await wx.sender.text(RESIDENT, "张阿姨")
        assert room.text and "房号" in room.text and "回复 1 跳过" in room.text
        # A push with choices goes out as a msgmenu; a tap comes back as the button.
        async with wx.app.sessionmaker() as session, session.begin():
            ident = await session.scalar(select(Identity).where(Identity.external_id == RESIDENT))
            assert ident is not None
            session.add(OutboxMessage(
                channel="wechat", chat_id=RESIDENT, person_id=ident.person_id,
                payload=Outbound("房号可以跳过", [[Button("跳过", "f:skip")]]).to_payload()))
        wx.app.deliverer.wake()
        ask = await wx.api.wait_for(RESIDENT, lambda t: t.startswith("房号可以跳过"))
        assert "跳过" in ask
        assert [s.kind for s in wx.api.sent] == ["msgmenu"]
        items = wx.api.sent[-1].body["msgmenu"]["list"]
        menu_id = int(next(item["id"] for item in items if item["content"] == "跳过"))
        phone_q = await wx.sender.text(RESIDENT, "跳过", bizmsgmenuid=menu_id)
        assert phone_q.text and "电话" in phone_q.text
        # A msgmenu the account may not send (an unexpected errcode) falls back to text.
        wx.api.script(RESIDENT, 45999)
        async with wx.app.sessionmaker() as session, session.begin():
            ident = await session.scalar(select(Identity).where(Identity.external_id == RESIDENT))
            assert ident is not None
            session.add(OutboxMessage(
                channel="wechat", chat_id=RESIDENT, person_id=ident.person_id,
                payload=Outbound("pick one", [[Button("甲", "f:skip"), Button("乙", "f:x")]])
                .to_payload()))
        wx.app.deliverer.wake()
        fallback = await wx.api.wait_for(RESIDENT, lambda t: t.startswith("pick one"))
        # Numbers continue after the "1 跳过" of the phone question (no message since).
        assert "回复 2 甲" in fallback and "回复 3 乙" in fallback


async def test_photo_is_fetched_through_the_media_api(wx: WX) -> None:
    await wx.bind_resident(RESIDENT)
    wx.api.media["MEDIA-1"] = PNG
    ask = await wx.sender.text(RESIDENT, "/order")
    assert ask.text
    await wx.sender.text(RESIDENT, option(ask.text, "安全隐患"))
    photo_q = await wx.sender.text(RESIDENT, "电动车在楼道充电")
    assert photo_q.text and "照片" in photo_q.text
    loc_q = await wx.sender.image(RESIDENT, "MEDIA-1")
    assert loc_q.text and "位置" in loc_q.text
    confirm = await wx.sender.text(RESIDENT, option(loc_q.text, "跳过"))
    assert confirm.text and "请确认" in confirm.text
    await wx.sender.text(RESIDENT, option(confirm.text, "✅ 提交"))
    order = (await wx.h.orders())[0]
    assert order.photo and order.photo.startswith("media:")
    path = wx.app.media.path(order.photo)
    assert path is not None and path.read_bytes() == PNG
    async with wx.app.sessionmaker() as session:
        assert await session.scalar(select(Person.id).where(Person.id == order.resident_id))
