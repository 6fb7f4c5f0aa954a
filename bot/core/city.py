"""Orders handed to the community by the city platform (12345 → community, 接诉即办).

A city system posts a request through Open311 (``bot/open311.py`` turns the HTTP form into a
:class:`CityHandOff`); :func:`hand_over` stores it as an order with source ``city`` through the
same :meth:`OrderService.submit` a resident's order takes — sent up the tree, its outbox rows
to the handlers written in the same transaction — together with a :class:`CityRequest` row that
keeps the city's own id.

Guarantees:

* A hand-off is validated whole before anything is written; a refusal (:class:`CityRefused`)
  stores nothing.
* The same city id from the same client always answers the same order: the unique
  ``(client, city_id)`` of ``city_request`` decides, also between two concurrent POSTs (the
  loser's transaction, order included, is rolled back and it answers the winner's order).
* A location no building matches is never dropped: the order goes to the top of the tree (a
  placeholder building there, :data:`UNPLACED_CODE`) and says so.
* The contact the city gives becomes a :class:`Person` without identities: the handler and the
  member who accepts see the name and phone like a resident's; pushes to that person are
  skipped (nobody to push to), never failed.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.config import Settings
from bot.core.notify import Notifier
from bot.core.orders import NewOrder, OrderService
from bot.core.quiet_hours import hold_order_pushes
from bot.i18n import Translator
from models import Building, Category, CityRequest, Grid, Order, Person, Role
from models.orders import SOURCE_CITY
from models.people import ROLE_ADMIN, ROLE_HEAD, ROLE_WORKER

log = logging.getLogger(__name__)

#: Longest description a city may send (the Open311 limit).
MAX_DESCRIPTION = 4000
#: Code of the placeholder building, at the top of the tree, of orders no building matches.
UNPLACED_CODE = "open311-unplaced"
#: Attribute a city puts its own request id in (``attribute[city_id]``).
CITY_ID_ATTRIBUTE = "city_id"
#: Datatypes of Open311 attributes.
DATATYPES = ("string", "number", "datetime", "text", "singlevaluelist", "multivaluelist")
EARTH_RADIUS_M = 6_371_008.8
_NAME_MAX = 100
_PHONE_MAX = 32
_ATTRIBUTE_MAX = 1000


@dataclass
class CityHandOff:
    """One request as the city platform sent it (Open311 ``POST requests``)."""

    client: str
    service_code: str
    description: str = ""
    address_string: str | None = None
    address_id: str | None = None
    lat: float | None = None
    long: float | None = None
    device_id: str | None = None
    account_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    media_url: str | None = None
    attributes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def city_id(self) -> str | None:
        """The city's own id of the request: ``attribute[city_id]``, else ``device_id``, else
        ``account_id``."""
        given = self.attributes.get(CITY_ID_ATTRIBUTE)
        for value in (given[0] if given else None, self.device_id, self.account_id):
            if value and value.strip():
                return value.strip()
        return None


class CityRefused(Exception):
    """A hand-off refused as a whole: Open311 errors ``(code, catalog key, args)``; nothing
    was stored. ``status`` is the HTTP status (the first error's code)."""

    def __init__(self, errors: list[tuple[int, str, dict[str, str]]]) -> None:
        super().__init__(", ".join(key for _, key, _ in errors))
        self.errors = errors

    @property
    def status(self) -> int:
        """HTTP status of the refusal."""
        return self.errors[0][0]


@dataclass
class HandOffResult:
    """The order a hand-off landed on; ``created`` is false for a repeated city id."""

    order_id: int
    created: bool
    unplaced: bool


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def _mentions(text: str, name: str) -> bool:
    """Whether ``name`` occurs in ``text`` not glued to a digit before it (``1号楼`` is not
    in ``11号楼``)."""
    start = text.find(name)
    while start >= 0:
        if start == 0 or not (name[0].isdigit() and text[start - 1].isdigit()):
            return True
        start = text.find(name, start + 1)
    return False


async def match_building(
    session: AsyncSession, hand: CityHandOff, radius_m: float
) -> Building | None:
    """The building a hand-off names, or ``None`` when none matches.

    ``address_id`` and ``address_string`` match a building's code or name exactly; otherwise
    ``address_string`` matches the building whose name it contains (the longest such name,
    when only one building has it). ``lat``/``long`` match the nearest building with
    coordinates within ``radius_m``. The first of these that matches wins."""
    for ref in (hand.address_id, hand.address_string):
        if ref and ref.strip():
            ref = ref.strip()
            found = await session.scalar(select(Building).where(Building.code == ref))
            if found is None:
                named = (await session.scalars(select(Building).where(Building.name == ref))).all()
                found = named[0] if len(named) == 1 else None
            if found is not None:
                return found
    text = (hand.address_string or "").strip()
    if text:
        rows = (await session.execute(select(Building.id, Building.name))).all()
        hits = [(len(name), bid) for bid, name in rows if name and _mentions(text, name)]
        if hits:
            longest = max(n for n, _ in hits)
            best = [bid for n, bid in hits if n == longest]
            if len(best) == 1:
                return await session.get(Building, best[0])
    if hand.lat is not None and hand.long is not None:
        located = (
            await session.scalars(
                select(Building).where(
                    Building.latitude.is_not(None), Building.longitude.is_not(None)
                )
            )
        ).all()
        near = [
            (distance_m(hand.lat, hand.long, b.latitude, b.longitude), b.id, b)
            for b in located
            if b.latitude is not None and b.longitude is not None
        ]
        near = [n for n in near if n[0] <= radius_m]
        if near:
            return min(near, key=lambda n: (n[0], n[1]))[2]
    return None


async def top_of_tree(session: AsyncSession) -> Grid:
    """The top of the tree that takes orders nobody covers: the highest grid someone is
    responsible for (a head, worker or admin; the first by id at that level), else the first
    root grid."""
    grid = await session.scalar(
        select(Grid)
        .join(Role, Role.grid_id == Grid.id)
        .where(Role.role.in_((ROLE_HEAD, ROLE_WORKER, ROLE_ADMIN)))
        .order_by(Grid.depth, Grid.id)
        .limit(1)
    )
    if grid is None:
        grid = await session.scalar(
            select(Grid).where(Grid.parent_id.is_(None)).order_by(Grid.id).limit(1)
        )
    if grid is None:
        raise CityRefused([(400, "open311.error.no_community", {})])
    return grid


async def unplaced_building(session: AsyncSession, tr: Translator, locale: str) -> Building:
    """The placeholder building at the top of the tree (made on first use; concurrent first
    uses agree on one row)."""
    found = await session.scalar(select(Building).where(Building.code == UNPLACED_CODE))
    if found is not None:
        return found
    top = await top_of_tree(session)
    dialect = session.bind.dialect.name if session.bind else "sqlite"
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    await session.execute(
        insert(Building)
        .values(
            code=UNPLACED_CODE,
            grid_id=top.id,
            name=tr.t(locale, "open311.unplaced_building"),
            address="",
        )
        .on_conflict_do_nothing()
    )
    found = await session.scalar(select(Building).where(Building.code == UNPLACED_CODE))
    assert found is not None
    return found


def _validate(
    hand: CityHandOff, category: Category | None
) -> list[tuple[int, str, dict[str, str]]]:
    """Every reason to refuse ``hand``, before anything is written."""
    errors: list[tuple[int, str, dict[str, str]]] = []
    if category is None:
        code = hand.service_code or "-"
        return [(404, "open311.error.unknown_service", {"code": code[:64]})]
    if len(hand.description) > MAX_DESCRIPTION:
        errors.append((400, "open311.error.description_long", {"max": str(MAX_DESCRIPTION)}))
    has_place = bool(
        (hand.address_string and hand.address_string.strip())
        or (hand.address_id and hand.address_id.strip())
        or (hand.lat is not None and hand.long is not None)
    )
    if not has_place:
        errors.append((400, "open311.error.no_location", {}))
    if hand.city_id is None:
        errors.append((400, "open311.error.no_city_id", {}))
    elif len(hand.city_id) > 128:
        errors.append((400, "open311.error.city_id_long", {}))
    full_name = " ".join(p.strip() for p in (hand.first_name, hand.last_name) if p)
    if len(full_name) > _NAME_MAX:
        errors.append(
            (400, "open311.error.too_long", {"field": "first_name/last_name", "max": "100"})
        )
    if hand.phone and (
        len(hand.phone) > _PHONE_MAX or not re.fullmatch(r"[0-9+\-() ]+", hand.phone)
    ):
        errors.append((400, "open311.error.bad_phone", {}))
    if hand.media_url and (
        len(hand.media_url) > 1000 or not hand.media_url.startswith(("http://", "https://"))
    ):
        errors.append((400, "open311.error.bad_media_url", {}))
    for spec in category.attributes or []:
        code = str(spec["code"])
        values = [v for v in hand.attributes.get(code, []) if v.strip()]
        if any(len(v) > _ATTRIBUTE_MAX for v in values):
            errors.append((400, "open311.error.attribute_value", {"code": code}))
            continue
        if spec.get("required") and not values:
            errors.append((400, "open311.error.attribute_required", {"code": code}))
            continue
        datatype = spec.get("datatype", "string")
        allowed = {str(v["key"]) for v in spec.get("values") or []}
        if datatype in ("singlevaluelist", "multivaluelist") and values:
            if (datatype == "singlevaluelist" and len(values) > 1) or any(
                v not in allowed for v in values
            ):
                errors.append((400, "open311.error.attribute_value", {"code": code}))
        elif datatype == "number" and values:
            try:
                [float(v) for v in values]
            except ValueError:
                errors.append((400, "open311.error.attribute_value", {"code": code}))
        elif datatype == "datetime" and values:
            try:
                [datetime.fromisoformat(v) for v in values]
            except ValueError:
                errors.append((400, "open311.error.attribute_value", {"code": code}))
    return errors


def _without_nul(hand: CityHandOff) -> CityHandOff:
    """The hand-off with NUL characters dropped from its texts (PostgreSQL cannot store them;
    a city system never means them)."""

    def clean(value: str | None) -> str | None:
        return value.replace("\x00", "") if value else value

    return replace(
        hand,
        description=hand.description.replace("\x00", ""),
        address_string=clean(hand.address_string),
        address_id=clean(hand.address_id),
        device_id=clean(hand.device_id),
        account_id=clean(hand.account_id),
        first_name=clean(hand.first_name),
        last_name=clean(hand.last_name),
        phone=clean(hand.phone),
        media_url=clean(hand.media_url),
        attributes={
            k.replace("\x00", ""): [v.replace("\x00", "") for v in vs]
            for k, vs in hand.attributes.items()
        },
    )


async def find_handed_over(session: AsyncSession, client: str, city_id: str) -> int | None:
    """The order a client's city id already landed on, if any."""
    return await session.scalar(
        select(CityRequest.order_id).where(
            CityRequest.client == client, CityRequest.city_id == city_id
        )
    )


async def submit_city_order(
    session: AsyncSession,
    notifier: Notifier,
    tr: Translator,
    settings: Settings,
    now: datetime,
    hand: CityHandOff,
) -> HandOffResult:
    """Store a hand-off as an order in the caller's transaction (nothing here commits).

    Raises :class:`CityRefused` before writing anything when the hand-off is refused, and lets
    the unique violation of a concurrent twin through (:func:`hand_over` answers it)."""
    hand = _without_nul(hand)
    category = await session.scalar(select(Category).where(Category.code == hand.service_code))
    errors = _validate(hand, category)
    if errors:
        raise CityRefused(errors)
    assert category is not None and hand.city_id is not None
    known = await find_handed_over(session, hand.client, hand.city_id)
    if known is not None:
        order = await session.get(Order, known)
        assert order is not None
        return HandOffResult(known, False, False)
    lang = settings.default_locale
    building = await match_building(session, hand, settings.open311_radius_m)
    unplaced = building is None
    if building is None:
        building = await unplaced_building(session, tr, lang)
    name = " ".join(p.strip() for p in (hand.first_name, hand.last_name) if p and p.strip())
    resident = Person(
        name=name or tr.t(lang, "open311.citizen"),
        phone=(hand.phone or "").strip() or None,
        locale=None,
        created_at=now,
    )
    session.add(resident)
    await session.flush()
    where = (hand.address_string or hand.address_id or "").strip()
    if not where and hand.lat is not None and hand.long is not None:
        where = f"{hand.lat:.6f}, {hand.long:.6f}"
    description = hand.description.strip() or tr.t(lang, f"category.{category.code}")
    order = await OrderService(session, notifier, tr, now).submit(
        resident,
        building,
        None,
        NewOrder(
            category=category.code,
            description=description,
            latitude=hand.lat,
            longitude=hand.long,
            source=SOURCE_CITY,
            note_key="open311.dispatch_unplaced" if unplaced else "open311.dispatch_new",
            note_args={"client": hand.client, "city_id": hand.city_id, "address": where or "-"},
        ),
    )
    session.add(
        CityRequest(
            order_id=order.id,
            client=hand.client,
            city_id=hand.city_id,
            address_string=where or None,
            unplaced=unplaced,
            media_url=hand.media_url or None,
            attributes={k: v if len(v) > 1 else v[0] for k, v in hand.attributes.items() if v},
            created_at=now,
        )
    )
    await session.flush()  # a concurrent twin's row makes this raise IntegrityError
    # Quiet hours apply to the handlers' cards as to any order push.
    await hold_order_pushes(session, settings, notifier.written, now)
    await session.flush()
    log.info("city order %s from %s (unplaced: %s)", order.id, hand.client, unplaced)
    return HandOffResult(order.id, True, unplaced)


async def hand_over(
    sessionmaker: async_sessionmaker[AsyncSession],
    tr: Translator,
    settings: Settings,
    now: datetime,
    hand: CityHandOff,
    *,
    on_commit: Callable[[], None] | None = None,
) -> HandOffResult:
    """Store a hand-off in one transaction and commit; a concurrent twin that won the unique
    ``(client, city_id)`` is answered with its order. ``on_commit`` wakes the deliverer."""
    try:
        async with sessionmaker() as session, session.begin():
            notifier = Notifier(session, tr, settings.default_locale)
            result = await submit_city_order(session, notifier, tr, settings, now, hand)
    except IntegrityError:
        # Two POSTs with the same city id ran at once and the other committed first: this
        # transaction (its order included) is gone; answer the order that was stored.
        assert hand.city_id is not None
        async with sessionmaker() as session:
            existing = await find_handed_over(session, hand.client, hand.city_id)
        if existing is None:
            raise
        log.info(
            "city id of %s handed over twice at once: answered order %s", hand.client, existing
        )
        return HandOffResult(existing, False, False)
    if result.created and on_commit is not None:
        on_commit()
    return result
