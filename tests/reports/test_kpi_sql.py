"""The figures are computed in SQL. Two stories check them, on SQLite and PostgreSQL:

1. A hand-built October in 第一网格 (xh-g1) whose every figure is worked out by hand below:
   two offers before an acceptance, an acceptance in the same minute as its assignment, a
   cancel after handling and one before, the month's first and last instants in Shanghai time
   (and the instants just outside), a rating whose note is not a number, a "done" by nobody,
   an order escalated twice and handled by the community, reopened and done again, a "done"
   after the month's end, a revisit done only in November, orders of another grid, receipts
   by channel.
2. Two hundred orders with random event trails over September to November in every grid:
   the SQL figures equal those of the reference replay (``bot.reports.replay``, the Python
   replay the reports used before) for the whole tree, a community, a grid and a micro-grid,
   for months and a span of days across a month boundary; and every 工单 row is the same.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.reports.kpi import Period, Ratio, build_report, load_orders, load_scope, member_work
from bot.reports.replay import figures_by_replay, load_orders_replay, member_work_replay
from models import Building, Grid, Order, OrderEvent, OutboxMessage, Person, Revisit
from tests.conftest import Harness
from tests.duties.conftest import SH
from tests.reports.history import local

# (minutes after submission, action, to status, actor key or None, note)
Trail = list[tuple[float, str, str, str | None, str | None]]

STORIES: dict[str, dict[str, Any]] = {
    "K": {"at": local(2026, 10, 3, 10, 0), "channel": "telegram",
          "steps": [(10, "assign", "dispatched", "p-wang", None),
                    (100, "broadcast", "dispatched", "p-wang", "3"),
                    (130, "accept", "accepted", "p-li-dangyuan", None),
                    (200, "done", "done", "p-li-dangyuan", None),
                    (300, "rate", "confirmed", "p-zhang-ayi", "5"),
                    (300, "close", "closed", "p-zhang-ayi", None)]},
    "L": {"at": local(2026, 10, 4, 10, 0), "channel": "wechat",
          "steps": [(10, "assign", "dispatched", "p-wang", None),
                    (10, "accept", "accepted", "p-li-dangyuan", None),
                    (20, "done", "done", None, None)]},
    "M": {"at": local(2026, 10, 5, 10, 0),
          "steps": [(40, "assign", "dispatched", "p-wang", None),
                    (50, "cancel", "cancelled", "p-zhang-ayi", None)]},
    "N": {"at": local(2026, 10, 31, 23, 59, 59, 999999), "steps": []},
    "O": {"at": local(2026, 11, 1, 0, 0), "steps": []},
    "P": {"at": local(2026, 10, 1, 0, 0),
          "steps": [(5, "handle", "accepted", "p-wang", None),
                    (60, "done", "done", "p-wang", None),
                    (70, "rate", "confirmed", "p-zhang-ayi", "好"),
                    (70, "close", "closed", "p-zhang-ayi", None)]},
    "Q": {"at": local(2026, 9, 30, 23, 59),
          "steps": [(5, "assign", "dispatched", "p-wang", None)]},
    "R": {"at": local(2026, 10, 10, 10, 0), "handling": "xinhua",
          "steps": [(20, "escalate", "escalated", "p-wang", "太难"),
                    (100, "auto_escalate", "escalated", None, None),
                    (150, "handle", "accepted", "p-zhou-zhuren", None),
                    (300, "done", "done", "p-zhou-zhuren", None),
                    (400, "reopen", "accepted", "p-zhang-ayi", None),
                    (500, "done", "done", "p-zhou-zhuren", None)]},
    "S": {"at": local(2026, 10, 20, 10, 0),
          "steps": [(10, "broadcast", "dispatched", "p-wang", "3"),
                    (100, "accept", "accepted", "p-li-dangyuan", None),
                    (13 * 24 * 60, "done", "done", "p-li-dangyuan", None)]},  # 11-02
    "T": {"at": local(2026, 10, 25, 10, 0), "category": "safety",
          "steps": [(12, "assign", "dispatched", "p-wang", None),
                    (20, "accept", "accepted", "p-li-dangyuan", None),
                    (200, "done", "done", "p-li-dangyuan", None),
                    (210, "rate", "confirmed", "p-zhang-ayi", "3")]},
    "U": {"at": local(2026, 10, 26, 10, 0),
          "steps": [(5, "cancel", "cancelled", "p-zhang-ayi", None)]},
    "V": {"at": local(2026, 10, 27, 10, 0), "building": "xh-b09", "handling": "xh-g2",
          "steps": [(5, "assign", "dispatched", "p-deng-wei", None)]},
}


async def write(
    sessionmaker: async_sessionmaker[AsyncSession], stories: dict[str, dict[str, Any]]
) -> dict[str, int]:
    """Write the stories straight into the order event log; letter → order id."""
    ids: dict[str, int] = {}
    async with sessionmaker() as session, session.begin():
        people = dict((await session.execute(select(Person.key, Person.id))).all())
        grids = dict((await session.execute(select(Grid.code, Grid.id))).all())
        buildings = {b.code: b for b in (await session.scalars(select(Building))).all()}
        for letter, story in stories.items():
            building = buildings[story.get("building", "xh-b01")]
            steps: Trail = story["steps"]
            order = Order(
                resident_id=people["p-zhang-ayi"], building_id=building.id, room="2-301",
                grid_id=building.grid_id,
                handling_grid_id=grids[story.get("handling", "xh-g1-m1")],
                category=story.get("category", "repair"), description=f"story {letter}",
                status=steps[-1][2] if steps else "submitted",
                created_at=story["at"], updated_at=story["at"],
            )
            session.add(order)
            await session.flush()
            ids[letter] = order.id
            session.add(OrderEvent(order_id=order.id, actor_id=people["p-zhang-ayi"],
                                   action="submit", to_status="submitted",
                                   created_at=story["at"]))
            for minutes, action, to, actor, note in steps:
                session.add(OrderEvent(
                    order_id=order.id, actor_id=people[actor] if actor else None, action=action,
                    to_status=to, note=note, created_at=story["at"] + timedelta(minutes=minutes)))
                await session.flush()  # ids in the written order (ties at one instant)
            if story.get("channel"):
                session.add(OutboxMessage(channel=story["channel"], chat_id="c", payload={},
                                          ref=f"receipt:{order.id}", status="sent"))
            for opened, done in story.get("revisits", []):
                session.add(Revisit(order_id=order.id, grid_id=building.grid_id,
                                    head_id=people["p-zhou-zhuren"], created_at=opened,
                                    done_at=done, status="done" if done else "open"))
    return ids


async def test_a_month_of_first_grid_worked_out_by_hand(harness: Harness) -> None:
    stories = dict(STORIES)
    stories["K"] = {**STORIES["K"], "revisits": [(local(2026, 10, 3, 15, 0),
                                                   local(2026, 11, 5, 9, 0))]}
    ids = await write(harness.app.sessionmaker, stories)
    async with harness.app.sessionmaker() as session:
        scope = await load_scope(session, "xh-g1")
        report = await build_report(session, harness.app.settings, scope,
                                    Period.month(2026, 10, SH), local(2026, 11, 6, 9, 0))
        reference = await figures_by_replay(session, harness.app.settings, scope,
                                            Period.month(2026, 10, SH))
    f = report.total.figures
    # October in Shanghai: K L M N P R S T U. O is 11-01 00:00 (November), Q 09-30 23:59
    # (September), V is in 第二网格.
    assert f.received == 9 and f.cancelled == 2
    assert f.by_channel == {"—": 7, "telegram": 1, "wechat": 1}
    assert f.by_category == {"repair": 8, "safety": 1}
    # 响应率: 9 − U (cancelled before anyone handled it); M was handled, then cancelled, and
    # stays. On time: K 10, L 10, P 5, R (escalated by 王 at 20), S 10; M 40 > 30, N never,
    # T 12 > the safety row's 10.
    assert f.response == Ratio(5, 8)
    # 及时接单率: accepted K L P R S T. K 30 after the *last* offer (130 after the first), L in
    # the assignment's minute, P and R "handle myself", T 8 ≤ 15; S 90 > 60.
    assert f.on_time_acceptance == Ratio(5, 6)
    # 按期办结率: done by the month's end K L P R T (S's "done" came on 11-02); all within
    # their deadline of the first acceptance (T: 3 h of safety's 4 h; R: its last "done").
    assert f.on_time_completion == Ratio(5, 5) and f.done == 5
    # 办结率: K closed, L done, P closed, R done again, T confirmed; of 9 − 2 cancelled.
    assert f.completion == Ratio(5, 7)
    # 解决率: K, P ("好" is a rating without stars), T rated; R's last word "not solved".
    assert f.resolution == Ratio(3, 4)
    # 满意率: K 5 ★ of K 5 ★, T 3 ★ (P's rating has no stars).
    assert f.satisfaction == Ratio(1, 2)
    # K's revisit was opened in October and done in November.
    assert (f.revisits_opened, f.revisits_done) == (1, 0)
    assert f.escalated == 1 and f.escalated_by_level == {"社区": 1} and f.auto_closed == 0
    # submit → dispatch: K 10, L 10, M 40, P 5, R 150, S 10, T 12 → 5 10 10 10 12 40 150:
    # median the 4th = 10, p90 the ⌈6.3⌉ = 7th = 150.
    assert f.times["dispatch"] == {"median": 10, "p90": 150}
    # → acceptance: 5 10 20 100 130 150 → 3rd = 20, ⌈5.4⌉ = 6th = 150.
    assert f.times["accept"] == {"median": 20, "p90": 150}
    # → last "done": L 20, P 60, K 200, T 200, R 500 → 3rd = 200, 5th = 500.
    assert f.times["done"] == {"median": 200, "p90": 500}
    # → closed: P 70, K 300 → 1st = 70, 2nd = 300.
    assert f.times["closed"] == {"median": 70, "p90": 300}
    # September: Q alone.
    assert report.total.previous.received == 1
    assert report.buildings[0].orders == 9 and report.buildings[0].satisfaction == Ratio(1, 2)
    # The 工单 rows: L's member is 李党员 (the "done" had no person), K's handler 王.
    rows = {o.id: o for o in report.orders}
    names = report.names
    assert names[rows[ids["L"]].member_id or 0] == "李党员"
    assert names[rows[ids["K"]].handler_id or 0] == "王网格员"
    assert rows[ids["N"]].status == "submitted" and rows[ids["S"]].status == "accepted"
    assert rows[ids["P"]].stars is None and rows[ids["P"]].verdict == "rated"
    # And the reference replay agrees on every figure.
    assert_same(reference["*"], f)


ORDER_FIELDS = (
    "received", "cancelled", "by_category", "by_channel", "by_source", "response",
    "on_time_acceptance", "on_time_completion", "completion", "resolution", "satisfaction",
    "done", "revisits_opened", "revisits_done", "times", "escalated", "escalated_by_level",
    "auto_closed",
)


def assert_same(expected: Any, got: Any) -> None:
    for name in ORDER_FIELDS:
        assert getattr(got, name) == getattr(expected, name), name


ACTIONS = [
    ("assign", "dispatched"), ("broadcast", "dispatched"), ("auto_broadcast", "dispatched"),
    ("handle", "accepted"), ("accept", "accepted"), ("escalate", "escalated"),
    ("auto_escalate", "escalated"), ("done", "done"), ("rate", "confirmed"),
    ("reopen", "accepted"), ("cancel", "cancelled"), ("close", "closed"),
    ("auto_close", "auto_closed"), ("revisit", "closed"), ("decline", "dispatched"),
]
NOTES = [None, "5", "4", "3", "1", "0", "好", ""]


async def random_history(sessionmaker: async_sessionmaker[AsyncSession], n: int) -> None:
    rng = random.Random(8)
    async with sessionmaker() as session:
        people = list((await session.scalars(select(Person.key))).all())
        grid_of = dict((await session.execute(select(Building.code, Grid.path)
                                              .join(Grid, Grid.id == Building.grid_id))).all())
        code_of = dict((await session.execute(select(Grid.id, Grid.code))).all())
    # An order is handled on its grid or one above (where routing and escalation take it).
    above = {b: [code_of[int(i)] for i in path.strip("/").split("/")]
             for b, path in grid_of.items()}
    starts = [local(2026, 9, 1), local(2026, 10, 1), local(2026, 10, 31, 23, 0),
              local(2026, 11, 1), local(2026, 9, 30, 23, 30)]
    stories: dict[str, dict[str, Any]] = {}
    for i in range(n):
        at = rng.choice(starts) + timedelta(
            minutes=rng.randrange(0, 60 * 24 * 40) if rng.random() < 0.6 else rng.randrange(90),
            microseconds=rng.randrange(10**6))
        steps: Trail = []
        t = 0.0
        for _ in range(rng.randrange(0, 9)):
            t += rng.choice((0, 0.5, 1, 5, 15, 29, 30, 31, 59, 60, 61, 120, 2000, 3000))
            t += rng.randrange(10**6) / 60e6 if rng.random() < 0.3 else 0
            action, to = rng.choice(ACTIONS)
            steps.append((t, action, to, rng.choice([*people, None]), rng.choice(NOTES)))
        revisits = []
        if rng.random() < 0.2:
            opened = at + timedelta(hours=rng.randrange(1, 900))
            revisits.append((opened, rng.choice([None, opened + timedelta(hours=30)])))
        building = rng.choice(sorted(above))
        stories[f"r{i}"] = {
            "at": at, "building": building, "handling": rng.choice(above[building]),
            "category": rng.choice(("repair", "safety", "elderly", "sanitation")),
            "channel": rng.choice((None, "telegram", "wechat")), "steps": steps,
            "revisits": revisits,
        }
    await write(sessionmaker, stories)


async def test_sql_figures_equal_the_reference_replay(harness: Harness) -> None:
    await random_history(harness.app.sessionmaker, 200)
    periods = [Period.month(2026, 10, SH), Period.month(2026, 9, SH),
               Period.month(2026, 11, SH),
               Period.days(local(2026, 10, 30).date(), local(2026, 11, 2).date(), SH)]
    settings = harness.app.settings
    checked = 0
    async with harness.app.sessionmaker() as session:
        for code in (None, "xinhua", "xh-g1", "xh-g2", "xh-g1-m1"):
            scope = await load_scope(session, code)
            for period in periods:
                report = await build_report(session, settings, scope, period, period.end)
                reference = await figures_by_replay(session, settings, scope, period)
                assert_same(reference["*"], report.total.figures)
                for row in report.children:
                    assert_same(reference[str(row.grid_id)], row.figures)
                    checked += row.figures.received
                assert report.orders == await load_orders_replay(session, settings, scope,
                                                                 period)
                assert [o.id for o in report.orders] == [
                    o.id for o in await load_orders(session, settings, scope, period)]
    assert checked > 200  # the children saw orders (each order in several scopes)
    # Members' work (accepted, done, the ratings of what they did), for everyone.
    async with harness.app.sessionmaker() as session:
        everyone = list((await session.scalars(select(Person.id))).all())
        rated = 0
        for period in periods:
            got = await member_work(session, everyone, period.start, period.end, settings)
            want = await member_work_replay(session, everyone, period.start, period.end,
                                            settings)
            assert got == want
            rated += sum(len(stars) for _, _, stars in got.values())
    assert rated > 3  # some ratings followed a "done" (seeded: 7)
