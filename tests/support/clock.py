"""A clock the test moves by hand (handed to the service as its ``clock``; no sleeps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

SH = ZoneInfo("Asia/Shanghai")


class Clock:
    """Now is what the test says it is."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now if now is not None else datetime(2026, 11, 22, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def set(self, *args: int) -> None:
        """Local (Shanghai) wall time."""
        self.now = datetime(*args, tzinfo=SH)  # type: ignore[misc]

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
