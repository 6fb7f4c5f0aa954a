"""The /wechat webhook over real HTTP: URL check, signatures, replays, bad XML, safe mode,
passive replies and redeliveries."""

from __future__ import annotations

from pathlib import Path

from bot.channels.wechat import clip_bytes, sanitize_cdata, signature
from models import Order, ProcessedUpdate
from tests.fakes.wechat_server import SAMPLE_TOKEN, sign
from tests.wechat.conftest import WX, wechat_stack


async def test_url_check_echoes_only_when_signed(wx: WX) -> None:
    ts, nonce = str(wx.sender.now()), "12345"
    good = {"signature": sign(SAMPLE_TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce,
            "echostr": "8052953398947327711"}
    response = await wx.sender.http.get(wx.sender.url, params=good)
    assert response.status_code == 200 and response.text == "8052953398947327711"
    bad = {**good, "signature": sign("other-token", ts, nonce)}
    assert (await wx.sender.http.get(wx.sender.url, params=bad)).status_code == 403
    old = str(wx.sender.now() - 3600)
    stale = {**good, "timestamp": old, "signature": sign(SAMPLE_TOKEN, old, nonce)}
    assert (await wx.sender.http.get(wx.sender.url, params=stale)).status_code == 403


async def test_refused_callbacks_never_touch_the_database(wx: WX) -> None:
    xml = wx.sender.xml("o-attacker", "text", Content="/start")
    assert (await wx.sender.post_raw(xml, bad_signature=True)).status == 403
    assert (await wx.sender.post_raw(xml, timestamp=wx.sender.now() - 301)).status == 403
    assert (await wx.sender.post_raw("<xml><MsgType>text</Msg")).status == 400
    xxe = ('<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           "<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName>"
           "<CreateTime>1</CreateTime><MsgType>text</MsgType><Content>&x;</Content>"
           "<MsgId>1</MsgId></xml>")
    reply = await wx.sender.post_raw(xxe)
    assert reply.status == 400
    assert "root:" not in reply.body
    assert (await wx.sender.post_raw(b"\xff\xfe<xml/>")).status == 400
    assert await wx.h.count(ProcessedUpdate) == 0


async def test_unknown_user_gets_a_passive_welcome(wx: WX) -> None:
    reply = await wx.sender.text("o-stranger", "你好")
    assert reply.status == 200
    assert reply.text and "扫描" in reply.text
    await wx.settle()
    assert wx.api.sent == []  # the passive reply was the only message: nothing via the API


async def test_redelivered_message_is_handled_once(wx: WX) -> None:
    await wx.bind_resident("o-res")
    xml = wx.sender.xml("o-res", "text", Content="/myorders", msg_id=777)
    first = await wx.sender.post_raw(xml)
    second = await wx.sender.post_raw(xml)  # WeChat retries with the same MsgId
    third = await wx.sender.post_raw(xml)
    assert first.text and "工单" in first.text
    assert second.body == "success" and third.body == "success"
    await wx.settle()
    assert not [t for t in wx.api.texts("o-res") if "工单" in t]


async def test_safe_mode_round_trip(database_url: str, tmp_path: Path) -> None:
    async with wechat_stack(database_url, tmp_path, aes=True) as env:
        reply = await env.sender.text("o-safe", "你好")
        assert reply.status == 200
        assert "<Encrypt>" not in reply.body and reply.text and "扫描" in reply.text
        forged = await env.sender.post_raw(env.sender.xml("o-safe", "text", Content="x"),
                                           bad_signature=True)
        assert forged.status == 403


def test_cdata_and_length_sanitising() -> None:
    evil = "a]]><MsgType>image</MsgType>"
    assert "]]>" not in sanitize_cdata(evil).replace("]]]]><![CDATA[>", "")
    import xmltodict

    xml = f"<xml><Content><![CDATA[{sanitize_cdata(evil)}]]></Content></xml>"
    assert xmltodict.parse(xml)["xml"]["Content"] == evil
    assert len(clip_bytes("工" * 2000).encode()) <= 2000
    assert signature("b", "a") == signature("a", "b")


async def test_reply_with_cdata_terminator_stays_valid(wx: WX) -> None:
    await wx.bind_resident("o-cdata")
    await wx.sender.text("o-cdata", "/order")
    await wx.sender.text("o-cdata", "1")  # first category
    reply = await wx.sender.text("o-cdata", "灯坏了]]><hack/>")
    assert reply.status == 200 and reply.text is not None
    await wx.sender.text("o-cdata", "1")  # skip photo
    confirm = await wx.sender.text("o-cdata", "1")  # skip location
    assert confirm.text and "灯坏了]]><hack/>" in confirm.text
    assert await wx.h.count(Order) == 0
