"""Order cards: how an order reads to each person, with the buttons their role allows.

Privacy by stage: only ``contact=True`` cards (the handler and the member who accepted) carry the
resident's phone and room; offers and broadcasts show category, building and summary only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.core import payloads as p
from bot.i18n import Translator
from bot.ports import Button, Outbound
from models import Building, Category, Grid, Order, Person

SUMMARY_CHARS = 60


@dataclass
class OrderView:
    """An order with what its cards need, loaded once."""

    order: Order
    building: Building
    grid: Grid
    handling_grid: Grid
    category: Category | None
    resident: Person
    assignee: Person | None

    @classmethod
    async def load(cls, session: AsyncSession, order: Order) -> OrderView:
        """Load the rows around ``order``."""
        building = await session.get(Building, order.building_id)
        grid = await session.get(Grid, order.grid_id)
        handling = await session.get(Grid, order.handling_grid_id)
        resident = await session.get(Person, order.resident_id)
        assert building and grid and handling and resident
        category = await session.scalar(select(Category).where(Category.code == order.category))
        assignee = await session.get(Person, order.assignee_id) if order.assignee_id else None
        return cls(order, building, grid, handling, category, resident, assignee)

    @property
    def urgent(self) -> bool:
        """Whether the order's category never waits."""
        return bool(self.category and self.category.urgent)


class Numbered(Protocol):
    """An order, or a row of one read as columns (what :func:`number` reads)."""

    @property
    def id(self) -> int: ...


def number(order: Numbered) -> str:
    """The order number people read and quote."""
    return f"{order.id:06d}"


def category_name(tr: Translator, lang: str, code: str) -> str:
    """A category's display name."""
    return tr.t(lang, f"category.{code}")


def status_name(tr: Translator, lang: str, status: str) -> str:
    """A status's display name."""
    return tr.t(lang, f"status.{status}")


def _summary(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def card_text(tr: Translator, lang: str, v: OrderView, *, contact: bool, full: bool) -> str:
    """The body of an order card."""
    o = v.order
    lines = [
        tr.t(lang, "card.title", number=number(o), category=category_name(tr, lang, o.category)),
    ]
    if v.urgent:
        lines.append(tr.t(lang, "card.urgent"))
    lines.append(tr.t(lang, "card.place", building=v.building.name, grid=v.grid.name))
    lines.append(
        tr.t(lang, "card.description", text=o.description if full else _summary(o.description))
    )
    if o.latitude is not None and o.longitude is not None:
        lines.append(
            tr.t(lang, "card.location", lat=f"{o.latitude:.5f}", lon=f"{o.longitude:.5f}")
        )
    if o.photo:
        lines.append(tr.t(lang, "card.has_photo"))
    if o.voice:
        lines.append(tr.t(lang, "card.has_voice"))
    if contact:
        lines.append(
            tr.t(
                lang,
                "card.contact",
                name=v.resident.name,
                phone=v.resident.phone or tr.t(lang, "card.no_phone"),
                room=o.room or "-",
                address=v.building.address or v.building.name,
            )
        )
    lines.append(tr.t(lang, "card.status", status=status_name(tr, lang, o.status)))
    if v.assignee is not None and o.status not in ("submitted", "escalated", "dispatched"):
        lines.append(tr.t(lang, "card.assignee", name=v.assignee.name))
    return "\n".join(lines)


def dispatch_card(
    tr: Translator, lang: str, v: OrderView, note_key: str | None = None, **note_args: str
) -> Outbound:
    """What the worker/head handling the order gets: full details and the four dispatch buttons."""
    text = card_text(tr, lang, v, contact=True, full=True)
    if note_key:
        text = tr.t(lang, note_key, **note_args) + "\n\n" + text
    oid = v.order.id
    return Outbound(
        text,
        buttons=[
            [
                Button(tr.t(lang, "btn.assign"), p.order("as", oid)),
                Button(tr.t(lang, "btn.broadcast"), p.order("bc", oid)),
            ],
            [
                Button(tr.t(lang, "btn.handle_self"), p.order("me", oid)),
                Button(tr.t(lang, "btn.escalate"), p.order("esc", oid)),
            ],
        ],
        photo=v.order.photo,
        voice=v.order.voice,
    )


def offer_card(tr: Translator, lang: str, v: OrderView, *, assigned: bool) -> Outbound:
    """An offer to a member: no phone, no room; accept or decline. The resident's photo of the
    problem goes with it (a member should see what they accept); the caption is the same
    contact-free card."""
    head = tr.t(lang, "offer.assigned" if assigned else "offer.broadcast")
    text = head + "\n\n" + card_text(tr, lang, v, contact=False, full=False)
    oid = v.order.id
    return Outbound(
        text,
        buttons=[
            [
                Button(tr.t(lang, "btn.accept"), p.order("acc", oid)),
                Button(tr.t(lang, "btn.decline"), p.order("dec", oid)),
            ]
        ],
        photo=v.order.photo,
    )


def offer_closed(tr: Translator, lang: str, v: OrderView, key: str, **args: str) -> Outbound:
    """What an offer turns into once it is no longer open (taken, cancelled, withdrawn): the
    same message edited (its photo stays, its buttons go)."""
    text = tr.t(lang, key, **args) + "\n\n" + card_text(tr, lang, v, contact=False, full=False)
    return Outbound(text, photo=v.order.photo)


def assignee_card(tr: Translator, lang: str, v: OrderView, key: str) -> Outbound:
    """What the member who has the order sees: contact details and a 'done' button."""
    text = tr.t(lang, key) + "\n\n" + card_text(tr, lang, v, contact=True, full=True)
    return Outbound(
        text,
        buttons=[[Button(tr.t(lang, "btn.done"), p.order("done", v.order.id))]],
        photo=v.order.photo,
        voice=v.order.voice,
    )


def rating_card(tr: Translator, lang: str, v: OrderView) -> Outbound:
    """Asks the resident to confirm and rate, or to say it is not solved."""
    name = v.assignee.name if v.assignee else "-"
    text = tr.t(lang, "rate.ask", number=number(v.order), name=name)
    if v.order.done_note:
        text += "\n" + tr.t(lang, "rate.note", note=v.order.done_note)
    oid = v.order.id
    stars = [Button("★" * n, p.rate(oid, n)) for n in range(1, 6)]
    return Outbound(
        text,
        buttons=[stars[:3], stars[3:], [Button(tr.t(lang, "btn.not_solved"), p.order("ns", oid))]],
        photo=v.order.done_photo,
    )
