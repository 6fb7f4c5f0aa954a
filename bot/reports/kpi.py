"""Every figure an official reads, with one definition each, computed from the order event log
and the duty tables for a grid subtree and a local calendar period.

How the figures are made (the README's "Reports and the monthly bulletin" repeats this):

* **The cohort.** Order figures are about the orders *received in the period*: created at or
  after the period's start and before its end (local calendar, the community's time zone),
  whose own grid (the grid of the resident's building) lies in the subtree. Their events count
  **up to the period's end**, so a report for a past period gives the same answer whenever it
  is made (the ledger can be reconciled at year end).
* **The clocks** are the configured ones (:func:`bot.core.duties.resolve_clocks`, the code the
  order clocks and ``gridbot clocks`` use), for the order's category at the depth of the grid
  handling it (as stored on the order, the rule the daily digest uses for "overdue").
* **Rates** are :class:`Ratio` objects: numerator and denominator are kept, and a rate with
  an empty denominator is ``None`` (shown as "—"), never a division by zero.

Each rate, numerator ÷ denominator:

* 响应率 ``response``: orders whose first handling action by a person (assign, broadcast,
  handle myself, escalate) came within the dispatch clock of submission ÷ orders received,
  minus those cancelled before anyone handled them.
* 及时接单率 ``on_time_acceptance``: orders whose first acceptance came within the accept
  clock of the dispatch (assign, broadcast, auto-broadcast) before it; "handle myself" is on
  time ÷ orders accepted.
* 按期办结率 ``on_time_completion``: orders whose last "done" came within the category's
  deadline (hours) of the first acceptance ÷ orders done (a "done" event).
* 办结率 ``completion``: orders done, confirmed, closed or auto-closed at the period's end ÷
  orders received, minus cancelled.
* 解决率 ``resolution``: orders whose resident's last verdict is a rating (confirmed solved) ÷
  orders with a verdict (rated, or "not solved", which reopens the order).
* 满意率 ``satisfaction``: orders rated 4 or 5 ★ ÷ orders rated (基本满意, 3 ★, does not count).
* 巡查覆盖率 ``patrol_coverage``: patrol runs checked in ÷ runs due in the period (missed and
  skipped ones included).
* 走访完成率 ``visit_completion``: visits logged, at most as many as due, per visit plan ÷
  visits due in the period by the plans' schedules.
* 报到率 ``whistle_answer``: people called by a whistle of the period who answered ÷ called.

Times are the median and p90 (nearest rank: the value at position ⌈p·n⌉ of the sorted list)
of submit→first dispatch (assign, broadcast, auto-broadcast or handle), →first acceptance,
→last "done", →closed (closed or auto-closed), in minutes, over the cohort's orders that got
there. Escalated orders left their micro-grid (an escalate or auto-escalate event); "level
reached" is the level of the grid handling them. Revisits (回访) are those of the cohort's
orders: opened, done, still open at the period's end.
"""

from __future__ import annotations

import calendar
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from bot.core.duties import resolve_clocks
from bot.core.points import standings
from bot.core.routing import path_ids
from models import (
    Building,
    ClockSetting,
    Community,
    Grid,
    Household,
    Order,
    OrderEvent,
    OutboxMessage,
    PatrolRun,
    Person,
    Revisit,
    Role,
    VisitLog,
    VisitPlan,
    Whistle,
    WhistleAnswer,
)
from models.duties import ANSWER_COMING, RUN_CHECKED_IN, RUN_MISSED, RUN_SKIPPED
from models.orders import (
    AUTO_CLOSED,
    CANCELLED,
    CLOSED,
    CONFIRMED,
    DONE,
    SOURCE_RESIDENT,
)
from models.people import ROLE_MEMBER

#: Names of the rates (settings ``bulletin_weights`` / ``bulletin_floors`` use them).
RATE_NAMES = (
    "response",
    "on_time_acceptance",
    "on_time_completion",
    "completion",
    "resolution",
    "satisfaction",
    "patrol_coverage",
    "visit_completion",
    "whistle_answer",
)

#: A person's first handling of an order (the response): not the clocks' automatic actions.
RESPONSE_ACTIONS = ("assign", "broadcast", "handle", "escalate")
#: The order went out to someone who can do it (starts the accept clock).
DISPATCH_ACTIONS = ("assign", "broadcast", "auto_broadcast", "handle")
OFFER_ACTIONS = ("assign", "broadcast", "auto_broadcast")
ACCEPT_ACTIONS = ("accept", "handle")
ESCALATE_ACTIONS = ("escalate", "auto_escalate")
FINISHED = (DONE, CONFIRMED, CLOSED, AUTO_CLOSED)
#: Stars that count as satisfied (满意); 3 ★ (基本满意) does not.
SATISFIED_STARS = 4

_MONTH = re.compile(r"(\d{4})-(\d{2})")


# ---- periods ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """A local calendar period ``[start, end)``: aware datetimes in the community's zone."""

    start: datetime
    end: datetime
    label: str

    @classmethod
    def month(cls, year: int, month: int, tz: ZoneInfo) -> Period:
        """The calendar month ``year-month`` in ``tz``."""
        start = datetime(year, month, 1, tzinfo=tz)
        last = calendar.monthrange(year, month)[1]
        end = datetime.combine(date(year, month, last) + timedelta(days=1), time(0), tz)
        return cls(start, end, f"{year:04d}-{month:02d}")

    @classmethod
    def days(cls, first: date, last: date, tz: ZoneInfo) -> Period:
        """The local days ``first`` to ``last``, both included."""
        start = datetime.combine(first, time(0), tz)
        end = datetime.combine(last + timedelta(days=1), time(0), tz)
        label = first.isoformat() if first == last else f"{first.isoformat()}~{last.isoformat()}"
        return cls(start, end, label)

    @property
    def is_month(self) -> bool:
        """Whether this is one whole calendar month."""
        return bool(_MONTH.fullmatch(self.label))

    def previous(self) -> Period:
        """The period before: the month before, or as many days just before."""
        tz = self.start.tzinfo
        assert isinstance(tz, ZoneInfo)
        if self.is_month:
            first = self.start.date() - timedelta(days=1)
            return Period.month(first.year, first.month, tz)
        days = (self.end.date() - self.start.date()).days
        first = self.start.date() - timedelta(days=days)
        return Period.days(first, self.start.date() - timedelta(days=1), tz)


def parse_month(text: str, tz: ZoneInfo) -> Period:
    """``YYYY-MM`` → that month; ``ValueError`` with the reason otherwise."""
    m = _MONTH.fullmatch(text.strip())
    if not m or not 1 <= int(m.group(2)) <= 12 or int(m.group(1)) < 1:
        raise ValueError(f"not a month (YYYY-MM): {text!r}")
    return Period.month(int(m.group(1)), int(m.group(2)), tz)


def month_before(now: datetime, tz: ZoneInfo) -> Period:
    """The calendar month before the one ``now`` falls in (local time)."""
    local = now.astimezone(tz).date().replace(day=1) - timedelta(days=1)
    return Period.month(local.year, local.month, tz)


def months_before(when: datetime, months: int) -> datetime:
    """The same local wall time ``months`` calendar months earlier (the day clamped to the
    month's length): the start of the exit list's window."""
    index = when.year * 12 + when.month - 1 - months
    year, month = divmod(index, 12)
    day = min(when.day, calendar.monthrange(year, month + 1)[1])
    return when.replace(year=year, month=month + 1, day=day)


# ---- ratios and percentiles ---------------------------------------------------------------------


@dataclass(frozen=True)
class Ratio:
    """A rate kept as numerator and denominator; no value when nothing was counted."""

    num: int
    den: int

    @property
    def value(self) -> float | None:
        """``num / den`` (0..1), or ``None`` when the denominator is 0."""
        return self.num / self.den if self.den else None

    def percent(self) -> str:
        """``92.3%``, or ``—`` when there is nothing to divide."""
        v = self.value
        return "—" if v is None else f"{v * 100:.1f}%"

    def to_json(self) -> dict[str, Any]:
        """Numerator, denominator and value (``None`` when undefined)."""
        v = self.value
        return {"num": self.num, "den": self.den, "value": None if v is None else round(v, 4)}


def nearest_rank(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0 < p ≤ 1) by nearest rank: the value at position ⌈p·n⌉ of the
    sorted values; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered))) - 1]


def fmt_minutes(value: float | None) -> str:
    """Minutes as hours and minutes, ``h:mm`` (``0:45``, ``26:05``); ``—`` for none."""
    if value is None:
        return "—"
    total = round(value)
    return f"{total // 60}:{total % 60:02d}"


# ---- one order, read from its events ------------------------------------------------------------


@dataclass
class OrderFacts:
    """One order as its events stood at the period's end: the 工单 row of the ledger and what
    every order rate is counted from."""

    id: int
    category: str
    grid_id: int
    handling_grid_id: int
    building_id: int
    source: str
    channel: str | None
    submitted_at: datetime
    dispatch_minutes: int
    accept_minutes: int
    deadline_hours: int
    responded_at: datetime | None = None
    dispatched_at: datetime | None = None
    accepted_at: datetime | None = None
    accepted_on_time: bool = False
    done_at: datetime | None = None
    rated_at: datetime | None = None
    stars: int | None = None
    verdict: str | None = None  # "rated" or "reopened": the resident's last word
    reopened: int = 0
    closed_at: datetime | None = None
    cancelled_at: datetime | None = None
    escalations: int = 0
    auto_closed: bool = False
    status: str = "submitted"
    handler_id: int | None = None
    member_id: int | None = None
    room: str | None = None
    resident_id: int | None = None

    @property
    def number(self) -> str:
        """The order number people quote (as on the cards)."""
        return f"{self.id:06d}"

    @property
    def cancelled_unhandled(self) -> bool:
        """Cancelled before anyone handled it (out of the response rate)."""
        return self.status == CANCELLED and self.responded_at is None

    @property
    def responded_on_time(self) -> bool:
        """First handling by a person within the dispatch clock."""
        return self.responded_at is not None and self.responded_at <= (
            self.submitted_at + timedelta(minutes=self.dispatch_minutes)
        )

    @property
    def done_on_time(self) -> bool:
        """Last "done" within the deadline counted from the first acceptance."""
        return (
            self.done_at is not None
            and self.accepted_at is not None
            and self.done_at <= self.accepted_at + timedelta(hours=self.deadline_hours)
        )

    def minutes_to(self, when: datetime | None) -> float | None:
        """Minutes from submission to ``when``."""
        return None if when is None else (when - self.submitted_at).total_seconds() / 60


def replay(facts: OrderFacts, events: Iterable[Any]) -> OrderFacts:
    """Fill ``facts`` from the order's events (in order, already cut at the period's end):
    rows with ``created_at``, ``action``, ``to_status``, ``actor_id`` and ``note``."""
    last_offer: datetime | None = None
    for ev in events:
        at, action = ev.created_at, ev.action
        facts.status = ev.to_status
        if action in RESPONSE_ACTIONS and ev.actor_id is not None and facts.responded_at is None:
            facts.responded_at = at
            facts.handler_id = ev.actor_id
        if action in DISPATCH_ACTIONS and facts.dispatched_at is None:
            facts.dispatched_at = at
        if action in OFFER_ACTIONS:
            last_offer = at
        if action in ACCEPT_ACTIONS:
            if facts.accepted_at is None:
                facts.accepted_at = at
                facts.accepted_on_time = action == "handle" or (
                    last_offer is not None
                    and at <= last_offer + timedelta(minutes=facts.accept_minutes)
                )
            facts.member_id = ev.actor_id
        elif action == "done":
            facts.done_at = at
            facts.member_id = ev.actor_id or facts.member_id
        elif action == "rate":
            facts.rated_at = at
            facts.verdict = "rated"
            facts.stars = int(ev.note) if ev.note and ev.note.isdigit() else None
        elif action == "reopen":
            facts.reopened += 1
            facts.verdict = "reopened"
        elif action == "cancel":
            facts.cancelled_at = at
        elif action in ESCALATE_ACTIONS:
            facts.escalations += 1
        if action == "auto_close":
            facts.auto_closed = True
        if ev.to_status in (CLOSED, AUTO_CLOSED) and facts.closed_at is None:
            facts.closed_at = at
    return facts


# ---- the figures of a set of orders and duties -----------------------------------------------


@dataclass
class PatrolFact:
    """One patrol run."""

    grid_id: int
    status: str
    late: bool


@dataclass
class VisitFact:
    """One visit plan over the period: visits due by its schedule and visits logged."""

    plan_id: int
    grid_id: int
    member_id: int
    household: str
    due: int
    logged: int


@dataclass
class WhistleFact:
    """One whistle of the period: people called, answers, minutes to 报到 of those coming."""

    grid_id: int
    called: int
    answered: int
    coming_minutes: list[float]


@dataclass
class Figures:
    """Every KPI of one grid subtree for one period."""

    received: int = 0
    cancelled: int = 0
    by_category: dict[str, int] = field(default_factory=dict)
    by_channel: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    response: Ratio = Ratio(0, 0)
    on_time_acceptance: Ratio = Ratio(0, 0)
    on_time_completion: Ratio = Ratio(0, 0)
    completion: Ratio = Ratio(0, 0)
    resolution: Ratio = Ratio(0, 0)
    satisfaction: Ratio = Ratio(0, 0)
    done: int = 0
    revisits_opened: int = 0
    revisits_done: int = 0
    times: dict[str, dict[str, float | None]] = field(default_factory=dict)
    escalated: int = 0
    escalated_by_level: dict[str, int] = field(default_factory=dict)
    auto_closed: int = 0
    patrol_coverage: Ratio = Ratio(0, 0)
    patrols_late: int = 0
    patrols_missed: int = 0
    visit_completion: Ratio = Ratio(0, 0)
    households_overdue: int = 0
    whistle_answer: Ratio = Ratio(0, 0)
    whistle_median_minutes: float | None = None

    @property
    def revisits_open(self) -> int:
        """Revisits opened and not done at the period's end."""
        return self.revisits_opened - self.revisits_done

    def rate(self, name: str) -> Ratio:
        """A rate by its name in :data:`RATE_NAMES`."""
        value = getattr(self, name)
        assert isinstance(value, Ratio), name
        return value

    def to_json(self) -> dict[str, Any]:
        """Everything, rates with numerator and denominator."""
        out: dict[str, Any] = {
            "received": self.received,
            "cancelled": self.cancelled,
            "done": self.done,
            "by_category": self.by_category,
            "by_channel": self.by_channel,
            "by_source": self.by_source,
        }
        for name in RATE_NAMES:
            out[name] = self.rate(name).to_json()
        out.update(
            revisits={
                "opened": self.revisits_opened,
                "done": self.revisits_done,
                "open": self.revisits_open,
            },
            times_minutes=self.times,
            escalated=self.escalated,
            escalated_by_level=self.escalated_by_level,
            auto_closed=self.auto_closed,
            patrols_late=self.patrols_late,
            patrols_missed=self.patrols_missed,
            households_overdue=self.households_overdue,
            whistle_median_minutes=self.whistle_median_minutes,
        )
        return out


TIME_SPANS = ("dispatch", "accept", "done", "closed")


def _ranked(counts: Counter[str]) -> dict[str, int]:
    """Most first; equal counts by name (the same order wherever they are listed)."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def order_figures(
    orders: Sequence[OrderFacts],
    revisits: Sequence[tuple[int, bool]] = (),
    level_of: dict[int, str] | None = None,
) -> Figures:
    """The order KPIs of ``orders`` (a cohort, see the module docstring). ``revisits``:
    (order id, done by the period's end) of the cohort's revisits; ``level_of``: grid id →
    level name, for escalations by level reached."""
    f = Figures()
    f.received = len(orders)
    f.cancelled = sum(o.status == CANCELLED for o in orders)
    f.by_category = _ranked(Counter(o.category for o in orders))
    f.by_channel = _ranked(Counter(o.channel or "—" for o in orders))
    f.by_source = _ranked(Counter(o.source for o in orders))
    counted = [o for o in orders if not o.cancelled_unhandled]
    f.response = Ratio(sum(o.responded_on_time for o in counted), len(counted))
    accepted = [o for o in orders if o.accepted_at is not None]
    f.on_time_acceptance = Ratio(sum(o.accepted_on_time for o in accepted), len(accepted))
    done = [o for o in orders if o.done_at is not None]
    f.done = len(done)
    f.on_time_completion = Ratio(sum(o.done_on_time for o in done), len(done))
    f.completion = Ratio(sum(o.status in FINISHED for o in orders), f.received - f.cancelled)
    verdicts = [o for o in orders if o.verdict is not None]
    f.resolution = Ratio(sum(o.verdict == "rated" for o in verdicts), len(verdicts))
    rated = [o for o in orders if o.stars is not None]
    f.satisfaction = Ratio(sum((o.stars or 0) >= SATISFIED_STARS for o in rated), len(rated))
    ids = {o.id for o in orders}
    mine = [done_ for oid, done_ in revisits if oid in ids]
    f.revisits_opened, f.revisits_done = len(mine), sum(mine)
    for span in TIME_SPANS:
        values = [
            m
            for o in orders
            if (
                m := o.minutes_to(
                    {
                        "dispatch": o.dispatched_at,
                        "accept": o.accepted_at,
                        "done": o.done_at,
                        "closed": o.closed_at,
                    }[span]
                )
            )
            is not None
        ]
        f.times[span] = {"median": nearest_rank(values, 0.5), "p90": nearest_rank(values, 0.9)}
    escalated = [o for o in orders if o.escalations]
    f.escalated = len(escalated)
    levels = level_of or {}
    f.escalated_by_level = _ranked(Counter(levels.get(o.handling_grid_id, "—") for o in escalated))
    f.auto_closed = sum(o.auto_closed for o in orders)
    return f


def duty_figures(
    f: Figures,
    patrols: Sequence[PatrolFact],
    visits: Sequence[VisitFact],
    whistles: Sequence[WhistleFact],
) -> Figures:
    """Add the duty KPIs to ``f`` (patrol coverage, visit completion, whistle answers)."""
    f.patrol_coverage = Ratio(sum(p.status == RUN_CHECKED_IN for p in patrols), len(patrols))
    f.patrols_late = sum(p.late for p in patrols)
    f.patrols_missed = sum(p.status in (RUN_MISSED, RUN_SKIPPED) for p in patrols)
    f.visit_completion = Ratio(
        sum(min(v.logged, v.due) for v in visits), sum(v.due for v in visits)
    )
    f.households_overdue = sum(v.due > 0 and v.logged == 0 for v in visits)
    f.whistle_answer = Ratio(sum(w.answered for w in whistles), sum(w.called for w in whistles))
    f.whistle_median_minutes = nearest_rank([m for w in whistles for m in w.coming_minutes], 0.5)
    return f


def score(f: Figures, weights: dict[str, float]) -> float | None:
    """The weighted score (0..100) of the rates named in ``weights``. A rate with nothing to
    count is left out and the other weights share its part; no rate at all: ``None``."""
    parts = [(w, f.rate(n).value) for n, w in weights.items() if w > 0]
    known = [(w, v) for w, v in parts if v is not None]
    total = sum(w for w, _ in known)
    if not known or total <= 0:
        return None
    return 100 * sum(w * v for w, v in known) / total


def below_floors(f: Figures, floors: dict[str, float]) -> list[tuple[str, Ratio, float]]:
    """The rates of ``f`` under their floor (percent): (rate name, ratio, floor)."""
    out = []
    for name, floor in floors.items():
        ratio = f.rate(name)
        if ratio.value is not None and ratio.value * 100 < floor:
            out.append((name, ratio, floor))
    return out


# ---- members ------------------------------------------------------------------------------------


@dataclass
class MemberFigures:
    """One member (党员/志愿者) over the period."""

    person_id: int
    name: str
    grid_id: int
    accepted: int = 0
    done: int = 0
    ratings: list[int] = field(default_factory=list)
    visits_due: int = 0
    visits_logged: int = 0
    points: int = 0

    @property
    def mean_rating(self) -> float | None:
        """Mean stars of the orders they did that were rated in the period."""
        return sum(self.ratings) / len(self.ratings) if self.ratings else None


@dataclass
class ExitEntry:
    """A member on the exit list (退出负面清单), with why."""

    person_id: int
    name: str
    grid_id: int
    done: int
    mean_rating: float | None
    reasons: list[str]


# ---- loading from the database ------------------------------------------------------------------


@dataclass
class Scope:
    """A subtree: its root (``None`` = the whole tree) and every grid by id."""

    root: Grid | None
    grids: dict[int, Grid]
    levels: dict[int, str]

    @property
    def path(self) -> str:
        """Path prefix of the subtree's grids."""
        return self.root.path if self.root else "/"

    @property
    def name(self) -> str:
        """The root's name (the whole tree: the top grids' names)."""
        if self.root is not None:
            return self.root.name
        return "、".join(g.name for g in self.children())

    def in_subtree(self, column: Any) -> Any:
        """A condition: ``column`` (a grid id) is a grid of the subtree (a subquery on the
        materialised path; always true for the whole tree)."""
        if self.root is None:
            return true()
        return column.in_(select(Grid.id).where(Grid.path.startswith(self.root.path)))

    def ids(self, prefix: str | None = None) -> set[int]:
        """Ids of the grids under ``prefix`` (default: the subtree)."""
        p = prefix or self.path
        return {g.id for g in self.grids.values() if g.path.startswith(p)}

    def children(self) -> list[Grid]:
        """The grids one level below the root (the top grids for the whole tree)."""
        pid = self.root.id if self.root else None
        return sorted(
            (g for g in self.grids.values() if g.parent_id == pid), key=lambda g: (g.code, g.id)
        )


async def load_scope(session: AsyncSession, code: str | None) -> Scope:
    """The subtree of the grid ``code`` (``None``: the whole tree) with the grids above it (an
    escalated order may be handled there); ``LookupError`` when no grid has that code."""
    root = None
    query = select(Grid)
    if code is not None:
        root = await session.scalar(select(Grid).where(Grid.code == code))
        if root is None:
            raise LookupError(code)
        query = query.where(or_(Grid.path.startswith(root.path), Grid.id.in_(path_ids(root))))
    grids = {g.id: g for g in (await session.scalars(query)).all()}
    communities = {c.id: c for c in (await session.scalars(select(Community))).all()}
    levels: dict[int, str] = {}
    for g in grids.values():
        names = [n for n in (communities[g.community_id].level_names or "").split("/") if n]
        levels[g.id] = names[g.depth] if g.depth < len(names) else str(g.depth)
    return Scope(root, grids, levels)


async def load_orders(
    session: AsyncSession, settings: Settings, scope: Scope, period: Period
) -> list[OrderFacts]:
    """The cohort of ``period`` in ``scope``, each order replayed from its events up to the
    period's end (two queries: the orders, and their events joined to them)."""
    cohort = (
        scope.in_subtree(Order.grid_id),
        Order.created_at >= period.start,
        Order.created_at < period.end,
    )
    orders = (
        await session.execute(
            select(
                Order.id,
                Order.category,
                Order.grid_id,
                Order.handling_grid_id,
                Order.building_id,
                Order.created_at,
                Order.room,
                Order.resident_id,
                Order.source,
            )
            .where(*cohort)
            .order_by(Order.id)
        )
    ).all()
    if not orders:
        return []
    order_ids = [o.id for o in orders]
    events: dict[int, list[Any]] = defaultdict(list)
    for ev in (
        await session.execute(
            select(
                OrderEvent.order_id,
                OrderEvent.created_at,
                OrderEvent.action,
                OrderEvent.to_status,
                OrderEvent.actor_id,
                OrderEvent.note,
            )
            .join(Order, Order.id == OrderEvent.order_id)
            .where(*cohort, OrderEvent.created_at < period.end)
            .order_by(OrderEvent.order_id, OrderEvent.created_at, OrderEvent.id)
        )
    ).all():
        events[ev.order_id].append(ev)
    channels: dict[int, str] = {}
    for chunk in _chunks(order_ids):
        refs = [f"receipt:{i}" for i in chunk]
        for ref, channel in (
            await session.execute(
                select(OutboxMessage.ref, OutboxMessage.channel).where(OutboxMessage.ref.in_(refs))
            )
        ).all():
            channels[int(str(ref).split(":", 1)[1])] = channel
    cache: dict[Any, Any] = {}
    facts = []
    for o in orders:
        handling = scope.grids.get(o.handling_grid_id)
        clocks = await resolve_clocks(
            session, settings, o.category, handling.depth if handling else 0, cache
        )
        f = OrderFacts(
            id=o.id,
            category=o.category,
            grid_id=o.grid_id,
            handling_grid_id=o.handling_grid_id,
            building_id=o.building_id,
            source=o.source or SOURCE_RESIDENT,
            channel=channels.get(o.id),
            submitted_at=o.created_at,
            dispatch_minutes=clocks.dispatch_minutes,
            accept_minutes=clocks.accept_minutes,
            deadline_hours=clocks.deadline_hours,
            room=o.room,
            resident_id=o.resident_id,
        )
        facts.append(replay(f, events.get(o.id, [])))
    return facts


def _chunks(ids: Sequence[int], size: int = 5000) -> Iterable[Sequence[int]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


async def load_revisits(
    session: AsyncSession, order_ids: Sequence[int], end: datetime
) -> list[tuple[int, bool]]:
    """(order id, done by ``end``) of the revisits of these orders opened before ``end``."""
    out: list[tuple[int, bool]] = []
    for chunk in _chunks(list(order_ids)):
        rows = await session.execute(
            select(Revisit.order_id, Revisit.done_at).where(
                Revisit.order_id.in_(chunk), Revisit.created_at < end
            )
        )
        out += [(oid, done is not None and done < end) for oid, done in rows.all()]
    return out


async def load_duties(
    session: AsyncSession, scope: Scope, period: Period
) -> tuple[list[PatrolFact], list[VisitFact], list[WhistleFact]]:
    """Patrol runs due, visit plans' due and logged visits, whistles of the period."""
    patrols = [
        PatrolFact(
            gid,
            status,
            checked is not None and checked > deadline,
        )
        for gid, status, checked, deadline in (
            await session.execute(
                select(
                    PatrolRun.grid_id,
                    PatrolRun.status,
                    PatrolRun.checked_in_at,
                    PatrolRun.deadline_at,
                ).where(
                    scope.in_subtree(PatrolRun.grid_id),
                    PatrolRun.due_at >= period.start,
                    PatrolRun.due_at < period.end,
                )
            )
        ).all()
    ]
    from bot.scheduler.triggers import visit_trigger  # the schedule the reminders follow

    logged = dict(
        (
            await session.execute(
                select(VisitLog.plan_id, func.count())
                .where(VisitLog.created_at >= period.start, VisitLog.created_at < period.end)
                .group_by(VisitLog.plan_id)
            )
        ).all()
    )
    visits = []
    for plan, household in (
        await session.execute(
            select(VisitPlan, Household)
            .join(Household, Household.id == VisitPlan.household_id)
            .where(
                scope.in_subtree(Household.grid_id),
                VisitPlan.active.is_(True),
                VisitPlan.starts_at < period.end,
            )
        )
    ).all():
        trigger = visit_trigger(plan.frequency, plan.starts_at, plan.timezone)
        due, at = 0, trigger.get_next_fire_time(None, period.start)
        while at is not None and at < period.end and due < 400:
            due += 1
            at = trigger.get_next_fire_time(at, at + timedelta(seconds=1))
        visits.append(
            VisitFact(plan.id, household.grid_id, plan.member_id, household.name, due,
                      int(logged.get(plan.id, 0)))
        )
    whistles = []
    for w in (
        await session.scalars(
            select(Whistle).where(
                scope.in_subtree(Whistle.grid_id),
                Whistle.created_at >= period.start,
                Whistle.created_at < period.end,
            )
        )
    ).all():
        answers = (
            await session.execute(
                select(WhistleAnswer.answer, WhistleAnswer.answered_at).where(
                    WhistleAnswer.whistle_id == w.id
                )
            )
        ).all()
        done = [(a, t) for a, t in answers if a is not None and t is not None and t < period.end]
        whistles.append(
            WhistleFact(
                w.grid_id,
                len(answers),
                len(done),
                [(t - w.created_at).total_seconds() / 60 for a, t in done if a == ANSWER_COMING],
            )
        )
    return patrols, visits, whistles


async def load_members(
    session: AsyncSession,
    scope: Scope,
    period: Period,
    visits: Sequence[VisitFact],
    settings: Settings | None = None,
) -> list[MemberFigures]:
    """Every member of the subtree with their work in the period (events in the period, any
    order): orders accepted and done, mean rating of the orders they did that were rated in
    the period, visits due and logged, points credited (``points_entry``)."""
    members: dict[int, MemberFigures] = {}
    for pid, name, gid in (
        await session.execute(
            select(Person.id, Person.name, Role.grid_id)
            .join(Role, Role.person_id == Person.id)
            .where(Role.role == ROLE_MEMBER, scope.in_subtree(Role.grid_id))
            .order_by(Person.id, Role.grid_id)
        )
    ).all():
        members.setdefault(pid, MemberFigures(pid, name, gid))
    if not members:
        return []
    work = await member_work(session, list(members), period.start, period.end, settings)
    for pid, (accepted, done, ratings) in work.items():
        m = members[pid]
        m.accepted, m.done, m.ratings = accepted, done, ratings
    for v in visits:
        if v.member_id in members:
            members[v.member_id].visits_due += v.due
            members[v.member_id].visits_logged += min(v.logged, v.due)
    # Points of the period: the one definition of bot.core.points (the ledger's rows).
    grid_ids = sorted({m.grid_id for m in members.values()})
    for line in await standings(session, grid_ids, period.start, period.end,
                                roles=(ROLE_MEMBER,)):
        if line.person_id in members:
            members[line.person_id].points = line.points
    return sorted(members.values(), key=lambda m: (-m.points, m.name, m.person_id))


async def member_work(
    session: AsyncSession,
    people: Sequence[int],
    start: datetime,
    end: datetime,
    settings: Settings | None = None,
) -> dict[int, tuple[int, int, list[int]]]:
    """Person → (orders accepted, orders done, stars of ratings) in ``[start, end)``.

    A rating counts for the member whose "done" came last before it on that order. That
    "done" is at most the longest rating wait (``rate_days``: the setting or any clock row)
    before the rating, since an order done and not rated by then is closed: only the orders
    these people took or did from that long before ``start`` are read."""
    accepted: dict[int, set[int]] = defaultdict(set)
    done: dict[int, set[int]] = defaultdict(set)
    ratings: dict[int, list[int]] = defaultdict(list)
    wanted = set(people)
    longest = await session.scalar(select(func.max(ClockSetting.rate_days)))
    settings_days = settings.order_rate_days if settings is not None else 0
    since = start - timedelta(days=max(longest or 0, settings_days, 7) + 1)
    rows = (
        await session.execute(
            select(OrderEvent.order_id, OrderEvent.actor_id, OrderEvent.action, OrderEvent.note,
                   OrderEvent.created_at)
            .where(
                # Orders these people took or did before the end (their ratings follow).
                OrderEvent.order_id.in_(
                    select(OrderEvent.order_id).where(
                        OrderEvent.actor_id.in_(list(wanted)),
                        OrderEvent.created_at >= since,
                        OrderEvent.created_at < end,
                        OrderEvent.action.in_((*ACCEPT_ACTIONS, "done")),
                    )
                ),
                OrderEvent.created_at < end,
                OrderEvent.action.in_((*ACCEPT_ACTIONS, "done", "rate")),
            )
            .order_by(OrderEvent.order_id, OrderEvent.created_at, OrderEvent.id)
        )
    ).all()
    doer: dict[int, int | None] = {}
    for oid, actor, action, note, at in rows:
        if action == "done":
            doer[oid] = actor
        inside = at >= start
        if action in ACCEPT_ACTIONS and inside and actor in wanted:
            accepted[actor].add(oid)
        elif action == "done" and inside and actor in wanted:
            done[actor].add(oid)
        elif action == "rate" and inside and doer.get(oid) in wanted and note and note.isdigit():
            ratings[doer[oid]].append(int(note))  # type: ignore[index]
    return {
        pid: (len(accepted[pid]), len(done[pid]), ratings[pid])
        for pid in wanted
        if pid in accepted or pid in done or pid in ratings
    }


async def exit_list(
    session: AsyncSession, settings: Settings, scope: Scope, end: datetime
) -> list[ExitEntry]:
    """Members of the subtree with no completed order in the ``exit_idle_months`` months before
    ``end``, or whose mean rating over those months is below ``exit_min_rating``."""
    start = months_before(end, settings.exit_idle_months)
    members: dict[int, tuple[str, int]] = {}
    for pid, name, gid in (
        await session.execute(
            select(Person.id, Person.name, Role.grid_id)
            .join(Role, Role.person_id == Person.id)
            .where(Role.role == ROLE_MEMBER, scope.in_subtree(Role.grid_id))
            .order_by(Person.id, Role.grid_id)
        )
    ).all():
        members.setdefault(pid, (name, gid))
    work = await member_work(session, list(members), start, end, settings)
    out = []
    for pid, (name, gid) in members.items():
        _, done, stars = work.get(pid, (0, 0, []))
        mean = sum(stars) / len(stars) if stars else None
        reasons = []
        if done == 0:
            reasons.append("idle")
        if mean is not None and mean < settings.exit_min_rating:
            reasons.append("rating")
        if reasons:
            out.append(ExitEntry(pid, name, gid, done, mean, reasons))
    return out


# ---- the report: a subtree, its children, the period before ------------------------------------


@dataclass
class GridRow:
    """One grid of the report (the root, or a child): figures now and the period before."""

    grid_id: int | None
    code: str
    name: str
    figures: Figures
    previous: Figures
    score: float | None = None
    rank: int | None = None
    below: list[tuple[str, Ratio, float]] = field(default_factory=list)


@dataclass
class Hotspot:
    """A category or building with many orders, and its 满意率."""

    key: str
    name: str
    orders: int
    satisfaction: Ratio


@dataclass
class Report:
    """Everything the ledger, the bulletin and ``gridbot report`` show."""

    scope: Scope
    period: Period
    previous: Period
    total: GridRow
    children: list[GridRow]
    orders: list[OrderFacts]
    members: list[MemberFigures]
    visits: list[VisitFact]
    patrols: list[PatrolFact]
    categories: list[Hotspot]
    buildings: list[Hotspot]
    names: dict[int, str]
    buildings_by_id: dict[int, Building]
    made_at: datetime
    weights: dict[str, float] = field(default_factory=dict)


def _figures(
    orders: Sequence[OrderFacts],
    revisits: Sequence[tuple[int, bool]],
    duties: tuple[Sequence[PatrolFact], Sequence[VisitFact], Sequence[WhistleFact]],
    levels: dict[int, str],
    grid_ids: set[int] | None = None,
) -> Figures:
    def keep(gid: int) -> bool:
        return grid_ids is None or gid in grid_ids

    patrols, visits, whistles = duties
    f = order_figures([o for o in orders if keep(o.grid_id)], revisits, levels)
    return duty_figures(
        f,
        [p for p in patrols if keep(p.grid_id)],
        [v for v in visits if keep(v.grid_id)],
        [w for w in whistles if keep(w.grid_id)],
    )


async def build_report(
    session: AsyncSession,
    settings: Settings,
    scope: Scope,
    period: Period,
    now: datetime,
) -> Report:
    """The figures of ``scope`` for ``period`` and the period before, per child grid ranked
    by :func:`score`, the orders, members, hot spots."""
    previous = period.previous()
    current: dict[str, Any] = {}
    before: dict[str, Any] = {}
    for per, store in ((period, current), (previous, before)):
        orders = await load_orders(session, settings, scope, per)
        store["orders"] = orders
        store["revisits"] = await load_revisits(session, [o.id for o in orders], per.end)
        store["duties"] = await load_duties(session, scope, per)
    levels = scope.levels

    def row(grid: Grid | None, ids: set[int] | None) -> GridRow:
        f = _figures(current["orders"], current["revisits"], current["duties"], levels, ids)
        p = _figures(before["orders"], before["revisits"], before["duties"], levels, ids)
        r = GridRow(
            grid.id if grid else None,
            grid.code if grid else "*",
            grid.name if grid else scope.name,
            f,
            p,
            score(f, settings.bulletin_weights),
            below=below_floors(f, settings.bulletin_floors),
        )
        return r

    total = row(scope.root, None)
    children = [row(g, scope.ids(g.path)) for g in scope.children()]
    ranked = sorted(children, key=lambda r: (r.score is None, -(r.score or 0), r.code))
    for n, r in enumerate(ranked, 1):
        r.rank = n if r.score is not None else None
    cohort: list[OrderFacts] = current["orders"]
    people = {pid for o in cohort for pid in (o.handler_id, o.member_id, o.resident_id) if pid}
    names = dict(
        (await session.execute(select(Person.id, Person.name).where(Person.id.in_(people)))).all()
    ) if people else {}
    building_ids = {o.building_id for o in cohort}
    buildings = {
        b.id: b
        for b in (
            await session.scalars(select(Building).where(Building.id.in_(building_ids)))
        ).all()
    } if building_ids else {}
    members = await load_members(session, scope, period, current["duties"][1], settings)

    def hot(key_of: Any, name_of: Any) -> list[Hotspot]:
        groups: dict[Any, list[OrderFacts]] = defaultdict(list)
        for o in cohort:
            groups[key_of(o)].append(o)
        spots = [
            Hotspot(
                str(k),
                name_of(k),
                len(v),
                Ratio(
                    sum((o.stars or 0) >= SATISFIED_STARS for o in v if o.stars is not None),
                    sum(o.stars is not None for o in v),
                ),
            )
            for k, v in groups.items()
        ]
        return sorted(spots, key=lambda s: (-s.orders, s.key))

    return Report(
        scope=scope,
        period=period,
        previous=previous,
        total=total,
        children=ranked,
        orders=cohort,
        members=members,
        visits=list(current["duties"][1]),
        patrols=list(current["duties"][0]),
        categories=hot(lambda o: o.category, lambda k: k),
        buildings=hot(
            lambda o: o.building_id,
            lambda k: buildings[k].name if k in buildings else str(k),
        ),
        names=names,
        buildings_by_id=buildings,
        made_at=now,
        weights=dict(settings.bulletin_weights),
    )
