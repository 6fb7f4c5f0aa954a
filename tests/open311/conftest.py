"""Open311 tests: the real Starlette app over httpx (ASGITransport), the demo community, a clock
the test moves, API keys for the city platform, and the in-memory channel for the people."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from bot.app import Gridbot
from bot.channels.memory import MemoryChannel
from bot.config import load_settings
from models import CityRequest, Order, Person
from tests.conftest import Harness
from tests.support.clock import SH, Clock

CITY_KEY = "k-12345-post-and-read"
READER_KEY = "k-district-reader"
KEYS = {
    CITY_KEY: {"name": "12345", "can": ["read", "post"]},
    READER_KEY: {"name": "district", "can": ["read"]},
}
BASE = "/open311/v2"

# Open311 GeoReport v2 field lists.
SERVICE_FIELDS = {
    "service_code",
    "service_name",
    "description",
    "metadata",
    "type",
    "keywords",
    "group",
}
REQUEST_FIELDS = {
    "service_request_id",
    "status",
    "status_notes",
    "service_name",
    "service_code",
    "description",
    "agency_responsible",
    "service_notice",
    "requested_datetime",
    "updated_datetime",
    "expected_datetime",
    "address",
    "address_id",
    "zipcode",
    "lat",
    "long",
    "media_url",
}
ATTRIBUTE_FIELDS = {
    "variable",
    "code",
    "datatype",
    "required",
    "datatype_description",
    "order",
    "description",
    "values",
}


def xml_items(text: str, root: str) -> list[dict[str, Any]]:
    """Children of ``<root>`` as dicts of tag → text (nested elements as their element)."""
    tree = ET.fromstring(text)
    assert tree.tag == root
    out = []
    for item in tree:
        out.append({child.tag: (child if len(child) else (child.text or "")) for child in item})
    return out


class City(Harness):
    """The service on one web server, a city client, and people in chat."""

    def __init__(
        self, app: Gridbot, channel: MemoryChannel, clock: Clock, http: httpx.AsyncClient
    ) -> None:
        super().__init__(app, channel)
        self.clock = clock
        self.http = http

    async def post(self, fmt: str = "json", **fields: Any) -> httpx.Response:
        """A form-encoded hand-off, with the city's key unless ``api_key`` is given."""
        data = {"api_key": CITY_KEY, **fields}
        response = await self.http.post(f"{BASE}/requests.{fmt}", data=data)
        await self.flush()
        return response

    async def get(self, path: str, **params: Any) -> httpx.Response:
        """A read, with the reader's key unless ``api_key`` is given."""
        params.setdefault("api_key", READER_KEY)
        if params["api_key"] is None:
            del params["api_key"]
        return await self.http.get(f"{BASE}/{path}", params=params)

    async def stored(self) -> tuple[int, int, int]:
        """(orders, people, city requests) in the database."""
        async with self.app.sessionmaker() as session:
            counts = []
            for model in (Order, Person, CityRequest):
                counts.append(int(await session.scalar(select(func.count()).select_from(model))))
            return counts[0], counts[1], counts[2]


@pytest.fixture
async def city(database_url: str, tmp_path: Path) -> AsyncIterator[City]:
    """The demo community on a fresh database, Open311 keys configured, at 2027-03-01 09:00."""
    clock = Clock(datetime(2027, 3, 1, 9, 0, tzinfo=SH))
    settings = load_settings(
        database_url=database_url,
        demo=True,
        demo_duties=False,
        secret_key="test-key",
        media_dir=tmp_path / "media",
        qr_dir=tmp_path / "qr",
        open311_keys=json.loads(json.dumps(KEYS)),
        open311_radius_m=100,
    )
    app = Gridbot(settings, clock=clock)
    await app.prepare()
    channel = MemoryChannel()
    app.add_channel(channel)
    transport = httpx.ASGITransport(app=app.web_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gridbot.test") as http:
        try:
            yield City(app, channel, clock, http)
        finally:
            await app.engine.dispose()
