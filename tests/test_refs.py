"""Outbox refs (models/refs.py): built and parsed in one place, and the stored string form of
every kind pinned (existing databases hold these strings; changing one would orphan them)."""

from __future__ import annotations

import pytest

from models import refs
from models.refs import Ref, RefKind, parse_ref

#: The strings as databases store them (before refs.py existed they were written by f-strings).
STORED = {
    refs.receipt(12): "receipt:12",
    refs.offer(7): "offer:7",
    refs.dispatch(12): "disp:12",
    refs.note(12): "note:12",
    refs.news(12): "news:12",
    refs.task(12): "task:12",
    refs.rate(12): "rate:12",
    refs.cancel_ask(12): "cxask:12",
    refs.unreachable(12): "unreach:12",
    refs.patrol(3): "patrol:3",
    refs.visit(4): "visit:4",
    refs.whistle(5): "whistle:5",
    refs.notice(6): "notice:6",
    refs.notice_ask(8): "notice-ask:8",
    refs.confirm("0f1e2d3c4b5a6978"): "confirm:0f1e2d3c4b5a6978",
    refs.duplicate_question("0f1e2d3c4b5a6978"): "dupq:0f1e2d3c4b5a6978",
}


@pytest.mark.parametrize(("built", "stored"), list(STORED.items()))
def test_the_stored_form_of_every_kind_is_pinned(built: str, stored: str) -> None:
    assert built == stored


def test_every_kind_is_pinned() -> None:
    assert {s.split(":", 1)[0] for s in STORED.values()} == {k.value for k in RefKind}


@pytest.mark.parametrize("stored", list(STORED.values()))
def test_round_trip(stored: str) -> None:
    ref = parse_ref(stored)
    assert ref is not None
    assert str(ref) == stored
    assert Ref(ref.kind, ref.key) == ref
    assert stored.startswith(Ref.prefix(ref.kind))


def test_parsed_fields() -> None:
    assert parse_ref("offer:7") == Ref(RefKind.OFFER, 7)
    assert parse_ref("disp:12") == Ref(RefKind.DISPATCH, 12)
    assert parse_ref("disp:12").id == 12  # type: ignore[union-attr]
    assert parse_ref("confirm:ab12") == Ref(RefKind.CONFIRM, "ab12")
    with pytest.raises(TypeError):
        _ = Ref(RefKind.CONFIRM, "ab12").id


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        "disp",
        "disp:",
        "disp12",
        "disp:12x",
        "disp:-1",
        "disp: 12",
        "disp:12\n",
        "disp:１２",  # full-width digits are digits to str.isdigit, not to a ref
        "disp:²",
        "disp:" + "9" * 20,
        "DISP:12",
        "unknown:12",
        "card:12",  # a channel's own message ids are no outbox refs
        "confirm:",
        "confirm:a b",
        "confirm:" + "a" * 65,
        "notice-ask:x",
    ],
)
def test_parse_rejects_malformed(raw: str | None) -> None:
    assert parse_ref(raw) is None


@pytest.mark.parametrize(
    ("kind", "key"),
    [
        (RefKind.DISPATCH, "12"),
        (RefKind.DISPATCH, -1),
        (RefKind.DISPATCH, True),
        (RefKind.CONFIRM, 12),
        (RefKind.CONFIRM, "has space"),
        (RefKind.CONFIRM, ""),
    ],
)
def test_building_a_malformed_ref_raises(kind: RefKind, key: int | str) -> None:
    with pytest.raises(ValueError):
        refs.make(kind, key)
