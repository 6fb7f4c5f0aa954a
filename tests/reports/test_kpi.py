"""The figures of a month, worked out by hand from the stories of ``history.py`` (see its
table), on SQLite and PostgreSQL: each rate's numerator and denominator, the month boundary in
Asia/Shanghai, escalations, reopened, cancelled and auto-closed orders, and a grid with no
orders at all ("—", no division by zero)."""

from __future__ import annotations

from sqlalchemy import select

from bot.reports.kpi import (
    Period,
    Ratio,
    build_report,
    exit_list,
    load_scope,
    nearest_rank,
    parse_month,
)
from models import Person
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
