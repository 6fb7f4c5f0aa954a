"""The order state machine: every transition writes an event row and queues its notifications.

All methods run inside the caller's transaction; nothing here commits. Transitions that can race
(accept, cancel, dispatch) are conditional UPDATEs checked by row count, never read-then-write, so
under concurrent presses exactly one wins on SQLite and on PostgreSQL alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core import cards, payloads, points
from bot.core.cards import OrderView, number
from bot.core.notify import Notifier
from bot.core.points import PointsRules
from bot.core.responsibility import (
    Target,
    ancestors,
    can_manage,
    escalation_target,
    members_in_subtree,
    new_order_target,
    people_with_role,
)
from bot.i18n import Translator
from bot.ports import Button, Outbound
from models import (
    Building,
    Category,
    Grid,
    Offer,
    Order,
    OrderEvent,
    OutboxMessage,
    Person,
    Revisit,
    Role,
    refs,
)
from models.orders import (
    ACCEPTED,
    AWAITING_DISPATCH,
    CANCELLABLE,
    CANCELLED,
    CLOSED,
    CONFIRMED,
    DISPATCHED,
    DONE,
    ESCALATED,
    OFFER_ACCEPTED,
    OFFER_DECLINED,
    OFFER_OPEN,
    OFFER_TAKEN,
    OFFER_WITHDRAWN,
    SOURCE_RESIDENT,
    SUBMITTED,
)
from models.people import ROLE_HEAD, ROLE_MEMBER

log = logging.getLogger(__name__)

#: States from which a worker or head may send an order up the tree.
ESCALATABLE = (SUBMITTED, ESCALATED, DISPATCHED, ACCEPTED)
#: Ratings at or below this open a revisit (回访) for the grid head.
REVISIT_AT_OR_BELOW = 3


class OrderError(Exception):
    """A polite refusal: ``key`` names the sentence to show the user; nothing was changed.

    ``end_flow`` is set when the refused action was the last step of a conversation flow that
    can no longer succeed (the order changed meanwhile): the flow ends instead of asking again.
    """

    def __init__(self, key: str, **args: Any) -> None:
        super().__init__(key)
        self.key = key
        self.args_ = args
        self.end_flow = False


@dataclass
class NewOrder:
    """What a resident filled in (or a visit, or the city platform, on their behalf).

    ``source`` is where the order came from (``models.orders.SOURCES``); ``note_key`` and
    ``note_args`` are the line the handlers' first card opens with."""

    category: str
    description: str
    photo: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    voice: str | None = None
    #: The confirmation the resident pressed (unique per resident: one order per press).
    submit_key: str | None = None
    source: str = SOURCE_RESIDENT
    note_key: str = "dispatch.new"
    note_args: dict[str, str] = field(default_factory=dict)


class OrderService:
    """Transitions of orders, on behalf of a person, at a given time."""

    def __init__(
        self,
        session: AsyncSession,
        notifier: Notifier,
        tr: Translator,
        now: datetime,
        points: PointsRules | None = None,
    ) -> None:
        self.session = session
        self.notify = notifier
        self.tr = tr
        self.now = now
        self.points = points or PointsRules()

    # ---- helpers -------------------------------------------------------------------------

    async def get(self, order_id: int) -> Order:
        """Load an order or refuse politely."""
        order = await self.session.get(Order, order_id, populate_existing=True)
        if order is None:
            raise OrderError("error.order_not_found")
        return order

    def _event(
        self,
        order: Order,
        actor_id: int | None,
        action: str,
        from_status: str | None,
        note: str | None = None,
    ) -> None:
        self.session.add(
            OrderEvent(
                order_id=order.id,
                actor_id=actor_id,
                action=action,
                from_status=from_status,
                to_status=order.status,
                note=note,
                created_at=self.now,
            )
        )

    async def _transition(
        self,
        order: Order,
        allowed: tuple[str, ...],
        to_status: str,
        *,
        refresh_cards: bool = True,
        **values: Any,
    ) -> str:
        """Move ``order`` to ``to_status`` if it is still in one of ``allowed``; return the old
        status. A concurrent change makes the row count 0 and the caller is told.
        ``refresh_cards=False`` for a state the order passes through within the same
        transaction: only the state it rests in is shown (one edit, not two).

        The old status is the one read before the UPDATE (the ORM synchronises the object with
        the new values), and the UPDATE requires it to be unchanged, so the event's ``from`` is
        exact and nobody acts on a state they did not see."""
        old = order.status
        result = await self.session.execute(
            update(Order)
            .where(Order.id == order.id, Order.status.in_(allowed), Order.status == old)
            .values(status=to_status, version=Order.version + 1, updated_at=self.now, **values)
            .returning(Order.status)
        )
        if result.first() is None:
            await self.session.refresh(order)
            raise OrderError(self._stale_key(order))
        await self.session.refresh(order)
        if refresh_cards:
            await self._refresh_cards(order)
        return old

    async def _refresh_cards(self, order: Order) -> None:
        """Bring earlier messages about ``order`` up to date, so that no stale button invites
        a press: the handlers' dispatch cards show the new state without buttons, and the
        resident's receipt loses its cancel button once cancelling is no longer possible."""
        handlers = [
            pid
            for pid in (
                await self.session.scalars(
                    select(OutboxMessage.person_id)
                    .where(OutboxMessage.ref == refs.dispatch(order.id))
                    .distinct()
                )
            ).all()
            if pid is not None
        ]
        closed_receipt = order.status not in CANCELLABLE
        if not handlers and not closed_receipt:
            return
        view = await self.view(order)

        def card(lang: str) -> Outbound:
            # Dispatched or accepted orders can still be sent up when the member is stuck.
            buttons = []
            if order.status in ESCALATABLE and order.status not in AWAITING_DISPATCH:
                buttons = [
                    [Button(self.tr.t(lang, "btn.escalate"), payloads.order("esc", order.id))]
                ]
            text = cards.card_text(self.tr, lang, view, contact=True, full=True)
            return Outbound(text, buttons)

        def receipt(lang: str) -> Outbound:
            status = cards.status_name(self.tr, lang, order.status)
            return Outbound(
                self.tr.t(lang, "order.received", number=number(order))
                + "\n"
                + self.tr.t(lang, "card.status", status=status)
            )

        for pid in handlers:
            await self.notify.edit_for_person(pid, refs.dispatch(order.id), card)
        if closed_receipt:
            await self.notify.edit_for_person(order.resident_id, refs.receipt(order.id), receipt)

    @staticmethod
    def _stale_key(order: Order) -> str:
        if order.status in (CANCELLED,):
            return "error.order_cancelled"
        if order.status in (ACCEPTED, DONE, CONFIRMED, CLOSED):
            return "error.order_taken"
        return "error.order_state_changed"

    async def view(self, order: Order) -> OrderView:
        """The order with its surroundings, fresh."""
        return await OrderView.load(self.session, order)

    async def _require_manager(self, person_id: int, order: Order) -> None:
        grid = await self.session.get(Grid, order.handling_grid_id)
        assert grid is not None
        if not await can_manage(self.session, person_id, grid):
            raise OrderError("error.not_your_button")

    async def _notify_handlers(
        self, order: Order, person_ids: list[int], note_key: str | None = None, **args: str
    ) -> int:
        view = await self.view(order)
        reached = 0
        for pid in person_ids:
            row = await self.notify.to_person(
                pid,
                lambda lang: cards.dispatch_card(self.tr, lang, view, note_key, **args),
                ref=refs.dispatch(order.id),
            )
            reached += row is not None
        return reached

    async def _handlers(self, order: Order) -> list[int]:
        """Who currently handles the order: the people responsible at its handling grid."""
        grid = await self.session.get(Grid, order.handling_grid_id)
        assert grid is not None
        target = await new_order_target(self.session, grid)
        return target.person_ids if target else []

    async def _tell_resident(
        self, order: Order, key: str, *, kind: str | None = None, **args: str
    ) -> None:
        # The ref ties the note to its order (who to tell when the resident cannot be
        # reached); ``kind`` picks the WeChat template outside the 48-hour window.
        await self.notify.to_person(
            order.resident_id,
            lambda lang: Outbound(self.tr.t(lang, key, number=number(order), **args), kind=kind),
            ref=refs.note(order.id),
        )

    async def _assignee_name(self, order: Order) -> str:
        assignee = await self.session.get(Person, order.assignee_id) if order.assignee_id else None
        return assignee.name if assignee else "-"

    async def _tell_handlers_news(self, order: Order, key: str, **args: str) -> None:
        """Tell the people handling the order (its grid's worker, else the head or admin who
        has it) what became of it after they dispatched it: done, rated, reopened. The member
        doing it is told separately, so a handler who took it personally hears nothing twice."""
        for pid in await self._handlers(order):
            if pid == order.assignee_id:
                continue
            await self.notify.to_person(
                pid,
                lambda lang: Outbound(
                    self.tr.t(lang, key, number=number(order), **args),
                    [[Button(self.tr.t(lang, "btn.view", number=number(order)),
                             payloads.order("view", order.id))]],
                ),
                ref=refs.news(order.id),
            )

    async def _close_open_offers(
        self,
        order: Order,
        new_status: str,
        key: str,
        except_person: int | None = None,
        **args: str,
    ) -> None:
        """Turn every open offer of ``order`` into ``new_status`` and edit its message."""
        offers = (
            await self.session.scalars(
                select(Offer).where(Offer.order_id == order.id, Offer.status == OFFER_OPEN)
            )
        ).all()
        if not offers:
            return
        view = await self.view(order)
        for offer in offers:
            if offer.person_id == except_person:
                continue
            offer.status = new_status
            await self.notify.edit_for_person(
                offer.person_id,
                refs.offer(offer.id),
                lambda lang: cards.offer_closed(self.tr, lang, view, key, **args),
            )

    # ---- resident --------------------------------------------------------------------------

    async def submit(
        self, resident: Person, building: Building, room: str | None, data: NewOrder
    ) -> Order:
        """Store a new order and send it to its micro-grid's worker(s) (or up the tree)."""
        category = await self.session.scalar(
            select(Category).where(Category.code == data.category)
        )
        if category is None:
            raise OrderError("error.unknown_category")
        grid = await self.session.get(Grid, building.grid_id)
        assert grid is not None
        target = await new_order_target(self.session, grid)
        order = Order(
            resident_id=resident.id,
            building_id=building.id,
            room=room,
            grid_id=grid.id,
            handling_grid_id=target.grid.id if target else grid.id,
            category=category.code,
            description=data.description,
            photo=data.photo,
            voice=data.voice,
            submit_key=data.submit_key,
            latitude=data.latitude,
            longitude=data.longitude,
            status=SUBMITTED,
            source=data.source,
            created_at=self.now,
            updated_at=self.now,
        )
        self.session.add(order)
        await self.session.flush()
        self._event(order, resident.id, "submit", None)
        if target is None:
            log.error("order %s has nobody responsible for it in grid %s", order.id, grid.code)
        else:
            reached = await self._notify_handlers(
                order, target.person_ids, data.note_key, **data.note_args
            )
            if not reached:
                log.warning("order %s: no handler of grid %s has a chat yet", order.id, grid.code)
        return order

    async def add_note(
        self,
        order: Order,
        actor_id: int,
        note: str,
        *,
        photo: str | None = None,
        voice: str | None = None,
    ) -> None:
        """The resident reports an open order again (the same thing): an event that changes
        no state, and whoever works on it now (the member who took it, else its handlers)
        hears it, with the new photo or voice message if any."""
        self._event(order, actor_id, "note", order.status, note=note)
        people = [order.assignee_id] if order.assignee_id else await self._handlers(order)
        for pid in people:
            await self.notify.to_person(
                pid,
                lambda lang: Outbound(
                    self.tr.t(lang, "dispatch.reported_again", number=number(order), text=note),
                    photo=photo,
                    voice=voice,
                ),
            )

    async def cancel_check(self, person: Person, order_id: int) -> Order:
        """Whether ``person`` may withdraw the order now (asked before the confirmation);
        refuse politely if not."""
        order = await self.get(order_id)
        if order.resident_id != person.id:
            raise OrderError("error.not_your_button")
        if order.status == CANCELLED:
            # Pressed again (the receipt's button, or a list's): say what happened.
            raise OrderError("order.already_cancelled", number=number(order))
        if order.status not in CANCELLABLE:
            raise OrderError("error.cannot_cancel")
        return order

    async def cancel(self, person: Person, order_id: int) -> Order:
        """The resident withdraws an order nobody has accepted yet."""
        order = await self.cancel_check(person, order_id)
        old = await self._transition(order, CANCELLABLE, CANCELLED)
        self._event(order, person.id, "cancel", old)
        await self._close_open_offers(order, OFFER_WITHDRAWN, "offer.cancelled")
        view = await self.view(order)
        for pid in await self._handlers(order):
            await self.notify.to_person(
                pid,
                lambda lang: Outbound(
                    self.tr.t(lang, "dispatch.cancelled", number=number(order))
                    + "\n\n"
                    + cards.card_text(self.tr, lang, view, contact=False, full=False)
                ),
            )
        return order

    async def rate(self, person: Person, order_id: int, stars: int) -> Order:
        """The resident confirms and rates; points go to the member; ≤3 stars → revisit."""
        order = await self.get(order_id)
        if order.resident_id != person.id:
            raise OrderError("error.not_your_button")
        if order.status != DONE:
            if order.rating is not None:  # rated already: a second press says so
                raise OrderError(
                    "order.already_rated", number=number(order), stars="★" * order.rating
                )
            raise OrderError("error.cannot_rate")
        revisit = stars <= REVISIT_AT_OR_BELOW
        # Without a revisit the order only passes through "confirmed" on its way to "closed":
        # the receipt and the handlers' cards are edited once, to "closed", never showing a
        # 待回访 that will not come.
        old = await self._transition(
            order, (DONE,), CONFIRMED, rating=stars, refresh_cards=revisit
        )
        self._event(order, person.id, "rate", old, note=str(stars))
        credited = await self._award_points(order)
        if order.assignee_id and stars >= points.BONUS_AT_OR_ABOVE:
            bonus = self.points.rating_bonus
            if await points.award(
                self.session,
                person_id=order.assignee_id,
                points=bonus,
                reason=points.RATING_BONUS,
                key=f"{points.RATING_BONUS}:{order.id}",
                now=self.now,
                order_id=order.id,
            ):
                credited += bonus
        if order.assignee_id:
            # Points are mentioned only when some were credited by this rating.
            def rated(lang: str) -> Outbound:
                text = self.tr.t(
                    lang, "member.rated_only", number=number(order), stars="★" * stars
                )
                if credited > 0:
                    text += self.tr.t(lang, "member.rated_points", points=str(credited))
                if revisit:
                    text += self.tr.t(lang, "member.rated_revisit")
                return Outbound(text)

            await self.notify.to_person(order.assignee_id, rated)
        await self._tell_handlers_news(
            order, "handler.rated", stars="★" * stars, name=await self._assignee_name(order)
        )
        if revisit:
            await self._open_revisit(order)
        else:
            old = await self._transition(order, (CONFIRMED,), CLOSED)
            self._event(order, person.id, "close", old)
        return order

    async def _award_points(self, order: Order) -> int:
        """The member who did the order gets its category's points, once per order (the
        ledger's ``order_done:<id>`` key), in this transaction: rated or auto-closed.
        Returns the points credited now (0 when none, or when credited before)."""
        if order.assignee_id is None:
            return 0
        category = await self.session.scalar(
            select(Category).where(Category.code == order.category)
        )
        amount = category.points if category else 0
        if amount <= 0:
            return 0
        credited = await points.award(
            self.session,
            person_id=order.assignee_id,
            points=amount,
            reason=points.ORDER_DONE,
            key=f"{points.ORDER_DONE}:{order.id}",
            now=self.now,
            order_id=order.id,
        )
        return amount if credited else 0

    async def _open_revisit(self, order: Order) -> None:
        grid = await self.session.get(Grid, order.grid_id)
        assert grid is not None
        chain = [grid]
        chain += await ancestors(self.session, grid)
        head_grid, heads = grid, []
        for g in chain:
            heads = await people_with_role(self.session, g.id, ROLE_HEAD)
            if heads:
                head_grid = g
                break
        revisit = Revisit(
            order_id=order.id,
            grid_id=head_grid.id,
            head_id=heads[0] if heads else None,
            created_at=self.now,
        )
        self.session.add(revisit)
        await self.session.flush()
        view = await self.view(order)
        for pid in heads:
            await self.notify.to_person(
                pid,
                lambda lang: Outbound(
                    self.tr.t(
                        lang, "revisit.new", number=number(order), stars="★" * (order.rating or 0)
                    )
                    + "\n\n"
                    + cards.card_text(self.tr, lang, view, contact=True, full=True),
                    buttons=[
                        [Button(self.tr.t(lang, "btn.revisit_done"), payloads.revisit(revisit.id))]
                    ],
                ),
            )

    async def not_solved(self, person: Person, order_id: int) -> Order:
        """The resident says it is not solved: back to the same member."""
        order = await self.get(order_id)
        if order.resident_id != person.id:
            raise OrderError("error.not_your_button")
        if order.status != DONE:
            raise OrderError("error.cannot_rate")
        old = await self._transition(order, (DONE,), ACCEPTED)
        self._event(order, person.id, "reopen", old)
        view = await self.view(order)
        if order.assignee_id:
            await self.notify.to_person(
                order.assignee_id,
                lambda lang: cards.assignee_card(self.tr, lang, view, "member.reopened"),
            )
        await self._tell_handlers_news(
            order, "handler.reopened", name=await self._assignee_name(order)
        )
        return order

    # ---- worker / head ---------------------------------------------------------------------

    async def assignable(self, person: Person, order_id: int) -> tuple[Order, list[Any]]:
        """Members the handler may assign the order to, least loaded first."""
        order = await self.get(order_id)
        await self._require_manager(person.id, order)
        if order.status not in AWAITING_DISPATCH:
            raise OrderError(
                self._stale_key(order)
                if order.status != DISPATCHED
                else "error.already_dispatched"
            )
        grid = await self.session.get(Grid, order.handling_grid_id)
        assert grid is not None
        return order, await members_in_subtree(self.session, grid)

    async def _offer(self, order: Order, person_ids: list[int], *, assigned: bool) -> int:
        rnd = (
            await self.session.scalar(
                select(func.coalesce(func.max(Offer.round), 0)).where(Offer.order_id == order.id)
            )
            or 0
        ) + 1
        view = await self.view(order)
        reached = 0
        for pid in person_ids:
            if await self.notify.identity_of(pid) is None:
                # Nobody to tell: an offer nobody can see would keep the order waiting for a
                # decline that never comes.
                continue
            offer = Offer(order_id=order.id, person_id=pid, round=rnd, created_at=self.now)
            self.session.add(offer)
            await self.session.flush()
            await self.notify.to_person(
                pid,
                lambda lang: cards.offer_card(self.tr, lang, view, assigned=assigned),
                ref=refs.offer(offer.id),
            )
            reached += 1
        return reached

    async def assign(self, person: Person, order_id: int, member_id: int) -> Order:
        """Offer the order to one named member."""
        order, members = await self.assignable(person, order_id)
        if member_id not in {m.person_id for m in members}:
            raise OrderError("error.not_a_member_here")
        old = await self._transition(order, AWAITING_DISPATCH, DISPATCHED, assignee_id=None)
        member = await self.session.get(Person, member_id)
        assert member is not None
        self._event(order, person.id, "assign", old, note=member.name)
        reached = await self._offer(order, [member_id], assigned=True)
        if not reached:
            raise OrderError("error.member_unreachable", name=member.name)
        return order

    async def broadcast(self, person: Person, order_id: int) -> tuple[Order, int]:
        """Offer the order to every member of the handling grid's subtree; first accept wins."""
        order, members = await self.assignable(person, order_id)
        if not members:
            raise OrderError("error.no_members")
        old = await self._transition(order, AWAITING_DISPATCH, DISPATCHED, assignee_id=None)
        self._event(order, person.id, "broadcast", old, note=str(len(members)))
        reached = await self._offer(order, [m.person_id for m in members], assigned=False)
        if not reached:
            raise OrderError("error.no_members")
        return order, reached

    async def handle_self(self, person: Person, order_id: int) -> Order:
        """The handler takes the order personally."""
        order = await self.get(order_id)
        await self._require_manager(person.id, order)
        old = await self._transition(order, AWAITING_DISPATCH, ACCEPTED, assignee_id=person.id)
        self._event(order, person.id, "handle", old)
        await self._after_accept(order, person)
        return order

    async def escalation_check(self, person: Person, order_id: int) -> tuple[Order, Target]:
        """Whether ``person`` may escalate the order now, and to whom; refuse politely if not
        (asked before the reason, so that a flow that can only fail never starts)."""
        order = await self.get(order_id)
        await self._require_manager(person.id, order)
        if order.status not in ESCALATABLE:
            raise OrderError(self._stale_key(order))
        grid = await self.session.get(Grid, order.handling_grid_id)
        assert grid is not None
        target = await escalation_target(self.session, grid)
        if target is None:
            raise OrderError("error.escalate_top")
        return order, target

    async def escalate(self, person: Person, order_id: int, reason: str) -> Order:
        """Send the order one level up the tree with a reason; the head above dispatches it."""
        order, target = await self.escalation_check(person, order_id)
        previous_assignee = order.assignee_id
        old = await self._transition(
            order, ESCALATABLE, ESCALATED, handling_grid_id=target.grid.id, assignee_id=None
        )
        self._event(order, person.id, "escalate", old, note=reason)
        await self._close_open_offers(order, OFFER_WITHDRAWN, "offer.withdrawn")
        if previous_assignee and previous_assignee != person.id:
            await self.notify.to_person(
                previous_assignee,
                lambda lang: Outbound(
                    self.tr.t(lang, "member.escalated_away", number=number(order))
                ),
            )
        await self._notify_handlers(
            order,
            target.person_ids,
            "dispatch.escalated",
            reason=reason,
            by=person.name,
            level=target.grid.name,
        )
        await self._tell_resident(order, "resident.escalated", grid=target.grid.name)
        return order

    # ---- member ----------------------------------------------------------------------------

    async def accept(self, person: Person, order_id: int) -> Order:
        """First accept wins: a conditional UPDATE that only the holder of an open offer for a
        still-dispatched order can make; everyone else's offer turns into 'taken'."""
        order = await self.get(order_id)
        has_offer = exists().where(
            Offer.order_id == Order.id, Offer.person_id == person.id, Offer.status == OFFER_OPEN
        )
        result = await self.session.execute(
            update(Order)
            .where(Order.id == order_id, Order.status == DISPATCHED, has_offer)
            .values(
                status=ACCEPTED,
                assignee_id=person.id,
                version=Order.version + 1,
                updated_at=self.now,
            )
            .returning(Order.id)
        )
        if result.first() is None:
            await self.session.refresh(order)
            offer_exists = await self.session.scalar(
                select(Offer.id).where(Offer.order_id == order_id, Offer.person_id == person.id)
            )
            if not offer_exists:
                raise OrderError("error.not_your_button")
            if order.status == CANCELLED:
                raise OrderError("error.order_cancelled")
            if order.assignee_id == person.id and order.status == ACCEPTED:
                raise OrderError("error.already_yours")
            if order.status in (ACCEPTED, DONE, CONFIRMED, CLOSED):
                raise OrderError("error.order_taken")
            raise OrderError("error.offer_closed")
        await self.session.refresh(order)
        self._event(order, person.id, "accept", DISPATCHED)
        mine = await self.session.scalar(
            select(Offer).where(
                Offer.order_id == order.id,
                Offer.person_id == person.id,
                Offer.status == OFFER_OPEN,
            )
        )
        if mine is not None:
            mine.status = OFFER_ACCEPTED
            view = await self.view(order)
            await self.notify.edit_for_person(
                person.id,
                refs.offer(mine.id),
                lambda lang: cards.offer_closed(self.tr, lang, view, "offer.yours"),
            )
        await self._close_open_offers(order, OFFER_TAKEN, "offer.taken", name=person.name)
        await self._refresh_cards(order)
        await self._after_accept(order, person)
        return order

    async def _after_accept(self, order: Order, person: Person) -> None:
        view = await self.view(order)
        await self.notify.to_person(
            person.id,
            lambda lang: cards.assignee_card(self.tr, lang, view, "member.accepted"),
            ref=refs.task(order.id),
        )
        await self._tell_resident(order, "resident.accepted", kind="accepted", name=person.name)
        for pid in await self._handlers(order):
            if pid != person.id:
                await self.notify.to_person(
                    pid,
                    lambda lang: Outbound(
                        self.tr.t(
                            lang, "dispatch.accepted", number=number(order), name=person.name
                        )
                    ),
                )

    async def decline(self, person: Person, order_id: int) -> Order:
        """A member turns an offer down; when no open offer is left the handler gets it back."""
        order = await self.get(order_id)
        offer = await self.session.scalar(
            select(Offer).where(
                Offer.order_id == order_id,
                Offer.person_id == person.id,
                Offer.status == OFFER_OPEN,
            )
        )
        if offer is None:
            anyone = await self.session.scalar(
                select(Offer.id).where(Offer.order_id == order_id, Offer.person_id == person.id)
            )
            raise OrderError("error.offer_closed" if anyone else "error.not_your_button")
        offer.status = OFFER_DECLINED
        view = await self.view(order)
        await self.notify.edit_for_person(
            person.id,
            refs.offer(offer.id),
            lambda lang: cards.offer_closed(self.tr, lang, view, "offer.declined"),
        )
        await self.session.flush()
        still_open = await self.session.scalar(
            select(func.count())
            .select_from(Offer)
            .where(Offer.order_id == order_id, Offer.status == OFFER_OPEN)
        )
        self.session.add(
            OrderEvent(
                order_id=order.id,
                actor_id=person.id,
                action="decline",
                from_status=order.status,
                to_status=order.status,
                created_at=self.now,
            )
        )
        if not still_open and order.status == DISPATCHED:
            old = await self._transition(order, (DISPATCHED,), SUBMITTED)
            self._event(order, person.id, "returned", old)
            await self._notify_handlers(
                order, await self._handlers(order), "dispatch.declined", name=person.name
            )
        return order

    async def start_done(self, person: Person, order_id: int) -> Order:
        """Check that ``person`` may mark the order done (before asking for a note)."""
        order = await self.get(order_id)
        if order.assignee_id != person.id:
            raise OrderError("error.not_your_button")
        if order.status != ACCEPTED:
            raise OrderError("error.cannot_finish")
        return order

    async def finish(
        self, person: Person, order_id: int, note: str | None, photo: str | None
    ) -> Order:
        """The member marks the order done; the resident is asked to confirm and rate."""
        order = await self.start_done(person, order_id)
        old = await self._transition(order, (ACCEPTED,), DONE, done_note=note, done_photo=photo)
        self._event(order, person.id, "done", old, note=note)
        view = await self.view(order)
        await self.notify.to_person(
            order.resident_id,
            lambda lang: cards.rating_card(self.tr, lang, view),
            ref=refs.rate(order.id),
        )
        await self._tell_handlers_news(order, "handler.done", name=person.name)
        return order

    async def revisit_done(self, person: Person, revisit_id: int, note: str | None) -> Revisit:
        """The head records the follow-up call; the order closes."""
        revisit = await self.session.get(Revisit, revisit_id)
        if revisit is None:
            raise OrderError("error.button_invalid")
        grid = await self.session.get(Grid, revisit.grid_id)
        assert grid is not None
        if not await can_manage(self.session, person.id, grid):
            raise OrderError("error.not_your_button")
        result = await self.session.execute(
            update(Revisit)
            .where(Revisit.id == revisit_id, Revisit.status == "open")
            .values(status="done", note=note, done_at=self.now, head_id=person.id)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise OrderError("error.revisit_done_already")
        order = await self.get(revisit.order_id)
        if order.status == CONFIRMED:
            old = await self._transition(order, (CONFIRMED,), CLOSED)
            self._event(order, person.id, "revisit", old, note=note)
        return revisit

    # ---- a person loses roles ----------------------------------------------------------------

    async def _still_serves(self, person_id: int, order: Order) -> bool:
        """Whether the person may still work on ``order``: a member at or below its handling
        grid, or someone who manages that grid."""
        grid = await self.session.get(Grid, order.handling_grid_id)
        assert grid is not None
        member = await self.session.scalar(
            select(func.count())
            .select_from(Role)
            .join(Grid, Grid.id == Role.grid_id)
            .where(
                Role.person_id == person_id,
                Role.role == ROLE_MEMBER,
                Grid.path.startswith(grid.path, autoescape=True),
            )
        )
        return bool(member) or await can_manage(self.session, person_id, grid)

    async def _back_to_handlers(
        self, order: Order, allowed: tuple[str, ...], note_key: str, name: str
    ) -> None:
        old = await self._transition(order, allowed, SUBMITTED, assignee_id=None)
        self._event(order, None, "released", old, note=name)
        handlers = await self._handlers(order)
        reached = await self._notify_handlers(order, handlers, note_key, name=name)
        if not reached:
            log.warning("order %s handed back, but no handler has a chat yet", order.id)

    async def release_person(self, person: Person) -> Released:
        """Open work of someone who lost roles goes back to whoever is responsible now; nothing
        is dropped on the floor. Call after the roles were deleted (and flushed).

        * Their open offers on orders they can no longer take are withdrawn (their message
          says so); an order left with no open offer returns to its handlers.
        * Orders they had accepted (or handled themselves) and can no longer work on return to
          the handlers for a new dispatch; the resident is told, and so are they.
        * Orders waiting for a dispatch they were handling are announced to the people now
          responsible (workers, else the head up the tree, else an admin).
        """
        done = Released()
        offers = (
            await self.session.scalars(
                select(Offer)
                .where(Offer.person_id == person.id, Offer.status == OFFER_OPEN)
                .order_by(Offer.id)
            )
        ).all()
        for offer in offers:
            order = await self.get(offer.order_id)
            if await self._still_serves(person.id, order):
                continue
            offer.status = OFFER_WITHDRAWN
            view = await self.view(order)

            def withdrawn(lang: str, view: OrderView = view) -> Outbound:
                return cards.offer_closed(self.tr, lang, view, "offer.withdrawn")

            await self.notify.edit_for_person(person.id, refs.offer(offer.id), withdrawn)
            done.offers_withdrawn += 1
            await self.session.flush()
            still_open = await self.session.scalar(
                select(func.count())
                .select_from(Offer)
                .where(Offer.order_id == order.id, Offer.status == OFFER_OPEN)
            )
            if not still_open and order.status == DISPATCHED:
                await self._back_to_handlers(
                    order, (DISPATCHED,), "dispatch.member_removed", person.name
                )
                done.orders_returned += 1
        accepted = (
            await self.session.scalars(
                select(Order)
                .where(Order.assignee_id == person.id, Order.status == ACCEPTED)
                .order_by(Order.id)
            )
        ).all()
        for order in accepted:
            if await self._still_serves(person.id, order):
                continue
            await self._back_to_handlers(
                order, (ACCEPTED,), "dispatch.member_removed", person.name
            )
            def released(lang: str, order: Order = order) -> Outbound:
                return Outbound(self.tr.t(lang, "member.released", number=number(order)))

            await self.notify.to_person(person.id, released)
            await self._tell_resident(order, "resident.reassigning")
            done.orders_returned += 1
        carded = (
            await self.session.scalars(
                select(OutboxMessage.ref)
                .where(
                    OutboxMessage.person_id == person.id,
                    OutboxMessage.ref.startswith(
                        refs.Ref.prefix(refs.RefKind.DISPATCH), autoescape=True
                    ),
                )
                .distinct()
            )
        ).all()
        order_ids = sorted({r.id for ref in carded if (r := refs.parse_ref(ref)) is not None})
        for order_id in order_ids:
            order = await self.get(order_id)
            if order.status not in AWAITING_DISPATCH:
                continue
            grid = await self.session.get(Grid, order.handling_grid_id)
            assert grid is not None
            if await can_manage(self.session, person.id, grid):
                continue
            handlers = [pid for pid in await self._handlers(order) if pid != person.id]
            reached = await self._notify_handlers(
                order, handlers, "dispatch.handover", name=person.name
            )
            if not reached:
                log.warning("order %s: its handler left and nobody can be told", order.id)
            done.orders_redirected += 1
        return done


@dataclass
class Released:
    """What :meth:`OrderService.release_person` handed back."""

    offers_withdrawn: int = 0
    orders_returned: int = 0
    orders_redirected: int = 0
    #: Visit and patrol plans paused (filled by :func:`bot.core.handover.hand_over`).
    plans_paused: int = 0

    @property
    def anything(self) -> bool:
        """Whether there was open work to hand over."""
        return bool(
            self.offers_withdrawn
            or self.orders_returned
            or self.orders_redirected
            or self.plans_paused
        )

    def __str__(self) -> str:
        text = (
            f"{self.offers_withdrawn} offer(s) withdrawn, {self.orders_returned} order(s) "
            f"returned for a new dispatch, {self.orders_redirected} waiting order(s) announced "
            "to the people now responsible"
        )
        if self.plans_paused:
            text += (
                f"; {self.plans_paused} visit/patrol plan(s) paused: pair them with someone "
                "else (gridbot duties import)"
            )
        return text
