"""Someone leaves: ``gridbot person remove`` (or a community file that drops a role) takes
their roles away, and their open work goes back to whoever is responsible now: nothing is
dropped on the floor."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from bot.admin.cli_admin import add_admin_commands
from bot.config import Settings
from models import Offer, Order, Person, Role
from models.duties import VisitPlan
from tests.conftest import Harness
from tests.flows.helpers import find, new_order, payload_of, person, rows

DEMO = Path(__file__).resolve().parents[2] / "bot" / "demo" / "community.yaml"


async def cli(settings: Settings, *argv: str) -> int:
    p = argparse.ArgumentParser(prog="gridbot")
    add_admin_commands(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    code: int = await asyncio.to_thread(args.func, settings, args)
    return code


def card(user: object, order: Order) -> object:
    return find(user, f"工单 {order.id:06d}")  # type: ignore[arg-type]


async def test_a_member_who_leaves_hands_back_offers_and_accepted_orders(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    li = await harness.login("p-li-dangyuan")
    zhao = await harness.login("p-zhao-zhiyuanzhe")

    # 1: broadcast, 李党员 accepts.  2: assigned to 李党员 only.  3: broadcast, open.
    accepted = await new_order(harness, resident, text="一号：楼道灯坏了")
    await worker.press("广播", message=card(worker, accepted))
    await li.press_payload(payload_of(card(li, accepted), "接单"))
    assigned = await new_order(harness, resident, text="二号：水管漏水了")
    await worker.press("指派", message=card(worker, assigned))
    await worker.press("李党员", message=worker.last())
    broadcast = await new_order(harness, resident, text="三号：门禁坏了")
    await worker.press("广播", message=card(worker, broadcast))
    assert [o.status for o in await harness.orders()] == ["accepted", "dispatched", "dispatched"]
    worker_seen, resident_seen, li_seen = len(worker.inbox), len(resident.inbox), len(li.inbox)

    assert await cli(harness.app.settings, "person", "remove", "p-li-dangyuan") == 0
    out = capsys.readouterr().out
    assert "removed from 李党员 [p-li-dangyuan]: member of xh-g1-m1" in out
    assert "2 offer(s) withdrawn, 2 order(s) returned for a new dispatch" in out
    assert "3 visit/patrol plan(s) paused" in out  # the demo pairs 李党员 with 3 households
    await harness.flush()  # the running service delivers what the command queued

    first, second, third = await harness.orders()
    assert (first.status, first.assignee_id) == ("submitted", None)  # back to the worker
    assert second.status == "submitted"
    assert third.status == "dispatched"  # 赵志愿者 and 王网格员 may still take it
    li_id = (await person(harness, "p-li-dangyuan")).id
    offers = await rows(harness, Offer, Offer.person_id == li_id)
    assert {o.order_id: o.status for o in offers} == {
        first.id: "accepted", second.id: "withdrawn", third.id: "withdrawn"
    }
    assert "这张工单已收回" in card(li, third).text  # type: ignore[attr-defined]
    assert await rows(harness, Role, Role.person_id == li_id) == []
    assert await rows(harness, Person, Person.id == li_id)  # history stays
    visits = await rows(harness, VisitPlan, VisitPlan.member_id == li_id)
    assert len(visits) == 3 and not any(v.active for v in visits)  # no reminders to him

    told = [m.text for m in worker.inbox[worker_seen:]]
    assert sum("李党员已不再担任社区职务" in t for t in told) == 2
    back = [m for m in worker.inbox[worker_seen:] if "李党员已不再担任" in m.text]
    assert all("📢 广播抢单" in [b.label for b in m.buttons] for m in back)  # dispatch again
    assert any("正在重新安排处理人员" in m.text for m in resident.inbox[resident_seen:])
    assert any("000001 已交回网格员" in m.text for m in li.inbox[li_seen:])

    # the order goes out again, to the members who are left
    (again,) = [m for m in back if f"工单 {first.id:06d}" in m.text]
    zhao_seen = len(zhao.inbox)
    await worker.press("广播", message=again)
    assert (await harness.order(first.id)).status == "dispatched"
    assert any("一号" in m.text for m in zhao.inbox[zhao_seen:])
    assert not any("一号" in m.text for m in li.inbox[li_seen:])

    # an unknown key or a role the person does not hold changes nothing
    assert await cli(harness.app.settings, "person", "remove", "p-nobody") == 1
    assert "no person with key p-nobody" in capsys.readouterr().err
    assert await cli(harness.app.settings, "person", "remove", "p-li-dangyuan") == 1
    assert "holds no such role" in capsys.readouterr().err


async def test_a_worker_dropped_from_the_file_hands_waiting_orders_to_the_head(
    harness: Harness, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    head = await harness.login("p-liu-wanggezhang")
    waiting = await new_order(harness, resident)
    assert "新工单" in card(worker, waiting).text  # type: ignore[attr-defined]
    assert head.inbox == []

    text = DEMO.read_text(encoding="utf-8")
    line = "      - {role: worker, grid: xh-g1-m1}\n"
    assert text.count(line) == 1
    edited = tmp_path / "community.yaml"
    edited.write_text(text.replace(line, ""), encoding="utf-8")  # 王网格员 stays a member
    assert await cli(harness.app.settings, "import", str(edited)) == 0
    out = capsys.readouterr().out
    assert "roles:" in out and "1 removed" in out
    assert "open work of 王网格员 [p-wang]: " in out and "1 waiting order(s) announced" in out
    await harness.flush()

    handed = card(head, waiting)
    assert "王网格员已不再负责这里" in handed.text  # type: ignore[attr-defined]
    assert "📢 广播抢单" in [b.label for b in handed.buttons]  # type: ignore[attr-defined]
    assert (await harness.order(waiting.id)).status == "submitted"
    wang_id = (await person(harness, "p-wang")).id
    assert [r.role for r in await rows(harness, Role, Role.person_id == wang_id)] == ["member"]


async def test_the_import_report_names_people_the_file_no_longer_lists(
    harness: Harness, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    text = DEMO.read_text(encoding="utf-8")
    start = text.index("  - key: p-zhao-zhiyuanzhe")
    end = text.index("  - key: ", start + 1)
    edited = tmp_path / "community.yaml"
    edited.write_text(text[:start] + text[end:], encoding="utf-8")
    assert await cli(harness.app.settings, "import", str(edited)) == 0
    out = capsys.readouterr().out
    assert "not in this file, kept:" in out and "p-zhao-zhiyuanzhe" in out
    assert "gridbot person remove KEY" in out
    zhao = await person(harness, "p-zhao-zhiyuanzhe")
    assert await rows(harness, Role, Role.person_id == zhao.id)  # kept, as the report says
