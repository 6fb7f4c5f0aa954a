"""The monthly bulletin through the real python-telegram-bot against the fake Bot API server:
the community admin asks for October and gets the chart (sendPhoto, a PNG), the figures (text)
and the ledger (sendDocument, an .xlsx openpyxl can read); on 1 March the scheduler sends
February's by itself."""

from __future__ import annotations

import io
from pathlib import Path

from openpyxl import load_workbook

from tests.e2e.duty_support import DutyService, running
from tests.reports.history import write_history
from tests.support.messages import has

CHEN = 4001


async def test_bulletin_on_request_and_on_day_one(database_url: str, tmp_path: Path) -> None:
    async with running(DutyService, database_url, tmp_path, {CHEN: "p-chen-shuji"}) as svc:
        await write_history(svc.app.sessionmaker)
        await svc.users[CHEN].send_command("bulletin", "2026-10")
        document = await svc.tg.wait_for(CHEN, lambda m: m.document is not None)
        sent = svc.tg.sent(CHEN)
        photos = [m for m in sent if m.photo is not None]
        assert len(photos) == 1
        assert svc.tg.file(photos[0].photo or "").startswith(b"\x89PNG\r\n\x1a\n")
        texts = [m.text or "" for m in sent]
        assert any(t.startswith("📊 新华社区 2026-10 月初通报") for t in texts)
        assert any(t.startswith("三、网格排名") and "1. 第一网格：78.3 分" in t for t in texts)
        assert any(t.startswith("四、热点") and "孙建华" in t for t in texts)
        assert document.document_name == "新华社区 2026-10 台账.xlsx"
        assert document.text == "📎 新华社区 2026-10 台账（Excel）"
        wb = load_workbook(io.BytesIO(svc.tg.file(document.document or "")))
        assert wb["汇总"]["C3"].value == "新华社区" and wb["汇总"]["F3"].value == 8
        assert len(list(wb["工单"].iter_rows(min_row=3))) == 8
        # Sent in order: the chart first, the ledger last.
        assert sent.index(photos[0]) < sent.index(document) == len(sent) - 1

        # 1 March 2027, 09:00: February's bulletin, without being asked.
        last = svc.last_id(CHEN)
        await svc.at(2027, 3, 1, 9, 0, 5)
        await svc.tg.wait_for(CHEN, lambda m: m.document is not None and m.message_id > last)
        new = [m for m in svc.tg.sent(CHEN) if m.message_id > last]
        assert [m.photo is not None for m in new].count(True) == 1
        assert any(has("📊 新华社区 2027-02 月初通报")(m) for m in new)
        assert new[-1].document_name == "新华社区 2027-02 台账.xlsx"
