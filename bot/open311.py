"""Open311 GeoReport v2 at ``/open311/v2/``: the city platform (12345) reads the community's
services and orders, and hands requests down (``POST requests``).

Endpoints (``{fmt}`` is ``json`` or ``xml``): ``services.{fmt}``,
``services/{service_code}.{fmt}`` (categories that ask for attributes), ``requests.{fmt}``
(GET: search, POST: hand-off) and ``requests/{service_request_id}.{fmt}``. Errors are a list of
``{code, description}`` with the HTTP status 400, 403, 404 or 413.

What a reader sees of an order: its number as residents see it, open/closed with the finer state
and the last event in ``status_notes``, the handling grid as ``agency_responsible``, the
building's name (never the room) and the building's coordinates (never a resident's own pin),
times in ISO 8601 with the community's zone; never a name or a phone number.

``expected_datetime`` (one definition, :func:`expected_at`): for an accepted order, the moment
the order clock calls it overdue — accepted at + the category's deadline hours at its handling
level (``gridbot clocks``); for an order not yet accepted, requested at + that deadline; for a
done or closed order, none.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qsl

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.config import Open311Key, Settings
from bot.core.cards import number
from bot.core.city import UNPLACED_CODE, CityHandOff, CityRefused, hand_over
from bot.core.order_clocks import ClockCache, resolve_clocks
from bot.i18n import Translator
from models import Building, Category, CityRequest, Grid, Order, OrderEvent
from models.orders import ACCEPTED, DONE, OPEN_STATES

log = logging.getLogger(__name__)

PREFIX = "/open311/v2"
FORMATS = ("json", "xml")
#: Most requests one search answers (newest first).
MAX_RESULTS = 1000
#: Search window when no dates are given.
DEFAULT_DAYS = 90
#: Largest POST body taken.
MAX_BODY = 256 * 1024
#: Orders not yet accepted: the deadline counts from the request.
_NOT_STARTED = tuple(s for s in OPEN_STATES if s not in (ACCEPTED, DONE))

# Characters XML 1.0 cannot carry (control characters, lone surrogates, U+FFFE/U+FFFF).
_XML_BAD = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ATTRIBUTE = re.compile(r"attribute\[([^\[\]]{1,64})\](\[\])?\Z")
#: Item tag of each list in XML.
_ITEM_TAGS = {
    "services": "service",
    "service_requests": "request",
    "errors": "error",
    "attributes": "attribute",
    "values": "value",
}

Clock = Callable[[], datetime]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def xml_text(value: str) -> str:
    """``value`` with every character XML 1.0 cannot carry replaced by U+FFFD."""
    return _XML_BAD.sub("\ufffd", value)


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _xml_value(out: list[str], tag: str, value: Any) -> None:
    """``value`` as the element ``<tag>``, written as :mod:`xml.etree.ElementTree` writes it
    (``<tag />`` when empty) without building the tree: a list's entries are elements named
    by :data:`_ITEM_TAGS`, a dict's keys name its elements."""
    if isinstance(value, list) and value:
        item = _ITEM_TAGS.get(tag, "item")
        out.append(f"<{tag}>")
        for entry in value:
            _xml_value(out, item, entry)
        out.append(f"</{tag}>")
        return
    if isinstance(value, dict) and value:
        out.append(f"<{tag}>")
        for key, sub in value.items():
            _xml_value(out, key, sub)
        out.append(f"</{tag}>")
        return
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None or isinstance(value, (list, dict)):
        text = ""
    else:
        text = _xml_escape(xml_text(str(value)))
    out.append(f"<{tag}>{text}</{tag}>" if text else f"<{tag} />")


def render(fmt: str, root: str, body: list[Any] | dict[str, Any], status: int = 200) -> Response:
    """A list (or one object) as JSON, or as XML under ``<root>``."""
    if fmt == "xml":
        out = ["<?xml version='1.0' encoding='utf-8'?>\n"]
        _xml_value(out, root, body)
        data = "".join(out).encode("utf-8")
        return Response(data, status_code=status, media_type="text/xml; charset=utf-8")
    return JSONResponse(body, status_code=status)


def local_iso(when: datetime | None, settings: Settings) -> str | None:
    """ISO 8601 with the community's zone (``2026-11-29T10:00:00+08:00``)."""
    return when.astimezone(settings.tz).isoformat(timespec="seconds") if when else None


def parse_date(value: str, settings: Settings) -> datetime:
    """An ISO 8601 date or time; without a zone it is the community's. ``ValueError`` if bad."""
    text = value.strip()
    if not text or len(text) > 40:
        raise ValueError(value)
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=settings.tz)


class _Dated(Protocol):
    """An order, or a row of one read as columns (what :func:`expected_at` reads)."""

    @property
    def status(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...


def expected_at(order: _Dated, deadline_hours: int) -> datetime | None:
    """When the order can be expected done (see the module's docstring)."""
    if order.status == ACCEPTED:
        return order.updated_at + timedelta(hours=deadline_hours)
    if order.status in _NOT_STARTED:
        return order.created_at + timedelta(hours=deadline_hours)
    return None


class _Entry(NamedTuple):
    """One order as a search answer reads it: the columns of :meth:`Open311._describe`'s
    query, in its order."""

    id: int
    status: str
    category: str
    description: str
    created_at: datetime
    updated_at: datetime
    building_id: int
    handling_grid_id: int
    building_name: str
    building_code: str
    latitude: float | None
    longitude: float | None
    grid_name: str
    depth: int
    media_url: str | None
    unplaced: bool | None
    event_action: str | None
    event_at: datetime | None


class Open311:
    """The Open311 endpoints, served on the service's one web server."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        tr: Translator,
        *,
        clock: Clock,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.tr = tr
        self.clock = clock
        self.on_commit = on_commit
        self.lang = settings.default_locale
        # Digests, so that every comparison is of two 32-byte strings whatever the lengths.
        self._keys = [(_digest(k), v) for k, v in settings.open311_keys.items()]

    def routes(self) -> list[Route]:
        """The routes, to mount at :data:`PREFIX`."""
        return [
            Route("/services.{fmt}", self.services, methods=["GET"]),
            Route("/services/{code}.{fmt}", self.service_definition, methods=["GET"]),
            Route("/requests.{fmt}", self.requests, methods=["GET", "POST"]),
            Route("/requests/{rid}.{fmt}", self.request_one, methods=["GET"]),
        ]

    # ---- keys and errors --------------------------------------------------------------------

    def client(self, api_key: str | None) -> Open311Key | None:
        """The client an API key belongs to. Every configured key is compared, in constant
        time, whatever matches: the time taken tells nothing about the keys."""
        given = _digest(api_key or "")
        found = None
        for key, client in self._keys:
            if hmac.compare_digest(key, given):
                found = client
        return found if api_key else None

    def error(self, fmt: str, status: int, key: str, **args: str) -> Response:
        """One Open311 error."""
        return self.errors(fmt, [(status, key, args)])

    def errors(self, fmt: str, errors: list[tuple[int, str, dict[str, str]]]) -> Response:
        """Open311 errors: a list of ``{code, description}``; the status is the first code."""
        body = [
            {"code": code, "description": self.tr.t(self.lang, key, **args)}
            for code, key, args in errors
        ]
        return render(fmt if fmt in FORMATS else "json", "errors", body, errors[0][0])

    def _check_read(self, request: Request, fmt: str) -> Response | None:
        if fmt not in FORMATS:
            return self.error("json", 404, "open311.error.format")
        if self.settings.open311_public_read:
            return None
        client = self.client(request.query_params.get("api_key"))
        if client is None:
            return self.error(fmt, 403, "open311.error.api_key")
        if "read" not in client.can:
            return self.error(fmt, 403, "open311.error.not_allowed")
        return None

    # ---- services ---------------------------------------------------------------------------

    def _service(self, cat: Category) -> dict[str, Any]:
        name = self.tr.t(self.lang, f"category.{cat.code}")
        return {
            "service_code": cat.code,
            "service_name": name,
            "description": self.tr.t(
                self.lang, "open311.service_description", name=name, hours=str(cat.deadline_hours)
            ),
            "metadata": bool(cat.attributes),
            "type": "realtime",
            "keywords": cat.keywords or "",
            "group": cat.service_group or "",
        }

    async def services(self, request: Request) -> Response:
        """``GET services.{fmt}``: the categories."""
        fmt = request.path_params["fmt"]
        refused = self._check_read(request, fmt)
        if refused is not None:
            return refused
        async with self.sessionmaker() as session:
            cats = (
                await session.scalars(select(Category).order_by(Category.sort, Category.id))
            ).all()
        return render(fmt, "services", [self._service(c) for c in cats])

    async def service_definition(self, request: Request) -> Response:
        """``GET services/{code}.{fmt}``: the attributes a category asks for."""
        fmt = request.path_params["fmt"]
        refused = self._check_read(request, fmt)
        if refused is not None:
            return refused
        code = request.path_params["code"]
        async with self.sessionmaker() as session:
            cat = await session.scalar(select(Category).where(Category.code == code))
        if cat is None or not cat.attributes:
            key = "open311.error.unknown_service" if cat is None else "open311.error.no_attributes"
            return self.error(fmt, 404, key, code=code[:64])
        attributes = [
            {
                "variable": True,
                "code": spec["code"],
                "datatype": spec.get("datatype", "string"),
                "required": bool(spec.get("required")),
                "datatype_description": spec.get("datatype_description") or "",
                "order": index + 1,
                "description": spec.get("description") or "",
                "values": [
                    {"key": str(v["key"]), "name": str(v.get("name", v["key"]))}
                    for v in spec.get("values") or []
                ],
            }
            for index, spec in enumerate(cat.attributes)
        ]
        return render(
            fmt, "service_definition", {"service_code": cat.code, "attributes": attributes}
        )

    # ---- reading requests -------------------------------------------------------------------

    async def requests(self, request: Request) -> Response:
        """``GET requests.{fmt}`` searches; ``POST requests.{fmt}`` hands an order over."""
        if request.method == "POST":
            return await self.post_request(request)
        fmt = request.path_params["fmt"]
        refused = self._check_read(request, fmt)
        if refused is not None:
            return refused
        q = request.query_params
        stmt = select(Order.id)
        ids_param = (q.get("service_request_ids") or "").strip()
        if ids_param:
            # The spec: with ids given, every other filter is ignored.
            parts = [p.strip() for p in ids_param.split(",") if p.strip()]
            if len(parts) > MAX_RESULTS or not all(p.isdigit() and len(p) < 12 for p in parts):
                return self.error(fmt, 400, "open311.error.bad_ids")
            stmt = stmt.where(Order.id.in_({int(p) for p in parts}))
        else:
            try:
                start = parse_date(q["start_date"], self.settings) if "start_date" in q else None
                end = parse_date(q["end_date"], self.settings) if "end_date" in q else None
            except ValueError:
                return self.error(fmt, 400, "open311.error.bad_date")
            if start is None:
                start = (end or self.clock()) - timedelta(days=DEFAULT_DAYS)
            stmt = stmt.where(Order.created_at >= start)
            if end is not None:
                stmt = stmt.where(Order.created_at <= end)
            if q.get("service_code"):
                codes = [c.strip() for c in q["service_code"].split(",") if c.strip()]
                stmt = stmt.where(Order.category.in_(codes))
            if q.get("status"):
                wanted = {s.strip() for s in q["status"].split(",") if s.strip()}
                if not wanted or not wanted <= {"open", "closed"}:
                    return self.error(fmt, 400, "open311.error.bad_status")
                if wanted == {"open"}:
                    stmt = stmt.where(Order.status.in_(OPEN_STATES))
                elif wanted == {"closed"}:
                    stmt = stmt.where(Order.status.not_in(OPEN_STATES))
        stmt = stmt.order_by(Order.created_at.desc(), Order.id.desc()).limit(MAX_RESULTS)
        async with self.sessionmaker() as session:
            body = await self._describe(session, stmt)
        return render(fmt, "service_requests", body)

    async def request_one(self, request: Request) -> Response:
        """``GET requests/{id}.{fmt}``: one order (a list of one, as the spec has it)."""
        fmt = request.path_params["fmt"]
        refused = self._check_read(request, fmt)
        if refused is not None:
            return refused
        rid = request.path_params["rid"]
        body = []
        if rid.isdigit() and len(rid) < 12:
            async with self.sessionmaker() as session:
                body = await self._describe(session, select(Order.id).where(Order.id == int(rid)))
        if not body:
            return self.error(fmt, 404, "open311.error.unknown_request", id=rid[:32])
        return render(fmt, "service_requests", body)

    async def _describe(self, session: AsyncSession, page: Select[Any]) -> list[dict[str, Any]]:
        """The Open311 fields of the orders ``page`` selects (a ``select`` of orders, newest
        first): one query for the orders with their building, handling grid, city request and
        last event; the order clocks read once for the (category, level) pairs they have."""
        chosen = page.with_only_columns(
            Order.id,
            Order.status,
            Order.category,
            Order.description,
            Order.created_at,
            Order.updated_at,
            Order.building_id,
            Order.handling_grid_id,
        ).subquery("chosen")

        def last_event(column: Any) -> Any:
            """The column of the order's last event (the highest id), looked up per order."""
            return (
                select(column)
                .where(OrderEvent.order_id == chosen.c.id)
                .order_by(OrderEvent.id.desc())
                .limit(1)
                .scalar_subquery()
            )

        result = await session.execute(
            select(
                chosen,
                Building.name.label("building_name"),
                Building.code.label("building_code"),
                Building.latitude,
                Building.longitude,
                Grid.name.label("grid_name"),
                Grid.depth,
                CityRequest.media_url,
                CityRequest.unplaced,
                last_event(OrderEvent.action).label("event_action"),
                last_event(OrderEvent.created_at).label("event_at"),
            )
            .join(Building, Building.id == chosen.c.building_id)
            .join(Grid, Grid.id == chosen.c.handling_grid_id)
            .outerjoin(CityRequest, CityRequest.order_id == chosen.c.id)
            .order_by(chosen.c.created_at.desc(), chosen.c.id.desc())
        )
        assert tuple(result.keys()) == _Entry._fields
        entries = [_Entry._make(row) for row in result]
        cache = ClockCache()
        deadline_hours = {}
        for category, depth in sorted({(e.category, e.depth) for e in entries}):
            clocks = await resolve_clocks(session, self.settings, category, depth, cache)
            deadline_hours[category, depth] = clocks.deadline_hours
        tr, lang, settings = self.tr, self.lang, self.settings
        names: dict[str, str] = {}
        isos: dict[datetime | None, str | None] = {}

        def name(key: str) -> str:
            """A sentence without arguments, looked up once per answer."""
            if key not in names:
                names[key] = tr.t(lang, key)
            return names[key]

        def iso(when: datetime | None) -> str | None:
            """:func:`local_iso`, once per moment of the answer."""
            if when not in isos:
                isos[when] = local_iso(when, settings)
            return isos[when]

        out = []
        for e in entries:
            out.append(
                {
                    "service_request_id": number(e),
                    "status": "open" if e.status in OPEN_STATES else "closed",
                    "status_notes": self._notes(e, name, iso),
                    "service_name": name(f"category.{e.category}"),
                    "service_code": e.category,
                    "description": e.description,
                    "agency_responsible": e.grid_name,
                    "service_notice": "",
                    "requested_datetime": iso(e.created_at),
                    "updated_datetime": iso(e.updated_at),
                    "expected_datetime": iso(expected_at(e, deadline_hours[e.category, e.depth])),
                    "address": e.building_name,
                    "address_id": e.building_code if e.building_code != UNPLACED_CODE else None,
                    "zipcode": None,
                    "lat": e.latitude,
                    "long": e.longitude,
                    "media_url": e.media_url,
                }
            )
        return out

    def _notes(
        self,
        e: _Entry,
        name: Callable[[str], str],
        iso: Callable[[datetime | None], str | None],
    ) -> str:
        """``status_notes``: the state, the last event and its time, and for a city order no
        building matched, who handles it (``name`` translates a key without arguments, ``iso``
        is :func:`local_iso`)."""
        status = name(f"status.{e.status}")
        if e.event_action is None:
            text = status
        else:
            text = self.tr.t(
                self.lang,
                "open311.notes",
                status=status,
                event=name(f"open311.event.{e.event_action}"),
                time=iso(e.event_at) or "",
            )
        if e.unplaced:
            text += " " + self.tr.t(self.lang, "open311.unplaced_note", grid=e.grid_name)
        return text

    # ---- the hand-off -----------------------------------------------------------------------

    async def post_request(self, request: Request) -> Response:
        """``POST requests.{fmt}``: store the city's request as an order (form-encoded)."""
        fmt = request.path_params["fmt"]
        if fmt not in FORMATS:
            return self.error("json", 404, "open311.error.format")
        body = await request.body()
        if len(body) > MAX_BODY:
            return self.error(fmt, 413, "open311.error.too_large")
        try:
            pairs = parse_qsl(
                body.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=200
            )
        except (UnicodeDecodeError, ValueError):
            return self.error(fmt, 400, "open311.error.form")
        form: dict[str, str] = {}
        attributes: dict[str, list[str]] = {}
        for name, value in pairs:
            m = _ATTRIBUTE.match(name)
            if m:
                attributes.setdefault(m.group(1), []).append(value)
            else:
                form.setdefault(name, value)
        client = self.client(form.get("api_key"))
        if client is None:
            return self.error(fmt, 403, "open311.error.api_key")
        if "post" not in client.can:
            return self.error(fmt, 403, "open311.error.not_allowed")
        if not form.get("service_code", "").strip():
            return self.error(fmt, 400, "open311.error.missing", field="service_code")
        lat = lon = None
        if form.get("lat", "").strip() or form.get("long", "").strip():
            try:
                lat, lon = float(form.get("lat", "")), float(form.get("long", ""))
            except ValueError:
                return self.error(fmt, 400, "open311.error.bad_location")
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                return self.error(fmt, 400, "open311.error.bad_location")

        def opt(name: str) -> str | None:
            value = form.get(name, "").strip()
            return value or None

        hand = CityHandOff(
            client=client.name,
            service_code=form["service_code"].strip(),
            description=form.get("description", ""),
            address_string=opt("address_string"),
            address_id=opt("address_id"),
            lat=lat,
            long=lon,
            device_id=opt("device_id"),
            account_id=opt("account_id"),
            first_name=opt("first_name"),
            last_name=opt("last_name"),
            phone=opt("phone"),
            media_url=opt("media_url"),
            attributes=attributes,
        )
        try:
            result = await hand_over(
                self.sessionmaker,
                self.tr,
                self.settings,
                self.clock(),
                hand,
                on_commit=self.on_commit,
            )
        except CityRefused as refused:
            return self.errors(fmt, refused.errors)
        async with self.sessionmaker() as session:
            order = await session.get(Order, result.order_id)
            assert order is not None
            rid = number(order)
        notice = self.tr.t(self.lang, "open311.notice_unplaced") if result.unplaced else ""
        return render(
            fmt,
            "service_requests",
            [{"service_request_id": rid, "service_notice": notice, "account_id": None}],
        )
