"""The channel port's contract, run against every adapter: what the composition root and the
deliverer rely on holds for each platform, each driven at its own HTTP boundary by its fake.

A new platform is added to ``PLATFORMS`` below and must pass these tests unchanged."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.routing import BaseRoute, Mount, Route

from bot.app import Gridbot
from bot.channels import registry
from bot.channels.base import Adapter, Limits
from bot.channels.memory import MemoryChannel
from bot.channels.wechat import SKIPPED
from bot.config import Settings, load_settings
from bot.ports import Button, Outbound
from models.messaging import WebChatMessage
from tests.fakes.telegram_server import FakeTelegramServer
from tests.fakes.wechat_server import SAMPLE_APPID, SAMPLE_TOKEN, FakeWeChatServer
from tests.fakes.wecom_server import SAMPLE_AES_KEY as WECOM_AES_KEY
from tests.fakes.wecom_server import SAMPLE_CORP_ID as WECOM_CORP_ID
from tests.fakes.wecom_server import SAMPLE_TOKEN as WECOM_TOKEN
from tests.fakes.wecom_server import FakeWeComServer


@dataclass
class Platform:
    """One adapter in a running service, a private chat on it, and what that chat shows."""

    app: Gridbot
    adapter: Adapter
    chat_id: str
    #: The texts the person sees in the chat, oldest first (edits applied where made).
    shown: Callable[[], Awaitable[list[str]]]


def _settings(database_url: str, tmp_path: Path, **extra: object) -> Settings:
    return load_settings(
        database_url=database_url, demo=True, secret_key="contract",
        media_dir=tmp_path / "media", qr_dir=tmp_path / "qr", **extra,
    )


@contextlib.asynccontextmanager
async def memory(database_url: str, tmp_path: Path) -> AsyncIterator[Platform]:
    app = Gridbot(_settings(database_url, tmp_path))
    await app.prepare()
    channel = MemoryChannel()
    app.add_channel(channel)

    async def shown() -> list[str]:
        return [m.text for m in channel.messages.get("m1", [])]

    yield Platform(app, channel, "m1", shown)


@contextlib.asynccontextmanager
async def web(database_url: str, tmp_path: Path) -> AsyncIterator[Platform]:
    app = Gridbot(_settings(database_url, tmp_path, webchat_enabled=True))
    await app.prepare()
    adapter = app.enable("web")

    async def shown() -> list[str]:
        async with app.sessionmaker() as session:
            rows = await session.scalars(
                select(WebChatMessage)
                .where(WebChatMessage.chat_id == "p1", WebChatMessage.direction == "out")
                .order_by(WebChatMessage.id)
            )
            return [str(row.payload["text"]) for row in rows]

    yield Platform(app, adapter, "p1", shown)


@contextlib.asynccontextmanager
async def telegram(database_url: str, tmp_path: Path) -> AsyncIterator[Platform]:
    async with FakeTelegramServer() as tg:
        tg.user(4242, "王阿姨")
        app = Gridbot(_settings(
            database_url, tmp_path, telegram_token=tg.token, telegram_api_url=tg.base_url,
            telegram_file_url=tg.file_url, telegram_mode="webhook",
        ))
        await app.prepare()
        adapter = app.enable("telegram")

        async def shown() -> list[str]:
            return [m.text or "" for m in tg.sent(4242)]

        yield Platform(app, adapter, "4242", shown)


@contextlib.asynccontextmanager
async def wechat(database_url: str, tmp_path: Path) -> AsyncIterator[Platform]:
    api = FakeWeChatServer()
    async with api.running():
        app = Gridbot(_settings(
            database_url, tmp_path, wechat_appid=SAMPLE_APPID, wechat_secret=api.secret,
            wechat_token=SAMPLE_TOKEN, wechat_api_url=api.base_url,
        ))
        await app.prepare()
        adapter = app.enable("wechat")

        async def shown() -> list[str]:
            return api.texts("o-contract")

        yield Platform(app, adapter, "o-contract", shown)


def _wecom_settings(api: FakeWeComServer) -> dict[str, object]:
    return {
        "wecom_corp_id": WECOM_CORP_ID, "wecom_agent_id": api.agent_id,
        "wecom_secret": api.secret, "wecom_token": WECOM_TOKEN,
        "wecom_aes_key": WECOM_AES_KEY, "wecom_api_url": api.base_url,
    }


@contextlib.asynccontextmanager
async def wecom(database_url: str, tmp_path: Path) -> AsyncIterator[Platform]:
    api = FakeWeComServer()
    async with api.running():
        app = Gridbot(_settings(database_url, tmp_path, **_wecom_settings(api)))
        await app.prepare()
        adapter = app.enable("wecom")

        async def shown() -> list[str]:
            return api.texts("wc-contract")

        yield Platform(app, adapter, "wc-contract", shown)


PLATFORMS: dict[str, Callable[[str, Path], contextlib.AbstractAsyncContextManager[Platform]]] = {
    "memory": memory,
    "web": web,
    "telegram": telegram,
    "wechat": wechat,
    "wecom": wecom,
}


@pytest.fixture(params=sorted(PLATFORMS))
async def platform(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path
) -> AsyncIterator[Platform]:
    async with PLATFORMS[request.param](database_url, tmp_path) as made:
        assert await made.adapter.claim() is None
        await made.adapter.start()
        try:
            yield made
        finally:
            await made.adapter.stop()
            await made.app.stop()


async def test_the_adapter_is_the_channel_the_service_knows(platform: Platform) -> None:
    adapter = platform.adapter
    assert platform.app.channels[adapter.name] is adapter
    assert isinstance(adapter.limits, Limits) and adapter.limits.max_in_flight > 0
    assert adapter.stop_budget > 0
    assert all(isinstance(route, BaseRoute) for route in adapter.routes())
    assert adapter.is_group(platform.chat_id) is False


async def test_a_message_with_buttons_reaches_the_chat(platform: Platform) -> None:
    message = Outbound(
        text="您的工单 000001 已受理", buttons=[[Button("⭐ 评价", "rate:1:5")]]
    )
    sent_id = await platform.adapter.send(platform.chat_id, message)
    assert sent_id
    shown = await platform.shown()
    assert len(shown) == 1 and "000001" in shown[0]


async def test_an_edit_replaces_the_message_or_is_declared_impossible(
    platform: Platform,
) -> None:
    first = await platform.adapter.send(platform.chat_id, Outbound(text="待接单"))
    result = await platform.adapter.edit(platform.chat_id, first, Outbound(text="已由王建国接单"))
    shown = await platform.shown()
    if result == SKIPPED:  # WeChat cannot edit: the refresh is dropped, never sent twice
        assert shown == ["待接单"]
    else:
        assert result and shown[-1] == "已由王建国接单" and "待接单" not in shown[-1]


async def test_every_enabled_adapter_serves_its_own_paths(
    database_url: str, tmp_path: Path
) -> None:
    """All platforms at once: their routes do not collide with each other or the service's."""
    async with FakeTelegramServer() as tg, FakeWeComServer().running() as wc:
        api = FakeWeChatServer()
        async with api.running():
            app = Gridbot(_settings(
                database_url, tmp_path, webchat_enabled=True, telegram_token=tg.token,
                telegram_api_url=tg.base_url, telegram_mode="webhook",
                wechat_appid=SAMPLE_APPID, wechat_secret=api.secret,
                wechat_token=SAMPLE_TOKEN, wechat_api_url=api.base_url,
                **_wecom_settings(wc),
            ))
            app.enable_channels()
            assert [c for c in app.channels] == [s.name for s in registry.ADAPTERS]
            paths: list[str] = []
            for route in app.web_app().routes:
                assert isinstance(route, Route | Mount)
                paths.append(route.path)
            assert len(paths) == len(set(paths)), paths
            await app.stop()

