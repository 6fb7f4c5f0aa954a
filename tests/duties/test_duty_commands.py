"""/household and /visitplan as a grid worker writes them: building and household names,
Chinese kinds and frequencies; buttons where something is ambiguous or missing; forged or old
picks change nothing."""

from __future__ import annotations

from sqlalchemy import select

from models import Building, Household, VisitPlan
from tests.duties.conftest import DutyHarness
from tests.flows.helpers import conversation_of, payload_of, snapshot


async def households(h: DutyHarness) -> list[tuple[str, str, str]]:
    """(name, building code, kind) of every key household."""
    async with h.app.sessionmaker() as session:
        rows = (await session.execute(
            select(Household.name, Building.code, Household.kind)
            .join(Building, Building.id == Household.building_id).order_by(Household.id))).all()
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def building_id(h: DutyHarness, code: str) -> int:
    async with h.app.sessionmaker() as session:
        found = await session.scalar(select(Building.id).where(Building.code == code))
        assert found is not None
        return found


async def test_household_by_building_name_and_chinese_kind(duty: DutyHarness) -> None:
    h = duty
    worker = await h.login("p-wang")
    await worker.send("/household 翠屏小区1栋 | 独居老人 | 张阿姨 | 2-301 | 高血压")
    added = worker.last().text.split("\n")
    assert added[0].startswith("✅ 已添加重点户 张阿姨")
    assert added[1] == "楼栋：翠屏小区1栋；类别：独居老人。"
    await worker.send("/household xh-b02 ｜ 空巢老人 ｜ 钟大爷 ｜ 1-102")  # code, full-width bars
    await worker.send("/household 翠屏小区3栋 | disabled | 刘叔 | 3-101")
    assert await households(h) == [("张阿姨", "xh-b01", "elderly_alone"),
                                   ("钟大爷", "xh-b02", "empty_nest"),
                                   ("刘叔", "xh-b03", "disabled")]


async def test_missing_or_unknown_kind_is_asked_with_buttons(duty: DutyHarness) -> None:
    h = duty
    worker = await h.login("p-wang")
    await worker.send("/household 翠屏小区2栋 | | 钟大爷 | 1-102")
    ask = worker.last()
    assert ask.text == "请选择重点户类别："
    assert [b.label for b in ask.buttons] == [
        "独居老人", "空巢老人", "残疾人", "困境儿童", "孕产妇", "低保户", "重点户", "取消"]
    assert await households(h) == []
    await worker.press("空巢老人", message=ask)
    assert await households(h) == [("钟大爷", "xh-b02", "empty_nest")]
    assert await conversation_of(h, worker) is None

    await worker.send("/household 翠屏小区2栋 | 老人 | 王奶奶 | 2-202")
    assert worker.last().text == "不认识类别“老人”，请选择："
    await worker.send("低保户")  # typing the answer works as well as tapping it
    assert (await households(h))[-1] == ("王奶奶", "xh-b02", "low_income")


async def test_ambiguous_building_name_offers_the_buildings(duty: DutyHarness) -> None:
    h = duty
    head = await h.login("p-liu-wanggezhang")  # 第一网格: 翠屏小区1-7栋, 农行宿舍1栋 …
    await head.send("/household 1栋 | 独居老人 | 王奶奶 | 1-101")
    ask = head.last()
    assert ask.text == "和“1栋”相符的楼栋有几栋，请选择："
    assert [b.label for b in ask.buttons] == [
        "翠屏小区1栋 · 第一网格1号微网格", "农行宿舍1栋 · 第一网格3号微网格", "取消"]
    before = await snapshot(h)
    # A pick of a building that was not offered (forged, or from another question): no.
    for forged in (f"f:pick:b{await building_id(h, 'xh-b16')}", "f:pick:b999999",
                   "f:pick:elderly_alone"):
        await head.press_payload(forged)
        assert head.last().text == "这个选项已失效，没有做任何修改。", forged
    assert await snapshot(h) == before and await households(h) == []
    await head.press("农行宿舍1栋", message=ask)
    assert await households(h) == [("王奶奶", "xh-b08", "elderly_alone")]
    # The same button again: the question is over; nothing is added twice.
    await head.press_payload(payload_of(ask, "农行宿舍1栋"))
    assert await households(h) == [("王奶奶", "xh-b08", "elderly_alone")]


async def test_unknown_building_offers_the_workers_own(duty: DutyHarness) -> None:
    h = duty
    worker = await h.login("p-wang")
    await worker.send("/household 滨河花园A栋 | 独居老人 | 赵奶奶 | A-101")
    ask = worker.last()
    assert ask.text == "找不到楼栋“滨河花园A栋”，请从您负责的楼栋中选择："
    assert [b.label for b in ask.buttons][:3] == [
        "翠屏小区1栋 · 第一网格1号微网格", "翠屏小区2栋 · 第一网格1号微网格",
        "翠屏小区3栋 · 第一网格1号微网格"]
    await worker.press("取消", message=ask)
    assert await households(h) == []
    # Another grid's building by its code: refused, as before.
    await worker.send("/household xh-b16 | 独居老人 | 赵奶奶 | A-101")
    assert "网格员" in worker.last().text and await households(h) == []


async def test_visit_plan_by_names_and_chinese_frequency(duty: DutyHarness) -> None:
    h = duty
    worker = await h.login("p-wang")
    await worker.send("/household 翠屏小区1栋 | 独居老人 | 张阿姨 | 2-301")
    await worker.send("/household 翠屏小区2栋 | 独居老人 | 张大爷 | 1-102")
    await worker.send("/visitplan 张阿姨 | 李党员 | 每周")
    planned = worker.last().text
    assert planned.startswith("✅ 走访计划已建立：李党员每周走访张阿姨，首次 03-02 09:00")
    await worker.send("/visitplan 张阿姨 | 李党员 | 每月")
    assert worker.last().text == "李党员已经在走访张阿姨，没有重复建立。"

    await worker.send("/visitplan 张 | 赵志愿者")  # two households fit, no frequency
    ask = worker.last()
    assert ask.text == "和“张”相符的重点户有几户，请选择："
    assert [b.label for b in ask.buttons] == [
        "张阿姨 · 翠屏小区1栋", "张大爷 · 翠屏小区2栋", "取消"]
    await worker.press("张大爷", message=ask)
    assert worker.last().text == "请选择走访频次："
    assert [b.label for b in worker.last().buttons] == ["每周", "每两周", "每月", "取消"]
    await worker.press("每两周")
    assert "赵志愿者每两周走访张大爷" in worker.last().text
    async with h.app.sessionmaker() as session:
        plans = (await session.execute(select(VisitPlan.frequency).order_by(VisitPlan.id))).all()
    assert [p for p, in plans] == ["weekly", "fortnightly"]
    await worker.send("/visitplan 张阿姨 | 钱党员 | 每周")
    assert "找不到党员 钱党员" in worker.last().text
