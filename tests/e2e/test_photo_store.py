"""A resident's photo when the media folder cannot be written (a read-only install directory):
the order is still placed, and the resident is told the photo could not be kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import Harness
from tests.e2e.conftest import telegram_demo
from tests.fakes.telegram_server import FakeTelegramServer
from tests.support.messages import has

RESIDENT = 2001
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64


@pytest.fixture
async def unwritable_media(
    database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Harness, FakeTelegramServer]]:
    blocker = tmp_path / "read-only-install"
    blocker.write_text("a file where the media folder should go")  # even root cannot mkdir
    async with telegram_demo(database_url, blocker / "media") as stack:
        yield stack


async def test_a_photo_that_cannot_be_stored_keeps_the_order(
    unwritable_media: tuple[Harness, FakeTelegramServer],
) -> None:
    h, tg = unwritable_media
    resident = tg.user(RESIDENT, "张", language_code="zh-hans")
    await resident.send_command("start", await h.invite("resident", "xh-g1-m1", "xh-b01"))
    await resident.press_label(await tg.wait_for(RESIDENT, has("怎么称呼")), "就叫“张”")
    await tg.wait_for(RESIDENT, has("房号"))
    await resident.send_text("2-301")
    await tg.wait_for(RESIDENT, has("电话"))
    await resident.send_text("13912345678")
    await tg.wait_for(RESIDENT, has("好了"))

    await resident.send_command("order")
    await resident.press_label(await tg.wait_for(RESIDENT, has("类别")), "维修报修")
    await tg.wait_for(RESIDENT, has("描述"))
    await resident.send_text("3单元楼道灯坏了，老人晚上看不见")
    await tg.wait_for(RESIDENT, has("照片"))
    tg.add_file("lamp", JPEG)
    await resident.send_photo("lamp")

    sorry = await tg.wait_for(RESIDENT, has("照片没能保存"))
    location = await tg.wait_for(RESIDENT, has("位置"))  # the flow goes on without the photo
    assert sorry.message_id < location.message_id
    await resident.send_location(31.2096, 107.4680)
    await resident.press_label(await tg.wait_for(RESIDENT, has("请确认")), "✅ 提交")
    await tg.wait_for(RESIDENT, has("工单号"))

    (order,) = await h.orders()
    assert order.description == "3单元楼道灯坏了，老人晚上看不见"
    assert order.photo is None
    assert not await asyncio.to_thread((h.app.settings.media_dir).exists)
