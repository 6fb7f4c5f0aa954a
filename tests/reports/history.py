"""A hand-built October 2026 of the demo community 新华社区, written straight into the order
event log, whose figures the tests work out by hand.

All times are Shanghai wall times. The clocks are the demo's: defaults (dispatch 30 min,
accept 60 min, rate 7 d), each category's deadline (repair 48 h, safety 4 h), and the demo's
row for safety hazards on micro-grids (dispatch 10 min, accept 15 min).

=====  =======  =========  ==================================================================
order  grid     category   story
=====  =======  =========  ==================================================================
A      xh-g1    repair     10-05 10:00; 王 assigns +20; 李 accepts +50; done +170; 5 ★ closed
B      xh-g2    repair     10-06 09:00; 邓 escalates +40; clock escalates +200 (to 社区);
                           周 handles +300; done +300+49 h; 3 ★; revisit done → closed
C      xh-g1    repair     10-08 08:00; 王 broadcasts +10; 李 accepts +100; done +200;
                           "not solved" +300; done +1000; 4 ★ closed
D      xh-g1    repair     10-09 12:00; cancelled +5 (nobody handled it)
E      xh-g1    repair     10-10 10:00; clock broadcasts +31; 赵 accepts +71; done +191;
                           auto-closed 7 days later
F      xh-g1    repair     10-31 23:30; 王 assigns +5; 李 accepts 11-01 00:20 (November)
G      xh-g1    repair     11-01 00:10 (November: not in October)
H      xh-g1    safety     10-15 14:00; 王 assigns +15; 李 accepts +20; done +20+5 h
I      xh-g1    repair     10-12 09:00; 王 handles +5; done +60; "not solved" +120
=====  =======  =========  ==================================================================
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import Building, Grid, Order, OrderEvent, Person, PointsEntry, Revisit
from tests.duties.conftest import SH


def local(*args: int) -> datetime:
    """A Shanghai wall time."""
    return datetime(*args, tzinfo=SH)  # type: ignore[misc]


# (minutes after submission, action, to status, actor key or None, note)
Step = tuple[float, str, str, str | None, str | None]

STORIES: dict[str, dict[str, Any]] = {
    "A": {"at": local(2026, 10, 5, 10, 0), "building": "xh-b01", "handling": "xh-g1-m1",
          "steps": [(20, "assign", "dispatched", "p-wang", "李党员"),
                    (50, "accept", "accepted", "p-li-dangyuan", None),
                    (170, "done", "done", "p-li-dangyuan", None),
                    (200, "rate", "confirmed", "p-zhang-ayi", "5"),
                    (200, "close", "closed", "p-zhang-ayi", None)]},
    "B": {"at": local(2026, 10, 6, 9, 0), "building": "xh-b09", "handling": "xinhua",
          "steps": [(40, "escalate", "escalated", "p-deng-wei", "太难"),
                    (200, "auto_escalate", "escalated", None, "无人接单"),
                    (300, "handle", "accepted", "p-zhou-zhuren", None),
                    (300 + 49 * 60, "done", "done", "p-zhou-zhuren", None),
                    (300 + 50 * 60, "rate", "confirmed", "p-zhang-ayi", "3"),
                    (300 + 51 * 60, "revisit", "closed", "p-zhou-zhuren", "回访")]},
    "C": {"at": local(2026, 10, 8, 8, 0), "building": "xh-b02", "handling": "xh-g1-m1",
          "steps": [(10, "broadcast", "dispatched", "p-wang", "3"),
                    (100, "accept", "accepted", "p-li-dangyuan", None),
                    (200, "done", "done", "p-li-dangyuan", None),
                    (300, "reopen", "accepted", "p-zhang-ayi", None),
                    (1000, "done", "done", "p-li-dangyuan", None),
                    (1100, "rate", "confirmed", "p-zhang-ayi", "4"),
                    (1100, "close", "closed", "p-zhang-ayi", None)]},
    "D": {"at": local(2026, 10, 9, 12, 0), "building": "xh-b01", "handling": "xh-g1-m1",
          "steps": [(5, "cancel", "cancelled", "p-zhang-ayi", None)]},
    "E": {"at": local(2026, 10, 10, 10, 0), "building": "xh-b03", "handling": "xh-g1-m1",
          "steps": [(31, "auto_broadcast", "dispatched", None, "3"),
                    (71, "accept", "accepted", "p-zhao-zhiyuanzhe", None),
                    (191, "done", "done", "p-zhao-zhiyuanzhe", None),
                    (191 + 7 * 24 * 60, "auto_close", "auto_closed", None, None)]},
    "F": {"at": local(2026, 10, 31, 23, 30), "building": "xh-b01", "handling": "xh-g1-m1",
          "steps": [(5, "assign", "dispatched", "p-wang", "李党员"),
                    (50, "accept", "accepted", "p-li-dangyuan", None)]},
    "G": {"at": local(2026, 11, 1, 0, 10), "building": "xh-b01", "handling": "xh-g1-m1",
          "steps": []},
    "H": {"at": local(2026, 10, 15, 14, 0), "building": "xh-b01", "handling": "xh-g1-m1",
          "category": "safety",
          "steps": [(15, "assign", "dispatched", "p-wang", "李党员"),
                    (20, "accept", "accepted", "p-li-dangyuan", None),
                    (20 + 5 * 60, "done", "done", "p-li-dangyuan", None)]},
    "I": {"at": local(2026, 10, 12, 9, 0), "building": "xh-b02", "handling": "xh-g1-m1",
          "steps": [(5, "handle", "accepted", "p-wang", None),
                    (60, "done", "done", "p-wang", None),
                    (120, "reopen", "accepted", "p-zhang-ayi", None)]},
}


async def write_history(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """Write the stories; letter → order id. Also 10 points for 李党员 on A, and B's revisit."""
    ids: dict[str, int] = {}
    async with sessionmaker() as session, session.begin():
        people = dict((await session.execute(select(Person.key, Person.id))).all())
        grids = dict((await session.execute(select(Grid.code, Grid.id))).all())
        buildings = {b.code: b for b in (await session.scalars(select(Building))).all()}
        for letter, story in STORIES.items():
            building = buildings[story["building"]]
            steps: list[Step] = story["steps"]
            status = steps[-1][2] if steps else "submitted"
            order = Order(
                resident_id=people["p-zhang-ayi"], building_id=building.id, room="2-301",
                grid_id=building.grid_id, handling_grid_id=grids[story["handling"]],
                category=story.get("category", "repair"), description=f"story {letter}",
                status=status, created_at=story["at"], updated_at=story["at"],
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
        b_at = STORIES["B"]["at"]
        session.add(Revisit(order_id=ids["B"], grid_id=grids["xinhua"],
                            head_id=people["p-zhou-zhuren"], status="done",
                            created_at=b_at + timedelta(minutes=300 + 50 * 60),
                            done_at=b_at + timedelta(minutes=300 + 51 * 60)))
        session.add(PointsEntry(person_id=people["p-li-dangyuan"], order_id=ids["A"], points=10,
                                reason="order_done", created_at=local(2026, 10, 5, 13, 20)))
    return ids
