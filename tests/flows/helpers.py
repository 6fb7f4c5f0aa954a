"""Small helpers shared by the flow tests: placing an order, reading rows, snapshots."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bot.channels.memory import MemoryUser, SentMessage
from models import (
    Conversation,
    Identity,
    Invite,
    Offer,
    Order,
    OrderEvent,
    Person,
    PointsEntry,
    Revisit,
    Role,
)
from tests.conftest import Harness

LIGHT = "楼道灯坏了，晚上很黑"


async def place_order(
    resident: MemoryUser,
    category: str = "维修",
    text: str = LIGHT,
    *,
    photo: str | None = None,
    location: tuple[float, float] | None = None,
) -> None:
    """Walk the whole order flow in Chinese: category, description, photo, location, submit."""
    await resident.send("/order")
    await resident.press(category)
    await resident.send(text)
    if photo:
        await resident.photo(photo)
    else:
        await resident.press("跳过")
    if location:
        await resident.location(*location)
    else:
        await tap(resident, "跳过")
    await resident.press("提交")
    if "是同一件事吗" in resident.last().text:  # like one still open: it is another one
        await resident.press("另报一件")


async def tap(user: MemoryUser, label: str) -> None:
    """Tap ``label`` on the newest message: a reply-keyboard key (its label is sent as text)
    or, when the message has no such key, its inline button."""
    last = user.last()
    keys = [key for row in (last.message.menu or []) for key in row if label in key]
    if keys:
        await user.send(keys[0])
    else:
        await user.press(label, message=last)


async def new_order(harness: Harness, resident: MemoryUser, **kwargs: Any) -> Order:
    """Place an order and return it as stored (the newest order)."""
    await place_order(resident, **kwargs)
    orders = await harness.orders()
    assert orders, "no order was stored"
    return orders[-1]


def since(user: MemoryUser, mark: int) -> list[SentMessage]:
    """Messages a user received after ``mark`` (a previous ``len(user.inbox)``)."""
    return user.inbox[mark:]


def texts_since(user: MemoryUser, mark: int) -> str:
    """The texts received after ``mark``, joined (handy for ``in`` checks)."""
    return "\n---\n".join(m.text for m in since(user, mark))


def find(user: MemoryUser, needle: str) -> SentMessage:
    """The newest message whose current text contains ``needle``."""
    for sent in reversed(user.inbox):
        if needle in sent.text:
            return sent
    raise AssertionError(f"{user.user_id} has no message with {needle!r}: {user.texts()}")


def payload_of(message: SentMessage, label_part: str) -> str:
    """The payload of the button whose label contains ``label_part``."""
    for button in message.buttons:
        if label_part in button.label:
            return button.payload
    raise AssertionError(f"no button {label_part!r} in {[b.label for b in message.buttons]}")


async def person(harness: Harness, key: str) -> Person:
    """A person by their import key."""
    async with harness.app.sessionmaker() as session:
        found = await session.scalar(select(Person).where(Person.key == key))
        assert found is not None, key
        return found


async def rows(harness: Harness, model: type, *where: Any) -> list[Any]:
    """Every row of ``model`` matching ``where``, by id."""
    async with harness.app.sessionmaker() as session:
        stmt = select(model).where(*where).order_by(model.id)  # type: ignore[attr-defined]
        return list((await session.scalars(stmt)).all())


async def full_events(harness: Harness, order_id: int) -> list[OrderEvent]:
    """An order's event rows, oldest first."""
    return await rows(harness, OrderEvent, OrderEvent.order_id == order_id)


async def conversation_of(harness: Harness, user: MemoryUser) -> tuple[str, str] | None:
    """(flow, state) the user is in, or None."""
    async with harness.app.sessionmaker() as session:
        conv = await session.scalar(
            select(Conversation)
            .join(Identity, Identity.id == Conversation.identity_id)
            .where(Identity.external_id == user.user_id, Identity.channel == user.channel.name)
        )
        return (conv.flow, conv.state) if conv else None


async def snapshot(harness: Harness) -> dict[str, Any]:
    """Everything a refused action must leave untouched (outbox and dedupe rows excepted)."""
    async with harness.app.sessionmaker() as session:

        async def table(stmt: Any) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in (await session.execute(stmt)).all()]

        return {
            "person": await table(
                select(
                    Person.id, Person.name, Person.phone, Person.points, Person.locale
                ).order_by(Person.id)
            ),
            "identity": await table(select(Identity.id, Identity.person_id).order_by(Identity.id)),
            "role": await table(
                select(
                    Role.id, Role.person_id, Role.grid_id, Role.role, Role.building_id, Role.room
                ).order_by(Role.id)
            ),
            "invite": await table(
                select(Invite.id, Invite.uses, Invite.revoked).order_by(Invite.id)
            ),
            "orders": await table(
                select(
                    Order.id,
                    Order.status,
                    Order.version,
                    Order.assignee_id,
                    Order.handling_grid_id,
                    Order.rating,
                ).order_by(Order.id)
            ),
            "events": await table(select(OrderEvent.id).order_by(OrderEvent.id)),
            "offers": await table(select(Offer.id, Offer.status).order_by(Offer.id)),
            "conversation": await table(
                select(
                    Conversation.identity_id,
                    Conversation.flow,
                    Conversation.state,
                    Conversation.data,
                ).order_by(Conversation.id)
            ),
            "revisit": await table(select(Revisit.id, Revisit.status).order_by(Revisit.id)),
            "points": await table(select(PointsEntry.id).order_by(PointsEntry.id)),
        }
