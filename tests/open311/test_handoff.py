"""The city platform (12345) hands a request down to the community through Open311, follows it,
and gets the spec's errors — over HTTP against the real web app, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

from sqlalchemy import func, select

from models import Building, CityRequest, Grid, Order, OutboxMessage, Person
from tests.open311.conftest import BASE, READER_KEY, REQUEST_FIELDS, City, xml_items

HAND_OFF = {
    "service_code": "repair",
    "address_string": "翠屏小区1栋",
    "attribute[city_id]": "DZ12345-20270301-0001",
    "attribute[part]": "corridor",
    "first_name": "建华",
    "last_name": "赵",
    "phone": "13900000077",
    "description": "市民来电：3单元楼道灯坏了一周，晚上看不见",
}


async def test_a_12345_hand_off_becomes_an_order_routed_like_a_residents(city: City) -> None:
    worker = await city.login("p-wang")  # 王网格员, worker of xh-g1-m1 where 翠屏小区1栋 is
    member = await city.login("p-li-dangyuan")
    response = await city.post(**HAND_OFF)
    assert response.status_code == 200
    [answer] = response.json()
    order = (await city.orders())[-1]
    assert answer["service_request_id"] == f"{order.id:06d}"  # the number residents see
    assert order.source == "city" and order.category == "repair" and order.status == "submitted"
    async with city.app.sessionmaker() as session:
        building = await session.get(Building, order.building_id)
        resident = await session.get(Person, order.resident_id)
        link = await session.scalar(select(CityRequest).where(CityRequest.order_id == order.id))
    assert building is not None and building.code == "xh-b01"
    assert link is not None and (link.client, link.city_id) == ("12345", "DZ12345-20270301-0001")
    assert link.attributes == {"city_id": "DZ12345-20270301-0001", "part": "corridor"}
    # The caller is a person without any chat: the contact goes to the handler like a
    # resident's, and pushes to the caller are skipped (nothing was queued for them).
    assert resident is not None and (resident.name, resident.phone) == ("建华 赵", "13900000077")
    card = worker.last().text
    assert "城市平台（12345）转办" in card and "DZ12345-20270301-0001" in card
    assert "建华 赵" in card and "13900000077" in card and "楼道灯坏了" in card
    # Dispatched like any order: the member's offer shows no phone and no name.
    await worker.press("广播")
    offer = member.last().text
    assert "楼道灯" in offer and "13900000077" not in offer and "建华" not in offer
    await member.press("接单")
    assert "13900000077" in member.last().text  # the member who accepted sees the contact
    assert (await city.order(order.id)).status == "accepted"
    # Nothing was ever queued for the caller (no chat): skipped, not failed.
    async with city.app.sessionmaker() as session:
        to_caller = await session.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.person_id == resident.id)
        )
    assert to_caller == 0


async def test_the_city_reads_the_order_back_without_names_or_phones(city: City) -> None:
    worker = await city.login("p-wang")
    rid = (await city.post(**HAND_OFF)).json()[0]["service_request_id"]
    response = await city.get(f"requests/{rid}.json")
    assert response.status_code == 200
    [req] = response.json()
    assert set(req) == REQUEST_FIELDS
    assert req["service_request_id"] == rid and req["status"] == "open"
    assert req["service_code"] == "repair" and req["service_name"] == "维修报修"
    assert req["agency_responsible"] == "第一网格1号微网格"
    assert req["address"] == "翠屏小区1栋" and req["address_id"] == "xh-b01"
    assert (req["lat"], req["long"]) == (31.21345, 107.50789)  # the building's, not a pin
    assert req["requested_datetime"] == "2027-03-01T09:00:00+08:00"
    # Not yet accepted: the category's 48 hours counted from the request.
    assert req["expected_datetime"] == "2027-03-03T09:00:00+08:00"
    assert req["status_notes"] == "待派单；最近：受理（2027-03-01T09:00:00+08:00）"
    assert "13900000077" not in response.text and "建华" not in response.text
    # The worker takes it on at 10:30: accepted, and expected by the order clock's deadline.
    city.clock.set(2027, 3, 1, 10, 30)
    await worker.press("我来处理")
    [req] = (await city.get(f"requests/{rid}.json")).json()
    assert req["status"] == "open" and req["updated_datetime"] == "2027-03-01T10:30:00+08:00"
    assert req["expected_datetime"] == "2027-03-03T10:30:00+08:00"
    assert req["status_notes"] == (
        "已接单，处理中；最近：网格员亲自办理（2027-03-01T10:30:00+08:00）"
    )
    # The same in XML, parsed with the standard library.
    response = await city.get(f"requests/{rid}.xml")
    assert response.headers["content-type"].startswith("text/xml")
    [item] = xml_items(response.text, "service_requests")
    assert set(item) == REQUEST_FIELDS
    assert item["service_request_id"] == rid and item["status"] == "open"
    assert item["address"] == "翠屏小区1栋" and item["lat"] == "31.21345"
    assert item["expected_datetime"] == "2027-03-03T10:30:00+08:00"
    assert "13900000077" not in response.text
    # Done: still open (the caller has not confirmed), nothing more to expect.
    await worker.press("已完成")
    await worker.send("换了新灯泡")
    [req] = (await city.get(f"requests/{rid}.json")).json()
    assert req["status"] == "open" and req["expected_datetime"] is None
    assert req["status_notes"].startswith("已完成，待您确认；最近：办结")


async def test_a_repeated_hand_off_answers_the_same_number(city: City) -> None:
    first = (await city.post(**HAND_OFF)).json()[0]["service_request_id"]
    again = await city.post("xml", **HAND_OFF)
    assert again.status_code == 200
    [item] = xml_items(again.text, "service_requests")
    assert item["service_request_id"] == first
    # device_id is another place for the city id; a new id is a new order.
    other = {**HAND_OFF, "attribute[city_id]": "", "device_id": "DZ12345-20270301-0002"}
    second = (await city.post(**other)).json()[0]["service_request_id"]
    assert second != first
    assert await city.stored() == (2, 2 + await _demo_people(city), 2)


async def _demo_people(city: City) -> int:
    async with city.app.sessionmaker() as session:
        return len((await session.scalars(select(Person).where(Person.key.is_not(None)))).all())


async def test_two_concurrent_hand_offs_of_one_city_id_make_one_order(city: City) -> None:
    before = await city.stored()
    answers = await asyncio.gather(*(city.post(**HAND_OFF) for _ in range(4)))
    assert {r.status_code for r in answers} == {200}
    assert len({r.json()[0]["service_request_id"] for r in answers}) == 1
    assert await city.stored() == (before[0] + 1, before[1] + 1, before[2] + 1)


async def test_an_address_nobody_covers_goes_to_the_top_of_the_tree(city: City) -> None:
    head = await city.login("p-zhou-zhuren")  # 总网格长 of 新华社区, the top with people
    response = await city.post(
        service_code="sanitation",
        address_string="通川区朝阳路99号",
        account_id="DZ12345-0003",
        description="路边垃圾堆放",
    )
    assert response.status_code == 200
    [answer] = response.json()
    assert "未能匹配到楼栋" in answer["service_notice"]
    order = (await city.orders())[-1]
    async with city.app.sessionmaker() as session:
        grid = await session.get(Grid, order.grid_id)
    assert grid is not None and grid.code == "xinhua" and order.handling_grid_id == grid.id
    assert "通川区朝阳路99号" in head.last().text and "请核实地址" in head.last().text
    [req] = (await city.get(f"requests/{answer['service_request_id']}.json")).json()
    assert req["agency_responsible"] == "新华社区" and req["address_id"] is None
    assert req["status_notes"].endswith("地址未能匹配到楼栋，由新华社区处理。")


async def test_coordinates_find_the_nearest_building_within_the_radius(city: City) -> None:
    # 11 m north of 翠屏小区2栋 (31.21390): nearer to it than to 1栋 (31.21345).
    near = await city.post(
        service_code="repair", lat="31.21400", long="107.50789", device_id="gps-1"
    )
    order = (await city.orders())[-1]
    async with city.app.sessionmaker() as session:
        building = await session.get(Building, order.building_id)
    assert near.status_code == 200 and building is not None and building.code == "xh-b02"
    # 1 km away: beyond the configured 100 m, so nobody covers it.
    await city.post(service_code="repair", lat="31.22300", long="107.50789", device_id="gps-2")
    order = (await city.orders())[-1]
    async with city.app.sessionmaker() as session:
        building = await session.get(Building, order.building_id)
    assert building is not None and building.code == "open311-unplaced"


async def test_refusals_have_the_spec_shape_and_store_nothing(city: City) -> None:
    before = await city.stored()

    async def refused(status: int, fmt: str = "json", **fields: str) -> str:
        response = await city.post(fmt, **{**HAND_OFF, **fields})
        assert response.status_code == status, response.text
        if fmt == "xml":
            tree = ET.fromstring(response.text)
            assert tree.tag == "errors"
            errors = [{c.tag: c.text for c in e} for e in tree]
            assert all(e["code"] == str(status) for e in errors)
        else:
            errors = response.json()
            assert all(set(e) == {"code", "description"} for e in errors)
            assert errors[0]["code"] == status
        return str(errors[0]["description"])

    assert "api_key" in await refused(403, api_key="not-a-key")
    assert "api_key" in await refused(403, "xml", api_key="")
    assert "无权" in await refused(403, api_key=READER_KEY)  # a read-only key may not post
    assert "plumbing" in await refused(404, service_code="plumbing")
    assert "4000" in await refused(400, description="灯" * 4001)
    assert "4000" in await refused(400, "xml", description="灯" * 4001)
    assert "attribute[part]" in await refused(400, **{"attribute[part]": "roof"})
    assert "lat" in await refused(400, lat="north", long="107.5")
    assert "city_id" in await refused(400, **{"attribute[city_id]": ""})
    no_place = {"address_string": "", "lat": "", "long": ""}
    assert "address_string" in await refused(400, **no_place)
    assert await city.stored() == before
    # Exactly 4,000 characters is taken.
    ok = await city.post(**{**HAND_OFF, "description": "灯" * 4000})
    assert ok.status_code == 200


async def test_searching_requests_with_filters_and_dates(city: City) -> None:
    resident = await city.login("p-zhang-ayi")
    # A resident's order on 1 March, then city orders 100 days later.
    await resident.send("/order")
    await resident.press("维修报修")
    await resident.send("厨房水管漏水，需要维修")
    await resident.press("跳过")
    await resident.press("跳过")
    await resident.press("提交")
    old = (await city.orders())[-1]
    assert old.source == "resident"
    city.clock.set(2027, 6, 9, 9, 0)
    a = (await city.post(**HAND_OFF)).json()[0]["service_request_id"]
    city.clock.set(2027, 6, 9, 9, 5)
    b = (
        await city.post(
            **{**HAND_OFF, "service_code": "safety", "device_id": "x2", "attribute[city_id]": ""}
        )
    ).json()[0]["service_request_id"]
    # Default: the last 90 days, newest first.
    found = [r["service_request_id"] for r in (await city.get("requests.json")).json()]
    assert found == [b, a]
    found = [
        r["service_request_id"]
        for r in (await city.get("requests.json", start_date="2027-02-01T00:00:00+08:00")).json()
    ]
    assert found == [b, a, f"{old.id:06d}"]
    in_window = await city.get(
        "requests.json", start_date="2027-06-09T09:01:00+08:00", end_date="2027-06-09T10:00:00"
    )
    assert [r["service_request_id"] for r in in_window.json()] == [b]
    by_code = await city.get("requests.xml", service_code="repair")
    assert [i["service_request_id"] for i in xml_items(by_code.text, "service_requests")] == [a]
    assert (await city.get("requests.json", status="closed")).json() == []
    assert len((await city.get("requests.json", status="open")).json()) == 2
    ids = await city.get("requests.json", service_request_ids=f"{old.id:06d},{a}", status="closed")
    assert {r["service_request_id"] for r in ids.json()} == {a, f"{old.id:06d}"}
    # Malformed dates and statuses: 400 in the spec's shape.
    for params in ({"start_date": "yesterday"}, {"end_date": "2027-13-01"}, {"status": "done"}):
        bad = await city.get("requests.json", **params)
        assert bad.status_code == 400 and bad.json()[0]["code"] == 400
    bad = await city.get("requests.xml", start_date="2027/06/09")
    assert bad.status_code == 400 and ET.fromstring(bad.text)[0].find("code").text == "400"  # type: ignore[union-attr]
    missing = await city.get("requests/999999.json")
    assert missing.status_code == 404 and missing.json()[0]["code"] == 404


async def test_reads_need_a_key_unless_public(city: City) -> None:
    assert (await city.get("services.json", api_key=None)).status_code == 403
    assert (await city.get("requests.json", api_key="guess")).status_code == 403
    assert (await city.get("requests.json")).status_code == 200
    city.app.settings.open311_public_read = True
    public = city.app.web_app()
    import httpx

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=public), base_url="http://gridbot.test"
    ) as anyone:
        assert (await anyone.get(f"{BASE}/services.json")).status_code == 200
        assert (await anyone.get(f"{BASE}/requests.json")).status_code == 200
        # Posting always needs a key that may post.
        assert (await anyone.post(f"{BASE}/requests.json", data=HAND_OFF)).status_code == 403


async def test_xml_carries_any_text_safely(city: City) -> None:
    nasty = "A&B <b>粗体</b> ]]> \x00\x01\x1b 结束 \U0001f600"
    rid = (await city.post(**{**HAND_OFF, "description": nasty})).json()[0]["service_request_id"]
    response = await city.get(f"requests/{rid}.xml")
    [item] = xml_items(response.text, "service_requests")
    # NUL is dropped on the way in (PostgreSQL cannot store it); other control characters are
    # kept, and XML, which cannot carry them, shows U+FFFD instead.
    assert item["description"] == "A&B <b>粗体</b> ]]> \ufffd\ufffd 结束 \U0001f600"
    [req] = (await city.get(f"requests/{rid}.json")).json()
    assert req["description"] == "A&B <b>粗体</b> ]]> \x01\x1b 结束 \U0001f600"
    order = await city.order(int(rid))
    assert isinstance(order, Order) and order.description == req["description"]


async def test_a_city_order_nobody_rates_is_closed_by_the_clock(city: City) -> None:
    from bot.scheduler import DutyScheduler

    worker = await city.login("p-wang")
    rid = (await city.post(**HAND_OFF)).json()[0]["service_request_id"]
    await worker.press("我来处理")
    await worker.press("已完成")
    await worker.send("换了新灯泡")
    # The caller has no chat to rate in: after the rating days (7) the clock closes it.
    s = DutyScheduler(
        city.app.sessionmaker,
        city.app.settings,
        city.app.tr,
        clock=city.clock,
        wake=city.app.deliverer.wake,
        manual=True,
    )
    await s.start()
    try:
        city.clock.set(2027, 3, 8, 9, 1)
        await s.tick()
    finally:
        await s.stop()
    [req] = (await city.get(f"requests/{rid}.json")).json()
    assert req["status"] == "closed"
    assert (
        req["status_notes"]
        == "已自动办结；最近：超时未评价，自动关闭（2027-03-08T09:01:00+08:00）"
    )
