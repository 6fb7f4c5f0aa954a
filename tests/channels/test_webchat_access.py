"""The local web chat lets anyone act as anyone: it is on only for the local demo, refused on a
public address, and listing its personas writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from bot.app import Gridbot
from bot.config import load_settings
from models import Identity


def test_web_chat_is_on_only_for_the_local_demo(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"
    # The README's quick start: `gridbot run` with the demo on 127.0.0.1 shows the web chat.
    assert load_settings(database_url=db).webchat_on
    assert load_settings(database_url=db, web_host="::1").webchat_on
    # Anything that looks like a real deployment has it off unless asked for.
    assert not load_settings(database_url=db, web_host="0.0.0.0").webchat_on
    assert not load_settings(database_url=db, demo=False).webchat_on
    assert not load_settings(database_url=db, telegram_token="1:x",
                             telegram_mode="webhook").webchat_on
    assert not load_settings(database_url=db, wechat_appid="wx1", wechat_token="t").webchat_on
    assert not load_settings(database_url=db, wecom_corp_id="ww1", wecom_token="t").webchat_on
    assert load_settings(database_url=db, telegram_token="1:x").webchat_on  # polling demo
    # Asked for explicitly: only on loopback.
    assert load_settings(database_url=db, webchat_enabled=False).webchat_refusal() is None
    assert not load_settings(database_url=db, webchat_enabled=False).webchat_on
    assert load_settings(database_url=db, webchat_enabled=True,
                         web_host="localhost").webchat_refusal() is None
    refusal = load_settings(database_url=db, webchat_enabled=True,
                            web_host="0.0.0.0").webchat_refusal()
    assert refusal and "GRIDBOT_WEB_HOST=0.0.0.0" in refusal


def test_run_refuses_the_web_chat_on_a_public_address(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDBOT_")}
    env.update(
        GRIDBOT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'g.db'}",
        GRIDBOT_WEBCHAT_ENABLED="true",
        # A documentation address: nothing could listen there anyway.
        GRIDBOT_WEB_HOST="192.0.2.1",
        GRIDBOT_WEB_PORT="0",
    )
    try:
        done = subprocess.run([sys.executable, "-m", "bot.cli", "run"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("gridbot run did not refuse to start")
    assert done.returncode == 2, done.stderr
    assert "error:" in done.stderr and "loopback" in done.stderr
    assert "GRIDBOT_WEBCHAT_ENABLED" in done.stderr
    assert not (tmp_path / "g.db").exists()  # refused before anything was touched


async def test_listing_personas_writes_nothing(database_url: str, tmp_path: Path) -> None:
    settings = load_settings(database_url=database_url, demo=True, secret_key="w",
                             media_dir=tmp_path / "media")
    app = Gridbot(settings)
    await app.prepare()
    app.enable("web")
    await app.start()

    async def web_identities() -> list[str]:
        async with app.sessionmaker() as session:
            return list((await session.scalars(
                select(Identity.external_id).where(Identity.channel == "web"))).all())

    try:
        transport = httpx.ASGITransport(app=app.web_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as web:
            listed = (await web.get("/chat/api/personas")).json()
            personas = [p for p in listed if p["chat_id"]]
            assert len(personas) >= 3
            assert await web_identities() == []
            polled = await web.get("/chat/api/messages",
                                   params={"chat_id": personas[0]["chat_id"]})
            assert polled.status_code == 200 and await web_identities() == []
            # A persona that acts gets its identity then, and is answered as that person.
            chat_id = personas[0]["chat_id"]
            sent = await web.post("/chat/api/send", json={
                "chat_id": chat_id, "id": str(uuid.uuid4()), "text": "/help"})
            assert sent.status_code == 200 and sent.json()["ok"]
            assert await web_identities() == [chat_id]
            # So does one a pane picks (POST), to receive pushes before writing anything.
            picked = personas[1]["chat_id"]
            opened = await web.post("/chat/api/open", json={"chat_id": picked})
            assert opened.status_code == 200
            assert sorted(await web_identities()) == sorted([chat_id, picked])
            unknown = await web.post("/chat/api/open", json={"chat_id": "p99999"})
            assert unknown.status_code == 400
            assert len(await web_identities()) == 2
    finally:
        await app.stop()
