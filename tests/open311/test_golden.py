"""The city platform's search answer, byte for byte: orders in several states (a resident's
order rated and closed, a city order being handled, one done with the city's photo, one
escalated up the tree, one whose address no building matched) read as ``requests.json`` and
``requests.xml`` must be exactly the stored answer, on SQLite and PostgreSQL alike (fields, their
order, notes, times, XML shape).

To record the answer again after a deliberate change of the answer:
``OPEN311_GOLDEN_WRITE=1 .venv/bin/python -m pytest tests/open311/test_golden.py -k sqlite``.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.flows.helpers import place_order
from tests.open311.conftest import City

GOLDEN = Path(__file__).parent / "golden"

HAND_OFF = {
    "service_code": "repair",
    "address_string": "翠屏小区1栋",
    "first_name": "建华",
    "last_name": "赵",
    "phone": "13900000077",
}


async def _the_city_in_several_states(city: City) -> None:
    resident = await city.login("p-zhang-ayi")
    worker = await city.login("p-wang")
    await city.login("p-liu-wanggezhang")
    await city.login("p-zhou-zhuren")
    # 1 March 09:00: a resident's order, waiting to be dispatched.
    await place_order(resident, "维修报修", "厨房水管漏水，需要维修")
    await worker.press("我来处理")  # the worker's card is the newest: this one is handled
    city.clock.set(2027, 3, 1, 9, 5)
    await worker.press("已完成")
    await worker.press("跳过")
    await resident.press("★★★★")  # rated: closed
    # 09:10: a city order with the city's id, handled by the worker, then done at 11:00.
    city.clock.set(2027, 3, 1, 9, 10)
    done = {**HAND_OFF, "attribute[city_id]": "DZ12345-20270301-0001"}
    await city.post(
        **done,
        description="3单元楼道灯坏了 & <门禁> 也坏了",
        media_url="https://12345.example/p/1.jpg",
    )
    city.clock.set(2027, 3, 1, 9, 40)
    await worker.press("我来处理")
    city.clock.set(2027, 3, 1, 11, 0)
    await worker.press("已完成")
    await worker.send("换了新灯泡")
    # 13:00: a safety order the worker escalates to his grid's head.
    city.clock.set(2027, 3, 1, 13, 0)
    await city.post(
        **{**HAND_OFF, "service_code": "safety", "device_id": "DZ12345-20270301-0002"},
        description="楼顶护栏松动",
    )
    city.clock.set(2027, 3, 1, 13, 20)
    await worker.press("上报")
    await worker.send("涉及公共设施，需要网格长协调")
    # 15:00: an address no building matches: the top of the tree handles it, no building code.
    city.clock.set(2027, 3, 1, 15, 0)
    await city.post(
        service_code="sanitation",
        address_string="通川区朝阳路99号",
        account_id="DZ12345-0003",
        description="路边垃圾堆放",
    )
    # 2 March 08:30: a city order the worker takes on at 09:15 (the reader's newest).
    city.clock.set(2027, 3, 2, 8, 30)
    await city.post(**{**HAND_OFF, "device_id": "DZ12345-20270302-0004"}, description="")
    city.clock.set(2027, 3, 2, 9, 15)
    await worker.press("我来处理")
    city.clock.set(2027, 3, 2, 12, 0)


async def test_the_search_answers_exactly_the_recorded_json_and_xml(city: City) -> None:
    await _the_city_in_several_states(city)
    statuses = sorted(o.status for o in await city.orders())
    assert statuses == ["accepted", "closed", "done", "escalated", "submitted"]
    for fmt in ("json", "xml"):
        answer = await city.get(f"requests.{fmt}", start_date="2027-02-01")
        assert answer.status_code == 200
        path = GOLDEN / f"requests.{fmt}"
        if os.environ.get("OPEN311_GOLDEN_WRITE"):
            path.write_bytes(answer.content)
        assert answer.content == path.read_bytes(), fmt
        # One order alone is the same entry as in the search.
        first = await city.get(f"requests/000002.{fmt}")
        assert first.status_code == 200
        if fmt == "json":
            entry = [e for e in answer.json() if e["service_request_id"] == "000002"]
            assert first.json() == entry
