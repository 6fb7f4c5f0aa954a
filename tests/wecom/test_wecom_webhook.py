"""The /wecom callback: WeCom's URL check, and only signed, fresh, encrypted callbacks of our
corp and app are let in; forged or broken ones get 403/400 and change nothing."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import httpx
from sqlalchemy import func, select
from wechatpy.enterprise.crypto import WeChatCrypto

from bot.channels.wecom import WeComChannel, to_inbound
from bot.media import keep_inbound_files
from bot.ports import Inbound
from models import Identity, ProcessedUpdate, WeChatCallback
from tests.fakes.wechat_server import PNG
from tests.fakes.wecom_server import (
    SAMPLE_AES_KEY,
    SAMPLE_CHECK,
    SAMPLE_CORP_ID,
    SAMPLE_ECHO,
    SAMPLE_TOKEN,
    WeComSender,
)
from tests.wecom.conftest import WC


def channel_at(wc: WC, when: int) -> WeComChannel:
    """The adapter with WeCom's sample parameters and a clock stopped at ``when``."""
    return WeComChannel(
        corp_id=SAMPLE_CORP_ID, agent_id=wc.api.agent_id, secret=wc.api.secret,
        token=SAMPLE_TOKEN, aes_key=SAMPLE_AES_KEY, api_url=wc.api.base_url,
        intake=wc.app.intake, sessionmaker=wc.app.sessionmaker, tr=wc.app.tr,
        clock=lambda: datetime.fromtimestamp(when, UTC),
    )


async def stored(wc: WC) -> tuple[int, int, int]:
    async with wc.app.sessionmaker() as session:
        identities = await session.scalar(
            select(func.count()).select_from(Identity).where(Identity.channel == "wecom"))
        updates = await session.scalar(
            select(func.count()).select_from(ProcessedUpdate)
            .where(ProcessedUpdate.channel == "wecom"))
        requests = await session.scalar(select(func.count()).select_from(WeChatCallback))
    return identities or 0, updates or 0, requests or 0


async def test_the_url_check_of_wecoms_published_sample_is_answered(wc: WC) -> None:
    then = int(SAMPLE_CHECK["timestamp"])
    assert channel_at(wc, then + 10).process_get(SAMPLE_CHECK) == (200, SAMPLE_ECHO)
    forged = {**SAMPLE_CHECK, "msg_signature": "0" * 40}
    assert channel_at(wc, then).process_get(forged)[0] == 403
    # The same check much later is stale: somebody replays it.
    assert channel_at(wc, then + 3600).process_get(SAMPLE_CHECK)[0] == 403

    # Saving the app's 接收消息 settings: WeCom checks the URL over HTTP.
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{wc.url}/wecom", params=wc.sender.check_url("4242-echo"))
        assert (answer.status_code, answer.text) == (200, "4242-echo")
        stale = wc.sender.check_url("4242-echo", timestamp=int(time.time()) - 3600)
        assert (await http.get(f"{wc.url}/wecom", params=stale)).status_code == 403


async def test_forged_and_broken_callbacks_are_refused_and_store_nothing(wc: WC) -> None:
    invite = await wc.h.invite("member", "xh-g1-m1")
    xml = wc.sender.xml("intruder", "text", Content=f"/start {invite}")

    params, body = wc.sender.signed(xml)
    forged = {**params, "msg_signature": "0" * 40}
    assert (await wc.sender.post_signed(forged, body)).status_code == 403
    stale = await wc.sender.post(xml, timestamp=int(time.time()) - 3600)
    assert stale.status_code == 403

    async with httpx.AsyncClient() as http:
        url = f"{wc.url}/wecom"
        ok_query = {**params, "timestamp": str(int(time.time()))}
        broken = await http.post(url, params=ok_query, content=b"<xml><Encrypt>")
        assert broken.status_code == 400
        xxe = (b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
               b"<xml><Encrypt>&x;</Encrypt></xml>")
        assert (await http.post(url, params=ok_query, content=xxe)).status_code == 400
        huge = await http.post(url, params=ok_query, content=b"<xml>" + b"x" * (1 << 20))
        assert huge.status_code == 413

    # Entities inside the ciphertext, another corp's ciphertext, another app's message.
    inner_xxe = ('<!DOCTYPE xml [<!ENTITY x "boom">]><xml><ToUserName>c</ToUserName>'
                 "<FromUserName>intruder</FromUserName><CreateTime>1</CreateTime>"
                 "<MsgType>text</MsgType><Content>&x;</Content><MsgId>1</MsgId></xml>")
    assert (await wc.sender.post(inner_xxe)).status_code == 400
    other_corp = WeComSender(wc.sender.url, corp_id="ww0000000000000000")
    try:
        assert (await other_corp.text("intruder", f"/start {invite}")).status_code == 400
    finally:
        await other_corp.close()
    other_app = WeComSender(wc.sender.url, agent_id=1000099)
    try:
        assert (await other_app.text("intruder", f"/start {invite}")).status_code == 403
    finally:
        await other_app.close()

    assert await stored(wc) == (0, 0, 0)
    assert wc.api.texts("intruder") == []


async def test_a_retried_callback_binds_the_member_once(wc: WC) -> None:
    invite = await wc.h.invite("member", "xh-g1-m1")
    xml = wc.sender.xml("lidangyuan", "text", Content=f"/start {invite}")
    params, body = wc.sender.signed(xml)
    assert (await wc.sender.post_signed(params, body)).status_code == 200
    # WeCom did not get our answer in time: the same request, then the same message
    # encrypted again under a new nonce.
    assert (await wc.sender.post_signed(params, body)).status_code == 200
    assert (await wc.sender.post(xml)).status_code == 200
    await wc.settle()
    welcomes = [t for t in wc.api.texts("lidangyuan") if "欢迎" in t]
    assert len(welcomes) == 1
    identities, updates, _ = await stored(wc)
    assert (identities, updates) == (1, 1)


def test_a_card_press_is_its_neutral_payload_and_deduplicated_by_sender_time_and_key() -> None:
    now = datetime.now(UTC)
    press = {"FromUserName": "lidangyuan", "CreateTime": "1700000000", "MsgType": "event",
             "Event": "template_card_event", "EventKey": "o:acc:1", "TaskId": "gb1",
             "ResponseCode": "RC"}
    event = to_inbound(press, now)
    assert isinstance(event, Inbound)
    assert (event.channel, event.button, event.button_message_id) == ("wecom", "o:acc:1",
                                                                      "card:gb1")
    again = to_inbound(dict(press), now)
    other = to_inbound({**press, "EventKey": "o:dec:1"}, now)
    assert again is not None and other is not None
    assert again.dedupe_key == event.dedupe_key != other.dedupe_key
    # The grey "done" button and entering the app are nothing for the core.
    assert to_inbound({**press, "EventKey": "wecom-done:gb1"}, now) is None
    assert to_inbound({**press, "Event": "enter_agent"}, now) is None
    typed = to_inbound({**press, "EventKey": "wecom-say:跳过"}, now)
    assert typed is not None and typed.text == "跳过" and typed.button is None


async def test_a_photo_a_member_sends_is_copied_into_the_media_store(wc: WC) -> None:
    event = Inbound(channel="wecom", user_id="u", chat_id="u", photo="wecom:MEDIA-IN-1")
    channel = wc.app.channel(WeComChannel)
    await keep_inbound_files(wc.app.media, event, channel.fetch_file)
    ref = event.photo
    assert ref is not None and not event.photo_lost
    path = wc.app.media.path(ref)
    assert path is not None and path.read_bytes() == PNG


def test_the_sample_crypto_is_wecoms() -> None:
    """The sample parameters the tests sign with are the ones of WeCom's documentation."""
    crypto = WeChatCrypto(SAMPLE_TOKEN, SAMPLE_AES_KEY, SAMPLE_CORP_ID)
    echo = crypto.check_signature(SAMPLE_CHECK["msg_signature"], SAMPLE_CHECK["timestamp"],
                                  SAMPLE_CHECK["nonce"], SAMPLE_CHECK["echostr"])
    assert str(echo) == SAMPLE_ECHO
