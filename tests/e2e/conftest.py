"""Every test in this folder runs the whole service against a fake platform server: marked
``e2e`` (slow; ``pytest -m "not e2e and not browser and not faults"`` is the fast loop)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import Gridbot
from bot.channels.base import Limits
from bot.config import load_settings
from tests.conftest import Harness
from tests.fakes.telegram_server import FakeTelegramServer

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@contextlib.asynccontextmanager
async def telegram_demo(
    database_url: str, media_dir: Path
) -> AsyncIterator[tuple[Harness, FakeTelegramServer]]:
    """The demo service on Telegram (polling) against the fake Bot API server, its media
    store in ``media_dir``."""
    async with FakeTelegramServer() as tg:
        settings = load_settings(
            database_url=database_url, demo=True, secret_key="e2e", telegram_token=tg.token,
            telegram_api_url=tg.base_url, telegram_file_url=tg.file_url, media_dir=media_dir,
        )
        app = Gridbot(settings)
        await app.prepare()
        # The real per-chat pace (1 msg/s) would make these tests slow, not more true.
        app.enable("telegram").limits = Limits(per_chat_interval=0.01, global_per_second=1000)
        await app.start()
        try:
            yield Harness(app, None), tg  # type: ignore[arg-type]
        finally:
            await app.stop()


@pytest.fixture
async def tg_app(
    database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Harness, FakeTelegramServer]]:
    """The demo service on Telegram (polling) against the fake Bot API server."""
    async with telegram_demo(database_url, tmp_path / "media") as stack:
        yield stack
