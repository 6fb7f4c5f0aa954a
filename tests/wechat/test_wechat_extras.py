"""Photos pushed as images, WeChat stairwell sheets, the unreachable handler's notice going up,
template field mappings, replayed callbacks, and ``/push`` with numbered options."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import zxingcpp
from PIL import Image
from sqlalchemy import func, select

from bot.cli import main
from bot.config import load_settings
from bot.core.cards import number
from bot.core.invites import parse_token
from bot.ports import Outbound
from models import (
    Identity,
    Invite,
    OutboxMessage,
    Person,
    ProcessedUpdate,
    WeChatCallback,
    WeChatMedia,
)
from tests.fakes.wechat_server import PNG, FakeWeChatServer
from tests.wechat.conftest import WX, wechat_stack
from tests.wechat.test_wechat_admin import _config
from tests.wechat.test_wechat_loop import option, place_order
from tests.wechat.test_wechat_push import RESIDENT, WORKER, order_with_worker_on_wechat

HEAD = "o-head"


async def _push(wx: WX, openid: str, message: Outbound) -> None:
    async with wx.app.sessionmaker() as session, session.begin():
        ident = await session.scalar(select(Identity).where(Identity.external_id == openid))
        assert ident is not None
        session.add(OutboxMessage(channel="wechat", chat_id=openid, person_id=ident.person_id,
                                  payload=message.to_payload()))
    wx.app.deliverer.wake()


# ------------------------------------------------------------------------ 1. photos
async def test_photo_goes_out_as_an_image_within_the_quota(wx: WX) -> None:
    await wx.bind_resident(RESIDENT)
    ref = await wx.app.media.save(PNG)
    assert ref is not None
    before = len([s for s in wx.api.sent if s.touser == RESIDENT])
    for n in range(3):
        await _push(wx, RESIDENT, Outbound(f"photo push {n}", photo=ref))
        await wx.settle()
    sent = [s for s in wx.api.sent if s.touser == RESIDENT][before:]
    # Quota 5: image + text, image + text, then one push left: the text alone.
    assert [s.kind for s in sent] == ["image", "text", "image", "text", "text"]
    assert sent[1].text == "photo push 0" and sent[3].text == "photo push 1"
    assert sent[4].text.startswith("photo push 2") and "附有照片" in sent[4].text
    # Uploaded once (media/upload, type image); the media_id is cached for three days.
    assert len(wx.api.uploads) == 1 and list(wx.api.uploads.values()) == [PNG]
    media_id = next(iter(wx.api.uploads))
    assert {s.body["image"]["media_id"] for s in sent if s.kind == "image"} == {media_id}
    async with wx.app.sessionmaker() as session:
        cached = await session.get(WeChatMedia, ref)
        assert cached is not None and cached.media_id == media_id
        assert cached.expires_at > wx.app.clock()
        ident = await session.scalar(select(Identity).where(Identity.external_id == RESIDENT))
        assert ident is not None and ident.window_pushes == 5


async def test_refused_upload_sends_the_text_saying_a_photo_exists(wx: WX) -> None:
    await wx.bind_resident(RESIDENT)
    ref = await wx.app.media.save(PNG)
    assert ref is not None
    wx.api.upload_errors.append(40005)  # invalid file type: permanent
    await _push(wx, RESIDENT, Outbound("with a photo", photo=ref))
    await wx.settle()
    last = [s for s in wx.api.sent if s.touser == RESIDENT][-1]
    assert last.kind == "text" and "附有照片" in last.text
    async with wx.app.sessionmaker() as session:
        ident = await session.scalar(select(Identity).where(Identity.external_id == RESIDENT))
        assert ident is not None and ident.window_pushes == 1  # the photo's push refunded
        assert await session.get(WeChatMedia, ref) is None


# ------------------------------------------------------------------- 2. qr-sheet
async def test_qr_sheet_makes_permanent_wechat_codes(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = FakeWeChatServer()
    async with api.running():
        config = str(_config(tmp_path, api, database_url))
        assert await asyncio.to_thread(main, ["--config", config, "import",
                                              str(Path("bot/demo/community.yaml"))]) == 0
        capsys.readouterr()
        out = tmp_path / "sheets"
        code = await asyncio.to_thread(main, ["--config", config, "qr-sheet",
                                              "--grid", "xh-g1-m1", "--out", str(out),
                                              "--bot-username", "gridbot"])
        assert code == 0
    paths = [Path(p) for p in capsys.readouterr().out.split()]
    assert [p.name for p in paths] == [
        *(f"sheet-xh-g1-m1-xh-b0{i}.png" for i in (1, 2, 3)),
        "sheet-xh-g1-m1.pdf",
        *(f"sheet-xh-g1-m1-wechat-xh-b0{i}.png" for i in (1, 2, 3)),
        "sheet-xh-g1-m1-wechat.pdf",
    ]
    assert all(p.is_file() for p in paths)
    assert len(api.qrcodes) == 3  # xh-b01..03
    # Each WeChat page prints the account's code for its building (the fake numbers them).
    for i in (1, 2, 3):
        with Image.open(out / f"sheet-xh-g1-m1-wechat-xh-b0{i}.png") as page:
            [code] = zxingcpp.read_barcodes(page.convert("L"))
        assert code.text == f"http://weixin.qq.com/q/gQ{i}"
    assert {q["action_name"] for q in api.qrcodes} == {"QR_LIMIT_STR_SCENE"}
    scenes = [q["action_info"]["scene"]["scene_str"] for q in api.qrcodes]
    ids = [parse_token(s)[0] for s in scenes]
    settings = load_settings(database_url=database_url)
    from models.db import make_engine, make_sessionmaker

    engine = make_engine(settings.database_url)
    try:
        async with make_sessionmaker(engine)() as session:
            invites = (await session.scalars(select(Invite).where(Invite.id.in_(ids)))).all()
    finally:
        await engine.dispose()
    assert len(invites) == 3
    assert {i.role for i in invites} == {"resident"} and all(i.max_uses is None for i in invites)


# ------------------------------------------------- 3. only handler unreachable: go up
async def test_only_handler_unreachable_tells_the_head_above(wx: WX) -> None:
    head_token = await wx.h.invite("head", "xh-g2")
    await wx.sender.event(HEAD, "subscribe", f"qrscene_{head_token}")
    worker_token = await wx.h.invite("worker", "xh-g2-m2")
    await wx.sender.event(WORKER, "subscribe", f"qrscene_{worker_token}")
    await wx.settle()
    await wx.bind_resident(RESIDENT, building="xh-b12", grid="xh-g2-m2")
    await wx.age_window(WORKER, 49)  # the only worker of xh-g2-m2 cannot be pushed to
    before = len(wx.api.texts(WORKER))
    await place_order(wx, RESIDENT, "供销社楼道堆满杂物")
    notice = await wx.api.wait_for(HEAD, lambda t: "无法向" in t)
    await wx.settle()
    (order,) = await wx.h.orders()
    assert number(order) in notice and "请电话联系" in notice
    assert len(wx.api.texts(WORKER)) == before


# ---------------------------------------------------------- 4. template fields
async def test_template_fields_are_filled_from_the_push(
    database_url: str, tmp_path: Path
) -> None:
    templates = {
        "accepted": {
            "id": "TPL-ACC",
            "fields": {"first": "{title}", "keyword1": "工单 {number}",
                       "keyword2": "{time}", "remark": "{text}"},
        },
        "other": "TPL-OTHER",  # the plain form still works next to it
    }
    async with wechat_stack(database_url, tmp_path, wechat_templates=templates) as wx:
        card = await order_with_worker_on_wechat(wx)
        await wx.settle()
        await wx.age_window(RESIDENT, 49)
        await wx.sender.text(WORKER, option(card, "🙋 我来处理"))
        await wx.api.wait_for(RESIDENT, lambda t: "工单 " in t)
        await wx.settle()
        (order,) = await wx.h.orders()
        (sent,) = [s for s in wx.api.sent if s.kind == "template"]
        assert sent.body["template_id"] == "TPL-ACC"
        data = {k: v["value"] for k, v in sent.body["data"].items()}
        assert set(data) == {"first", "keyword1", "keyword2", "remark"}
        assert data["keyword1"] == f"工单 {number(order)}"
        local = wx.app.clock().astimezone(wx.app.settings.tz).strftime("%Y-%m-%d")
        assert data["keyword2"].startswith(local)
        assert data["first"] and "\n" not in data["first"]


def test_template_settings_are_checked() -> None:
    ok = load_settings(wechat_templates={"rate": "TPL", "offer": {"id": "T2"}})
    assert ok.wechat_templates["rate"] == "TPL"
    for bad in (
        {"rate": {"id": "T", "fields": {"first": "{name}"}}},
        {"rate": {"fields": {"first": "{title}"}}},
        {"rate": {"id": "T", "colour": "red"}},
        {"rate": {"id": "T", "fields": {"first": "{title.__class__}"}}},
    ):
        with pytest.raises(ValueError):
            load_settings(wechat_templates=bad)


# ------------------------------------------------------------------- 5. replays
async def test_replayed_callback_changes_nothing(wx: WX) -> None:
    xml = wx.sender.xml("o-replay", "text", Content="你好", msg_id=99001)
    ts = wx.sender.now()
    first = await wx.sender.post_raw(xml, timestamp=ts, nonce="424242")
    assert first.status == 200
    await wx.settle()

    async def counts() -> tuple[int, int, int]:
        async with wx.app.sessionmaker() as session:
            return (
                int(await session.scalar(select(func.count()).select_from(ProcessedUpdate)) or 0),
                int(await session.scalar(select(func.count()).select_from(OutboxMessage)) or 0),
                int(await session.scalar(select(func.count()).select_from(WeChatCallback)) or 0),
            )

    seen = await counts()
    again = await wx.sender.post_raw(xml, timestamp=ts, nonce="424242")
    # Answered like a duplicate (a retry of a failed first attempt must not be lost; the
    # message dedupe makes a replay harmless): no new order, no new message.
    assert again.status == 200 and again.body == "success"
    await wx.settle()
    assert await counts() == seen
    # The same message under a new nonce is a retry, not a replay: deduplicated, no reply.
    retry = await wx.sender.post_raw(xml, timestamp=ts, nonce="424243")
    assert retry.status == 200 and retry.body == "success"
    await wx.settle()
    assert (await counts())[:2] == seen[:2]
    async with wx.app.sessionmaker() as session:
        expiry = await session.scalar(select(func.max(WeChatCallback.expires_at)))
    assert expiry is not None
    assert 0 < expiry.timestamp() - ts <= wx.app.settings.wechat_timestamp_skew + 1


# ------------------------------------------------------------ 6. /push buttons
async def test_push_offers_numbered_choices(wx: WX) -> None:
    await wx.bind_resident(RESIDENT)
    shown = await wx.sender.text(RESIDENT, "/push")
    assert shown.text and "回复 1 微信" in shown.text, shown
    assert option(shown.text, "最近使用的平台")
    chosen = await wx.sender.text(RESIDENT, option(shown.text, "微信"))
    assert chosen.text and "以后通知都发到微信" in chosen.text
    async with wx.app.sessionmaker() as session:
        person = await session.scalar(
            select(Person).join(Identity, Identity.person_id == Person.id)
            .where(Identity.external_id == RESIDENT))
        assert person is not None and person.preferred_channel == "wechat"
    shown = await wx.sender.text(RESIDENT, "/push")
    assert shown.text
    back = await wx.sender.text(RESIDENT, option(shown.text, "最近使用的平台"))
    assert back.text and "最近使用的平台" in back.text
    async with wx.app.sessionmaker() as session:
        person = await session.scalar(
            select(Person).join(Identity, Identity.person_id == Person.id)
            .where(Identity.external_id == RESIDENT))
        assert person is not None and person.preferred_channel is None
