"""Every XML answer is written as ElementTree writes it: the city platform's parser sees the same
bytes whatever the answer holds (empty values, nested lists, text XML must escape or cannot
carry)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from bot.open311 import _ITEM_TAGS, render, xml_text

NASTY = "A&B <b>粗体</b> ]]> \x01\x1b\r\n\t 结束 \U0001f600 \ud800 \ufffe \"'"


def _tree_value(parent: ET.Element, tag: str, value: Any) -> None:
    el = ET.SubElement(parent, tag)
    if isinstance(value, list):
        for entry in value:
            _tree_value(el, _ITEM_TAGS.get(tag, "item"), entry)
    elif isinstance(value, dict):
        for key, sub in value.items():
            _tree_value(el, key, sub)
    elif isinstance(value, bool):
        el.text = "true" if value else "false"
    elif value is not None:
        el.text = xml_text(str(value))


def by_element_tree(root: str, body: list[Any] | dict[str, Any]) -> bytes:
    """The answer as the standard library writes the tree of it."""
    el = ET.Element(root)
    if isinstance(body, list):
        for entry in body:
            _tree_value(el, _ITEM_TAGS[root], entry)
    else:
        for key, value in body.items():
            _tree_value(el, key, value)
    return ET.tostring(el, encoding="utf-8", xml_declaration=True)


def test_xml_answers_are_the_bytes_element_tree_writes() -> None:
    request = {
        "service_request_id": "000042",
        "status_notes": NASTY,
        "description": "",
        "address_id": None,
        "lat": 31.21345,
        "long": -107.5,
        "zipcode": None,
        "order": 3,
        "metadata": True,
        "variable": False,
    }
    cases: list[tuple[str, list[Any] | dict[str, Any]]] = [
        ("service_requests", [request, {**request, "description": "<x>&amp;</x>"}]),
        ("service_requests", []),
        ("errors", [{"code": 400, "description": NASTY}]),
        (
            "service_definition",
            {
                "service_code": "repair",
                "attributes": [
                    {
                        "code": "part",
                        "values": [{"key": "a&b", "name": ">"}, {"key": "", "name": 0}],
                    },
                    {"code": "empty", "values": []},
                ],
                "nested": {"inner": {"deep": "text"}, "none": {}},
                "others": ["x", None, "", ["y"]],
            },
        ),
    ]
    for root, body in cases:
        answer = render("xml", root, body)
        assert answer.body == by_element_tree(root, body), root
        assert answer.headers["content-type"] == "text/xml; charset=utf-8"
        ET.fromstring(answer.body)  # well-formed
