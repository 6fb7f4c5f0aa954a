"""The schedules of the duty jobs as APScheduler triggers (public API only)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger


def patrol_trigger(schedule: str, zone: str) -> CronTrigger:
    """A patrol plan's 5-field cron schedule (minute hour day month day-of-week) in its zone.

    Use day names (``mon,wed,fri``) for days of the week: APScheduler numbers them from
    Monday = 0, unlike crontab."""
    return CronTrigger.from_crontab(schedule, timezone=ZoneInfo(zone))


def visit_trigger(frequency: str, starts_at: datetime, zone: str) -> BaseTrigger:
    """A visit plan's trigger: every 1 or 2 weeks, or monthly on the start's day, from its
    first due time (local wall clock of the plan's zone)."""
    tz = ZoneInfo(zone)
    first = starts_at.astimezone(tz)
    if frequency == "monthly":
        day = str(first.day) if first.day <= 28 else "last"
        return CronTrigger(
            day=day, hour=first.hour, minute=first.minute, timezone=tz, start_date=first
        )
    weeks = 2 if frequency == "fortnightly" else 1
    return IntervalTrigger(weeks=weeks, start_date=first, timezone=tz)


def sweep_trigger(seconds: int, zone: str) -> IntervalTrigger:
    """Every ``seconds``."""
    return IntervalTrigger(seconds=seconds, timezone=ZoneInfo(zone))


def daily_trigger(hour: int, minute: int, zone: str) -> CronTrigger:
    """Every day at ``hour:minute`` in ``zone``."""
    return CronTrigger(hour=hour, minute=minute, timezone=ZoneInfo(zone))
