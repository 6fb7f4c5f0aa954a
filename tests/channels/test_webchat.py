"""The local web chat channel: storage, long polling, and the page's HTTP API."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette

from bot.channels.base import DeliveryError
from bot.channels.webchat import MAX_TEXT_CHARS, Persona, WebChatChannel
from bot.ports import Button, HandleResult, Inbound, Outbound
from models.base import utcnow
from models.db import make_engine, make_sessionmaker, upgrade
from models.messaging import WebChatMessage

RESIDENT = Persona(chat_id="p-resident", name="张阿姨", roles=["居民"], locale="zh_CN")
WORKER = Persona(chat_id="p-worker", name="李网格员", roles=["网格员"], locale=None)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


class StubCore:
    """The core as the channel sees it: records each Inbound and answers through the channel."""

    def __init__(self) -> None:
        self.calls: list[Inbound] = []
        self.channel: WebChatChannel | None = None

    async def __call__(self, inbound: Inbound) -> HandleResult:
        assert self.channel is not None
        self.calls.append(inbound)
        if inbound.button and inbound.button_message_id:
            await self.channel.edit(
                inbound.chat_id,
                inbound.button_message_id,
                Outbound(f"已选 chose {inbound.button}"),
            )
            return HandleResult(toast="好的 OK")
        if inbound.text:
            await self.channel.send(
                inbound.chat_id,
                Outbound(
                    f"echo: {inbound.text}",
                    buttons=[[Button("接单 Accept", "acc:1"), Button("拒绝 Decline", "dec:1")]],
                    menu=[["下单 Order", "帮助 Help"]],
                ),
            )
        return HandleResult()


@pytest.fixture
async def sessionmaker(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'web.db'}")
    await upgrade(engine)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def _personas() -> list[Persona]:
    return [RESIDENT, WORKER]


class ObservedChannel(WebChatChannel):
    """The channel with a signal for tests: a long poll found nothing and is about to wait."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.parked = asyncio.Event()

    async def _changes(self, chat_id: str, cursor: Any) -> Any:
        rows, after = await super()._changes(chat_id, cursor)
        if not rows:
            self.parked.set()
        return rows, after


def _channel(
    sessionmaker: async_sessionmaker[AsyncSession], core: StubCore, tmp_path: Path, **kw: Any
) -> ObservedChannel:
    channel = ObservedChannel(
        sessionmaker, core, _personas, title="Gridbot <测试>", media_dir=tmp_path / "media", **kw
    )
    core.channel = channel
    return channel


@pytest.fixture
def core() -> StubCore:
    return StubCore()


@pytest.fixture
def channel(
    sessionmaker: async_sessionmaker[AsyncSession], core: StubCore, tmp_path: Path
) -> ObservedChannel:
    # A long poll interval: only the in-process wake-up can end a wait early.
    return _channel(sessionmaker, core, tmp_path, poll_interval=30.0)


@pytest.fixture
async def client(channel: WebChatChannel) -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(routes=channel.routes())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def _poll(
    client: httpx.AsyncClient, chat_id: str, after: str = "", wait: float = 0
) -> tuple[list[dict[str, Any]], str]:
    r = await client.get(
        "/chat/api/messages", params={"chat_id": chat_id, "after": after, "wait": wait}
    )
    assert r.status_code == 200, r.text
    data = r.json()
    return data["messages"], data["cursor"]


async def _rows(sm: async_sessionmaker[AsyncSession], chat_id: str) -> list[WebChatMessage]:
    async with sm() as s:
        result = await s.scalars(
            select(WebChatMessage)
            .where(WebChatMessage.chat_id == chat_id)
            .order_by(WebChatMessage.id)
        )
        return list(result)


def test_channel_protocol_attributes(channel: WebChatChannel) -> None:
    assert channel.name == "web"
    assert channel.limits.per_chat_interval == 0.0
    assert channel.limits.global_per_second == 1000.0
    assert channel.is_group("p-resident") is False


async def test_page_and_personas(client: httpx.AsyncClient) -> None:
    page = await client.get("/chat/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "Gridbot &lt;测试&gt;" in page.text  # the title is escaped
    assert "{{title}}" not in page.text
    assert 'data-testid="input"' in page.text
    assert "//cdn" not in page.text and "https://" not in page.text  # nothing external

    listed = (await client.get("/chat/api/personas")).json()
    assert listed[0] == {
        "chat_id": "p-resident",
        "name": "张阿姨",
        "roles": ["居民"],
        "locale": "zh_CN",
    }
    assert listed[-1]["visitor"] is True and listed[-1]["chat_id"] is None


async def test_text_is_stored_both_ways_and_polled(
    client: httpx.AsyncClient, core: StubCore, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    r = await client.post(
        "/chat/api/send", json={"chat_id": "p-resident", "id": "u-1", "text": "你好"}
    )
    assert r.json() == {"ok": True, "toast": None}

    [inbound] = core.calls
    assert (inbound.channel, inbound.user_id, inbound.chat_id) == (
        "web",
        "p-resident",
        "p-resident",
    )
    assert inbound.dedupe_key == "u-1"
    assert inbound.text == "你好"
    assert inbound.locale == "zh_CN"
    assert inbound.display_name == "张阿姨"
    assert inbound.received_at is not None

    rows = await _rows(sessionmaker, "p-resident")
    assert [r.direction for r in rows] == ["in", "out"]

    messages, cursor = await _poll(client, "p-resident")
    assert [(m["direction"], m["text"]) for m in messages] == [
        ("in", "你好"),
        ("out", "echo: 你好"),
    ]
    out = messages[1]
    assert out["buttons"] == [
        [
            {"label": "接单 Accept", "payload": "acc:1"},
            {"label": "拒绝 Decline", "payload": "dec:1"},
        ]
    ]
    assert out["menu"] == [["下单 Order", "帮助 Help"]]
    assert out["version"] == 1
    assert cursor

    # Nothing new: an immediate poll returns nothing and keeps the cursor.
    assert await _poll(client, "p-resident", cursor) == ([], cursor)
    # Another chat sees none of it.
    assert (await _poll(client, "p-worker"))[0] == []


async def test_button_press_reaches_intake_and_edit_shows_up(
    client: httpx.AsyncClient, core: StubCore
) -> None:
    await client.post("/chat/api/send", json={"chat_id": "p-worker", "id": "a", "text": "hi"})
    messages, cursor = await _poll(client, "p-worker")
    out = messages[-1]

    r = await client.post(
        "/chat/api/send",
        json={"chat_id": "p-worker", "id": "b", "button": "acc:1", "message_id": out["id"]},
    )
    assert r.json() == {"ok": True, "toast": "好的 OK"}
    press = core.calls[-1]
    assert (press.button, press.button_message_id, press.text) == ("acc:1", out["id"], None)
    assert press.locale is None  # the persona has none and the request sent no Accept-Language

    changed, cursor2 = await _poll(client, "p-worker", cursor)
    by_id = {m["id"]: m for m in changed}
    edited = by_id[out["id"]]
    assert edited["version"] == out["version"] + 1
    assert edited["text"] == "已选 chose acc:1"
    assert edited["buttons"] == []
    # The press itself is in the transcript, shown by its label (the payload stays hidden).
    [shown] = [m for m in changed if m["direction"] == "in"]
    assert (shown["kind"], shown["text"]) == ("button", "接单 Accept")
    assert cursor2 != cursor
    assert (await _poll(client, "p-worker", cursor2))[0] == []


async def test_long_poll_waits_and_wakes_on_send(
    client: httpx.AsyncClient, channel: ObservedChannel
) -> None:
    await channel.send("p-resident", Outbound("earlier"))
    _, cursor = await _poll(client, "p-resident")
    channel.parked.clear()
    waiter = asyncio.create_task(_poll(client, "p-resident", cursor, wait=20))
    await asyncio.wait_for(channel.parked.wait(), timeout=5)  # it read, found nothing, waits
    assert not waiter.done()

    loop = asyncio.get_running_loop()
    started = loop.time()
    message_id = await channel.send("p-resident", Outbound("通知 Notice"))
    messages, _ = await asyncio.wait_for(waiter, timeout=5)
    # The poll interval is 30 s, so only the wake-up can have ended the wait this soon.
    assert loop.time() - started < 5
    assert [(m["id"], m["text"]) for m in messages] == [(message_id, "通知 Notice")]


async def test_long_poll_sees_rows_written_by_another_process(
    sessionmaker: async_sessionmaker[AsyncSession], core: StubCore, tmp_path: Path
) -> None:
    reader = _channel(sessionmaker, core, tmp_path, poll_interval=0.05)
    writer = _channel(sessionmaker, StubCore(), tmp_path)  # another process, same database
    app = Starlette(routes=reader.routes())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as c:
        _, cursor = await _poll(c, "p-worker")
        reader.parked.clear()
        waiter = asyncio.create_task(_poll(c, "p-worker", cursor, wait=20))
        await asyncio.wait_for(reader.parked.wait(), timeout=5)
        sent = await writer.send("p-worker", Outbound("from elsewhere"))
        messages, _ = await asyncio.wait_for(waiter, timeout=5)
    assert [m["id"] for m in messages] == [sent]


async def test_late_commit_with_older_timestamp_is_not_skipped(
    client: httpx.AsyncClient,
    channel: WebChatChannel,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    await channel.send("p-resident", Outbound("one"))
    _, cursor = await _poll(client, "p-resident")
    # A row stamped before the newest one but committed after the poll read (another writer).
    async with sessionmaker() as s, s.begin():
        late = WebChatMessage(
            chat_id="p-resident",
            direction="out",
            payload={"text": "late"},
            updated_at=utcnow() - timedelta(seconds=1),
        )
        s.add(late)
    fresh, cursor2 = await _poll(client, "p-resident", cursor)
    assert [m["text"] for m in fresh] == ["late"]
    assert (await _poll(client, "p-resident", cursor2))[0] == []


async def test_edit_of_unknown_message_sends_anew(
    client: httpx.AsyncClient, channel: WebChatChannel
) -> None:
    new_id = await channel.edit("p-resident", "999999", Outbound("fresh"))
    messages, _ = await _poll(client, "p-resident")
    assert [(m["id"], m["text"], m["version"]) for m in messages] == [(new_id, "fresh", 1)]
    # Another chat's message cannot be edited through this chat.
    other = await channel.send("p-worker", Outbound("theirs"))
    assert await channel.edit("p-resident", other, Outbound("hijack")) != other


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (json.dumps({"chat_id": "p-resident", "text": "no id"}), 400),
        (json.dumps({"chat_id": "p-resident", "id": "", "text": "empty id"}), 400),
        ("{not json", 400),
        (json.dumps(["a", "list"]), 400),
        (
            json.dumps({"chat_id": "p-resident", "id": "x", "text": "x" * (MAX_TEXT_CHARS + 1)}),
            413,
        ),
        (json.dumps({"chat_id": "nobody", "id": "x", "text": "hi"}), 400),
        (json.dumps({"chat_id": "v123", "id": "x", "text": "hi"}), 400),
        (json.dumps({"id": "x", "text": "hi"}), 400),
        (json.dumps({"chat_id": "p-resident", "id": "x", "text": "  "}), 400),
        (json.dumps({"chat_id": "p-resident", "id": "x", "text": "a", "button": "b"}), 400),
        (json.dumps({"chat_id": "p-resident", "id": "x", "button": "b" * 65}), 400),
        (json.dumps({"chat_id": "p-resident", "id": "x", "button": "b", "message_id": "1;"}), 400),
        (json.dumps({"chat_id": "p-resident", "id": "x", "location": [91, 0]}), 400),
        (json.dumps({"chat_id": "p-resident", "id": "x", "location": "here"}), 400),
        ("x" * 70_000, 413),
    ],
)
async def test_bad_requests_are_refused_without_side_effects(
    client: httpx.AsyncClient,
    core: StubCore,
    sessionmaker: async_sessionmaker[AsyncSession],
    content: str,
    status: int,
) -> None:
    r = await client.post(
        "/chat/api/send", content=content, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert r.json()["ok"] is False
    assert core.calls == []
    assert await _rows(sessionmaker, "p-resident") == []


async def test_duplicate_id_reaches_intake_with_same_key_and_shows_once(
    client: httpx.AsyncClient, core: StubCore, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    body = {"chat_id": "p-resident", "id": "3f1c-dup", "text": "again"}
    for _ in range(2):
        assert (await client.post("/chat/api/send", json=body)).status_code == 200
    assert [c.dedupe_key for c in core.calls] == ["3f1c-dup", "3f1c-dup"]
    rows = await _rows(sessionmaker, "p-resident")
    assert [r.direction for r in rows].count("in") == 1


async def test_visitor_gets_locale_from_accept_language(
    client: httpx.AsyncClient, core: StubCore
) -> None:
    r = await client.post(
        "/chat/api/send",
        json={"chat_id": "v0123456789", "id": "v-1", "text": "/start abc"},
        headers={"accept-language": "en-US,en;q=0.9"},
    )
    assert r.status_code == 200
    assert core.calls[0].locale == "en_US"
    assert core.calls[0].display_name is None


async def test_location(client: httpx.AsyncClient, core: StubCore) -> None:
    r = await client.post(
        "/chat/api/send",
        json={"chat_id": "p-worker", "id": "loc", "location": [31.2096, 107.468]},
    )
    assert r.status_code == 200
    assert core.calls[0].location == (31.2096, 107.468)
    messages, _ = await _poll(client, "p-worker")
    assert messages[0]["kind"] == "location"


async def test_photo_upload_is_stored_served_and_passed_on(
    client: httpx.AsyncClient, core: StubCore, channel: WebChatChannel
) -> None:
    r = await client.post(
        "/chat/api/send",
        params={"chat_id": "p-resident", "id": "ph-1"},
        content=PNG,
        headers={"content-type": "image/png"},
    )
    assert r.status_code == 200, r.text
    ref = core.calls[0].photo
    assert ref is not None and ref.startswith("media:")
    path = channel.media_path(ref)
    assert path is not None and path.read_bytes() == PNG
    assert await channel.fetch_file(ref) == PNG
    with pytest.raises(DeliveryError):
        await channel.fetch_file("media:" + "0" * 32 + ".png")

    messages, _ = await _poll(client, "p-resident")
    url = messages[0]["photo"]
    assert url == "media/" + ref.removeprefix("media:")
    served = await client.get(f"/chat/{url}")
    assert served.status_code == 200
    assert served.content == PNG
    assert served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"

    assert (await client.get("/chat/media/../../etc/passwd")).status_code == 404
    assert (await client.get("/chat/media/" + "0" * 32 + ".png")).status_code == 404


async def test_photo_upload_refusals(
    client: httpx.AsyncClient, core: StubCore, channel: WebChatChannel
) -> None:
    async def post(content: bytes, **params: str) -> int:
        r = await client.post(
            "/chat/api/send", params=params, content=content, headers={"content-type": "image/png"}
        )
        return r.status_code

    assert await post(b"<html>not an image</html>", chat_id="p-resident", id="1") == 415
    assert await post(PNG + b"\x00" * (5 * 1024 * 1024), chat_id="p-resident", id="2") == 413
    assert await post(PNG, chat_id="nobody", id="3") == 400
    assert await post(PNG, chat_id="p-resident") == 400
    assert core.calls == []
    assert list(channel.media_dir.iterdir()) == []


async def test_outbound_photo_references(
    client: httpx.AsyncClient, channel: WebChatChannel
) -> None:
    ref = await channel.save_media(PNG)
    await channel.send("p-worker", Outbound("qr", photo=ref))
    await channel.send("p-worker", Outbound("tg", photo="AgACAgIAAxkBAAIB"))  # not ours
    messages, _ = await _poll(client, "p-worker")
    assert messages[0]["photo"] == "media/" + ref.removeprefix("media:")
    assert messages[1]["photo"] is None


async def test_poll_refusals(client: httpx.AsyncClient) -> None:
    url = "/chat/api/messages"
    assert (await client.get(url, params={"chat_id": "nobody"})).status_code == 400
    assert (
        await client.get(url, params={"chat_id": "p-worker", "after": "x|y"})
    ).status_code == 400
    assert (
        await client.get(url, params={"chat_id": "p-worker", "wait": "soon"})
    ).status_code == 400


async def test_multipart_photo(client: httpx.AsyncClient, core: StubCore) -> None:
    r = await client.post(
        "/chat/api/send",
        data={"chat_id": "p-resident", "id": "mp-1"},
        files={"photo": ("a.png", PNG, "image/png")},
    )
    if importlib.util.find_spec("python_multipart") is None:
        # Starlette parses forms only with python-multipart; the page posts image/* bodies.
        assert r.status_code == 415
        assert core.calls == []
    else:
        assert r.status_code == 200, r.text
        assert (core.calls[0].photo or "").startswith("media:")


async def test_a_photo_that_cannot_be_stored_still_reaches_the_core(
    client: httpx.AsyncClient, core: StubCore, channel: WebChatChannel, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("the media folder went away")
    channel.media_dir = blocker / "media"  # e.g. a read-only install directory
    r = await client.post(
        "/chat/api/send",
        params={"chat_id": "p-resident", "id": "ph-lost"},
        content=PNG,
        headers={"content-type": "image/png"},
    )
    assert r.status_code == 200, r.text
    (call,) = core.calls
    assert call.photo is None and call.photo_lost  # the core tells the resident
    messages, _ = await _poll(client, "p-resident")
    assert messages[0]["photo"] is None and messages[0]["text"] == "📷"

async def test_a_document_is_a_download_link(
    client: httpx.AsyncClient, channel: WebChatChannel
) -> None:
    from bot.media import MediaStore

    data = b"PK\x03\x04 a workbook"
    ref = await MediaStore(channel.media_dir).save_document(data, "xlsx")
    await channel.send("p-worker", Outbound("📎 台账", document=ref, document_name="台账.xlsx"))
    messages, _ = await _poll(client, "p-worker")
    assert messages[0]["document"] == "media/" + ref.removeprefix("media:")
    assert messages[0]["document_name"] == "台账.xlsx"
    served = await client.get("/chat/" + messages[0]["document"])
    assert served.status_code == 200 and served.content == data
    assert served.headers["content-type"].startswith(
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
