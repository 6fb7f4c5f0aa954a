"""Points (积分) in chat: awards for orders through the real flow, ``/points`` for a member
(month, total, rank in the grid, last awards) and for a head (the grid's leaderboard), and an
admin's adjustments, with every bad input answered politely and nothing changed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from bot.app import Gridbot
from bot.channels.memory import MemoryChannel, MemoryUser
from bot.config import load_settings
from models import Order, Person, PointsEntry
from tests.conftest import Harness
from tests.flows.helpers import new_order, person, rows, snapshot

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2027, 11, 20, 10, 0, tzinfo=SH)


@pytest.fixture
async def harness(database_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    """The demo community with the clock at 2027-11-20 10:00 in Shanghai (ahead of the wall
    clock, so that the outbox sends what the handlers queue)."""
    settings = load_settings(
        database_url=database_url,
        demo=True,
        secret_key="test-key",
        media_dir=tmp_path / "media",
        qr_dir=tmp_path / "qr",
    )
    app = Gridbot(settings, clock=lambda: NOW)
    await app.prepare()
    channel = MemoryChannel()
    app.add_channel(channel)
    try:
        yield Harness(app, channel)
    finally:
        await app.engine.dispose()


async def done_order(
    harness: Harness, resident: MemoryUser, worker: MemoryUser, li: MemoryUser
) -> Order:
    """A repair order (10 points) assigned to 李党员, accepted and marked done."""
    order = await new_order(harness, resident)
    await worker.press("指派")
    await worker.press("李党员")
    await li.press("接单")
    await li.press("已完成")
    await li.press("跳过")
    return order


async def ledger(harness: Harness) -> list[tuple[str, int, str]]:
    async with harness.app.sessionmaker() as session:
        found = await session.execute(
            select(Person.key, PointsEntry.points, PointsEntry.reason)
            .join(Person, Person.id == PointsEntry.person_id)
            .order_by(PointsEntry.id)
        )
        return [tuple(r) for r in found.all()]  # type: ignore[misc]


async def test_orders_earn_their_category_points_and_a_bonus_for_four_stars_or_more(
    harness: Harness,
) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    li = await harness.login("p-li-dangyuan")
    await done_order(harness, resident, worker, li)
    await resident.press("★★★")  # three stars: the order's points, no bonus
    assert await ledger(harness) == [("p-li-dangyuan", 10, "order_done")]

    await done_order(harness, resident, worker, li)
    rating = resident.last()
    button = next(b for b in rating.buttons if b.label == "★★★★")
    event = resident._event(button=button.payload, button_message_id=rating.id)
    await harness.intake(event)
    assert (await harness.intake(event)).duplicate  # the platform redelivered the press
    await resident.press("★★★★★", message=rating)  # a second press is refused
    assert await ledger(harness) == [
        ("p-li-dangyuan", 10, "order_done"),
        ("p-li-dangyuan", 10, "order_done"),
        ("p-li-dangyuan", 5, "rating_bonus"),
    ]
    assert (await person(harness, "p-li-dangyuan")).points == 25
    [entry] = await rows(harness, PointsEntry, PointsEntry.reason == "rating_bonus")
    assert entry.created_at == NOW and entry.award_key == f"rating_bonus:{entry.order_id}"


async def seed(harness: Harness) -> None:
    """Ledger rows by hand: 李党员 7 last month, 赵志愿者 20 this month, 孙建华 4 this month."""
    async with harness.app.sessionmaker() as session, session.begin():
        ids = dict((await session.execute(select(Person.key, Person.id))).all())
        for key, pts, when in (
            ("p-li-dangyuan", 7, datetime(2027, 10, 31, 23, 59, tzinfo=SH)),
            ("p-zhao-zhiyuanzhe", 20, datetime(2027, 11, 1, 0, 0, tzinfo=SH)),
            ("p-sun-jianhua", 4, NOW - timedelta(days=1)),
        ):
            session.add(
                PointsEntry(person_id=ids[key], points=pts, reason="order_done", created_at=when)
            )


async def test_a_member_sees_month_total_rank_and_last_awards(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    li = await harness.login("p-li-dangyuan")
    await seed(harness)
    await done_order(harness, resident, worker, li)
    await resident.press("★★★★★")
    await li.send("/points")
    text = li.last().text
    # This month 10 + 5 = 15; in total 15 + 7 = 22. In 第一网格1号微网格 this month:
    # 赵志愿者 20, 李党员 15, 王网格员 0 → second of three.
    assert "2027-11 本月积分：15 分，累计：22 分" in text, text
    assert "在第一网格1号微网格本月排名：第 2 名（共 3 人）" in text
    assert "· 11-20 好评奖励 +5" in text and "· 11-20 工单办结 +10" in text
    assert "· 10-31 工单办结 +7" in text


async def test_a_head_sees_the_leaderboard_of_the_grid(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    li = await harness.login("p-li-dangyuan")
    head = await harness.login("p-liu-wanggezhang")
    await seed(harness)
    await done_order(harness, resident, worker, li)
    await resident.press("★★★★")
    await head.send("/points")
    lines = head.last().text.splitlines()
    # Members and workers of 第一网格's micro-grids, November only: 赵 20, 李 15 (not the 7 of
    # October), 孙 4, then 王网格员, 杨丽, 唐小芳 with 0 sharing rank 4.
    assert lines[0] == "🏆 第一网格 2027-11 积分排行："
    assert lines[1:4] == ["1. 赵志愿者　20 分", "2. 李党员　15 分", "3. 孙建华　4 分"]
    assert sorted(lines[4:]) == sorted(["4. 王网格员　0 分", "4. 杨丽　0 分", "4. 唐小芳　0 分"])
    # A resident has no points.
    await resident.send("/points")
    assert "积分面向党员志愿者" in resident.last().text


async def test_an_admin_adjusts_points_with_a_reason(harness: Harness) -> None:
    admin = await harness.login("p-chen-shuji")
    li = await harness.login("p-li-dangyuan")
    await admin.send("/points adjust p-li-dangyuan +5 协助社区疫苗接种日")
    assert "已为 李党员 调整积分 +5（原因：协助社区疫苗接种日），现共 5 分" in admin.last().text
    assert "您的积分有调整：+5（原因：协助社区疫苗接种日）" in li.last().text
    await admin.send("/points adjust 李党员 -2 值班迟到")  # by exact name
    assert "现共 3 分" in admin.last().text
    entries = await rows(harness, PointsEntry)
    chen = await person(harness, "p-chen-shuji")
    assert [
        (e.points, e.reason, e.note, e.actor_id, e.actor_name, e.created_at) for e in entries
    ] == [
        (5, "adjust", "协助社区疫苗接种日", chen.id, "陈书记", NOW),
        (-2, "adjust", "值班迟到", chen.id, "陈书记", NOW),
    ]
    assert (await person(harness, "p-li-dangyuan")).points == 3
    await li.send("/points")
    assert "· 11-20 管理员调整（值班迟到） -2" in li.last().text


@pytest.mark.parametrize(
    ("who", "command", "answer"),
    [
        ("p-wang", "/points adjust p-li-dangyuan +5 帮忙", "只有社区管理员可以调整积分"),
        ("p-chen-shuji", "/points adjust p-li-dangyuan 五分 帮忙", "分值要写成 +5 或 -3"),
        ("p-chen-shuji", "/points adjust p-li-dangyuan 0 帮忙", "分值要写成 +5 或 -3"),
        ("p-chen-shuji", "/points adjust p-li-dangyuan +99999 帮忙", "最多 10000"),
        ("p-chen-shuji", "/points adjust p-li-dangyuan +5", "用法：/points adjust"),
        ("p-chen-shuji", "/points adjust 没有这个人 +5 帮忙", "找不到“没有这个人”"),
        ("p-chen-shuji", f"/points adjust p-li-dangyuan +5 {'长' * 201}", "原因太长了"),
        ("p-chen-shuji", "/points hello", "用法：/points"),
    ],
)
async def test_bad_adjustments_are_answered_and_change_nothing(
    harness: Harness, who: str, command: str, answer: str
) -> None:
    user = await harness.login(who)
    before = await snapshot(harness)
    await user.send(command)
    assert answer in user.last().text, user.last().text
    assert await snapshot(harness) == before
