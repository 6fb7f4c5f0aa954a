"""Home visits (走访) through the real python-telegram-bot against the fake Bot API server.

A party member binds over Telegram with an invite; the micro-grid's worker (on Telegram) adds a
key household and pairs the member with it, weekly (both by chat command). The scheduler is
manual and the clock the test's: a visit falls due when the test says ``tick``; waiting is on
the fake server's messages, never on sleeps. Covered: the reminder with its two buttons, "all
fine" with a note, "needs help" becoming an order for the grid worker (dispatch card, then
offers that keep the household's private details and the reporter's phone to themselves), an
overdue visit told to the grid head once, and a stranger pressing the visit button.

What the code means by private (``models.Household``): a household's address and notes go only to
the paired member, the grid's workers and its heads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from bot.app import Gridbot
from bot.core.invites import create_invite, signing_key
from bot.scheduler import visit_reminder
from models import (
    Building,
    Conversation,
    DutyFire,
    Grid,
    Household,
    Identity,
    Order,
    OutboxMessage,
    Person,
    VisitLog,
    VisitPlan,
)
from tests.e2e.duty_support import DutyService, running
from tests.fakes.telegram_server import FakeTelegramServer, SentMessage
from tests.support.clock import SH, Clock
from tests.support.messages import has

# Telegram user ids. MEMBER binds with an invite; the others are demo people given a Telegram
# identity (as in test_telegram_duties).
MEMBER, WORKER, HEAD, TOP_HEAD, LI, ZHAO = 5010, 5002, 5004, 5005, 5003, 5006
PEOPLE = {
    WORKER: "p-wang",  # worker of xh-g1-m1 (翠屏小区1-3栋)
    HEAD: "p-liu-wanggezhang",  # head of xh-g1, the nearest head above xh-g1-m1
    TOP_HEAD: "p-zhou-zhuren",  # head of the whole community: not the one to tell
    LI: "p-li-dangyuan",  # members of xh-g1-m1, not paired with the household
    ZHAO: "p-zhao-zhiyuanzhe",
}
MEMBER_NAME, MEMBER_PHONE = "周红梅", "13912340000"
ADDRESS, NOTES = "翠屏小区1栋2-301", "高血压每天服药，钥匙在邻居家"
FINE, HELP = "✅ 一切正常", "🆘 需要帮助"


class Visits(DutyService):
    """The running service, the fake server, the clock and what the fixture set up."""

    def __init__(self, app: Gridbot, tg: FakeTelegramServer, clock: Clock) -> None:
        super().__init__(app, tg, clock)
        self.plan_id = 0
        self.member_id = 0

    async def rows(self, model: type) -> list[Any]:
        async with self.app.sessionmaker() as session:
            return list((await session.scalars(select(model))).all())

    async def plan(self) -> VisitPlan:
        async with self.app.sessionmaker() as session:
            plan = await session.get(VisitPlan, self.plan_id)
            assert plan is not None
            return plan

    async def next_due(self) -> datetime:
        """The visit job's next run time as the scheduler stored it."""
        async with self.app.sessionmaker() as session:
            stamps = (await session.execute(
                text("SELECT next_run_time FROM apscheduler_jobs WHERE id LIKE :job"),
                {"job": f"visit:{self.plan_id}:%"})).scalars().all()
        assert len(stamps) == 1, stamps
        return datetime.fromtimestamp(float(stamps[0]), SH)


async def _invite(app: Gridbot, now: datetime, role: str, grid: str) -> str:
    """A one-use invite valid for a week from the test's clock (not the wall clock)."""
    async with app.sessionmaker() as session, session.begin():
        key = await signing_key(session, app.settings)
        grid_id = await session.scalar(select(Grid.id).where(Grid.code == grid))
        assert grid_id is not None
        _, token = await create_invite(session, key, role=role, grid_id=grid_id,
                                       max_uses=1, expires_at=now + timedelta(days=7))
        return token


@pytest.fixture
async def tv(database_url: str, tmp_path: Path) -> AsyncIterator[Visits]:
    """Monday 2027-03-01 08:00; a weekly visit plan whose first visit is due 03-02 09:00."""
    async with running(Visits, database_url, tmp_path, PEOPLE, demo_duties=False) as t:
        app, tg, clock = t.app, t.tg, t.clock
        member = t.users[MEMBER] = tg.user(MEMBER, MEMBER_NAME)

        # The member binds over Telegram with the micro-grid's member invite.
        await member.send_command("start", await _invite(app, clock(), "member", "xh-g1-m1"))
        named = await tg.wait_for(MEMBER, has("已登记为"))
        await member.press_label(named, f"就叫“{MEMBER_NAME}”")
        await member.press_label(await tg.wait_for(MEMBER, has("手机号码")), "跳过")
        await tg.wait_for(MEMBER, has("好了"))
        async with app.sessionmaker() as session, session.begin():
            bound = await session.scalar(select(Identity).where(
                Identity.channel == "telegram", Identity.external_id == str(MEMBER)))
            assert bound is not None
            t.member_id = bound.person_id
            # The phone the worker has on record for the member (members are not asked).
            await session.execute(update(Person).where(Person.id == t.member_id)
                                  .values(phone=MEMBER_PHONE))

        # The worker adds the key household and pairs the member with it, by chat.
        worker = t.users[WORKER]
        await worker.send_command(
            "household", f"xh-b01 | elderly_alone | 张阿姨 | {ADDRESS} | {NOTES}")
        added = await tg.wait_for(WORKER, has("已添加重点户"))
        [household] = await t.rows(Household)
        assert household.code in (added.text or "") and household.address == ADDRESS
        await worker.send_command("visitplan", f"{household.code} | {MEMBER_NAME} | weekly")
        planned = await tg.wait_for(WORKER, has("走访计划已建立"))
        assert "03-02 09:00" in (planned.text or ""), planned.text
        [plan] = await t.rows(VisitPlan)
        assert plan.member_id == t.member_id and plan.frequency == "weekly"
        t.plan_id = plan.id

        # The next sweep sees the new plan and schedules its first visit.
        await t.at(2027, 3, 1, 8, 5)
        assert await t.next_due() == datetime(2027, 3, 2, 9, 0, tzinfo=SH)
        yield t


async def remind(t: Visits, *local: int, after: int = 0) -> SentMessage:
    """Let a visit fall due and return the member's reminder."""
    await t.at(*local)
    return await t.tg.wait_for(MEMBER, has("走访提醒", after))


async def test_reminder_then_all_fine_with_a_note(tv: Visits) -> None:
    t, tg, member = tv, tv.tg, tv.users[MEMBER]
    await t.at(2027, 3, 2, 8, 59)
    assert not t.texts(MEMBER, "走访提醒")  # not due yet

    reminder = await remind(t, 2027, 3, 2, 9, 0, 20)
    body = reminder.text or ""
    assert "张阿姨" in body and "独居老人" in body and ADDRESS in body and NOTES in body, body
    assert reminder.buttons == [(FINE, f"dv:ok:{t.plan_id}"), (HELP, f"dv:help:{t.plan_id}")]
    # The reminder fired: the next one is a week later.
    assert await t.next_due() == datetime(2027, 3, 9, 9, 0, tzinfo=SH)

    await member.press_label(reminder, FINE)
    ask = await tg.wait_for(MEMBER, has("走访情况", reminder.message_id))
    assert [label for label, _ in ask.buttons] == ["跳过", "取消"]
    t.clock.set(2027, 3, 2, 10, 15)
    await member.send_text("老人精神不错，药按时吃了")
    done = await tg.wait_for(MEMBER, has("走访已记录", ask.message_id))
    assert "工单" not in (done.text or "")

    [log] = await t.rows(VisitLog)
    assert (log.plan_id, log.member_id, log.outcome, log.note, log.order_id) == (
        t.plan_id, t.member_id, "fine", "老人精神不错，药按时吃了", None)
    assert log.created_at == datetime(2027, 3, 2, 10, 15, tzinfo=SH)
    assert (await t.plan()).last_visit_at == datetime(2027, 3, 2, 10, 15, tzinfo=SH)
    assert await t.rows(Order) == []
    assert await t.rows(Conversation) == []  # the flow is over

    # The week was visited: the next reminder comes, and nobody tells the head.
    await remind(t, 2027, 3, 9, 9, 0, 20, after=done.message_id)
    assert await t.next_due() == datetime(2027, 3, 16, 9, 0, tzinfo=SH)
    assert await t.queued(HEAD, "走访逾期") == 0
    assert not t.texts(HEAD, "走访逾期")


async def test_needs_help_becomes_an_order_for_the_grid_worker(tv: Visits) -> None:
    t, tg = tv, tv.tg
    member, worker = t.users[MEMBER], t.users[WORKER]
    reminder = await remind(t, 2027, 3, 2, 9, 0, 20)
    await member.press_label(reminder, HELP)
    ask = await tg.wait_for(MEMBER, has("需要什么帮助", reminder.message_id))
    assert [label for label, _ in ask.buttons] == ["取消"]  # what is needed cannot be skipped
    await member.send_text("冰")  # too short to act on: asked again, nothing recorded
    again = await tg.wait_for(MEMBER, has("需要什么帮助", ask.message_id))
    assert await t.rows(VisitLog) == [] and await t.rows(Order) == []
    await member.send_text("冰箱坏了，需要上门维修")
    logged = await tg.wait_for(MEMBER, has("已生成工单", again.message_id))

    [order] = await t.rows(Order)
    [log] = await t.rows(VisitLog)
    assert (log.outcome, log.order_id, log.member_id) == ("help", order.id, t.member_id)
    [household] = await t.rows(Household)
    async with t.app.sessionmaker() as session:
        building = await session.get(Building, order.building_id)
    assert building is not None and building.code == "xh-b01"
    assert order.grid_id == household.grid_id and order.category == "elderly"
    assert order.resident_id == t.member_id  # the household has no account: the member reports
    assert "张阿姨" in order.description and "冰箱坏了，需要上门维修" in order.description
    assert ADDRESS not in order.description and NOTES not in order.description
    number = f"{order.id:06d}"
    # The member is told the number everyone else will quote.
    assert number in (logged.text or ""), logged.text

    # The grid worker gets the dispatch card: full details, the reporter's contact, 4 buttons.
    card = await tg.wait_for(WORKER, has("冰箱坏了"))
    body = card.text or ""
    assert "新工单" in body and number in body and "助老帮扶" in body, body
    assert MEMBER_NAME in body and MEMBER_PHONE in body
    assert card.buttons == [("👤 指派", f"o:as:{order.id}"), ("📢 广播抢单", f"o:bc:{order.id}"),
                            ("🙋 我来处理", f"o:me:{order.id}"), ("⬆️ 上报", f"o:esc:{order.id}")]

    # Broadcast: the micro-grid's other members get an offer, without the private details.
    await worker.press_label(card, "📢 广播抢单")
    offers = {uid: await tg.wait_for(uid, has("先接先得")) for uid in (LI, ZHAO)}
    for offer in offers.values():
        assert number in (offer.text or "") and "✋ 接单" in [b for b, _ in offer.buttons]
    assert (await t.rows(Order))[0].status == "dispatched"
    for uid in (LI, ZHAO, TOP_HEAD):
        for msg in tg.sent(uid):
            for secret in (ADDRESS, NOTES, MEMBER_PHONE):
                assert secret not in (msg.text or ""), (uid, secret, msg.text)
    async with t.app.sessionmaker() as session:
        rows = (await session.scalars(select(OutboxMessage).where(
            OutboxMessage.chat_id.in_([str(LI), str(ZHAO), str(TOP_HEAD)])))).all()
    assert rows and not any(s in str(r.payload) for r in rows for s in (ADDRESS, NOTES))


async def test_overdue_visit_is_told_to_the_grid_head_once(tv: Visits) -> None:
    t, tg = tv, tv.tg
    first = await remind(t, 2027, 3, 2, 9, 0, 20)  # the first visit: nothing overdue yet
    assert await t.queued(HEAD, "走访逾期") == 0
    # Nobody logs the visit. A week later the visit falls due again: the head is told.
    second = await remind(t, 2027, 3, 9, 9, 0, 20, after=first.message_id)
    await t.at(2027, 3, 9, 9, 1, 30)  # the sweep runs again
    # The job runs once more for the same due time (a restart before APScheduler stored the
    # next run time): the duty_fire row keeps it from telling anyone twice.
    await visit_reminder(t.plan_id, rt=t.duties.runtime,
                         due_at=datetime(2027, 3, 9, 9, 0, tzinfo=SH))
    await t.at(2027, 3, 9, 9, 2, 40)

    overdue = await tg.wait_for(HEAD, has("走访逾期"))
    body = overdue.text or ""
    assert MEMBER_NAME in body and "03-02" in body and "张阿姨" in body and ADDRESS in body, body
    assert await t.queued(HEAD, "走访逾期", MEMBER_NAME) == 1
    assert len(t.texts(HEAD, "走访逾期")) == 1
    assert await t.queued(MEMBER, "走访提醒") == 2 and second.message_id > first.message_id
    # Only the nearest head: neither the community's head nor the member hears of it.
    assert await t.queued(TOP_HEAD, "走访逾期") == 0 and await t.queued(MEMBER, "走访逾期") == 0
    fires = [f for f in await t.rows(DutyFire) if f.kind == "visit"]
    assert sorted(f.due_at for f in fires) == [datetime(2027, 3, 2, 9, 0, tzinfo=SH),
                                              datetime(2027, 3, 9, 9, 0, tzinfo=SH)]
    assert await t.rows(VisitLog) == []


async def test_someone_else_pressing_the_visit_button_is_refused(tv: Visits) -> None:
    t, tg, li = tv, tv.tg, tv.users[LI]
    reminder = await remind(t, 2027, 3, 2, 9, 0, 20)
    to_member = await t.queued(MEMBER, "")
    # 李党员 (a member of the same micro-grid, neither paired nor a manager) presses the visit
    # buttons: callback data is user input, pressed here on a message in his own chat.
    await li.send_command("help")
    own = await tg.wait_for(LI)
    answered = len(tg.callback_answers)
    await li.press(own, f"dv:ok:{t.plan_id}")
    refused = await tg.wait_for(LI, has("这个操作不属于您", own.message_id))
    await li.press(own, f"dv:help:{t.plan_id}")
    refused2 = await tg.wait_for(LI, has("这个操作不属于您", refused.message_id))
    await tg.wait_until(lambda: len(tg.callback_answers) >= answered + 2)
    assert [a["text"] for a in tg.callback_answers[answered:]] == ["这个操作不属于您。"] * 2
    # No visit flow started for him: his next words are not taken as a visit note.
    await li.send_text("一切正常，老人很好")
    await tg.wait_for(LI, lambda m: m.message_id > refused2.message_id)

    assert await t.rows(VisitLog) == [] and await t.rows(Order) == []
    assert (await t.plan()).last_visit_at is None
    assert await t.rows(Conversation) == []
    assert await t.queued(MEMBER, "") == to_member  # nothing more went to the member
    assert not reminder.edited
    async with t.app.sessionmaker() as session:
        cards = await session.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.chat_id == str(WORKER), OutboxMessage.ref.like("disp:%")))
    assert cards == 0
