"""The service with WeCom (and the WeChat Official Account for residents) against the fake
APIs, its web server on a real port, and senders that call it as WeCom and WeChat do.

A test that runs that whole service (the ``wc`` fixture, or :func:`wecom_stack` in
``test_wecom_loop.py``) is marked ``e2e``, as tests/e2e are: the fast loop
``pytest -m "not e2e and not browser and not faults"`` leaves it out and keeps the callback's
unit tests (parsing, WeCom's sample crypto)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.app import Gridbot
from bot.channels.base import Limits
from bot.config import load_settings
from models import OutboxMessage
from models.messaging import OUT_PENDING, OUT_SENDING
from tests.conftest import Harness
from tests.fakes.telegram_server import serve_asgi
from tests.fakes.wechat_server import SAMPLE_APPID, FakeWeChatServer, WeChatSender
from tests.fakes.wechat_server import SAMPLE_TOKEN as WECHAT_TOKEN
from tests.fakes.wecom_server import (
    SAMPLE_AES_KEY,
    SAMPLE_CORP_ID,
    SAMPLE_TOKEN,
    Card,
    FakeWeComServer,
    WeComSender,
)
from tests.wechat.conftest import WX

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents and "wc" in getattr(
            item, "fixturenames", ()
        ):
            item.add_marker(pytest.mark.e2e)


@dataclass
class WC:
    """Everything a WeCom test needs; ``wx`` is the residents' WeChat side."""

    app: Gridbot
    api: FakeWeComServer
    sender: WeComSender
    h: Harness
    wx: WX
    url: str

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
            if busy is None:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("outbox did not drain")

    async def press(self, card: Card, label: str) -> None:
        """The member presses a button of a card; WeCom calls the app about it."""
        answer = await self.sender.pressed(self.api.press(card, label))
        assert answer.status_code == 200, answer

    async def bind(self, user: str, role: str, grid: str = "xh-g1-m1") -> str:
        """A member types ``/start <invite>`` in the app; the welcome they get."""
        answer = await self.sender.text(user, f"/start {await self.h.invite(role, grid)}")
        assert answer.status_code == 200
        return await self.api.wait_for(user, lambda t: "欢迎" in t)


def wecom_settings(api: FakeWeComServer) -> dict[str, Any]:
    return {
        "wecom_corp_id": SAMPLE_CORP_ID, "wecom_agent_id": api.agent_id,
        "wecom_secret": api.secret, "wecom_token": SAMPLE_TOKEN,
        "wecom_aes_key": SAMPLE_AES_KEY, "wecom_api_url": api.base_url,
    }


@contextlib.asynccontextmanager
async def wecom_stack(database_url: str, tmp_path: Path, **overrides: Any) -> AsyncIterator[WC]:
    """Start both fakes, the service with WeCom and WeChat, and its web server."""
    api, wechat = FakeWeComServer(), FakeWeChatServer()
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(api.running())
        await stack.enter_async_context(wechat.running())
        settings = load_settings(
            database_url=database_url, demo=True, secret_key="wc-test",
            media_dir=tmp_path / "media", qr_dir=tmp_path / "qr",
            wechat_appid=SAMPLE_APPID, wechat_secret=wechat.secret, wechat_token=WECHAT_TOKEN,
            wechat_api_url=wechat.base_url, **wecom_settings(api), **overrides,
        )
        app = Gridbot(settings)
        await app.prepare()
        app.enable_channels()
        # The test's members press quickly; WeCom's per-member pace is tested on its own.
        app.channels["wecom"].limits = Limits(per_chat_interval=0.0, global_per_second=1000)
        await app.start()
        stack.push_async_callback(app.stop)
        url = await stack.enter_async_context(serve_asgi(app.web_app()))
        sender = WeComSender(f"{url}/wecom")
        stack.push_async_callback(sender.close)
        wx_sender = WeChatSender(f"{url}/wechat")
        stack.push_async_callback(wx_sender.close)
        h = Harness(app, None)  # type: ignore[arg-type]
        yield WC(app, api, sender, h, WX(app, wechat, wx_sender, h), url)


@pytest.fixture
async def wc(database_url: str, tmp_path: Path) -> AsyncIterator[WC]:
    async with wecom_stack(database_url, tmp_path) as env:
        yield env
