"""``/metrics`` in the Prometheus text format: what an operator watches.

One registry per service (no process-global state). Counters and the intake histogram are
kept as things happen; the outbox depth, the scheduler's leadership and each channel's set-up
state are read at scrape time.

- ``gridbot_intake_seconds{channel}`` (histogram): time the core took to handle one inbound
  update, stored with its replies;
- ``gridbot_updates_total{channel,outcome}``: inbound updates handled, ``ok`` or ``error`` (not
  stored: the platform delivers it again);
- ``gridbot_messages_total{channel,event}``: this instance's sends, ``sent``, ``failed`` (for
  good) or ``retry_after`` (a 429 / flood answer);
- ``gridbot_outbox_rows{channel,status}``: outbox rows ``pending``, ``sending`` (claimed) or
  ``failed``, of all instances;
- ``gridbot_outbox_oldest_pending_seconds``: age of the oldest due pending row (0 when none):
  delivery falling behind;
- ``gridbot_scheduler_leader``: 1 when this instance leads the duty scheduler;
- ``gridbot_channel_ready{channel}``: 1 when the channel is set up (0: set-up being retried);
- ``gridbot_database_up``: 1 when the database answered this scrape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.ports import HandleResult, Inbound, Intake
from models import OutboxMessage

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Intake latency buckets, seconds (a reply within a second or two is what people feel).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Snapshot:
    """What a scrape reads from the database and the service, gathered before rendering."""

    database_up: bool = False
    outbox: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest_pending_seconds: float = 0.0
    sent: Mapping[tuple[str, str], int] = field(default_factory=dict)
    leader: bool | None = None
    channels: Mapping[str, bool] = field(default_factory=dict)


class _SnapshotCollector(Collector):
    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterable[Metric]:
        s = self.snapshot
        up = GaugeMetricFamily("gridbot_database_up", "1 when the database answered")
        up.add_metric([], 1.0 if s.database_up else 0.0)
        yield up
        rows = GaugeMetricFamily(
            "gridbot_outbox_rows", "Outbox rows by channel and status",
            labels=["channel", "status"],
        )
        for (channel, status), n in sorted(s.outbox.items()):
            rows.add_metric([channel, status], float(n))
        yield rows
        oldest = GaugeMetricFamily(
            "gridbot_outbox_oldest_pending_seconds", "Age of the oldest due pending outbox row"
        )
        oldest.add_metric([], s.oldest_pending_seconds)
        yield oldest
        sent = CounterMetricFamily(
            "gridbot_messages", "Outbox sends by this instance", labels=["channel", "event"]
        )
        for (channel, event), n in sorted(s.sent.items()):
            sent.add_metric([channel, event], float(n))
        yield sent
        if s.leader is not None:
            leader = GaugeMetricFamily("gridbot_scheduler_leader", "1 when leading the scheduler")
            leader.add_metric([], 1.0 if s.leader else 0.0)
            yield leader
        ready = GaugeMetricFamily(
            "gridbot_channel_ready", "1 when the channel is set up", labels=["channel"]
        )
        for name, ok in sorted(s.channels.items()):
            ready.add_metric([name], 1.0 if ok else 0.0)
        yield ready


class Metrics:
    """The service's metrics (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.intake_seconds = Histogram(
            "gridbot_intake_seconds",
            "Seconds the core took to handle one inbound update",
            ["channel"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.updates = Counter(
            "gridbot_updates", "Inbound updates handled", ["channel", "outcome"],
            registry=self.registry,
        )
        self._snapshot = _SnapshotCollector()
        self.registry.register(self._snapshot)

    def timed(self, intake: Intake) -> Intake:
        """``intake`` with its latency and outcome counted."""

        async def timed_intake(event: Inbound) -> HandleResult:
            started = time.perf_counter()
            outcome = "error"
            try:
                result = await intake(event)
                outcome = "ok"
                return result
            finally:
                self.intake_seconds.labels(event.channel).observe(time.perf_counter() - started)
                self.updates.labels(event.channel, outcome).inc()

        return timed_intake

    async def render(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        now: datetime,
        sent: Mapping[tuple[str, str], int],
        leader: bool | None,
        channels: Mapping[str, bool],
    ) -> bytes:
        """The exposition text, with the database figures read now."""
        snap = Snapshot(sent=dict(sent), leader=leader, channels=dict(channels))
        try:
            async with sessionmaker() as session:
                counts = await session.execute(
                    select(OutboxMessage.channel, OutboxMessage.status, func.count())
                    .where(OutboxMessage.status.in_(("pending", "sending", "failed")))
                    .group_by(OutboxMessage.channel, OutboxMessage.status)
                )
                snap.outbox = {(c, s): int(n) for c, s, n in counts.all()}
                oldest = await session.scalar(
                    select(func.min(OutboxMessage.not_before)).where(
                        OutboxMessage.status == "pending", OutboxMessage.not_before <= now
                    )
                )
            if oldest is not None:
                snap.oldest_pending_seconds = max((now - oldest).total_seconds(), 0.0)
            snap.database_up = True
        except Exception as err:
            log.warning("metrics: the database did not answer (%s)", type(err).__name__)
        self._snapshot.snapshot = snap
        return generate_latest(self.registry)
