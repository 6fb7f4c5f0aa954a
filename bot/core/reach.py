"""When a push cannot reach its person: try their other platform, else tell the order's handler.

A channel with push rules (WeChat: the 48-hour window, no template for this kind of message,
an unsubscribed user) fails such a row for good; the deliverer then calls
:func:`report_unreachable`, so that a failure is never silent.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core.cards import number
from bot.core.notify import Notifier
from bot.core.responsibility import escalation_target, new_order_target
from bot.i18n import Translator
from bot.ports import Outbound
from models import Grid, Identity, Offer, Order, OutboxMessage, Person, refs
from models.refs import RefKind, parse_ref

log = logging.getLogger(__name__)

#: Refs whose number is an order id (``offer:`` names an offer). The notices themselves
#: (:data:`RefKind.UNREACHABLE`) are never reported again, so nothing loops.
ORDER_REFS = frozenset(
    {RefKind.DISPATCH, RefKind.TASK, RefKind.RATE, RefKind.RECEIPT, RefKind.NOTE}
)


async def order_of(session: AsyncSession, raw: str | None) -> Order | None:
    """The order an outbox ref is about, if any."""
    ref = parse_ref(raw)
    if ref is None:
        return None
    if ref.kind is RefKind.OFFER:
        offer = await session.get(Offer, ref.id)
        return await session.get(Order, offer.order_id) if offer is not None else None
    if ref.kind in ORDER_REFS:
        return await session.get(Order, ref.id)
    return None


async def report_unreachable(
    session: AsyncSession,
    tr: Translator,
    default_locale: str,
    row: OutboxMessage,
    *,
    channels: Collection[str],
) -> list[OutboxMessage]:
    """Handle a row that could not be pushed; return the rows written instead.

    The same message goes to the person's identity on another running channel when they have
    one; otherwise every handler of the order (worker or head, not the person themselves) is
    told that this person cannot be reached by push; when that person is the order's only
    handler, the head of the parent grid (walking further up if need be) is told.
    """
    notifier = Notifier(session, tr, default_locale)
    ref = parse_ref(row.ref)
    if row.person_id is None or (ref is not None and ref.kind is RefKind.UNREACHABLE):
        log.warning("outbox %s could not be pushed and names nobody to tell", row.id)
        return []
    other = await session.scalar(
        select(Identity)
        .where(
            Identity.person_id == row.person_id,
            Identity.channel != row.channel,
            Identity.channel.in_(list(channels)),
        )
        .order_by(Identity.last_inbound_at.desc().nulls_last(), Identity.id.desc())
        .limit(1)
    )
    if other is not None:
        notifier.to_chat(
            other.channel,
            other.chat_id,
            Outbound.from_payload(row.payload),
            person_id=row.person_id,
            ref=row.ref,
        )
        return notifier.written
    order = await order_of(session, row.ref)
    person = await session.get(Person, row.person_id)
    if order is None or person is None:
        log.warning("outbox %s could not be pushed and is about no order", row.id)
        return []
    grid = await session.get(Grid, order.handling_grid_id)
    target = await new_order_target(session, grid) if grid is not None else None
    handlers = [pid for pid in (target.person_ids if target else []) if pid != person.id]
    name, no = person.name, number(order)
    # When the unreachable person is the order's only handler (or no handler has a chat with
    # us), whoever is responsible up the tree is told: the head of the parent grid, else
    # further up.
    above = target.grid if target is not None else grid
    while True:
        told = False
        for pid in handlers:
            written = await notifier.to_person(
                pid,
                lambda lang: Outbound(tr.t(lang, "push.unreachable", name=name, number=no)),
                ref=refs.unreachable(order.id),
            )
            told = told or written is not None
        if told or above is None:
            break
        up = await escalation_target(session, above)
        if up is None:
            break
        handlers = [pid for pid in up.person_ids if pid != person.id]
        above = up.grid
    if not notifier.written:
        log.warning("order %s: person %s unreachable and no handler to tell", order.id, person.id)
    return notifier.written
