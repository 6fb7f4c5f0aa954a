"""/metrics: what an operator watches, in the Prometheus text format."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bot.ports import Inbound
from models import OutboxMessage, utcnow
from tests.conftest import Harness


async def scrape(h: Harness) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    transport = httpx.ASGITransport(app=h.app.web_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gridbot") as client:
        answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


async def test_an_operator_sees_intake_sends_and_the_outbox(harness: Harness) -> None:
    event = Inbound(channel="memory", chat_id="u1", user_id="u1", text="/help",
                    dedupe_key="m-1", display_name="访客")
    await harness.app.intake(event)
    await harness.flush()
    # A row that should have gone out 90 s ago: delivery is falling behind.
    async with harness.app.sessionmaker() as session, session.begin():
        session.add(OutboxMessage(channel="memory", chat_id="u2", payload={"text": "x"},
                                  not_before=utcnow() - timedelta(seconds=90)))
    m = await scrape(harness)
    assert m[("gridbot_updates_total", (("channel", "memory"), ("outcome", "ok")))] == 1
    assert m[("gridbot_intake_seconds_count", (("channel", "memory"),))] == 1
    assert m[("gridbot_messages_total", (("channel", "memory"), ("event", "sent")))] >= 1
    assert m[("gridbot_outbox_rows", (("channel", "memory"), ("status", "pending")))] == 1
    assert 90 <= m[("gridbot_outbox_oldest_pending_seconds", ())] < 3600
    assert m[("gridbot_database_up", ())] == 1
    assert m[("gridbot_channel_ready", (("channel", "memory"),))] == 1


async def test_a_failed_intake_is_counted_as_an_error(harness: Harness) -> None:
    async def broken(event: Inbound) -> None:
        raise RuntimeError("database went away")

    timed = harness.app.metrics.timed(broken)  # type: ignore[arg-type]
    event = Inbound(channel="memory", chat_id="u1", user_id="u1", text="hi", dedupe_key="m-2")
    with contextlib.suppress(RuntimeError):
        await timed(event)
    m = await scrape(harness)
    assert m[("gridbot_updates_total", (("channel", "memory"), ("outcome", "error")))] == 1
