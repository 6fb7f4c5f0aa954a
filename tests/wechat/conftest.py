"""The service with the WeChat channel against the fake WeChat API, its web server on a real
port, and a sender that posts signed (and in safe mode encrypted) callbacks to it.

A test that runs that whole service (the ``wx`` fixture, or :func:`wechat_stack` called in its
body) is marked ``e2e``, as tests/e2e and the WeCom ones are: the fast loop
``pytest -m "not e2e and not browser and not faults"`` leaves it out and keeps the unit tests
(XML sanitising, template settings)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from bot.app import Gridbot
from bot.channels.base import Limits
from bot.channels.wechat import WeChatChannel
from bot.config import load_settings
from models import Identity, OutboxMessage
from models.messaging import OUT_PENDING, OUT_SENDING
from tests.conftest import Harness
from tests.fakes.telegram_server import FakeTelegramServer, serve_asgi
from tests.fakes.wechat_server import (
    SAMPLE_AES_KEY,
    SAMPLE_APPID,
    SAMPLE_TOKEN,
    FakeWeChatServer,
    WeChatSender,
)

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE not in Path(item.path).resolve().parents:
            continue
        function = getattr(item, "function", None)
        code_names = function.__code__.co_names if function is not None else ()
        if "wx" in getattr(item, "fixturenames", ()) or "wechat_stack" in code_names:
            item.add_marker(pytest.mark.e2e)


@dataclass
class WX:
    """Everything a WeChat test needs."""

    app: Gridbot
    api: FakeWeChatServer
    sender: WeChatSender
    h: Harness
    tg: FakeTelegramServer | None = None

    async def settle(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until the outbox has nothing left to send."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with self.app.sessionmaker() as session:
                busy = await session.scalar(
                    select(OutboxMessage.id)
                    .where(OutboxMessage.status.in_([OUT_PENDING, OUT_SENDING]))
                    .limit(1)
                )
            if busy is None and not self.app.channel(WeChatChannel)._background:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("outbox did not drain")

    async def age_window(self, openid: str, hours: float) -> None:
        """Pretend the user's last message was ``hours`` ago."""
        async with self.app.sessionmaker() as session, session.begin():
            await session.execute(
                update(Identity)
                .where(Identity.channel == "wechat", Identity.external_id == openid)
                .values(last_inbound_at=self.app.clock() - timedelta(hours=hours))
            )

    async def bind_resident(self, openid: str, building: str = "xh-b01",
                            grid: str = "xh-g1-m1", name: str = "张阿姨") -> None:
        """A new follower scans the stairwell code, gives a name, skips room and phone."""
        token = await self.h.invite("resident", grid, building, max_uses=None)
        first = await self.sender.event(openid, "subscribe", f"qrscene_{token}")
        # The welcome and the name question are one message: the passive reply. WeChat gives
        # no name, so there is none to keep: the resident types one.
        assert first.text and "绑定成功" in first.text, first
        assert "怎么称呼您" in first.text and "回复 1" not in first.text, first
        room = await self.sender.text(openid, name)
        assert room.text and "房号" in room.text and "回复 1 跳过" in room.text, room
        phone = await self.sender.text(openid, "1")
        assert phone.text and "电话" in phone.text, phone
        done = await self.sender.text(openid, "1")
        assert done.text and "好了" in done.text, done
        await self.settle()


@contextlib.asynccontextmanager
async def wechat_stack(
    database_url: str,
    tmp_path: Path,
    *,
    aes: bool = False,
    telegram: bool = False,
    **overrides: Any,
) -> AsyncIterator[WX]:
    """Start the fake API (and fake Telegram), the service and its web server."""
    api = FakeWeChatServer()
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(api.running())
        tg = None
        extra: dict[str, Any] = {}
        if telegram:
            tg = await stack.enter_async_context(FakeTelegramServer())
            extra = {"telegram_token": tg.token, "telegram_api_url": tg.base_url,
                     "telegram_file_url": tg.file_url}
        settings = load_settings(
            database_url=database_url, demo=True, secret_key="wx-test",
            media_dir=tmp_path / "media", qr_dir=tmp_path / "qr",
            wechat_appid=SAMPLE_APPID, wechat_secret=api.secret, wechat_token=SAMPLE_TOKEN,
            wechat_aes_key=SAMPLE_AES_KEY if aes else None, wechat_api_url=api.base_url,
            **extra, **overrides,
        )
        app = Gridbot(settings)
        await app.prepare()
        app.enable("wechat")
        if telegram:
            app.enable("telegram").limits = Limits(per_chat_interval=0.01, global_per_second=1000)
        await app.start()
        stack.push_async_callback(app.stop)
        url = await stack.enter_async_context(serve_asgi(app.web_app()))
        sender = WeChatSender(f"{url}/wechat", aes_key=SAMPLE_AES_KEY if aes else None)
        stack.push_async_callback(sender.close)
        yield WX(app, api, sender, Harness(app, None), tg)  # type: ignore[arg-type]


@pytest.fixture
async def wx(database_url: str, tmp_path: Path) -> AsyncIterator[WX]:
    """Plain mode, default settings, no Telegram."""
    async with wechat_stack(database_url, tmp_path) as env:
        yield env


