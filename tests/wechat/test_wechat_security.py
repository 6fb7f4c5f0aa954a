"""Callbacks nobody can forge or lose: safe mode takes only ciphertext, a signature seen before
never carries another body, a failure that stored nothing is not answered ``success``, and a
huge body is refused while it streams in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from models import Order, ProcessedUpdate
from tests.fakes.db_drop import connection_drops_once, inserting
from tests.fakes.wechat_server import SAMPLE_TOKEN, sign
from tests.wechat.conftest import WX, wechat_stack
from tests.wechat.test_wechat_loop import place_order

VICTIM = "o-victim"


async def _handled(wx: WX) -> int:
    async with wx.app.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(ProcessedUpdate)) or 0)


async def test_forged_plaintext_is_refused_in_safe_mode(database_url: str, tmp_path: Path) -> None:
    async with wechat_stack(database_url, tmp_path, aes=True) as wx:
        await wx.bind_resident(VICTIM)
        await place_order(wx, VICTIM, "楼道灯坏了")
        before = await _handled(wx)
        # The attacker copies a genuine callback's query string out of an access log (it is
        # signed with the real token) and posts a plaintext message in the victim's name.
        genuine, _ = wx.sender.signed(wx.sender.xml(VICTIM, "text", Content="你好"))
        forged_body = wx.sender.xml(VICTIM, "text", Content="/myorders").encode()
        plain_query = {k: v for k, v in genuine.items()
                       if k not in ("encrypt_type", "msg_signature")}
        for query in (plain_query, genuine):
            forged = await wx.sender.post_signed(query, forged_body)
            assert forged.status in (400, 403), forged
            assert "楼道灯坏了" not in forged.body
        # A fresh signature over token, timestamp and nonce does not help either.
        ts, nonce = str(wx.sender.now()), "31337"
        fresh = {"timestamp": ts, "nonce": nonce, "signature": sign(SAMPLE_TOKEN, ts, nonce)}
        refused = await wx.sender.post_signed(fresh, forged_body)
        assert refused.status == 403 and "楼道灯坏了" not in refused.body
        await wx.settle()
        assert await _handled(wx) == before
        assert not [t for t in wx.api.texts(VICTIM) if "楼道灯坏了" in t and "取消" in t]


async def test_a_seen_signature_never_carries_another_body(wx: WX) -> None:
    await wx.bind_resident(VICTIM)
    query, body = wx.sender.signed(wx.sender.xml("o-attacker", "text", Content="你好"))
    first = await wx.sender.post_signed(query, body)
    assert first.status == 200 and first.text
    before = await _handled(wx)
    forged = wx.sender.xml(VICTIM, "text", Content="/myorders").encode()
    replay = await wx.sender.post_signed(query, forged)
    assert replay.status == 403 and replay.body == ""
    await wx.settle()
    assert await _handled(wx) == before
    assert not [t for t in wx.api.texts(VICTIM) if "工单" in t]
    # The very same request again is WeChat's retry: answered like a duplicate.
    again = await wx.sender.post_signed(query, body)
    assert again.status == 200 and again.body == "success"


async def test_failed_first_attempt_is_retried_by_wechat_and_applied_once(
    database_url: str, tmp_path: Path
) -> None:
    async with wechat_stack(database_url, tmp_path, aes=True) as wx:
        await wx.bind_resident(VICTIM)
        orders = await wx.sender.text(VICTIM, "/order")
        assert orders.text and "类别" in orders.text
        # The database connection drops while the message is being handled: nothing is
        # stored, so "success" would lose it; WeChat gets 500 and sends the same request again.
        query, body = wx.sender.signed(wx.sender.xml(VICTIM, "text", Content="/myorders"))
        with connection_drops_once(wx.app.engine, inserting("processed_update")) as fired:
            first = await wx.sender.post_signed(query, body)
        assert fired and first.status == 500 and first.body != "success"
        retry = await wx.sender.post_signed(query, body)
        assert retry.status == 200 and retry.text and "工单" in retry.text
        again = await wx.sender.post_signed(query, body)
        assert again.status == 200 and again.body == "success"
        await wx.settle()
        assert not [t for t in wx.api.texts(VICTIM) if "工单" in t]  # the passive reply only


@pytest.fixture
async def asgi(wx: WX) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=wx.app.web_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://gridbot") as client:
        yield client


async def test_a_huge_body_is_refused_while_it_streams(
    wx: WX, asgi: httpx.AsyncClient
) -> None:
    pulled: list[int] = []
    chunk = b"<xml>" + b"x" * (64 * 1024 - 5)

    async def body() -> AsyncIterator[bytes]:
        for n in range(200 * 16):  # 200 MB in 64 KiB chunks, made only when read
            pulled.append(n)
            yield chunk

    ts, nonce = str(wx.sender.now()), "4242"
    query = {"timestamp": ts, "nonce": nonce, "signature": sign(SAMPLE_TOKEN, ts, nonce)}
    response = await asgi.post("/wechat", params=query, content=body())
    assert response.status_code == 413
    assert 16 <= len(pulled) <= 18  # 1 MiB and one chunk past it: never held whole
    # A declared length over the cap is refused before anything is read.
    pulled.clear()
    declared = await asgi.post("/wechat", params=query, content=body(),
                               headers={"content-length": str(200 << 20)})
    assert declared.status_code == 413 and pulled == []
    # A bad signature is refused before the body is read at all.
    forged = {**query, "signature": "0" * 40}
    assert (await asgi.post("/wechat", params=forged, content=body())).status_code == 403
    assert pulled == []
    assert await wx.h.count(Order) == 0
