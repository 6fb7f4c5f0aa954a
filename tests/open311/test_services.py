"""The city platform reads the community's services (categories) in both formats."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from pydantic import ValidationError

from bot.config import load_settings
from tests.open311.conftest import ATTRIBUTE_FIELDS, SERVICE_FIELDS, City, xml_items


async def test_services_list_every_category_in_json_and_xml(city: City) -> None:
    response = await city.get("services.json")
    assert response.status_code == 200
    services = response.json()
    assert [s["service_code"] for s in services] == [
        "repair",
        "safety",
        "elderly",
        "dispute",
        "sanitation",
        "other",
    ]
    assert all(set(s) == SERVICE_FIELDS for s in services)
    repair, safety = services[0], services[1]
    assert repair == {
        "service_code": "repair",
        "service_name": "维修报修",
        "description": "维修报修，办理时限 48 小时",
        "metadata": True,  # the demo's repair category asks for the part (楼道/户内/室外)
        "type": "realtime",
        "keywords": "楼道灯,路灯,水管,门禁,电梯,坏了",
        "group": "物业维修",
    }
    assert safety["metadata"] is False and safety["group"] == "安全"
    xml = await city.get("services.xml")
    items = xml_items(xml.text, "services")
    assert [i["service_code"] for i in items] == [s["service_code"] for s in services]
    assert all(set(i) == SERVICE_FIELDS for i in items)
    assert items[0]["metadata"] == "true" and items[1]["metadata"] == "false"
    assert items[0]["keywords"] == "楼道灯,路灯,水管,门禁,电梯,坏了"
    assert items[0]["type"] == "realtime"


async def test_a_service_that_asks_for_attributes_defines_them(city: City) -> None:
    definition = (await city.get("services/repair.json")).json()
    assert definition["service_code"] == "repair"
    [part] = definition["attributes"]
    assert set(part) == ATTRIBUTE_FIELDS
    assert (part["code"], part["datatype"], part["required"], part["order"]) == (
        "part",
        "singlevaluelist",
        False,
        1,
    )
    assert part["values"][0] == {"key": "corridor", "name": "楼道公共部位"}
    tree = ET.fromstring((await city.get("services/repair.xml")).text)
    assert tree.tag == "service_definition" and tree.findtext("service_code") == "repair"
    attribute = tree.find("attributes/attribute")
    assert attribute is not None and attribute.findtext("variable") == "true"
    assert [v.findtext("key") for v in attribute.findall("values/value")] == [
        "corridor",
        "home",
        "outdoor",
    ]
    # A category without attributes, and one that does not exist: 404 in the spec's shape.
    for path in ("services/safety.json", "services/plumbing.json"):
        response = await city.get(path)
        assert response.status_code == 404 and response.json()[0]["code"] == 404
    response = await city.get("services/plumbing.xml")
    assert response.status_code == 404 and ET.fromstring(response.text).tag == "errors"
    assert (await city.get("services.yaml")).status_code == 404


def test_open311_keys_are_checked_when_the_settings_load() -> None:
    keys = {"short": {"name": "12345", "can": ["post"]}}
    with pytest.raises(ValidationError, match="at least 16 characters"):
        load_settings(open311_keys=keys)
    with pytest.raises(ValidationError):
        load_settings(open311_keys={"a-long-enough-key-1": {"name": "x", "can": ["delete"]}})
    ok = load_settings(open311_keys={"a-long-enough-key-1": {"name": "district"}})
    assert ok.open311_keys["a-long-enough-key-1"].can == ["read"]  # read-only by default
