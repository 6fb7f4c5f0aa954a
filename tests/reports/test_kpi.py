"""The figures of a month, worked out by hand from the stories of ``history.py`` (see its
table), on SQLite and PostgreSQL: each rate's numerator and denominator, the month boundary in
Asia/Shanghai, escalations, reopened, cancelled and auto-closed orders, and a grid with no
orders at all ("—", no division by zero)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from bot.reports.kpi import (
    Period,
    Ratio,
    build_report,
    exit_list,
    load_scope,
    member_work,
    nearest_rank,
    parse_month,
)
from models import (
    Building,
    Grid,
    Household,
    Order,
    OrderEvent,
    PatrolPlan,
    PatrolRun,
    Person,
    VisitLog,
    VisitPlan,
    Whistle,
    WhistleAnswer,
)
from tests.conftest import Harness
from tests.duties.conftest import SH
from tests.reports.history import local, write_history


async def october(harness: Harness, grid: str | None = "xinhua"):  # type: ignore[no-untyped-def]
    await write_history(harness.app.sessionmaker)
    async with harness.app.sessionmaker() as session:
        scope = await load_scope(session, grid)
        return await build_report(
            session, harness.app.settings, scope, Period.month(2026, 10, SH),
            local(2026, 11, 1, 9, 0),
        )


async def test_the_month_of_the_community_by_hand(harness: Harness) -> None:
    report = await october(harness)
    f = report.total.figures
    # Received in October (Shanghai): A B C D E F H I. G came at 00:10 on 1 November.
    assert f.received == 8 and f.cancelled == 1
    assert f.by_category == {"repair": 7, "safety": 1} and f.by_source == {"resident": 8}
    # 响应率: a person's first handling within the dispatch clock, out of 8 − D (cancelled
    # before anyone handled it). A 20 ≤ 30, C 10, F 5, I 5 are on time; B escalated at 40 > 30;
    # E was only broadcast by the clock; H's 15 minutes exceed the safety row's 10.
    assert f.response == Ratio(4, 7)
    # 及时接单率: accepted A B C E H I (F's acceptance fell in November). On time: A (30 after the
    # assignment), B (handled by the head), E (40 after the clock's broadcast), H (5 ≤ 15),
    # I (handled); C took 90 > 60 after the broadcast.
    assert f.on_time_acceptance == Ratio(5, 6)
    # 按期办结率: done A B C E H I; on time A (2 h ≤ 48 h), C (its last done 15 h after the
    # first acceptance), E, I; B 49 h > 48 h; H 5 h > the safety deadline of 4 h.
    assert f.on_time_completion == Ratio(4, 6)
    # 办结率: done/closed at the month's end A B C E H out of 8 − 1 cancelled (F is dispatched,
    # I was reopened and is being worked on again).
    assert f.completion == Ratio(5, 7)
    # 解决率: verdicts A B C rated (C after a "not solved"), I "not solved" → 3 of 4.
    assert f.resolution == Ratio(3, 4)
    # 满意率: A 5 ★, C 4 ★ of A B C (B 3 ★ is only 基本满意).
    assert f.satisfaction == Ratio(2, 3)
    assert f.satisfaction.percent() == "66.7%"
    assert (f.revisits_opened, f.revisits_done, f.revisits_open) == (1, 1, 0)
    # Escalated: B only (twice), handled at 新华社区 (level 社区); auto-closed: E.
    assert f.escalated == 1 and f.escalated_by_level == {"社区": 1}
    assert f.auto_closed == 1
    # submit → dispatch: A 20, B 300, C 10, E 31, F 5, H 15, I 5 → sorted 5 5 10 15 20 31 300:
    # median = 4th of 7 = 15, p90 = ⌈6.3⌉ = 7th = 300.
    assert f.times["dispatch"] == {"median": 15, "p90": 300}


async def test_child_grids_ranked_with_floors_and_an_empty_grid(harness: Harness) -> None:
    report = await october(harness)
    rows = {r.code: r for r in report.children}
    assert [r.code for r in report.children] == ["xh-g1", "xh-g2", "xh-g3"]
    g1, g2, g3 = rows["xh-g1"], rows["xh-g2"], rows["xh-g3"]
    assert g1.figures.received == 7 and g2.figures.received == 1
    # xh-g1: response 4/6 (A C F I of A C E F H I), resolution 2/3 (A C; I not solved),
    # satisfaction 2/2 → 30·⅔ + 35·⅔ + 35·1 = 78.33.
    assert g1.figures.response == Ratio(4, 6)
    assert round(g1.score or 0, 2) == 78.33
    # xh-g2: B: response 0/1, resolution 1/1, satisfaction 0/1 → 35.
    assert g2.score == 35.0
    assert (g1.rank, g2.rank, g3.rank) == (1, 2, None)
    # Floors: 满意率 85 %, 按期办结率 90 %.
    assert [name for name, _, _ in g1.below] == ["on_time_completion"]
    assert sorted(name for name, _, _ in g2.below) == ["on_time_completion", "satisfaction"]
    # 第三网格 had no order: nothing to divide, shown as "—", no score, no floor broken.
    assert g3.figures.received == 0
    assert g3.figures.satisfaction.value is None and g3.figures.satisfaction.percent() == "—"
    assert g3.score is None and g3.below == []
    # September (the month before) had nothing either.
    assert report.total.previous.received == 0
    assert report.total.previous.response.percent() == "—"


async def test_members_points_and_the_exit_list(harness: Harness) -> None:
    report = await october(harness)
    by_name = {m.name: m for m in report.members}
    li = by_name["李党员"]
    # 李党员 accepted A C H (F in November), did A C H (C twice: one order), rated A 5, C 4.
    assert (li.accepted, li.done, li.mean_rating, li.points) == (3, 3, 4.5, 10)
    assert (by_name["赵志愿者"].done, by_name["赵志愿者"].mean_rating) == (1, None)
    assert by_name["王网格员"].done == 1
    settings = harness.app.settings.model_copy(update={"exit_min_rating": 4.6})
    async with harness.app.sessionmaker() as session:
        scope = await load_scope(session, "xh-g1")
        listed = {e.name: e.reasons for e in await exit_list(
            session, settings, scope, local(2026, 11, 1, 0, 0))}
        names = set((await session.scalars(select(Person.name))).all())
    # In 第一网格: 孙建华 did nothing for three months; 李党员's mean 4.5 is below 4.6.
    assert listed == {"孙建华": ["idle"], "李党员": ["rating"]}
    assert "孙建华" in names


async def test_the_order_rows_keep_every_timestamp(harness: Harness) -> None:
    report = await october(harness)
    rows = {o.id: o for o in report.orders}
    ids = await write_history_ids(report)
    a = rows[ids[0]]
    assert a.submitted_at == local(2026, 10, 5, 10, 0)
    assert a.accepted_at == local(2026, 10, 5, 10, 50)
    assert a.closed_at == local(2026, 10, 5, 13, 20)
    assert a.stars == 5 and a.channel is None and a.source == "resident"


async def write_history_ids(report):  # type: ignore[no-untyped-def]
    return sorted(o.id for o in report.orders)


def test_months_and_percentiles() -> None:
    p = parse_month("2026-10", SH)
    assert p.start == local(2026, 10, 1) and p.end == local(2026, 11, 1)
    assert p.previous().label == "2026-09"
    assert parse_month("2026-01", SH).previous().label == "2025-12"
    for bad in ("2026-13", "2026-00", "26-10", "2026/10", ""):
        try:
            parse_month(bad, SH)
        except ValueError:
            continue
        raise AssertionError(bad)
    assert nearest_rank([], 0.5) is None
    assert nearest_rank([4, 1, 3, 2], 0.5) == 2 and nearest_rank([4, 1, 3, 2], 0.9) == 4


async def test_patrols_visits_and_whistles_by_hand(harness: Harness) -> None:
    """第二网格 in October 2026: three patrol runs (on time, late, missed), a weekly visit plan
    from 1 October (due 1, 8, 15, 22, 29 October) with three visits, a monthly one from
    15 September (due 15 October) never visited, and a whistle answered by two of three."""
    async with harness.app.sessionmaker() as session, session.begin():
        ids = dict((await session.execute(select(Person.key, Person.id))).all())
        g = dict((await session.execute(select(Grid.code, Grid.id))).all())
        b = dict((await session.execute(select(Building.code, Building.id))).all())
        plan = PatrolPlan(grid_id=g["xh-g2-m1"], person_id=ids["p-deng-wei"],
                          schedule="0 9 * * *", deadline_minutes=120)
        session.add(plan)
        await session.flush()
        for day, status, checked in ((3, "checked_in", 30), (4, "checked_in", 150),
                                     (5, "missed", None), (1, "checked_in", 10)):
            due = local(2026, 10 if day > 1 else 11, day, 9, 0)  # the 4th run: November
            session.add(PatrolRun(
                plan_id=plan.id, grid_id=g["xh-g2-m1"], person_id=ids["p-deng-wei"],
                due_at=due, deadline_at=due + timedelta(minutes=120), status=status,
                checked_in_at=due + timedelta(minutes=checked) if checked else None))
        households = []
        for code in ("hh-1", "hh-2"):
            h = Household(code=code, grid_id=g["xh-g2-m1"], building_id=b["xh-b09"],
                          kind="elderly_alone", name=f"老人{code}")
            session.add(h)
            households.append(h)
        await session.flush()
        weekly = VisitPlan(household_id=households[0].id, member_id=ids["p-huang-deming"],
                           frequency="weekly", starts_at=local(2026, 10, 1, 9, 0))
        monthly = VisitPlan(household_id=households[1].id, member_id=ids["p-huang-deming"],
                            frequency="monthly", starts_at=local(2026, 9, 15, 9, 0))
        session.add_all([weekly, monthly])
        await session.flush()
        for day in (1, 8, 16):
            session.add(VisitLog(plan_id=weekly.id, household_id=households[0].id,
                                 member_id=ids["p-huang-deming"], outcome="fine",
                                 created_at=local(2026, 10, day, 10, 0)))
        called = local(2026, 10, 20, 10, 0)
        whistle = Whistle(grid_id=g["xh-g2"], caller_id=ids["p-luo-jianguo"], message="集合",
                          created_at=called)
        session.add(whistle)
        await session.flush()
        for who, answer, after in (("p-deng-wei", "coming", 10), ("p-huang-deming", "cannot", 20),
                                   ("p-wu-jing", None, None)):
            session.add(WhistleAnswer(
                whistle_id=whistle.id, person_id=ids[who], answer=answer,
                answered_at=called + timedelta(minutes=after) if after else None))
    async with harness.app.sessionmaker() as session:
        scope = await load_scope(session, "xh-g2")
        report = await build_report(session, harness.app.settings, scope,
                                    Period.month(2026, 10, SH), local(2026, 11, 2))
    f = report.total.figures
    # Patrols: 3 due in October (the 1 November run is not), 2 checked in, 1 of them late.
    assert f.patrol_coverage == Ratio(2, 3) and f.patrols_late == 1 and f.patrols_missed == 1
    # Visits: weekly due 5 times, logged 3; monthly due once (15 October), logged 0 → 3 / 6;
    # its household is overdue.
    assert f.visit_completion == Ratio(3, 6) and f.households_overdue == 1
    # Whistle: 2 of 3 answered; the one coming took 10 minutes.
    assert f.whistle_answer == Ratio(2, 3) and f.whistle_median_minutes == 10
    huang = next(m for m in report.members if m.name == "黄德明")
    assert (huang.visits_due, huang.visits_logged) == (6, 3)
    # The child grid with the duties carries them; the others have nothing to count.
    rows = {r.code: r.figures for r in report.children}
    assert rows["xh-g2-m1"].patrol_coverage == Ratio(2, 3)
    assert rows["xh-g2-m2"].patrol_coverage.percent() == "—"


async def test_a_rating_in_the_month_counts_for_who_did_it_before(harness: Harness) -> None:
    """Done by 李党员 on 30 September, rated 2 ★ on 2 October: October's rating, his."""
    async with harness.app.sessionmaker() as session, session.begin():
        ids = dict((await session.execute(select(Person.key, Person.id))).all())
        b = await session.scalar(select(Building).where(Building.code == "xh-b01"))
        assert b is not None
        at = local(2026, 9, 29, 9, 0)
        order = Order(resident_id=ids["p-zhang-ayi"], building_id=b.id, grid_id=b.grid_id,
                      handling_grid_id=b.grid_id, category="repair", description="x",
                      status="confirmed", created_at=at, updated_at=at)
        session.add(order)
        await session.flush()
        for when, actor, action, to, note in (
            (at, "p-zhang-ayi", "submit", "submitted", None),
            (at + timedelta(hours=1), "p-li-dangyuan", "handle", "accepted", None),
            (local(2026, 9, 30, 18, 0), "p-li-dangyuan", "done", "done", None),
            (local(2026, 10, 2, 8, 0), "p-zhang-ayi", "rate", "confirmed", "2"),
        ):
            session.add(OrderEvent(order_id=order.id, actor_id=ids[actor], action=action,
                                   to_status=to, note=note, created_at=when))
    async with harness.app.sessionmaker() as session:
        work = await member_work(session, [ids["p-li-dangyuan"]], local(2026, 10, 1),
                                 local(2026, 11, 1), harness.app.settings)
        september = await member_work(session, [ids["p-li-dangyuan"]], local(2026, 9, 1),
                                      local(2026, 10, 1), harness.app.settings)
    assert work[ids["p-li-dangyuan"]] == (0, 0, [2])
    assert september[ids["p-li-dangyuan"]] == (1, 1, [])
