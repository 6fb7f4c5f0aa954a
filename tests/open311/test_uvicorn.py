"""The whole service under a real uvicorn: the city hands an order down over TCP, the grid
worker's web chat shows it once the deliverer runs, and the city reads it back in XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
from sqlalchemy import select

from bot.app import Gridbot
from bot.config import load_settings
from models import Person, WebChatMessage
from tests.fakes.telegram_server import serve_asgi
from tests.open311.conftest import BASE, CITY_KEY, KEYS
from tests.open311.test_handoff import HAND_OFF


async def test_hand_off_over_a_real_server(database_url: str, tmp_path: Path) -> None:
    settings = load_settings(
        database_url=database_url,
        demo=True,
        demo_duties=False,
        secret_key="open311-e2e",
        webchat_enabled=True,
        media_dir=tmp_path / "media",
        qr_dir=tmp_path / "qr",
        open311_keys=json.loads(json.dumps(KEYS)),
    )
    app = Gridbot(settings)
    await app.prepare()
    app.enable("web")
    try:
        async with serve_asgi(app.web_app()) as root, httpx.AsyncClient(base_url=root) as http:
            for persona in (await http.get("/chat/api/personas")).json():
                if persona["chat_id"]:  # each picked in a pane
                    await http.post("/chat/api/open", json={"chat_id": persona["chat_id"]})
            posted = await http.post(
                f"{BASE}/requests.xml", data={**HAND_OFF, "api_key": CITY_KEY}
            )
            assert posted.status_code == 200
            rid = ET.fromstring(posted.text).findtext("request/service_request_id")
            assert rid is not None and rid.isdigit()
            while await app.deliverer.drain_once():
                pass
            async with app.sessionmaker() as session:
                wang = await session.scalar(select(Person).where(Person.key == "p-wang"))
                assert wang is not None
                shown = (
                    await session.scalars(
                        select(WebChatMessage.payload).where(
                            WebChatMessage.chat_id == f"p{wang.id}"
                        )
                    )
                ).all()
            assert any("DZ12345-20270301-0001" in json.dumps(p, ensure_ascii=False) for p in shown)
            read = await http.get(f"{BASE}/requests/{rid}.xml", params={"api_key": CITY_KEY})
            request = ET.fromstring(read.text).find("request")
            assert request is not None and request.findtext("status") == "open"
            assert request.findtext("address") == "翠屏小区1栋"
            assert "13900000077" not in read.text
    finally:
        await app.stop()
