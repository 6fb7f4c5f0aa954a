"""A member sees the resident's photo with the offer, before deciding to accept; the offer
still carries no phone and no room, and once taken it keeps its photo and loses its buttons."""

from __future__ import annotations

from tests.conftest import Harness
from tests.flows.helpers import find, new_order

PHOTO = "tg-file-dark-stairwell"


async def test_a_broadcast_offer_shows_the_photo_without_private_details(
    harness: Harness,
) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    li = await harness.login("p-li-dangyuan")
    zhao = await harness.login("p-zhao-zhiyuanzhe")
    order = await new_order(harness, resident, photo=PHOTO)
    await worker.press("广播")

    offers = [find(member, "📢 新的服务需求") for member in (li, zhao)]
    for offer in offers:
        # The photo travels with the offer itself: text, photo and buttons in one message.
        assert offer.message.photo == PHOTO
        assert [b.label for b in offer.buttons] == ["✋ 接单", "婉拒"]
        assert "13800000009" not in offer.text and "2-301" not in offer.text

    await li.press("接单", message=offers[0])
    taken = offers[1]
    assert taken.text.startswith("✅ 已由李党员接单")
    assert taken.message.photo == PHOTO and taken.buttons == []
    mine = offers[0]
    assert mine.text.startswith("✋ 您已接下这张工单") and mine.message.photo == PHOTO
    assert (await harness.order(order.id)).status == "accepted"


async def test_an_assigned_offer_shows_the_photo_too(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    li = await harness.login("p-li-dangyuan")
    await new_order(harness, resident, photo=PHOTO)
    await worker.press("指派")
    await worker.press("李党员")
    offer = find(li, "📌 网格员指派给您一张工单")
    assert offer.message.photo == PHOTO
    assert "13800000009" not in offer.text and "2-301" not in offer.text


async def test_an_offer_without_a_photo_has_none(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    worker = await harness.login("p-wang")
    li = await harness.login("p-li-dangyuan")
    await new_order(harness, resident)
    await worker.press("广播")
    offer = find(li, "📢 新的服务需求")
    assert offer.message.photo is None and "附有照片" not in offer.text
