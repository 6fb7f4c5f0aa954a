"""Duties through the real python-telegram-bot against the fake Bot API server: the demo's
09:00 patrol (reminder with a check-in button, check-in, a missed deadline told to the head
once) and the whistle with concurrent answers. The clock is the test's; the scheduler runs a
pass when the test says ``tick``; waiting is on the fake server's messages, never on sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from models import PatrolRun, Person
from tests.e2e.duty_support import DutyService, running
from tests.support.messages import has

HEAD, WANG, LI, ZHAO, SUN, YANG, TANG = 3004, 3002, 3003, 3005, 3006, 3007, 3008
PEOPLE = {
    HEAD: "p-liu-wanggezhang", WANG: "p-wang", LI: "p-li-dangyuan", ZHAO: "p-zhao-zhiyuanzhe",
    SUN: "p-sun-jianhua", YANG: "p-yang-li", TANG: "p-tang-xiaofang",
}


class TgDuties(DutyService):
    async def runs(self) -> list[PatrolRun]:
        async with self.app.sessionmaker() as session:
            return list((await session.scalars(
                select(PatrolRun).join(Person, Person.id == PatrolRun.person_id)
                .where(Person.key == "p-wang").order_by(PatrolRun.id))).all())


@pytest.fixture
async def tgd(database_url: str, tmp_path: Path) -> AsyncIterator[TgDuties]:
    # The demo community with its demo patrol and visit plans.
    async with running(TgDuties, database_url, tmp_path, PEOPLE) as t:
        yield t


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
