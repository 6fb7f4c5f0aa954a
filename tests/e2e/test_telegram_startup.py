"""A Bot API in trouble at start-up does not take the service down (webhook registration,
the command menu and getMe are retried in the background; /readyz says so meanwhile)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

import bot.app
from bot.app import Gridbot
from bot.config import load_settings
from models import OutboxMessage
from tests.fakes.telegram_server import FakeTelegramServer


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegramServer]:
    async with FakeTelegramServer() as server:
        yield server


def service(database_url: str, tmp_path: Path, tg: FakeTelegramServer) -> Gridbot:
    return Gridbot(load_settings(
        database_url=database_url, demo=True, secret_key="startup",
        telegram_token=tg.token, telegram_api_url=tg.base_url, telegram_file_url=tg.file_url,
        media_dir=tmp_path / "media",
    ))


async def get(app: Gridbot, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app.web_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gridbot") as client:
        return await client.get(path)


async def test_the_service_runs_while_the_bot_api_fails_and_catches_up_after(
    database_url: str, tmp_path: Path, tg: FakeTelegramServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bot.app, "SETUP_RETRY_FIRST", 0.05)
    tg.fail("getMe", 2)
    tg.fail("setMyCommands", 1)
    tg.user(4242, "张阿姨")
    app = service(database_url, tmp_path, tg)
    await app.prepare()
    app.enable("telegram")
    await app.start()  # does not raise: before, `gridbot run` exited with a DeliveryError
    try:
        ready = await get(app, "/readyz")
        assert ready.status_code == 503
        assert ready.json()["channels"]["telegram"].startswith("retrying: ")
        assert (await get(app, "/healthz")).status_code == 200  # the rest serves
        # A message queued meanwhile waits in the outbox instead of failing.
        async with app.sessionmaker() as session, session.begin():
            session.add(OutboxMessage(channel="telegram", chat_id="4242",
                                      payload={"text": "您的工单已受理"},
                                      not_before=datetime(2026, 1, 1, tzinfo=UTC)))
        app.deliverer.wake()
        await tg.wait_for(4242, lambda m: m.text == "您的工单已受理", timeout=20)
        ready = await get(app, "/readyz")
        assert ready.status_code == 200, ready.json()
        assert ready.json()["channels"] == {"telegram": "ready"}
        assert [c["command"] for c in tg.commands][:2] == ["order", "myorders"]
    finally:
        await app.stop()


async def test_readyz_is_not_ready_while_the_database_is_away(tmp_path: Path) -> None:
    """A load balancer takes the instance out while its database does not answer."""
    away = Gridbot(load_settings(database_url="postgresql+asyncpg://nobody@127.0.0.1:9/gone",
                                 demo=False, secret_key="x", media_dir=tmp_path / "m"))
    try:
        answer = await get(away, "/readyz")
        assert answer.status_code == 503
        assert answer.json()["database"] == "unavailable"
        assert (await get(away, "/healthz")).status_code == 503
    finally:
        await away.engine.dispose()
