"""Telegram end to end: private data never reaches a group, an update the core could not store
is delivered again and applied once, and a huge webhook body is refused while it streams."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from bot.app import Gridbot
from bot.channels.base import Limits
from bot.config import load_settings
from models import Identity, OutboxMessage
from tests.conftest import Harness
from tests.e2e.test_telegram_loop import bind
from tests.fakes.db_drop import connection_drops_once, inserting
from tests.fakes.telegram_server import FakeTelegramServer, FakeUser, serve_asgi
from tests.support.messages import has

RESIDENT, WORKER, MEMBER = 1001, 1002, 1003
GROUP = -500
PHONE, ROOM = "13912345678", "2-301"
SECRET = "hook_secret-1"


async def _bind_people(h: Harness, tg: FakeTelegramServer) -> tuple[FakeUser, FakeUser, FakeUser]:
    resident, worker, member = (tg.user(RESIDENT, "张阿姨"), tg.user(WORKER, "王网格员"),
                                tg.user(MEMBER, "李党员"))
    await bind(tg, h, resident, "resident", "xh-g1-m1", "xh-b01")
    await tg.wait_for(RESIDENT, has("房号"))
    await resident.send_text(ROOM)
    await tg.wait_for(RESIDENT, has("电话"))
    await resident.send_text(PHONE)
    await tg.wait_for(RESIDENT, has("好了"))
    await bind(tg, h, worker, "worker", "xh-g1-m1")
    await tg.wait_for(WORKER, has("网格员"))
    await bind(tg, h, member, "member", "xh-g1-m1")
    await tg.wait_for(MEMBER, has("党员"))
    return resident, worker, member


async def _order_to_confirm(tg: FakeTelegramServer, resident: FakeUser, text: str) -> Any:
    await resident.send_command("order")
    ask = await tg.wait_for(RESIDENT, has("类别"))
    await resident.press_label(ask, "维修报修")
    await tg.wait_for(RESIDENT, has("描述"))
    await resident.send_text(text)
    photo_q = await tg.wait_for(RESIDENT, has("照片"))
    await resident.press_label(photo_q, "跳过")
    await tg.wait_for(RESIDENT, has("位置"))
    await resident.send_location(31.2096, 107.4680)
    return await tg.wait_for(RESIDENT, has("请确认"))


async def test_a_group_message_never_moves_private_pushes_to_the_group(
    tg_app: tuple[Harness, FakeTelegramServer],
) -> None:
    h, tg = tg_app
    resident, worker, member = await _bind_people(h, tg)
    # The member writes once in the building's group, where the bot is a member too.
    in_group = tg.user(MEMBER, "李党员", chat_id=GROUP, chat_title="3单元邻里群")
    await in_group.send_command("tasks")
    await in_group.send_text("大家好")
    polite = await tg.wait_for(GROUP, has("私聊"))
    assert polite.text and PHONE not in polite.text
    async with h.app.sessionmaker() as session:
        ident = await session.scalar(select(Identity).where(
            Identity.channel == "telegram", Identity.external_id == str(MEMBER)))
    assert ident is not None and ident.chat_id == str(MEMBER)

    # Then a resident's order is broadcast: the offer goes to the member's private chat.
    confirm = await _order_to_confirm(tg, resident, "楼道灯坏了")
    await resident.press_label(confirm, "✅ 提交")
    card = await tg.wait_for(WORKER, has("新工单"))
    await worker.press_label(card, "📢 广播抢单")
    offer = await tg.wait_for(MEMBER, has("先接先得"))
    await member.press(offer, offer.payload_for("✋ 接单"))
    await tg.wait_for(MEMBER, has("接单成功"))
    await tg.wait_for(MEMBER, has(PHONE))  # the contact goes to the private chat
    # The group saw the one polite sentence, nothing about the order, never the phone.
    group_texts = [m.text or "" for m in tg.sent(GROUP)]
    assert len(group_texts) == 1
    assert not [t for t in group_texts if PHONE in t or ROOM in t or "楼道灯" in t]
    async with h.app.sessionmaker() as session:
        to_group = (await session.scalars(select(OutboxMessage.payload).where(
            OutboxMessage.chat_id == str(GROUP)))).all()
    assert len(to_group) == 1 and PHONE not in str(to_group)


@contextlib.asynccontextmanager
async def webhook_app(database_url: str, tmp_path: Path) -> AsyncIterator[
        tuple[Harness, FakeTelegramServer, str]]:
    """The service in Telegram webhook mode behind a real uvicorn the fake Bot API posts to."""
    async with FakeTelegramServer() as tg:
        settings = load_settings(
            database_url=database_url, demo=True, secret_key="e2e", telegram_token=tg.token,
            telegram_api_url=tg.base_url, telegram_file_url=tg.file_url,
            telegram_mode="webhook", telegram_webhook_secret=SECRET,
            media_dir=tmp_path / "media",
        )
        app = Gridbot(settings)
        await app.prepare()
        served: list[Starlette] = []  # the web app, made once the webhook URL is known

        async def web(scope: Scope, receive: Receive, send: Send) -> None:
            await served[0](scope, receive, send)

        async with serve_asgi(web) as url:
            app.settings = settings.model_copy(
                update={"telegram_webhook_url": f"{url}/telegram/webhook"})
            app.enable("telegram").limits = Limits(per_chat_interval=0.01, global_per_second=1000)
            served.append(app.web_app())
            await app.start()
            try:
                yield Harness(app, None), tg, url  # type: ignore[arg-type]
            finally:
                await app.stop()


async def test_an_order_lost_to_a_dropped_database_is_delivered_again_and_stored_once(
    database_url: str, tmp_path: Path
) -> None:
    async with webhook_app(database_url, tmp_path) as (h, tg, _url):
        resident, _worker, _member = await _bind_people(h, tg)
        confirm = await _order_to_confirm(tg, resident, "楼道灯坏了")
        with connection_drops_once(h.app.engine, inserting("orders")) as fired:
            update = await resident.press_label(confirm, "✅ 提交")
            await tg.wait_for(RESIDENT, has("工单号"))
        assert fired
        statuses = [s for uid, s in tg.webhook_deliveries if uid == update["update_id"]]
        assert statuses == [500, 200]  # not stored: Telegram delivers it again
        orders = await h.orders()
        assert len(orders) == 1 and orders[0].description == "楼道灯坏了"
        receipts = [m for m in tg.sent(RESIDENT) if "工单号" in (m.text or "")]
        assert len(receipts) == 1


async def test_a_huge_webhook_body_is_refused_while_it_streams(
    database_url: str, tmp_path: Path
) -> None:
    async with webhook_app(database_url, tmp_path) as (h, _tg, _url):
        pulled: list[int] = []

        async def body() -> AsyncIterator[bytes]:
            for n in range(200 * 16):  # 200 MB in 64 KiB chunks, made only when read
                pulled.append(n)
                yield b" " * (64 * 1024)

        transport = httpx.ASGITransport(app=h.app.web_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://gridbot") as client:
            path = "/telegram/webhook"
            wrong = await client.post(path, content=body(),
                                      headers={"x-telegram-bot-api-secret-token": "wrong"})
            assert wrong.status_code == 403 and pulled == []  # secret first, body unread
            good = {"x-telegram-bot-api-secret-token": SECRET}
            huge = await client.post(path, content=body(), headers=good)
            assert huge.status_code == 413
            assert 16 <= len(pulled) <= 18  # 1 MiB and one chunk past it: never held whole
            pulled.clear()
            declared = await client.post(
                path, content=body(), headers={**good, "content-length": str(200 << 20)})
            assert declared.status_code == 413 and pulled == []
