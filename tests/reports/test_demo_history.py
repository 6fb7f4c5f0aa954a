"""The demo's invented month: loaded with the demo community when ``demo_history`` is on, so
陈书记 can ask for last month's bulletin in the web chat and see figures; consistent with the
order tables (each order's status is its last event's) and the same month every time."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from bot.app import Gridbot
from bot.channels.memory import MemoryChannel
from bot.config import load_settings
from bot.reports.kpi import month_before
from models import Order, OrderEvent, PointsEntry, utcnow
from tests.conftest import Harness
from tests.duties.conftest import SH


async def test_the_demo_admin_gets_a_bulletin_with_figures(
    database_url: str, tmp_path: Path
) -> None:
    settings = load_settings(database_url=database_url, demo=True, demo_history=True,
                             secret_key="k", media_dir=tmp_path / "m", qr_dir=tmp_path / "q")
    app = Gridbot(settings)  # the wall clock: "last month" is the real last month
    await app.prepare()
    app.add_channel(MemoryChannel())
    try:
        h = Harness(app, app.channels["memory"])
        period = month_before(utcnow(), SH)
        async with app.sessionmaker() as session:
            orders = (await session.scalars(select(Order))).all()
            assert 20 <= len(orders) <= 36
            assert all(period.start <= o.created_at < period.end for o in orders)
            for o in orders:
                last = await session.scalar(
                    select(OrderEvent.to_status).where(OrderEvent.order_id == o.id)
                    .order_by(OrderEvent.created_at.desc(), OrderEvent.id.desc()).limit(1))
                assert last == o.status, o.id
            assert await session.scalar(select(func.count()).select_from(PointsEntry))
        chen = await h.login("p-chen-shuji")
        await chen.send("/bulletin")
        text = chen.inbox[-4].text + chen.inbox[-3].text
        assert text.startswith(f"📊 新华社区 {period.label} 月初通报")
        assert f"受理 {len(orders)} 件" in text
        assert "1. " in text and chen.inbox[-1].message.document
    finally:
        await app.engine.dispose()
