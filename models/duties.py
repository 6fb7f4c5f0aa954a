"""Duties and timers: patrols, key households and visits, order clocks, quiet hours, the whistle,
notices, and the scheduler's own bookkeeping (lease, job store, fired-once guard).

These tables are the truth; the APScheduler job store (``apscheduler_jobs``, declared here so the
migrations own it) is rebuilt from them at start-up.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    Unicode,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow

DEFAULT_TZ = "Asia/Shanghai"

# Household kinds (display names come from the catalogs: ``household.kind.<code>``).
HOUSEHOLD_KINDS = (
    "elderly_alone",
    "empty_nest",
    "disabled",
    "child",
    "pregnant",
    "low_income",
    "other",
)
FREQUENCIES = ("weekly", "fortnightly", "monthly")
#: The Chinese names people write for the kinds and frequencies (CSV import, chat commands).
KIND_NAMES = {
    "独居老人": "elderly_alone",
    "空巢老人": "empty_nest",
    "残疾人": "disabled",
    "困境儿童": "child",
    "孕产妇": "pregnant",
    "低保户": "low_income",
    "重点户": "other",
}
FREQUENCY_NAMES = {"每周": "weekly", "每两周": "fortnightly", "每月": "monthly"}

RUN_DUE = "due"
RUN_CHECKED_IN = "checked_in"
RUN_MISSED = "missed"
#: The reminder fell due while the service was down for longer than the misfire grace.
RUN_SKIPPED = "skipped"

VISIT_FINE = "fine"
VISIT_HELP = "help"

ANSWER_COMING = "coming"
ANSWER_CANNOT = "cannot"


class PatrolPlan(Base):
    """A recurring patrol (巡查) of a grid: when (5-field cron, in ``timezone``), who, and how
    many minutes after the start the check-in is due."""

    __tablename__ = "patrol_plan"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str | None] = mapped_column(String(64), unique=True)
    grid_id: Mapped[int] = mapped_column(ForeignKey("grid.id", ondelete="CASCADE"), index=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), index=True)
    schedule: Mapped[str] = mapped_column(String(100))
    deadline_minutes: Mapped[int] = mapped_column(default=240)
    timezone: Mapped[str] = mapped_column(String(64), default=DEFAULT_TZ)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class PatrolRun(Base):
    """One occurrence of a patrol plan and its check-in (note, photo, location)."""

    __tablename__ = "patrol_run"
    __table_args__ = (
        UniqueConstraint("plan_id", "due_at"),
        Index("ix_patrol_run_status_deadline", "status", "deadline_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("patrol_plan.id", ondelete="CASCADE"))
    grid_id: Mapped[int] = mapped_column(ForeignKey("grid.id", ondelete="CASCADE"), index=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    due_at: Mapped[datetime] = mapped_column(index=True)
    deadline_at: Mapped[datetime] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default=RUN_DUE)
    checked_in_at: Mapped[datetime | None] = mapped_column()
    checked_in_by: Mapped[int | None] = mapped_column(ForeignKey("person.id"))
    note: Mapped[str | None] = mapped_column(Text)
    photo: Mapped[str | None] = mapped_column(String(300))
    latitude: Mapped[float | None] = mapped_column()
    longitude: Mapped[float | None] = mapped_column()
    head_told_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Household(Base):
    """A key household (独居老人, 残疾人, 困境儿童 …). ``private``: its address and notes go only
    to the paired member, the grid's workers and heads."""

    __tablename__ = "household"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    grid_id: Mapped[int] = mapped_column(ForeignKey("grid.id", ondelete="CASCADE"), index=True)
    building_id: Mapped[int] = mapped_column(ForeignKey("building.id"))
    person_id: Mapped[int | None] = mapped_column(ForeignKey("person.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(100))
    address: Mapped[str] = mapped_column(String(500), default="")
    notes: Mapped[str] = mapped_column(Text, default="")
    private: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class VisitPlan(Base):
    """A household's visits (走访): frequency, the paired member (结对), the first due time."""

    __tablename__ = "visit_plan"
    __table_args__ = (UniqueConstraint("household_id", "member_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    household_id: Mapped[int] = mapped_column(ForeignKey("household.id", ondelete="CASCADE"))
    member_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), index=True)
    frequency: Mapped[str] = mapped_column(String(16))
    starts_at: Mapped[datetime] = mapped_column()
    timezone: Mapped[str] = mapped_column(String(64), default=DEFAULT_TZ)
    active: Mapped[bool] = mapped_column(default=True)
    last_visit_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class VisitLog(Base):
    """A visit done: "all fine" or "needs help" (which opened ``order_id``)."""

    __tablename__ = "visit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    plan_id: Mapped[int] = mapped_column(
        ForeignKey("visit_plan.id", ondelete="CASCADE"), index=True
    )
    household_id: Mapped[int] = mapped_column(ForeignKey("household.id", ondelete="CASCADE"))
    member_id: Mapped[int] = mapped_column(ForeignKey("person.id"))
    outcome: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    order_id: Mapped[int | None] = mapped_column(
        ForeignKey("orders.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ClockSetting(Base):
    """Order clocks for a category (``None`` = any) at a tree depth (``None`` = any level).

    The most specific row wins. ``dispatch_minutes``: not dispatched → auto-broadcast;
    ``accept_minutes``: not accepted → escalate one level; ``overdue_escalate_minutes``: after
    the deadline reminder, escalate; ``rate_days``: done but unrated → auto-close.
    """

    __tablename__ = "clock_setting"
    __table_args__ = (UniqueConstraint("category", "depth"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    category: Mapped[str | None] = mapped_column(String(32))
    depth: Mapped[int | None] = mapped_column()
    dispatch_minutes: Mapped[int | None] = mapped_column()
    accept_minutes: Mapped[int | None] = mapped_column()
    deadline_hours: Mapped[int | None] = mapped_column()
    overdue_escalate_minutes: Mapped[int | None] = mapped_column()
    rate_days: Mapped[int | None] = mapped_column()


class QuietHours(Base):
    """When non-urgent pushes wait, per community (default 22:00–07:00)."""

    __tablename__ = "quiet_hours"

    community_id: Mapped[int] = mapped_column(
        ForeignKey("community.id", ondelete="CASCADE"), primary_key=True
    )
    start: Mapped[str] = mapped_column(String(5), default="22:00")
    end: Mapped[str] = mapped_column(String(5), default="07:00")
    timezone: Mapped[str] = mapped_column(String(64), default=DEFAULT_TZ)


class Whistle(Base):
    """A roll-call (吹哨报到) of every member and worker of a grid subtree."""

    __tablename__ = "whistle"

    id: Mapped[int] = mapped_column(primary_key=True)
    grid_id: Mapped[int] = mapped_column(ForeignKey("grid.id", ondelete="CASCADE"))
    caller_id: Mapped[int] = mapped_column(ForeignKey("person.id"))
    message: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(default=1)
    reminded_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WhistleAnswer(Base):
    """One person called by a whistle, and their answer (``None`` until they answer)."""

    __tablename__ = "whistle_answer"
    __table_args__ = (UniqueConstraint("whistle_id", "person_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    whistle_id: Mapped[int] = mapped_column(ForeignKey("whistle.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    answer: Mapped[str | None] = mapped_column(String(16))
    answered_at: Mapped[datetime | None] = mapped_column()


class Notice(Base):
    """A notice (宣传) to every resident of a grid subtree; counts filled in once delivered."""

    __tablename__ = "notice"

    id: Mapped[int] = mapped_column(primary_key=True)
    grid_id: Mapped[int] = mapped_column(ForeignKey("grid.id", ondelete="CASCADE"))
    sender_id: Mapped[int] = mapped_column(ForeignKey("person.id"))
    text: Mapped[str] = mapped_column(Text)
    recipients: Mapped[int] = mapped_column(default=0)
    delivered: Mapped[int | None] = mapped_column()
    unreachable: Mapped[int | None] = mapped_column()
    reported_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DutyFire(Base):
    """A scheduled action that has happened (kind, key, due time): the never-twice guard.

    Every job inserts its row first, in the same transaction as what it does; a second firing
    (a restart before APScheduler stored the next run time, or a second process) finds the row.
    """

    __tablename__ = "duty_fire"
    __table_args__ = (UniqueConstraint("kind", "key", "due_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(24))
    key: Mapped[str] = mapped_column(String(64))
    due_at: Mapped[datetime] = mapped_column()
    fired_at: Mapped[datetime] = mapped_column(default=utcnow)
    late: Mapped[bool] = mapped_column(default=False)


class SchedulerLease(Base):
    """Who runs the scheduler for this database, until when (renewed by the holder)."""

    __tablename__ = "scheduler_lease"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column()
    acquired_at: Mapped[datetime] = mapped_column()


class SchedulerJob(Base):
    """APScheduler's ``SQLAlchemyJobStore`` table, declared here so that migrations create it
    (the store's own definition: same names and types)."""

    __tablename__ = "apscheduler_jobs"

    id: Mapped[str] = mapped_column(Unicode(191), primary_key=True)
    next_run_time: Mapped[float | None] = mapped_column(Float(25), index=True)
    job_state: Mapped[bytes] = mapped_column(LargeBinary)
