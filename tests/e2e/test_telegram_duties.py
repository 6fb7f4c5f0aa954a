"""Duties through the real python-telegram-bot against the fake Bot API server: the demo's
09:00 patrol (reminder with a check-in button, check-in, a missed deadline told to the head
once) and the whistle with concurrent answers. The clock is the test's; the scheduler runs a
pass when the test says ``tick``; waiting is on the fake server's messages, never on sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.app import Gridbot
from bot.channels.base import Limits
from bot.config import load_settings
from models import Identity, OutboxMessage, PatrolRun, Person
from tests.duties.conftest import SH, Clock
from tests.fakes.telegram_server import FakeTelegramServer

HEAD, WANG, LI, ZHAO, SUN, YANG, TANG = 3004, 3002, 3003, 3005, 3006, 3007, 3008
PEOPLE = {
    HEAD: "p-liu-wanggezhang", WANG: "p-wang", LI: "p-li-dangyuan", ZHAO: "p-zhao-zhiyuanzhe",
    SUN: "p-sun-jianhua", YANG: "p-yang-li", TANG: "p-tang-xiaofang",
}


def has(text: str, after: int = 0) -> Any:
    return lambda m: m.text is not None and text in m.text and m.message_id > after


class TgDuties:
    def __init__(self, app: Gridbot, tg: FakeTelegramServer, clock: Clock) -> None:
        self.app, self.tg, self.clock = app, tg, clock
        self.duties: Any = None

    async def tick(self) -> None:
        await self.duties.tick()

    async def queued(self, uid: int, *parts: str) -> int:
        """Outbox rows for this chat whose text holds every part (exactly-once checks)."""
        async with self.app.sessionmaker() as session:
            rows = (await session.scalars(select(OutboxMessage).where(
                OutboxMessage.channel == "telegram", OutboxMessage.chat_id == str(uid)))).all()
        return sum(all(p in str(r.payload.get("text")) for p in parts) for r in rows)

    async def runs(self) -> list[PatrolRun]:
        async with self.app.sessionmaker() as session:
            return list((await session.scalars(
                select(PatrolRun).join(Person, Person.id == PatrolRun.person_id)
                .where(Person.key == "p-wang").order_by(PatrolRun.id))).all())


@pytest.fixture
async def tgd(database_url: str, tmp_path: Path) -> AsyncIterator[TgDuties]:
    clock = Clock(datetime(2027, 3, 1, 8, 0, tzinfo=SH))
    async with FakeTelegramServer() as tg:
        settings = load_settings(
            database_url=database_url, demo=True, secret_key="e2e", telegram_token=tg.token,
            telegram_api_url=tg.base_url, telegram_file_url=tg.file_url,
            media_dir=tmp_path / "media", quiet_hours="22:00-07:00",
        )
        app = Gridbot(settings, clock=clock)
        await app.prepare()  # the demo community with its demo patrol and visit plans
        async with app.sessionmaker() as session, session.begin():
            for uid, key in PEOPLE.items():
                person = await session.scalar(select(Person).where(Person.key == key))
                assert person is not None
                session.add(Identity(person_id=person.id, channel="telegram",
                                     external_id=str(uid), chat_id=str(uid),
                                     last_inbound_at=clock()))
                tg.user(uid, person.name)
        app.enable_telegram()
        app.telegram.limits = Limits(per_chat_interval=0.01, global_per_second=1000)
        await app.start()
        t = TgDuties(app, tg, clock)
        try:
            t.duties = await app.start_duties(manual=True)
            yield t
        finally:
            await app.stop()


async def test_patrol_on_telegram(tgd: TgDuties) -> None:
    t, tg = tgd, tgd.tg
    worker = tg.user(WANG, "王网格员")
    await t.tick()
    assert not tg.sent(WANG)

    t.clock.set(2027, 3, 1, 9, 0, 20)
    await t.tick()
    reminder = await tg.wait_for(WANG, has("巡查提醒"))
    assert "第一网格1号微网格" in (reminder.text or "") and "13:00" in (reminder.text or "")
    assert any("巡查打卡" in label for label, _ in reminder.buttons)
    await worker.press_label(reminder, "📍 巡查打卡")
    ask = await tg.wait_for(WANG, has("巡查情况"))
    await worker.send_text("楼道畅通，消防通道无堆放")
    photo_q = await tg.wait_for(WANG, has("照片", ask.message_id))
    await worker.press_label(photo_q, "跳过")
    await tg.wait_for(WANG, has("位置", photo_q.message_id))
    await worker.send_location(31.21, 107.46)
    await tg.wait_for(WANG, has("打卡成功"))
    [run] = await t.runs()
    assert run.status == "checked_in" and run.latitude == pytest.approx(31.21)

    # The next day nobody checks in: at the deadline the head is told, once.
    t.clock.set(2027, 3, 2, 9, 0, 5)
    await t.tick()
    second = await tg.wait_for(WANG, has("巡查提醒", reminder.message_id))
    assert second.message_id > reminder.message_id
    for minute in (1, 3, 10):
        t.clock.set(2027, 3, 2, 13, minute)
        await t.tick()
    missed = await tg.wait_for(HEAD, lambda m: "未在期限内" in (m.text or "")
                               and "王网格员" in (m.text or ""))
    assert "王网格员" in (missed.text or "") and "03-02 09:00" in (missed.text or "")
    assert await t.queued(HEAD, "未在期限内", "王网格员") == 1
    assert [r.status for r in await t.runs()] == ["checked_in", "missed"]


async def test_whistle_on_telegram_with_concurrent_answers(tgd: TgDuties) -> None:
    t, tg = tgd, tgd.tg
    t.clock.set(2027, 3, 1, 14, 0)
    head = tg.user(HEAD, "刘网格长")
    called = [LI, WANG, ZHAO, SUN, YANG, TANG]
    users = {uid: tg.user(uid, PEOPLE[uid]) for uid in called}
    await head.send_command("whistle", "3栋燃气泄漏，请速到楼下集合")
    roll = await tg.wait_for(HEAD, has("报到 0/6"))
    cards = {uid: await tg.wait_for(uid, has("燃气泄漏")) for uid in called}
    # Four answer at the same moment: three coming, one cannot.
    await asyncio.gather(
        *(users[uid].press_label(cards[uid], "🙋 报到，马上到") for uid in called[:3]),
        users[called[3]].press_label(cards[called[3]], "🙅 去不了"),
    )
    def roll_text() -> str:
        return tg.message(HEAD, roll.message_id).text or ""

    await tg.wait_until(lambda: "报到 3/6" in roll_text() and "未回复：2" in roll_text(),
                        timeout=15)
    text = tg.message(HEAD, roll.message_id).text or ""
    assert "未回复：2" in text and "去不了：孙建华" in text, text
    # The two who did not answer are reminded once.
    t.clock.now += timedelta(minutes=11)
    await t.tick()
    t.clock.now += timedelta(minutes=11)
    await t.tick()
    for uid in called[4:]:
        await tg.wait_for(uid, has("等您回复"))
    for uid in called[4:]:
        assert await t.queued(uid, "等您回复") == 1
    for uid in called[:4]:
        assert await t.queued(uid, "等您回复") == 0
        assert not any("等您回复" in (m.text or "") for m in tg.sent(uid))
