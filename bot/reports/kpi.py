"""Every figure an official reads, with one definition each, computed from the order event log
and the duty tables for a grid subtree and a local calendar period.

How the figures are made (the README's "Reports and the monthly bulletin" repeats this):

* **The cohort.** Order figures are about the orders *received in the period*: created at or
  after the period's start and before its end (local calendar, the community's time zone),
  whose own grid (the grid of the resident's building) lies in the subtree. Their events count
  **up to the period's end**, so a report for a past period gives the same answer whenever it
  is made (the ledger can be reconciled at year end).
* **The clocks** are the configured ones (:func:`bot.core.order_clocks.resolve_clocks`, the code
  the order clocks and ``gridbot clocks`` use), for the order's category at the depth of the grid
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

How they are computed: in SQL, the same on SQLite and PostgreSQL. :func:`order_rows` reads each
order of the cohort from its ``order_facts`` row (:mod:`models.facts`, kept equal to its events
in the transaction that writes them) when all its events lie in the period, else from its
events (one windowed and grouped query: the per-order facts and flags above, each written there
once); :func:`cohort_statement` sums them per child grid (and category, channel, source, level
reached) and takes the times' percentiles (PostgreSQL: ``percentile_disc``; SQLite: window
functions), in one statement per period. ``bot/reports/replay.py`` keeps the event-by-event
replay in Python as the tests' oracle.
"""

from __future__ import annotations

import calendar
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    Select,
    String,
    and_,
    case,
    cast,
    distinct,
    exists,
    func,
    literal,
    null,
    or_,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from bot.config import Settings
from bot.core.order_clocks import ClockCache, Clocks, resolve_clocks
from bot.core.points import standings
from bot.core.responsibility import path_ids
from bot.reports.snapshot import Part, run_parts
from bot.reports.sql import digits, epoch_us, first_of, flag, last_of, path_segment
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
from models.facts import (
    ACCEPT_ACTIONS,
    DISPATCH_ACTIONS,
    ESCALATE_ACTIONS,
    OFFER_ACTIONS,
    RESPONSE_ACTIONS,
    STATUS_CODE,
    STATUSES,
    OrderFactsRow,
)
from models.facts import epoch_us as facts_epoch_us
from models.orders import (
    AUTO_CLOSED,
    CANCELLED,
    CLOSED,
    CONFIRMED,
    DONE,
    SOURCE_RESIDENT,
    SUBMITTED,
)
from models.people import ROLE_MEMBER
from models.refs import Ref, RefKind

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
    """One order as its events stood at the period's end: the 工单 row of the ledger (one row
    of :func:`order_rows`)."""

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
    #: The flags the rates count (see :func:`order_rows`, where they are defined).
    cancelled_unhandled: bool = False
    responded_on_time: bool = False
    done_on_time: bool = False

    @property
    def number(self) -> str:
        """The order number people quote (as on the cards)."""
        return f"{self.id:06d}"

    def minutes_to(self, when: datetime | None) -> float | None:
        """Minutes from submission to ``when``."""
        return None if when is None else (when - self.submitted_at).total_seconds() / 60


# ---- the figures of a set of orders and duties -----------------------------------------------


TIME_SPANS = ("dispatch", "accept", "done", "closed")


@dataclass
class PatrolFact:
    """Patrol runs of one grid with the same status and lateness (``runs`` of them)."""

    grid_id: int
    status: str
    late: bool
    runs: int = 1


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
    times: dict[str, dict[str, float | None]] = field(
        default_factory=lambda: {s: {"median": None, "p90": None} for s in TIME_SPANS}
    )
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


def _ranked(counts: Counter[str]) -> dict[str, int]:
    """Most first; equal counts by name (the same order wherever they are listed)."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# ---- the cohort in SQL: one row per order, then the sums --------------------------------------

#: Order statuses by code (:data:`models.facts.STATUSES`). An order with no event before the
#: period's end is ``submitted``.
_CODE = STATUS_CODE
MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US


def _status_code(column: Any) -> Any:
    return case(*((column == s, n) for s, n in _CODE.items()), else_=0)


def cohort_where(scope: Scope, period: Period) -> tuple[Any, ...]:
    """The cohort: orders received in the period whose own grid is in the subtree."""
    return (
        scope.in_subtree(Order.grid_id),
        Order.created_at >= period.start,
        Order.created_at < period.end,
    )


#: PostgreSQL settings of a report's transactions (see :func:`custom_plans`).
REPORT_SETTINGS: dict[str, str] = {
    "plan_cache_mode": "force_custom_plan",
    "work_mem": "64MB",
    "jit": "off",
}


async def custom_plans(session: AsyncSession) -> None:
    """On PostgreSQL, plan the report's statements for their parameters every time, for the
    rest of the transaction. A prepared statement run five times may otherwise get a generic
    plan, which cannot see the subtree's path prefix or the period: measured at scale 0.005,
    one community's figures went from ~0.1 s to 2.6 s on the sixth run.

    And sort the times' percentiles of a city month (~650,000 rows at Yunfu) in memory rather
    than on disk (the default 4 MB ``work_mem`` spilled 20 MB); and no JIT compilation: the
    city month's statement costs far above ``jit_above_cost``, and compiling its clocks'
    ``CASE`` expressions (352 functions) took 5.4 s of its 6.9 s (EXPLAIN ANALYZE at Yunfu
    scale; 2.8 s without JIT). One round trip."""
    if session.get_bind().dialect.name == "postgresql" and REPORT_SETTINGS:
        await session.execute(text("SELECT " + ", ".join(
            f"set_config('{name}', '{value}', true)" for name, value in REPORT_SETTINGS.items())))


async def cohort_clocks(
    session: AsyncSession, settings: Settings, scope: Scope, period: Period
) -> dict[tuple[str, int], Clocks]:
    """The clocks of every (category, depth of the handling grid) the cohort has."""
    hg = aliased(Grid)
    pairs = (
        await session.execute(
            select(Order.category, hg.depth)
            .join(hg, hg.id == Order.handling_grid_id)
            .where(*cohort_where(scope, period))
            .distinct()
        )
    ).all()
    cache = ClockCache()
    return {(c, d): await resolve_clocks(session, settings, c, d, cache) for c, d in pairs}


def _clock(
    clocks: dict[tuple[str, int], Clocks], category: Any, depth: Any, name: str, unit: int
) -> Any:
    """One clock of the order's (category, depth), in microseconds."""
    whens = [
        (and_(category == c, depth == d), literal(int(getattr(k, name)) * unit, BigInteger))
        for (c, d), k in sorted(clocks.items())
    ]
    return case(*whens, else_=literal(0, BigInteger)) if whens else literal(0, BigInteger)


def event_facts(
    period: Period,
    clocks: dict[tuple[str, int], Clocks],
    cohort: tuple[Any, ...],
    only: Any = None,
) -> Select[Any]:
    """Per order of the cohort (``only``: of these order ids), its facts read from its events
    of the period (the columns of :func:`order_rows`' per-order part, ``oid`` first)."""
    hg_e = aliased(Grid)
    ev_t = epoch_us(OrderEvent.created_at)
    window: dict[str, Any] = {
        "partition_by": OrderEvent.order_id,
        "order_by": (OrderEvent.created_at, OrderEvent.id),
    }
    ev = (
        select(
            OrderEvent.order_id.label("oid"),
            OrderEvent.action,
            OrderEvent.to_status,
            OrderEvent.actor_id,
            OrderEvent.note,
            ev_t.label("t"),
            func.row_number().over(**window).label("seq"),
            func.max(case((OrderEvent.action.in_(OFFER_ACTIONS), ev_t)))
            .over(**window, rows=(None, 0))
            .label("last_offer"),
            _clock(clocks, Order.category, hg_e.depth, "accept_minutes", MINUTE_US).label(
                "accept_us"
            ),
        )
        .join(Order, Order.id == OrderEvent.order_id)
        .join(hg_e, hg_e.id == Order.handling_grid_id)
        # An order's events come after its submission, so none is before the period: the
        # bound lets the event time index read the period's events instead of the table.
        .where(*cohort, OrderEvent.created_at >= period.start,
               OrderEvent.created_at < period.end)
        .where(*([] if only is None else [OrderEvent.order_id.in_(only)]))
        .subquery("ev")
    )
    e = ev.c
    responds = and_(e.action.in_(RESPONSE_ACTIONS), e.actor_id.isnot(None))
    accepts = e.action.in_(ACCEPT_ACTIONS)
    return (
        select(
            e.oid,
            last_of(e.seq, true(), _status_code(e.to_status)).label("status_code"),
            func.min(case((responds, e.t))).label("responded_t"),
            first_of(e.seq, responds, e.actor_id).label("handler_id"),
            func.min(case((e.action.in_(DISPATCH_ACTIONS), e.t))).label("dispatched_t"),
            func.min(case((accepts, e.t))).label("accepted_t"),
            first_of(
                e.seq,
                accepts,
                flag(or_(e.action == "handle",
                         and_(e.last_offer.isnot(None), e.t <= e.last_offer + e.accept_us))),
            ).label("accepted_on_time"),
            last_of(
                e.seq,
                or_(accepts, and_(e.action == "done", e.actor_id.isnot(None))),
                func.coalesce(e.actor_id + 1, 0),
            ).label("member_code"),
            func.max(case((e.action == "done", e.t))).label("done_t"),
            func.max(case((e.action == "rate", e.t))).label("rated_t"),
            last_of(
                e.seq, e.action == "rate",
                case((digits(e.note), cast(e.note, BigInteger) + 1), else_=0),
            ).label("stars_code"),
            last_of(e.seq, e.action.in_(("rate", "reopen")), flag(e.action == "rate")).label(
                "verdict"
            ),
            func.sum(flag(e.action == "reopen")).label("reopened"),
            func.min(case((e.to_status.in_((CLOSED, AUTO_CLOSED)), e.t))).label("closed_t"),
            func.max(case((e.action == "cancel", e.t))).label("cancelled_t"),
            func.sum(flag(e.action.in_(ESCALATE_ACTIONS))).label("escalations"),
            func.max(flag(e.action == "auto_close")).label("auto_closed"),
            cast(null(), String).label("channel"),
            literal(0).label("stored"),
        )
        .group_by(e.oid)
    )


def stored_facts(
    period: Period, clocks: dict[tuple[str, int], Clocks], cohort: tuple[Any, ...]
) -> Any:
    """The same columns as :func:`event_facts`, from the ``order_facts`` rows of the cohort's
    orders whose events all lie in the period (then they are the events up to its end)."""
    fr, hg_f = OrderFactsRow, aliased(Grid)
    accept_us = _clock(clocks, Order.category, hg_f.depth, "accept_minutes", MINUTE_US)
    return (
        select(
            fr.order_id.label("oid"),
            fr.status_code,
            fr.responded_us.label("responded_t"),
            fr.handler_id,
            fr.dispatched_us.label("dispatched_t"),
            fr.accepted_us.label("accepted_t"),
            flag(or_(fr.accepted_by_handle == 1,
                     and_(fr.offer_us.isnot(None),
                          fr.accepted_us <= fr.offer_us + accept_us))).label("accepted_on_time"),
            fr.member_code,
            fr.done_us.label("done_t"),
            fr.rated_us.label("rated_t"),
            (fr.stars + 1).label("stars_code"),
            fr.verdict,
            fr.reopened,
            fr.closed_us.label("closed_t"),
            fr.cancelled_us.label("cancelled_t"),
            fr.escalations,
            fr.auto_closed,
            fr.channel,
            literal(1).label("stored"),
        )
        .select_from(Order)
        .join(fr, fr.order_id == Order.id)
        .join(hg_f, hg_f.id == Order.handling_grid_id)
        .where(*cohort, *settled(period))
    )


def settled(period: Period) -> tuple[Any, ...]:
    """The order's facts row holds exactly its events of the period: all lie inside it (and
    the order was submitted in it: the index range the cohort's rows are read by)."""
    start, end = _us(period.start), _us(period.end)
    fr = OrderFactsRow
    return (fr.submitted_us >= start, fr.submitted_us < end, fr.first_us >= start,
            fr.last_us < end)


def _us(when: datetime) -> Any:
    return literal(facts_epoch_us(when), BigInteger)


def order_rows(
    scope: Scope, period: Period, clocks: dict[tuple[str, int], Clocks], *, naive: bool = False
) -> Select[Any]:
    """One row per order of the cohort as its events stood at the period's end (every
    timestamp an integer of microseconds, :class:`~bot.reports.sql.epoch_us`): from the
    order's ``order_facts`` row (:mod:`models.facts`) when all its events lie in the period,
    else from its events (:func:`event_facts`; ``naive``: every order from its events, the way
    it was done before the facts rows). The definitions every order figure counts:

    * ``responded_t``: the first handling by a person (:data:`RESPONSE_ACTIONS` with an actor);
      ``handler_id`` that person. ``responded_on_time``: ``responded_t`` ≤ submission +
      the dispatch clock.
    * ``dispatched_t``: the first :data:`DISPATCH_ACTIONS`.
    * ``accepted_t``: the first :data:`ACCEPT_ACTIONS`; ``accepted_on_time``: that first one was
      "handle myself", or came within the accept clock of the last offer
      (:data:`OFFER_ACTIONS`) before it.
    * ``done_t``: the last "done"; ``done_on_time``: ``done_t`` ≤ ``accepted_t`` + the deadline.
    * ``rated_t``, ``stars``: the last rating (stars: its note when that is a number);
      ``verdict``: 1 when the resident's last word (rating or "not solved") is a rating, 0 when
      it is "not solved"; ``reopened``: "not solved" count.
    * ``closed_t``: the first move to closed or auto-closed; ``cancelled_t``: the last cancel;
      ``escalations``: escalate and auto-escalate events; ``auto_closed``: an auto-close.
    * ``status``: the last event's status (``submitted`` without events);
      ``cancelled_unhandled``: cancelled with no handling by a person (out of the response rate).
    * ``member_code``: the person of the last acceptance or "done" with a person, + 1.
    * ``revisits_opened`` / ``revisits_done``: its revisits opened before the end, done before it.
    * ``child``: the id (text) of the subtree's child grid the order's grid is under ('' for the
      root itself).
    """
    cohort = cohort_where(scope, period)
    hg, og = aliased(Grid), aliased(Grid)
    if naive:
        g = event_facts(period, clocks, cohort).subquery("g")
    else:
        # The facts rows of the orders settled within the period; the others (events after
        # the period's end, or none yet) from their events, as the naive version reads all.
        # An anti-join per cohort order (not a NOT IN of the whole city's month: a
        # community's cohort of ~100 orders then probes ~100 rows, not 90,000).
        kept = exists().where(OrderFactsRow.order_id == Order.id, *settled(period))
        unsettled = select(Order.id).where(*cohort, ~kept)
        g = union_all(stored_facts(period, clocks, cohort),
                      event_facts(period, clocks, cohort, unsettled)).subquery("g")
    rv = (
        select(
            Revisit.order_id.label("oid"),
            func.count().label("opened"),
            func.sum(flag(and_(Revisit.done_at.isnot(None), Revisit.done_at < period.end))).label(
                "done"
            ),
        )
        .where(Revisit.created_at < period.end,
               Revisit.order_id.in_(select(Order.id).where(*cohort)))
        .group_by(Revisit.order_id)
        .subquery("rv")
    )
    receipt = (
        select(OutboxMessage.channel)
        .where(OutboxMessage.ref == literal(Ref.prefix(RefKind.RECEIPT)) + cast(Order.id, String))
        .limit(1)
        .scalar_subquery()
    )
    # The facts row's copy; the outbox for the orders read from their events.
    channel = receipt if naive else case((g.c.stored == 1, g.c.channel), else_=receipt)
    submitted = epoch_us(Order.created_at)
    dispatch_us = _clock(clocks, Order.category, hg.depth, "dispatch_minutes", MINUTE_US)
    accept_us = _clock(clocks, Order.category, hg.depth, "accept_minutes", MINUTE_US)
    deadline_us = _clock(clocks, Order.category, hg.depth, "deadline_hours", HOUR_US)
    status = func.coalesce(g.c.status_code, _CODE[SUBMITTED])
    return (
        select(
            Order.id,
            Order.category,
            Order.grid_id,
            Order.handling_grid_id,
            Order.building_id,
            func.coalesce(Order.source, SOURCE_RESIDENT).label("source"),
            channel.label("channel"),
            Order.created_at,
            Order.room,
            Order.resident_id,
            hg.community_id.label("handling_community"),
            hg.depth.label("handling_depth"),
            case((g.c.escalations > 0, hg.community_id)).label("escalated_community"),
            case((g.c.escalations > 0, hg.depth)).label("escalated_depth"),
            path_segment(og.path, len(scope.path) + 1).label("child"),
            submitted.label("submitted_t"),
            dispatch_us.label("dispatch_us"),
            accept_us.label("accept_us"),
            deadline_us.label("deadline_us"),
            status.label("status_code"),
            g.c.responded_t,
            g.c.handler_id,
            g.c.dispatched_t,
            g.c.accepted_t,
            func.coalesce(g.c.accepted_on_time, 0).label("accepted_on_time"),
            g.c.member_code,
            g.c.done_t,
            g.c.rated_t,
            (g.c.stars_code - 1).label("stars"),
            g.c.verdict,
            func.coalesce(g.c.reopened, 0).label("reopened"),
            g.c.closed_t,
            g.c.cancelled_t,
            func.coalesce(g.c.escalations, 0).label("escalations"),
            func.coalesce(g.c.auto_closed, 0).label("auto_closed"),
            func.coalesce(rv.c.opened, 0).label("revisits_opened"),
            func.coalesce(rv.c.done, 0).label("revisits_done"),
            flag(and_(status == _CODE[CANCELLED], g.c.responded_t.is_(None))).label(
                "cancelled_unhandled"
            ),
            flag(and_(g.c.responded_t.isnot(None),
                      g.c.responded_t <= submitted + dispatch_us)).label("responded_on_time"),
            flag(and_(g.c.done_t.isnot(None), g.c.accepted_t.isnot(None),
                      g.c.done_t <= g.c.accepted_t + deadline_us)).label("done_on_time"),
        )
        .select_from(Order)
        .join(hg, hg.id == Order.handling_grid_id)
        .join(og, og.id == Order.grid_id)
        .outerjoin(g, g.c.oid == Order.id)
        .outerjoin(rv, rv.c.oid == Order.id)
        .where(*cohort)
    )


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _at(us: int | None) -> datetime | None:
    return None if us is None else EPOCH + timedelta(microseconds=int(us))


async def load_orders(
    session: AsyncSession, settings: Settings, scope: Scope, period: Period
) -> list[OrderFacts]:
    """The cohort of ``period`` in ``scope``: the 工单 rows (:func:`order_rows`), by id."""
    await custom_plans(session)
    clocks = await cohort_clocks(session, settings, scope, period)
    if not clocks:
        return []
    q = order_rows(scope, period, clocks).subquery("o")
    rows = (await session.execute(select(q).order_by(q.c.id))).all()
    out = []
    for r in rows:
        member = None if r.member_code is None else int(r.member_code) - 1
        out.append(OrderFacts(
            id=r.id, category=r.category, grid_id=r.grid_id, handling_grid_id=r.handling_grid_id,
            building_id=r.building_id, source=r.source, channel=r.channel,
            submitted_at=r.created_at,
            dispatch_minutes=int(r.dispatch_us) // MINUTE_US,
            accept_minutes=int(r.accept_us) // MINUTE_US,
            deadline_hours=int(r.deadline_us) // HOUR_US,
            responded_at=_at(r.responded_t), dispatched_at=_at(r.dispatched_t),
            accepted_at=_at(r.accepted_t), accepted_on_time=bool(r.accepted_on_time),
            done_at=_at(r.done_t), rated_at=_at(r.rated_t),
            stars=None if r.stars is None or r.stars < 0 else int(r.stars),
            verdict=None if r.verdict is None else ("rated" if r.verdict else "reopened"),
            reopened=int(r.reopened), closed_at=_at(r.closed_t),
            cancelled_at=_at(r.cancelled_t), escalations=int(r.escalations),
            auto_closed=bool(r.auto_closed),
            status=STATUSES[r.status_code - 1] if r.status_code else SUBMITTED,
            handler_id=None if r.handler_id is None else int(r.handler_id),
            member_id=member if member else None,
            room=r.room, resident_id=r.resident_id,
            cancelled_unhandled=bool(r.cancelled_unhandled),
            responded_on_time=bool(r.responded_on_time),
            done_on_time=bool(r.done_on_time),
        ))
    return out


#: The sums of :func:`cohort_figures`, each over the cohort's orders (rows of :func:`order_rows`).
def _sums(c: Any) -> list[Any]:
    rated = c.stars >= 0
    return [
        func.count(),                                                  # received
        func.sum(flag(c.status_code == _CODE[CANCELLED])),             # cancelled
        func.sum(1 - c.cancelled_unhandled),                           # response: den
        func.sum(c.responded_on_time),                                 # response: num
        func.sum(flag(c.accepted_t.isnot(None))),                      # accepted
        func.sum(flag(and_(c.accepted_t.isnot(None), c.accepted_on_time == 1))),
        func.sum(flag(c.done_t.isnot(None))),                          # done
        func.sum(c.done_on_time),                                      # done on time
        func.sum(flag(c.status_code.in_([_CODE[s] for s in FINISHED]))),  # completion: num
        func.sum(flag(c.verdict.isnot(None))),                         # verdicts
        func.sum(flag(c.verdict == 1)),                                # resolved
        func.sum(flag(rated)),                                         # rated
        func.sum(flag(and_(rated, c.stars >= SATISFIED_STARS))),       # satisfied
        func.sum(c.revisits_opened),
        func.sum(c.revisits_done),
        func.sum(flag(c.escalations > 0)),                             # escalated
        func.sum(c.auto_closed),
    ]


_N = 17
_SPANS = {"dispatch": "dispatched_t", "accept": "accepted_t", "done": "done_t",
          "closed": "closed_t"}


def cohort_statement(
    scope: Scope,
    period: Period,
    clocks: dict[tuple[str, int], Clocks],
    *,
    naive: bool = False,
    ordered_sets: bool = False,
) -> Any:
    """One statement: the sums per (child grid, category, channel, source, level reached of
    escalated orders), the median and p90 (nearest rank) of each time per child grid and for
    the whole subtree ('*'), and per building the orders and ratings (hot spots)."""
    # Read once by every part below (PostgreSQL; SQLite materialises a CTE used more than once).
    f = order_rows(scope, period, clocks, naive=naive).cte("f").prefix_with(
        "MATERIALIZED", dialect="postgresql"
    )
    c = f.c
    s_null, i_null = cast(null(), String), cast(null(), BigInteger)
    sums = select(
        literal("a", String).label("kind"), c.child, c.category, c.channel, c.source,
        c.escalated_community, c.escalated_depth, *_sums(c),
    ).group_by(c.child, c.category, c.channel, c.source, c.escalated_community,
               c.escalated_depth)
    pad = [i_null] * (_N - 3)
    buildings = select(
        literal("b", String), s_null, s_null, s_null, s_null, c.building_id, i_null,
        func.count(), func.sum(flag(c.stars >= 0)),
        func.sum(flag(c.stars >= SATISFIED_STARS)), *pad,
    ).group_by(c.building_id)
    if ordered_sets:
        # PostgreSQL: percentile_disc(p) is the first sorted value whose cumulative share
        # reaches p, the one at position ⌈p·n⌉: the nearest rank (the replay oracle checks
        # it). One sort per group, no window pass.
        quantiles = []
        for span, col in _SPANS.items():
            for key in (c.child, literal("*", String)):
                q = select(literal("q", String), key, literal(span, String), s_null, s_null,
                           func.percentile_disc(0.5).within_group(c[col] - c.submitted_t),
                           func.percentile_disc(0.9).within_group(c[col] - c.submitted_t),
                           *([i_null] * _N)).where(c[col].isnot(None))
                quantiles.append(q.group_by(key) if key is c.child else q)
        return union_all(sums, buildings, *quantiles)
    spans = [
        select(key, literal(span, String).label("span"), (c[col] - c.submitted_t).label("v"))
        .where(c[col].isnot(None))
        for span, col in _SPANS.items()
        for key in (c.child, literal("*", String))
    ]
    u = union_all(*spans).subquery("u")
    ranked = select(
        u.c.child, u.c.span, u.c.v,
        func.row_number().over(partition_by=(u.c.child, u.c.span), order_by=u.c.v).label("rn"),
        func.count().over(partition_by=(u.c.child, u.c.span)).label("n"),
    ).subquery("r")
    r = ranked.c
    median, p90 = (r.n + 1) // 2, (9 * r.n + 9) // 10  # ⌈n/2⌉, ⌈9n/10⌉
    pct = (
        select(literal("p", String), r.child, r.span, s_null, s_null, r.rn, r.n, r.v,
               *([i_null] * (_N - 1)))
        .where(or_(r.rn == median, r.rn == p90))
    )
    return union_all(sums, buildings, pct)


@dataclass
class CohortFigures:
    """The order figures of a subtree's cohort: per child grid key ('' the root's own grid),
    the whole subtree under '*', and per building (orders, rated, satisfied)."""

    figures: dict[str, Figures]
    categories: dict[str, tuple[int, int, int]]
    buildings: dict[int, tuple[int, int, int]]


async def cohort_figures(
    session: AsyncSession, settings: Settings, scope: Scope, period: Period, *,
    naive: bool = False,
) -> CohortFigures:
    """The order figures of ``period`` for the subtree and each child grid (one statement)."""
    figures: dict[str, Figures] = defaultdict(Figures)
    out = CohortFigures(figures, {}, {})
    await custom_plans(session)
    clocks = await cohort_clocks(session, settings, scope, period)
    if not clocks:
        return out
    level_of = {(g.community_id, g.depth): scope.levels[g.id] for g in scope.grids.values()}
    counters: dict[str, dict[str, Counter[str]]] = defaultdict(
        lambda: {"category": Counter(), "channel": Counter(), "source": Counter(),
                 "level": Counter()})
    sums: dict[str, list[int]] = defaultdict(lambda: [0] * _N)
    categories: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    times: dict[str, dict[str, dict[str, float | None]]] = defaultdict(dict)
    statement = cohort_statement(
        scope, period, clocks, naive=naive,
        ordered_sets=session.get_bind().dialect.name == "postgresql")
    for row in (await session.execute(statement)).all():
        kind, child, a, b, src, lc, ld, *n = row
        if kind == "b":
            out.buildings[int(lc)] = (int(n[0]), int(n[1]), int(n[2]))
            continue
        if kind == "q":  # the median and the p90 (PostgreSQL)
            for name, value in (("median", lc), ("p90", ld)):
                if value is not None:
                    times[child].setdefault(a, {})[name] = int(value) / 10**6 / 60
            continue
        if kind == "p":  # rank lc of ld values: the median, the p90 or both
            minutes = int(n[0]) / 10**6 / 60
            if lc == (ld + 1) // 2:
                times[child].setdefault(a, {})["median"] = minutes
            if lc == (9 * ld + 9) // 10:
                times[child].setdefault(a, {})["p90"] = minutes
            continue
        values = [int(x or 0) for x in n]
        for key in (child, "*"):
            acc = sums[key]
            for i, value in enumerate(values):
                acc[i] += value
            cnt = counters[key]
            cnt["category"][a] += values[0]
            cnt["channel"][b or "—"] += values[0]
            cnt["source"][src] += values[0]
            if lc is not None:
                cnt["level"][level_of.get((lc, ld), "—")] += values[15]
        cat = categories[a]
        cat[0] += values[0]
        cat[1] += values[11]
        cat[2] += values[12]
    for key, v in sums.items():
        f = figures[key]
        f.received, f.cancelled = v[0], v[1]
        f.response = Ratio(v[3], v[2])
        f.on_time_acceptance = Ratio(v[5], v[4])
        f.done = v[6]
        f.on_time_completion = Ratio(v[7], v[6])
        f.completion = Ratio(v[8], v[0] - v[1])
        f.resolution = Ratio(v[10], v[9])
        f.satisfaction = Ratio(v[12], v[11])
        f.revisits_opened, f.revisits_done = v[13], v[14]
        f.escalated, f.auto_closed = v[15], v[16]
        cnt = counters[key]
        f.by_category = _ranked(+cnt["category"])
        f.by_channel = _ranked(+cnt["channel"])
        f.by_source = _ranked(+cnt["source"])
        f.escalated_by_level = _ranked(+cnt["level"])
        for span in TIME_SPANS:
            f.times[span] = {"median": times[key].get(span, {}).get("median"),
                             "p90": times[key].get(span, {}).get("p90")}
    out.categories = {k: (v[0], v[1], v[2]) for k, v in categories.items()}
    return out


def duty_figures(
    f: Figures,
    patrols: Sequence[PatrolFact],
    visits: Sequence[VisitFact],
    whistles: Sequence[WhistleFact],
) -> Figures:
    """Add the duty KPIs to ``f`` (patrol coverage, visit completion, whistle answers)."""
    f.patrol_coverage = Ratio(
        sum(p.runs for p in patrols if p.status == RUN_CHECKED_IN), sum(p.runs for p in patrols)
    )
    f.patrols_late = sum(p.runs for p in patrols if p.late)
    f.patrols_missed = sum(p.runs for p in patrols if p.status in (RUN_MISSED, RUN_SKIPPED))
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
    late = and_(PatrolRun.checked_in_at.isnot(None),
                PatrolRun.checked_in_at > PatrolRun.deadline_at)
    patrols = [
        PatrolFact(gid, status, bool(is_late), int(runs))
        for gid, status, is_late, runs in (
            await session.execute(
                select(PatrolRun.grid_id, PatrolRun.status, flag(late), func.count())
                .where(
                    scope.in_subtree(PatrolRun.grid_id),
                    PatrolRun.due_at >= period.start,
                    PatrolRun.due_at < period.end,
                )
                .group_by(PatrolRun.grid_id, PatrolRun.status, flag(late))
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
    add_visits(members.values(), visits)
    # Points of the period: the one definition of bot.core.points (the ledger's rows).
    grid_ids = sorted({m.grid_id for m in members.values()})
    for line in await standings(session, grid_ids, period.start, period.end,
                                roles=(ROLE_MEMBER,)):
        if line.person_id in members:
            members[line.person_id].points = line.points
    return sorted(members.values(), key=lambda m: (-m.points, m.name, m.person_id))


def add_visits(members: Iterable[MemberFigures], visits: Sequence[VisitFact]) -> None:
    """Count the visits due and logged (at most the due) of the period for their members."""
    by_id = {m.person_id: m for m in members}
    for v in visits:
        if v.member_id in by_id:
            by_id[v.member_id].visits_due += v.due
            by_id[v.member_id].visits_logged += min(v.logged, v.due)


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
    wanted = set(people)
    if not wanted:
        return {}
    longest = await session.scalar(select(func.max(ClockSetting.rate_days)))
    settings_days = settings.order_rate_days if settings is not None else 0
    since = start - timedelta(days=max(longest or 0, settings_days, 7) + 1)
    actors = list(wanted)
    out: dict[int, tuple[int, int, list[int]]] = {}
    # Orders accepted and done in the period, per person (each order once).
    for pid, accepted, done in (
        await session.execute(
            select(
                OrderEvent.actor_id,
                func.count(distinct(case((OrderEvent.action.in_(ACCEPT_ACTIONS),
                                          OrderEvent.order_id)))),
                func.count(distinct(case((OrderEvent.action == "done", OrderEvent.order_id)))),
            )
            .where(
                OrderEvent.actor_id.in_(actors),
                OrderEvent.created_at >= start,
                OrderEvent.created_at < end,
                OrderEvent.action.in_((*ACCEPT_ACTIONS, "done")),
            )
            .group_by(OrderEvent.actor_id)
        )
    ).all():
        if pid is not None:
            out[pid] = (int(accepted), int(done), [])
    # Ratings of the period, each for whoever did the last "done" before it on that order
    # (in the events' order), on orders these people took or did since ``since``.
    rate, did = aliased(OrderEvent), aliased(OrderEvent)
    doer = (
        select(did.actor_id)
        .where(
            did.order_id == rate.order_id,
            did.action == "done",
            or_(did.created_at < rate.created_at,
                and_(did.created_at == rate.created_at, did.id < rate.id)),
        )
        .order_by(did.created_at.desc(), did.id.desc())
        .limit(1)
        .correlate(rate)
        .scalar_subquery()
    )
    took = select(OrderEvent.order_id).where(
        OrderEvent.actor_id.in_(actors),
        OrderEvent.created_at >= since,
        OrderEvent.created_at < end,
        OrderEvent.action.in_((*ACCEPT_ACTIONS, "done")),
    )
    for pid, note in (
        await session.execute(
            select(doer, rate.note)
            .where(
                rate.action == "rate",
                rate.created_at >= start,
                rate.created_at < end,
                digits(rate.note),
                rate.order_id.in_(took),
            )
            .order_by(rate.order_id, rate.created_at, rate.id)
        )
    ).all():
        if pid in wanted:
            out.setdefault(pid, (0, 0, []))[2].append(int(note))
    return out


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


def child_key(scope: Scope, grid_id: int) -> str:
    """The id (text) of the child grid of the subtree that ``grid_id`` lies under ('' for the
    root itself): the key :func:`order_rows` gives the orders."""
    grid = scope.grids.get(grid_id)
    if grid is None:
        return ""
    return grid.path[len(scope.path):].split("/", 1)[0]


def _figures(
    orders: CohortFigures,
    duties: tuple[Sequence[PatrolFact], Sequence[VisitFact], Sequence[WhistleFact]],
    key: str,
    keys: dict[int, str],
) -> Figures:
    """The figures of one child grid (``key``) or the whole subtree ('*')."""

    def keep(gid: int) -> bool:
        return key == "*" or keys.get(gid) == key

    patrols, visits, whistles = duties
    f = orders.figures.get(key) or Figures()
    return duty_figures(
        replace(f),
        [p for p in patrols if keep(p.grid_id)],
        [v for v in visits if keep(v.grid_id)],
        [w for w in whistles if keep(w.grid_id)],
    )


#: Subtrees of at least this many grids read the report's parts concurrently (PostgreSQL).
#: At Yunfu scale one community (22 grids) took 78 ms p50 sequentially and 95 ms with its
#: parts on four connections; a street has ~350 grids, the city 22,189.
CONCURRENT_FROM_GRIDS = 1000


async def build_report(
    session: AsyncSession,
    settings: Settings,
    scope: Scope,
    period: Period,
    now: datetime,
    *,
    with_orders: bool = True,
    naive: bool = False,
    sequential: bool = False,
) -> Report:
    """The figures of ``scope`` for ``period`` and the period before, per child grid ranked
    by :func:`score`, the orders (the ledger's rows; none with ``with_orders=False``),
    members, hot spots. On PostgreSQL the independent reads run at the same time on one
    snapshot (:func:`bot.reports.snapshot.run_parts`) for a subtree of at least
    :data:`CONCURRENT_FROM_GRIDS` grids; ``sequential=True`` (benchmarks, and the console's
    kept overviews, computed on one core) runs them one after another in ``session``, as on
    SQLite."""
    previous = period.previous()
    await custom_plans(session)

    def orders_of(per: Period) -> Part:
        return lambda s: cohort_figures(s, settings, scope, per, naive=naive)

    async def members_of(s: AsyncSession) -> list[MemberFigures]:
        await custom_plans(s)
        return await load_members(s, scope, period, [], settings)

    async def duties_of(s: AsyncSession, per: Period) -> Any:
        await custom_plans(s)
        return await load_duties(s, scope, per)

    async def cohort_of(s: AsyncSession) -> list[OrderFacts]:
        return await load_orders(s, settings, scope, period) if with_orders else []

    # Independent reads: on PostgreSQL at the same time on one snapshot (bot.reports.snapshot)
    # for a large subtree; a small one's take milliseconds, less than the extra connections
    # cost. The costliest first: with fewer connections than parts, the cheap ones queue.
    current: dict[str, Any] = {}
    before: dict[str, Any] = {}
    (current["orders"], before["orders"], members, current["duties"], before["duties"],
     cohort) = await run_parts(session, [
        orders_of(period), orders_of(previous), members_of,
        lambda s: duties_of(s, period), lambda s: duties_of(s, previous), cohort_of,
    ], concurrent=not sequential and len(scope.grids) >= CONCURRENT_FROM_GRIDS)
    add_visits(members, current["duties"][1])
    keys = {gid: child_key(scope, gid) for gid in scope.ids()}

    def row(grid: Grid | None) -> GridRow:
        key = "*" if grid is None else str(grid.id)
        f = _figures(current["orders"], current["duties"], key, keys)
        p = _figures(before["orders"], before["duties"], key, keys)
        return GridRow(
            grid.id if grid else None,
            grid.code if grid else "*",
            grid.name if grid else scope.name,
            f,
            p,
            score(f, settings.bulletin_weights),
            below=below_floors(f, settings.bulletin_floors),
        )

    total = row(None)
    children = [row(g) for g in scope.children()]
    ranked = sorted(children, key=lambda r: (r.score is None, -(r.score or 0), r.code))
    for n, r in enumerate(ranked, 1):
        r.rank = n if r.score is not None else None
    people = {pid for o in cohort for pid in (o.handler_id, o.member_id, o.resident_id) if pid}
    names: dict[int, str] = {}
    for chunk in _chunks(sorted(people)):
        names.update((await session.execute(
            select(Person.id, Person.name).where(Person.id.in_(chunk)))).all())
    counted: CohortFigures = current["orders"]
    building_ids = sorted({o.building_id for o in cohort} | set(counted.buildings))
    buildings: dict[int, Building] = {}
    for chunk in _chunks(building_ids):
        buildings.update(
            (b.id, b)
            for b in (await session.scalars(select(Building).where(Building.id.in_(chunk)))).all()
        )

    def hot(counts: dict[Any, tuple[int, int, int]], name_of: Any) -> list[Hotspot]:
        spots = [Hotspot(str(k), name_of(k), n, Ratio(sat, rated))
                 for k, (n, rated, sat) in counts.items()]
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
        categories=hot(counted.categories, lambda k: k),
        buildings=hot(
            counted.buildings,
            lambda k: buildings[k].name if k in buildings else str(k),
        ),
        names=names,
        buildings_by_id=buildings,
        made_at=now,
        weights=dict(settings.bulletin_weights),
    )
