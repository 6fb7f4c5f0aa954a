"""The Telegram adapter against the fake Bot API server, through the real python-telegram-bot."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import bot.channels.telegram as telegram_channel
from bot.channels.base import DeliveryError, Limits, RetryAfter
from bot.channels.telegram import TelegramChannel, split_text
from bot.ports import Button, HandleResult, Inbound, Outbound
from tests.fakes.telegram_server import FakeTelegramServer, serve_asgi

SECRET = "s3cret_token-1"


class RecordingIntake:
    """A stub core: records every Inbound, answers with ``toast`` (or raises if ``fail``)."""

    def __init__(self, toast: str | None = "OK") -> None:
        self.toast = toast
        self.fail = False
        self.inbounds: list[Inbound] = []
        self._cond = asyncio.Condition()

    async def __call__(self, inbound: Inbound) -> HandleResult:
        async with self._cond:
            self.inbounds.append(inbound)
            self._cond.notify_all()
        if self.fail:
            raise RuntimeError("core is down")
        return HandleResult(toast=self.toast)

    async def wait_count(self, count: int, timeout: float = 5) -> list[Inbound]:  # noqa: ASYNC109
        """Wait until at least ``count`` events arrived; return them all."""
        async with self._cond:
            await asyncio.wait_for(
                self._cond.wait_for(lambda: len(self.inbounds) >= count), timeout
            )
        return list(self.inbounds)


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegramServer]:
    async with FakeTelegramServer() as server:
        yield server


@pytest.fixture
def intake() -> RecordingIntake:
    return RecordingIntake()


@pytest.fixture
async def channel(
    tg: FakeTelegramServer, intake: RecordingIntake
) -> AsyncIterator[TelegramChannel]:
    """A polling TelegramChannel, started against the fake server."""
    ch = TelegramChannel(tg.token, intake, base_url=tg.base_url, base_file_url=tg.file_url)
    await ch.start()
    try:
        yield ch
    finally:
        await ch.stop()


# ----------------------------------------------------------------------------- inbound
async def test_text_message_becomes_inbound(
    tg: FakeTelegramServer, intake: RecordingIntake, channel: TelegramChannel
) -> None:
    alice = tg.user(1001, "Alice", last_name="Wang", language_code="zh-hans")
    update = await alice.send_text("路灯坏了")
    [inbound] = await intake.wait_count(1)
    assert inbound.channel == "telegram"
    assert (inbound.user_id, inbound.chat_id) == ("1001", "1001")
    assert inbound.dedupe_key == f"123456:{update['update_id']}"
    assert inbound.text == "路灯坏了"
    assert inbound.button is None and inbound.photo is None and inbound.location is None
    assert inbound.locale == "zh-hans"
    assert inbound.display_name == "Alice Wang"
    assert inbound.received_at is not None and inbound.received_at.tzinfo is not None
    assert abs((datetime.now(UTC) - inbound.received_at).total_seconds()) < 60
    polls = tg.calls("getUpdates")
    assert polls and set(polls[-1]["allowed_updates"]) == {"message", "callback_query"}


async def test_command_with_payload(
    tg: FakeTelegramServer, intake: RecordingIntake, channel: TelegramChannel
) -> None:
    await tg.user(1002, "Bob").send_command("start", "order_42")
    [inbound] = await intake.wait_count(1)
    assert inbound.text == "/start order_42"


async def test_group_commands_addressed_to_this_bot_only(
    tg: FakeTelegramServer, intake: RecordingIntake, channel: TelegramChannel
) -> None:
    carol = tg.user(1003, "Carol", chat_id=-100)
    await carol.send_text("/help@other_bot", [{"type": "bot_command", "offset": 0, "length": 15}])
    await carol.send_text("/duty@gridbot_test_bot today",
                          [{"type": "bot_command", "offset": 0, "length": 22}])
    [inbound] = await intake.wait_count(1)
    assert inbound.text == "/duty today"
    assert (inbound.chat_id, inbound.user_id) == ("-100", "1003")
    assert channel.is_group(inbound.chat_id) and not channel.is_group("1003")


async def test_photo_takes_largest_size_and_caption(
    tg: FakeTelegramServer, intake: RecordingIntake, channel: TelegramChannel
) -> None:
    tg.add_file("AgACphoto1", b"jpeg-bytes")
    await tg.user(1004, "Dan").send_photo("AgACphoto1", caption="broken lamp")
    [inbound] = await intake.wait_count(1)
    assert inbound.photo == "AgACphoto1"
    assert inbound.text == "broken lamp"
    assert await channel.fetch_file("AgACphoto1") == b"jpeg-bytes"


async def test_location(
    tg: FakeTelegramServer, intake: RecordingIntake, channel: TelegramChannel
) -> None:
    await tg.user(1005, "Eve").send_location(31.2304, 121.4737)
    [inbound] = await intake.wait_count(1)
    assert inbound.location == pytest.approx((31.2304, 121.4737))
    assert inbound.text is None


async def test_button_press_is_answered_with_toast(
    tg: FakeTelegramServer, intake: RecordingIntake, channel: TelegramChannel
) -> None:
    intake.toast = "已接单"
    frank = tg.user(1006, "Frank")
    message_id = await channel.send("1006", Outbound("New order", [[Button("Accept", "acc:7")]]))
    update = await frank.press(tg.message(1006, int(message_id)), "acc:7")
    [inbound] = await intake.wait_count(1)
    assert inbound.button == "acc:7"
    assert inbound.button_message_id == message_id
    assert (inbound.user_id, inbound.chat_id) == ("1006", "1006")
    assert inbound.dedupe_key == f"123456:{update['update_id']}"
    await tg.wait_until(lambda: bool(tg.callback_answers), timeout=5)
    assert tg.callback_answers[0]["text"] == "已接单"
    assert tg.callback_answers[0]["callback_query_id"] == update["callback_query"]["id"]


async def test_button_press_answered_even_if_intake_fails(
    tg: FakeTelegramServer, intake: RecordingIntake, channel: TelegramChannel
) -> None:
    intake.fail = True
    grace = tg.user(1007, "Grace")
    message_id = await channel.send("1007", Outbound("Pick", [[Button("A", "a")]]))
    await grace.press_label(int(message_id), "A")
    await tg.wait_until(lambda: bool(tg.callback_answers), timeout=5)
    assert tg.callback_answers[0]["text"] is None


async def test_same_update_twice_reaches_intake_twice(
    tg: FakeTelegramServer, intake: RecordingIntake, channel: TelegramChannel
) -> None:
    user = tg.user(1008, "Heidi")
    update = {
        "update_id": 500,
        "message": {
            "message_id": 1,
            "date": 1_700_000_000,
            "text": "hi",
            "from": user.as_api(),
            "chat": {"id": 1008, "type": "private", "first_name": "Heidi"},
        },
    }
    await tg.inject(update, update)
    first, second = await intake.wait_count(2)
    assert first.dedupe_key == second.dedupe_key == "123456:500"
    assert first.received_at == datetime.fromtimestamp(1_700_000_000, UTC)


# ---------------------------------------------------------------------------- outbound
async def test_send_renders_inline_buttons(
    tg: FakeTelegramServer, channel: TelegramChannel
) -> None:
    tg.user(2001, "Ivan")
    out = Outbound(
        "Order #7",
        [[Button("Accept", "acc:7"), Button("Skip", "skip:7")], [Button("Details", "det:7")]],
    )
    message_id = await channel.send("2001", out)
    sent = tg.message(2001, int(message_id))
    assert sent.text == "Order #7"
    assert sent.inline_keyboard == [
        [
            {"text": "Accept", "callback_data": "acc:7"},
            {"text": "Skip", "callback_data": "skip:7"},
        ],
        [{"text": "Details", "callback_data": "det:7"}],
    ]


async def test_send_renders_menu_location_request_and_removal(
    tg: FakeTelegramServer, channel: TelegramChannel
) -> None:
    tg.user(2002, "Judy")
    channel.limits = Limits(per_chat_interval=0.0)
    await channel.send("2002", Outbound("Menu", menu=[["报修", "我的工单"], ["帮助"]]))
    await channel.send("2002", Outbound("Where?", ask_location="📍 Send location"))
    await channel.send("2002", Outbound("Bye", remove_menu=True))
    menu, ask, remove = tg.sent(2002)
    assert menu.reply_markup is not None
    assert menu.keyboard == [[{"text": "报修"}, {"text": "我的工单"}], [{"text": "帮助"}]]
    assert menu.reply_markup["resize_keyboard"] is True
    assert menu.reply_markup["is_persistent"] is True
    assert ask.keyboard == [[{"text": "📍 Send location", "request_location": True}]]
    assert remove.reply_markup == {"remove_keyboard": True}


async def test_menu_rides_on_the_message_or_follows_its_inline_buttons(
    tg: FakeTelegramServer, channel: TelegramChannel
) -> None:
    """A finished flow's last message carries the menu keyboard itself; a message with
    inline buttons (which cannot also carry a keyboard on Telegram) is followed by its note
    with the keyboard, and stays the message that later edits address."""
    tg.user(2010, "Lan")
    channel.limits = Limits(per_chat_interval=0.0)
    menu = [["📝 我要报事", "📋 我的工单"], ["❓ 帮助"]]
    await channel.send("2010", Outbound("已取消。", menu=menu))
    (cancelled,) = tg.sent(2010)
    assert cancelled.text == "已取消。"
    assert cancelled.keyboard == [
        [{"text": "📝 我要报事"}, {"text": "📋 我的工单"}],
        [{"text": "❓ 帮助"}],
    ]

    receipt_id = await channel.send(
        "2010",
        Outbound(
            "已收到！工单号 000001。",
            [[Button("撤回工单", "o:cx:1")]],
            menu=menu,
            menu_note="需要时点下方菜单。",
        ),
    )
    _, receipt, note = tg.sent(2010)
    assert int(receipt_id) == receipt.message_id
    assert receipt.buttons == [("撤回工单", "o:cx:1")]
    assert (note.text, note.keyboard[0][0]) == ("需要时点下方菜单。", {"text": "📝 我要报事"})


async def test_send_photo_with_caption_and_buttons(
    tg: FakeTelegramServer, channel: TelegramChannel
) -> None:
    tg.user(2003, "Ken")
    tg.add_file("AgACphoto9", b"x")
    message_id = await channel.send(
        "2003", Outbound("Before", [[Button("OK", "ok")]], photo="AgACphoto9")
    )
    sent = tg.message(2003, int(message_id))
    assert (sent.photo, sent.text, sent.buttons) == ("AgACphoto9", "Before", [("OK", "ok")])


async def test_long_text_is_split(tg: FakeTelegramServer, channel: TelegramChannel) -> None:
    tg.user(2004, "Leo")
    channel.limits = Limits(per_chat_interval=0.0)
    text = "\n".join(f"line {i:05d} " + "x" * 80 for i in range(100))  # ~9300 chars
    message_id = await channel.send("2004", Outbound(text, [[Button("More", "more")]]))
    parts = tg.sent(2004)
    assert len(parts) == 3
    assert all(len(p.text or "") <= 4096 for p in parts)
    assert "\n".join(p.text or "" for p in parts) == text
    assert parts[-1].message_id == int(message_id)
    assert parts[-1].buttons == [("More", "more")] and not parts[0].buttons


def test_split_text_counts_utf16_and_never_loses_text() -> None:
    assert split_text("short") == ["short"]
    emoji = "😀" * 3000  # 6000 UTF-16 units, no separators: hard cut
    parts = split_text(emoji)
    assert "".join(parts) == emoji
    assert all(len(p.encode("utf-16-le")) // 2 <= 4096 for p in parts)


async def test_edit_text_and_buttons(tg: FakeTelegramServer, channel: TelegramChannel) -> None:
    tg.user(2005, "Mia")
    message_id = await channel.send("2005", Outbound("Open", [[Button("Accept", "acc:1")]]))
    edited = Outbound("Accepted by Mia", [[Button("Done", "done:1")]])
    assert await channel.edit("2005", message_id, edited) == message_id
    sent = tg.message(2005, int(message_id))
    assert sent.edited and sent.text == "Accepted by Mia"
    assert sent.buttons == [("Done", "done:1")]
    # The same content again: Telegram says "message is not modified"; that is success.
    assert await channel.edit("2005", message_id, edited) == message_id
    # Without buttons the keyboard goes away.
    await channel.edit("2005", message_id, Outbound("Closed"))
    assert tg.message(2005, int(message_id)).reply_markup is None
    assert len(tg.sent(2005)) == 1


async def test_edit_photo_caption(tg: FakeTelegramServer, channel: TelegramChannel) -> None:
    tg.user(2007, "Olivia")
    tg.add_file("AgACphoto2", b"x")
    message_id = await channel.send("2007", Outbound("Lamp", photo="AgACphoto2"))
    await channel.edit("2007", message_id, Outbound("Lamp (fixed)", photo="AgACphoto2"))
    assert tg.message(2007, int(message_id)).text == "Lamp (fixed)"
    # An edit without the photo still lands on the caption (no text to edit in a photo).
    await channel.edit("2007", message_id, Outbound("Lamp (closed)", [[Button("OK", "ok")]]))
    sent = tg.message(2007, int(message_id))
    assert (sent.text, sent.buttons, sent.photo) == ("Lamp (closed)", [("OK", "ok")], "AgACphoto2")


async def test_edit_with_a_photo_of_a_message_sent_as_text(
    tg: FakeTelegramServer, channel: TelegramChannel
) -> None:
    """An offer whose photo could not go out (from another platform) was sent as text; its
    "taken" edit still carries the photo reference and lands on the text."""
    tg.user(2008, "Paul")
    message_id = await channel.send("2008", Outbound("Offer", photo="wx:MEDIA|http://x/y"))
    assert tg.message(2008, int(message_id)).photo is None
    await channel.edit("2008", message_id, Outbound("Taken", photo="wx:MEDIA|http://x/y"))
    sent = tg.message(2008, int(message_id))
    assert (sent.text, sent.buttons, sent.edited) == ("Taken", [], True)
    assert len(tg.sent(2008)) == 1


async def test_edit_of_missing_message_sends_a_new_one(
    tg: FakeTelegramServer, channel: TelegramChannel
) -> None:
    tg.user(2006, "Nick")
    new_id = await channel.edit("2006", "999", Outbound("Status"))
    assert [m.text for m in tg.sent(2006)] == ["Status"]
    assert tg.sent(2006)[0].message_id == int(new_id)


async def test_rate_limit_surfaces_as_retry_after(intake: RecordingIntake) -> None:
    async with FakeTelegramServer(enforce_limits=True) as tg:
        tg.user(3001, "Olga")
        ch = TelegramChannel(tg.token, intake, base_url=tg.base_url)
        await ch.send("3001", Outbound("one"))
        with pytest.raises(RetryAfter) as caught:
            await ch.send("3001", Outbound("two"))
        assert caught.value.seconds == 1
        assert tg.too_many_requests == 1
        tg.user(3002, "Pete", chat_id=-200)
        for i in range(20):
            await ch.send("-200", Outbound(f"group {i}"))
        with pytest.raises(RetryAfter) as caught:
            await ch.send("-200", Outbound("one too many"))
        assert 59 <= caught.value.seconds <= 60
        assert [m.text for m in tg.sent(3001)] == ["one"]
        await ch.application.shutdown()


async def test_delivery_errors_are_classified(
    tg: FakeTelegramServer, channel: TelegramChannel
) -> None:
    with pytest.raises(DeliveryError) as unknown:
        await channel.send("4040", Outbound("hello?"))
    assert unknown.value.permanent
    tg.user(3003, "Quinn")
    tg.block(3003)
    with pytest.raises(DeliveryError) as blocked:
        await channel.send("3003", Outbound("hello?"))
    assert blocked.value.permanent and not isinstance(blocked.value, RetryAfter)


async def test_network_error_is_temporary(intake: RecordingIntake) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ch = TelegramChannel("123456:TEST", intake, base_url=f"http://127.0.0.1:{port}/bot")
    with pytest.raises(DeliveryError) as caught:
        await ch.send("1", Outbound("hello"))
    assert not caught.value.permanent
    await ch.application.shutdown()


async def test_set_commands(tg: FakeTelegramServer, channel: TelegramChannel) -> None:
    await channel.set_commands([("start", "开始"), ("/help", "帮助")])
    assert tg.commands == [
        {"command": "start", "description": "开始"},
        {"command": "help", "description": "帮助"},
    ]


async def test_stop_confirms_fetched_updates(
    tg: FakeTelegramServer, intake: RecordingIntake
) -> None:
    ch = TelegramChannel(tg.token, intake, base_url=tg.base_url)
    await ch.start()
    await tg.user(1009, "Rita").send_text("hello")
    await intake.wait_count(1)
    await ch.stop()
    assert tg.pending_updates == 0


async def test_polling_fetches_again_what_the_core_could_not_store(
    tg: FakeTelegramServer, intake: RecordingIntake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database is away: the update is not confirmed to Telegram, so it comes again and
    is handled once the core is back (PTB's Updater had confirmed it: lost). Another chat's
    update in the same batch is not held back, and its repeat is a no-op for the core (its
    dedupe key)."""
    monkeypatch.setattr(telegram_channel, "POLL_BACKOFF_FIRST", 0.05)
    intake.fail = True
    ch = TelegramChannel(tg.token, intake, base_url=tg.base_url)
    await ch.start()
    try:
        await tg.user(1010, "Sam").send_text("路灯坏了")
        await intake.wait_count(2)  # handled, failed, fetched again, failed again
        intake.fail = False
        await tg.wait_until(lambda: tg.pending_updates == 0, timeout=10)
        texts = [i.text for i in intake.inbounds]
        assert set(texts) == {"路灯坏了"} and len(texts) >= 3
        assert len({i.dedupe_key for i in intake.inbounds}) == 1
    finally:
        await ch.stop()


def test_group_messages_are_marked() -> None:
    from telegram import Update

    from bot.channels.telegram import to_inbound

    private = Update.de_json(_raw_update(7), None)
    group_data = _raw_update(8)
    group_data["message"]["chat"] = {"id": -100, "type": "supergroup", "title": "楼栋群"}  # type: ignore[index]
    group = Update.de_json(group_data, None)
    assert private is not None and group is not None
    first, second = to_inbound(private, 1), to_inbound(group, 1)
    assert first is not None and not first.group
    assert second is not None and second.group and second.chat_id == "-100"


# ----------------------------------------------------------------------------- webhook
@pytest.fixture
async def hooked(
    tg: FakeTelegramServer, intake: RecordingIntake
) -> AsyncIterator[TelegramChannel]:
    """A webhook-mode channel behind a small ASGI app the fake server POSTs to."""
    holder: list[TelegramChannel] = []

    async def receive(request: Request) -> Response:
        status = await holder[0].process_webhook(
            await request.body(), request.headers.get("X-Telegram-Bot-Api-Secret-Token")
        )
        return Response(status_code=status)

    async with serve_asgi(Starlette(routes=[Route("/tg", receive, methods=["POST"])])) as url:
        ch = TelegramChannel(
            tg.token,
            intake,
            base_url=tg.base_url,
            mode="webhook",
            webhook_url=f"{url}/tg",
            webhook_secret=SECRET,
        )
        holder.append(ch)
        await ch.start()
        try:
            yield ch
        finally:
            await ch.stop()


def _raw_update(update_id: int, text: str = "hi") -> dict[str, object]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": 1,
            "date": 1_700_000_000,
            "text": text,
            "from": {"id": 5001, "is_bot": False, "first_name": "Sam"},
            "chat": {"id": 5001, "type": "private", "first_name": "Sam"},
        },
    }


async def test_webhook_end_to_end(
    tg: FakeTelegramServer, intake: RecordingIntake, hooked: TelegramChannel
) -> None:
    assert tg.webhook_url is not None and tg.webhook_url.endswith("/tg")
    assert tg.webhook_secret == SECRET
    update = await tg.user(5001, "Sam").send_text("via webhook")
    [inbound] = await intake.wait_count(1)
    assert inbound.text == "via webhook"
    await tg.wait_until(lambda: bool(tg.webhook_deliveries), timeout=5)
    assert tg.webhook_deliveries == [(update["update_id"], 200)]


async def test_webhook_with_wrong_secret_is_refused(
    tg: FakeTelegramServer, intake: RecordingIntake, hooked: TelegramChannel
) -> None:
    async with httpx.AsyncClient() as client:  # someone re-registers with another secret
        await client.post(
            f"{tg.base_url}{tg.token}/setWebhook",
            json={"url": tg.webhook_url, "secret_token": "wrong"},
        )
    update = await tg.user(5001, "Sam").send_text("forged")
    await tg.wait_until(lambda: tg.pending_updates == 0, timeout=5)
    assert tg.webhook_deliveries == [(update["update_id"], 403)] * tg.webhook_attempts
    assert intake.inbounds == []


async def test_process_webhook_statuses(intake: RecordingIntake, hooked: TelegramChannel) -> None:
    body = json.dumps(_raw_update(42)).encode()
    assert await hooked.process_webhook(body, "wrong") == 403
    assert await hooked.process_webhook(body, None) == 403
    assert intake.inbounds == []
    assert await hooked.process_webhook(b"{not json", SECRET) == 400
    assert await hooked.process_webhook(b"[1, 2]", SECRET) == 400
    assert await hooked.process_webhook(b"\xff\xfe", SECRET) == 400
    assert await hooked.process_webhook(body, SECRET) == 200
    assert [i.text for i in intake.inbounds] == ["hi"]  # handled before the 200
    # A redelivery reaches the core again with the same key; the core deduplicates.
    assert await hooked.process_webhook(_raw_update(42), SECRET) == 200
    assert [i.dedupe_key for i in intake.inbounds] == ["123456:42", "123456:42"]
    intake.fail = True
    assert await hooked.process_webhook(body, SECRET) == 500  # Telegram will retry


# ------------------------------------------------------------------ the fake itself
async def test_fake_speaks_bot_api_over_http(tg: FakeTelegramServer) -> None:
    tg.user(6001, "Uma")
    api = f"{tg.base_url}{tg.token}"
    async with httpx.AsyncClient() as client:
        me = (await client.get(f"{api}/getMe")).json()
        assert me["ok"] and me["result"]["id"] == 123456 and me["result"]["is_bot"]
        unknown = await client.post(f"{api}/noSuchMethod")
        assert unknown.status_code == 404
        assert unknown.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
        sent = (await client.post(f"{api}/sendMessage",
                                  json={"chat_id": 6001, "text": "a"})).json()["result"]
        form = (await client.post(f"{api}/sendMessage",
                                  data={"chat_id": "6001", "text": "123"})).json()["result"]
        assert (sent["message_id"], form["message_id"]) == (1, 2)
        assert form["text"] == "123" and form["chat"]["type"] == "private"
        empty = await client.post(f"{api}/sendMessage", json={"chat_id": 6001, "text": ""})
        assert empty.status_code == 400 and not empty.json()["ok"]


async def test_fake_get_updates_offset_limit_and_webhook_conflict(tg: FakeTelegramServer) -> None:
    user = tg.user(6002, "Vic")
    first = await user.send_text("1")
    await user.send_text("2")
    await user.send_text("3")
    api = f"{tg.base_url}{tg.token}"
    async with httpx.AsyncClient() as client:
        batch = (await client.post(f"{api}/getUpdates", json={"limit": 2})).json()["result"]
        assert [u["message"]["text"] for u in batch] == ["1", "2"]
        offset = first["update_id"] + 2
        batch = (await client.post(f"{api}/getUpdates", json={"offset": offset})).json()["result"]
        assert [u["message"]["text"] for u in batch] == ["3"]
        assert tg.pending_updates == 1
        await client.post(f"{api}/setWebhook", json={"url": "http://127.0.0.1:9/hook"})
        conflict = await client.post(f"{api}/getUpdates", json={"offset": offset})
        assert conflict.status_code == 409
        info = (await client.get(f"{api}/getWebhookInfo")).json()["result"]
        assert info["url"] == "http://127.0.0.1:9/hook"


async def test_bot_api_requests_at_once_are_bounded(
    tg: FakeTelegramServer, intake: RecordingIntake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most ``connections`` requests reach the HTTP client at once (httpcore's own queue
    costs CPU per waiting request); the deliverer keeps 4 of them for button answers."""
    from telegram.request import HTTPXRequest

    with pytest.raises(ValueError, match="more than 4"):
        TelegramChannel(tg.token, intake, base_url=tg.base_url, connections=4)
    ch = TelegramChannel(tg.token, intake, base_url=tg.base_url, connections=5)
    assert ch.limits.max_in_flight == 1
    assert ch.limits.global_per_second == 30  # the platform's limits are unchanged
    tg.user(3101, "Lin")
    in_flight = peak = 0
    original = HTTPXRequest.do_request

    async def counted(self: HTTPXRequest, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.02)
            return await original(self, *args, **kwargs)
        finally:
            in_flight -= 1

    monkeypatch.setattr(HTTPXRequest, "do_request", counted)
    await asyncio.gather(*(ch.send("3101", Outbound(f"m{i}")) for i in range(12)))
    assert peak == 5
    assert sorted(m.text for m in tg.sent(3101)) == sorted(f"m{i}" for i in range(12))
    await ch.application.shutdown()
