"""The points leaderboard: members and workers of the given grids, ranked by the ledger rows of
a period (start inclusive, end exclusive), computed here by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from bot.core.points import PointsStanding, leaderboard, rank_of, standings
from models import Grid, Person, PointsEntry
from tests.conftest import Harness

START = datetime(2026, 11, 1, tzinfo=UTC) - timedelta(hours=8)  # 2026-11-01 00:00 Shanghai
END = datetime(2026, 12, 1, tzinfo=UTC) - timedelta(hours=8)


async def _ids(harness: Harness) -> tuple[dict[str, int], dict[str, int]]:
    async with harness.app.sessionmaker() as session:
        people = {k: i for k, i in await session.execute(select(Person.key, Person.id)) if k}
        grids = {c: i for c, i in await session.execute(select(Grid.code, Grid.id))}
    return people, grids


async def test_leaderboard_sums_the_period_and_ranks_by_hand(harness: Harness) -> None:
    people, grids = await _ids(harness)
    li, wang, zhao = people["p-li-dangyuan"], people["p-wang"], people["p-zhao-zhiyuanzhe"]
    sun = people["p-sun-jianhua"]  # member of xh-g1-m3: not in the grid asked about
    rows = [
        (li, 10, START),  # first instant: counts
        (li, 5, START + timedelta(days=3)),
        (wang, 20, START + timedelta(days=10)),
        (wang, -8, START + timedelta(days=11)),  # an adjustment down
        (zhao, 30, START - timedelta(seconds=1)),  # October: not counted
        (zhao, 7, END - timedelta(seconds=1)),
        (li, 100, END),  # December: not counted
        (sun, 50, START + timedelta(days=1)),
    ]
    async with harness.app.sessionmaker() as session, session.begin():
        for pid, pts, at in rows:
            session.add(PointsEntry(person_id=pid, points=pts, reason="adjust", created_at=at))
    async with harness.app.sessionmaker() as session:
        board = await leaderboard(session, [grids["xh-g1-m1"]], START, END)
        top1 = await leaderboard(session, [grids["xh-g1-m1"]], START, END, limit=1)
        both = await leaderboard(session, [grids["xh-g1-m1"], grids["xh-g1-m3"]], START, END)
        full = await standings(session, [grids["xh-g1-m1"]], START, END)
    # li 10+5 = 15, wang 20-8 = 12 (worker and member: counted once), zhao 7.
    assert board == [
        PointsStanding(li, "李党员", 15),
        PointsStanding(wang, "王网格员", 12),
        PointsStanding(zhao, "赵志愿者", 7),
    ]
    assert top1 == board[:1]
    tang = people["p-tang-xiaofang"]  # worker of xh-g1-m3, no points: listed last with 0
    assert [(s.person_id, s.points) for s in both] == [
        (sun, 50),
        (li, 15),
        (wang, 12),
        (zhao, 7),
        (tang, 0),
    ]
    assert rank_of(full, zhao) == 3 and rank_of(full, sun) is None


async def test_equal_points_share_a_rank_and_people_without_points_are_listed(
    harness: Harness,
) -> None:
    people, grids = await _ids(harness)
    li, wang = people["p-li-dangyuan"], people["p-wang"]
    async with harness.app.sessionmaker() as session, session.begin():
        for pid in (li, wang):
            session.add(PointsEntry(person_id=pid, points=9, reason="adjust", created_at=START))
    async with harness.app.sessionmaker() as session:
        table = await standings(session, [grids["xh-g1-m1"]], START, END)
        assert await leaderboard(session, [], START, END) == []
        with pytest.raises(ValueError):
            await leaderboard(session, [grids["xh-g1-m1"]], START.replace(tzinfo=None), END)
    assert [(s.points, rank_of(table, s.person_id)) for s in table] == [(9, 1), (9, 1), (0, 3)]
