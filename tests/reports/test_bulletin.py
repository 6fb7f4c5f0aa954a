"""The monthly bulletin (月初通报): asked for with /bulletin by the community admin and by grid
heads, and sent by the scheduler on day 1 to every admin and head exactly once; bad requests
get a polite answer and change nothing."""

from __future__ import annotations

import io
from datetime import datetime

from openpyxl import load_workbook
from PIL import Image
from sqlalchemy import select

from bot.media import MediaStore
from models import DutyFire, OutboxMessage
from tests.conftest import Harness
from tests.duties import conftest as duties_conftest
from tests.duties.conftest import SH, DutyHarness
from tests.reports.history import write_history

duty = duties_conftest.duty  # the duty harness (controllable clock, manual scheduler)

HEADS = ("p-liu-wanggezhang", "p-luo-jianguo", "p-he-xiuying", "p-zhou-zhuren")


def read(harness: Harness, ref: str | None) -> bytes:
    assert ref is not None
    path = MediaStore(harness.app.settings.media_dir).path(ref)
    assert path is not None, ref
    return path.read_bytes()


async def test_the_admin_asks_for_october(harness: Harness) -> None:
    await write_history(harness.app.sessionmaker)
    chen = await harness.login("p-chen-shuji")
    await chen.send("/bulletin 2026-10")
    sending, bulletin, ranking, more, ledger = chen.inbox[-5:]
    assert sending.text == "📊 正在发送新华社区 2026-10 月初通报……"
    text = "\n\n".join((bulletin.text, ranking.text, more.text))
    assert ranking.text.startswith("三、网格排名") and more.text.startswith("四、热点")
    assert text.startswith("📊 新华社区 2026-10 月初通报")
    assert "受理 8 件（上月 0 件），办结 5 件，取消 1 件。" in text
    assert "主要类别：维修报修 7 件（88%）；安全隐患 1 件（12%）" in text
    assert "响应率：57.1% / —" in text and "满意率：66.7% / —" in text
    assert "三、网格排名（响应率30%；解决率35%；满意率35%）" in text
    assert "1. 第一网格：78.3 分（受理 7，满意率 100.0%）" in text
    assert "2. 第二网格：35.0 分（受理 1，满意率 0.0%）" in text
    assert "—. 第三网格：本月无工单" in text
    assert "第二网格：满意率 0.0%（底线 85%）；按期办结率 0.0%（底线 90%）" in text
    assert "楼栋：翠屏小区1栋 4 件（满意率 100.0%）" in text
    assert "孙建华（第一网格3号微网格）：3 个月无办结" in text
    assert "李党员（" not in text.split("五、")[1]  # worked, rated 4.5
    # The chart as a picture, the ledger as a document.
    png = Image.open(io.BytesIO(read(harness, bulletin.message.photo)))
    assert png.format == "PNG" and png.size[0] > 300
    assert ledger.message.document_name == "新华社区 2026-10 台账.xlsx"
    assert "台账" in ledger.text
    wb = load_workbook(io.BytesIO(read(harness, ledger.message.document)))
    assert wb.sheetnames == ["汇总", "工单", "巡查与走访", "党员积分"]
    assert "电话" not in [c.value for c in wb["工单"][2]]  # no contacts in a chat's ledger


async def test_any_subtree_for_the_admin_only_their_own_for_a_head(harness: Harness) -> None:
    await write_history(harness.app.sessionmaker)
    chen = await harness.login("p-chen-shuji")
    await chen.send("/bulletin 2026年10月 xh-g2")
    assert chen.inbox[-4].text.startswith("📊 第二网格 2026-10 月初通报")
    assert "1. 第二网格1号微网格：35.0 分" in chen.inbox[-3].text

    liu = await harness.login("p-liu-wanggezhang")  # head of 第一网格
    await liu.send("/bulletin 2026-10")
    assert liu.inbox[-4].text.startswith("📊 第一网格 2026-10 月初通报")
    before = len(liu.inbox)
    await liu.send("/bulletin 2026-10 xh-g2")
    assert len(liu.inbox) == before + 1
    assert liu.last().text == "没有编号为 xh-g2 的网格，或它不在您管理的范围内。"


async def test_bad_requests_are_answered_politely(harness: Harness) -> None:
    chen = await harness.login("p-chen-shuji")
    await chen.send("/bulletin 2026-13")
    assert chen.last().text == "“2026-13”不是有效的月份，请写成 2026-10 这样的年-月。"
    await chen.send("/bulletin 2026-10 nowhere")
    assert chen.last().text == "没有编号为 nowhere 的网格，或它不在您管理的范围内。"
    await chen.send("/bulletin 2999-01")
    assert chen.last().text == "2999-01 还没有开始，无法通报。"
    await chen.send("/bulletin 2026-10 xh-g1 extra")
    assert chen.last().text.startswith("用法：/bulletin")
    zhang = await harness.login("p-zhang-ayi")  # a resident
    await zhang.send("/bulletin")
    assert zhang.last().text == "只有网格长和社区管理员可以查看通报。"
    assert all(m.message.document is None for m in chen.inbox + zhang.inbox)
    await chen.send("/help")
    assert "/bulletin [年-月] [网格编号]" in chen.last().text
    await zhang.send("/help")
    assert "/bulletin" not in zhang.last().text


async def test_day_one_every_admin_and_head_once(duty: DutyHarness) -> None:
    h = duty
    await write_history(h.app.sessionmaker)
    users = {k: await h.login(k) for k in (*HEADS, "p-chen-shuji")}
    h.clock.set(2026, 10, 31, 8, 0)
    s = await h.scheduler()
    h.clock.set(2026, 10, 31, 9, 0, 5)  # not day 1: nothing
    await h.tick(s)
    assert not any("月初通报" in t for u in users.values() for t in u.texts())
    h.clock.set(2026, 11, 1, 9, 0, 5)
    await h.tick(s)
    for key, user in users.items():
        bulletins = [m for m in user.inbox if m.text.startswith("📊") and "月初通报" in m.text]
        assert len(bulletins) == 1, (key, user.texts())
        assert bulletins[0].message.photo
        assert user.last().message.document, key
    assert users["p-chen-shuji"].inbox[-4].text.startswith("📊 新华社区 2026-10 月初通报")
    assert users["p-zhou-zhuren"].inbox[-4].text.startswith("📊 新华社区 2026-10 月初通报")
    assert users["p-luo-jianguo"].inbox[-4].text.startswith("📊 第二网格 2026-10 月初通报")
    assert "孙建华" in users["p-liu-wanggezhang"].inbox[-2].text  # the exit list, to heads
    # A second pass, and a restarted scheduler, send nothing more.
    await h.tick(s)
    await s.stop()
    s2 = await h.scheduler()
    h.clock.set(2026, 11, 1, 9, 30)
    await h.tick(s2)
    for key, user in users.items():
        assert sum(m.message.photo is not None for m in user.inbox) == 1, key
    assert await h.count(DutyFire) >= len(users)


async def test_quiet_hours_hold_the_bulletin_until_morning(duty: DutyHarness) -> None:
    h = duty
    h.app.settings.bulletin_time = "06:00"
    chen = await h.login("p-chen-shuji")
    h.clock.set(2026, 10, 31, 8, 0)
    s = await h.scheduler()
    h.clock.set(2026, 11, 1, 6, 0, 5)  # 22:00-07:00 is quiet
    await h.tick(s)
    assert not any("月初通报" in t for t in chen.texts())
    async with h.app.sessionmaker() as session:
        rows = (await session.scalars(select(OutboxMessage).where(
            OutboxMessage.chat_id == chen.chat_id))).all()
    assert len(rows) == 4  # the chart with the figures, the ranking, hot spots, the ledger
    assert all(r.not_before.astimezone(SH) == datetime(2026, 11, 1, 7, 0, tzinfo=SH)
               for r in rows)
    h.clock.set(2026, 11, 1, 7, 0, 1)
    await h.flush()
    assert sum("月初通报" in t for t in chen.texts()) == 1
