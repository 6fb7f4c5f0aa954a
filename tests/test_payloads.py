"""Button payloads (bot/core/payloads.py): every builder's payload parses back to its kind, the
wire form of each kind is pinned (buttons already sent carry it), malformed ones are refused."""

from __future__ import annotations

import pytest

from bot.core import payloads as p
from bot.core.payloads import Payload, PayloadKind
from handlers import duties, order_buttons
from handlers.intake import BUTTONS
from handlers.order_buttons import BY_ACTION

BUILT = [
    (p.order("acc", 12), "o:acc:12", Payload(PayloadKind.ORDER, "acc", 12)),
    (p.assign(12, 5), "oa:12:5", Payload(PayloadKind.ASSIGN, "", 12, "5")),
    (p.rate(12, 4), "or:12:4", Payload(PayloadKind.RATE, "", 12, "4")),
    (p.revisit(9), "rv:9", Payload(PayloadKind.REVISIT, "", 9)),
    (p.flow("x"), "f:x", Payload(PayloadKind.FLOW, "x")),
    (p.flow("lang", "zh_CN"), "f:lang:zh_CN", Payload(PayloadKind.FLOW, "lang", None, "zh_CN")),
    (p.menu("help"), "m:help", Payload(PayloadKind.MENU, "help")),
    (p.check_in(3), "dp:ci:3", Payload(PayloadKind.PATROL, "ci", 3)),
    (p.visit("help", 4), "dv:help:4", Payload(PayloadKind.VISIT, "help", 4)),
    (p.whistle("no", 5), "dw:no:5", Payload(PayloadKind.WHISTLE, "no", 5)),
    (
        p.notice_confirm("0123abcd"),
        "nc:0123abcd",
        Payload(PayloadKind.NOTICE_CONFIRM, "", None, "0123abcd"),
    ),
]


@pytest.mark.parametrize(("built", "wire", "parsed"), BUILT)
def test_built_payloads_keep_their_form_and_parse_back(
    built: str, wire: str, parsed: Payload
) -> None:
    assert built == wire
    assert p.parse(built) == parsed


def test_every_kind_is_built_above() -> None:
    assert {parsed.kind for _, _, parsed in BUILT} == set(PayloadKind)


@pytest.mark.parametrize(
    "raw",
    [None, "", "o", "o:", "o:zz:1", "o:view:2147483648", "oa:1:2147483648", "or:3:6",
     "f:bad", "m:", "dp:xx:3", "dw:yes:4", "nc:0123ABCD", "nc:0123abcd\n", "x:1", "a" * 65],
)
def test_malformed_payloads_are_refused(raw: str | None) -> None:
    assert p.parse(raw) is None


def test_every_button_kind_has_one_answer() -> None:
    """Every kind of payload parse() accepts is answered: flow and menu buttons by the intake
    itself, every other kind by the one row of the intake's table; and the order buttons'
    table answers every action an order payload may carry, and no other."""
    assert set(BY_ACTION) == set(p.ORDER_ACTIONS)
    assert set(BUTTONS) | {PayloadKind.FLOW, PayloadKind.MENU} == set(PayloadKind)
    assert not set(order_buttons.BUTTONS) & set(duties.BUTTONS)
