"""Binding: /start <invite> creates the person, their identity and role; bad invites change
nothing; unbound users are told how to bind."""

from __future__ import annotations

from sqlalchemy import select

from bot.channels.memory import SentMessage
from bot.core.invites import revoke_invite
from models import Building, Grid, Identity, Invite, Person, Role
from tests.conftest import Harness
from tests.flows.helpers import rows, snapshot, texts_since

WELCOME = "请扫描楼道里的二维码"
NOT_BOUND = "请先扫描二维码或打开邀请链接完成绑定"


def menu_keys(sent: SentMessage) -> list[str]:
    return [key for row in sent.message.menu or [] for key in row]


async def _roles_of(harness: Harness, user_id: str) -> list[Role]:
    async with harness.app.sessionmaker() as session:
        ident = await session.scalar(select(Identity).where(Identity.external_id == user_id))
        assert ident is not None, user_id
        return list(
            (await session.scalars(select(Role).where(Role.person_id == ident.person_id))).all()
        )


async def _person_of(harness: Harness, user_id: str) -> Person:
    async with harness.app.sessionmaker() as session:
        ident = await session.scalar(select(Identity).where(Identity.external_id == user_id))
        assert ident is not None, user_id
        found = await session.get(Person, ident.person_id)
        assert found is not None
        return found


async def _ids(harness: Harness, grid: str, building: str | None = None) -> tuple[int, int | None]:
    async with harness.app.sessionmaker() as session:
        g = await session.scalar(select(Grid.id).where(Grid.code == grid))
        b = await session.scalar(select(Building.id).where(Building.code == building))
        assert g is not None
        return g, b


async def test_resident_invite_binds_then_asks_room_and_phone(harness: Harness) -> None:
    token = await harness.invite("resident", "xh-g1-m1", "xh-b01")
    people, idents = await harness.count(Person), await harness.count(Identity)
    user = harness.user("tg-5001", name="新邻居")

    await user.send(f"/start {token}")
    assert "绑定成功" in user.texts()[0] and "翠屏小区1栋" in user.texts()[0]
    # First: how the others will call her. The platform's name is offered to keep.
    assert "请问怎么称呼您" in user.last().text
    assert [b.label for b in user.last().buttons] == ["就叫“新邻居”"]
    assert await harness.count(Person) == people + 1
    assert await harness.count(Identity) == idents + 1
    roles = await _roles_of(harness, "tg-5001")
    grid_id, building_id = await _ids(harness, "xh-g1-m1", "xh-b01")
    assert [(r.role, r.grid_id, r.building_id) for r in roles] == [
        ("resident", grid_id, building_id)
    ]
    assert (await _person_of(harness, "tg-5001")).name == "新邻居"
    for not_a_name in ("1234567", "http://x.cn", "这是一个非常非常非常非常非常非常长的称呼文本啊"):
        await user.send(not_a_name)
        assert "这个称呼用不了" in user.last().text, not_a_name
    assert (await _person_of(harness, "tg-5001")).name == "新邻居"
    await user.send("  王阿姨 ")
    assert "好的，王阿姨" in user.last().text and "请回复您的房号" in user.last().text
    assert (await _person_of(harness, "tg-5001")).name == "王阿姨"

    await user.send("302室!!")  # not a flat number
    assert "房号格式不对" in user.last().text
    await user.send("这是一个非常非常非常非常非常长的房号文本")  # longer than 16
    assert "房号格式不对" in user.last().text
    await user.send("3-502")
    assert "请留下联系电话" in user.last().text
    # Only a mainland mobile number is taken; anything else is refused politely, unstored.
    not_mobiles = ("打电话给我", "12", "1391234", "12345678901", "138000012345", "0839-1234567")
    for not_a_mobile in not_mobiles:
        await user.send(not_a_mobile)
        assert "这不是手机号码。请回复 11 位手机号" in user.last().text, not_a_mobile
        assert (await _person_of(harness, "tg-5001")).phone is None
    mark = len(user.inbox)
    await user.send("+86 138 0000-1234")
    assert "好了！" in texts_since(user, mark)
    assert user.last().message.menu, "the main menu follows"
    assert "📝 我要报事" in user.last().message.menu[0]

    roles = await _roles_of(harness, "tg-5001")
    assert roles[0].room == "3-502"
    assert (await _person_of(harness, "tg-5001")).phone == "13800001234"
    assert [i.uses for i in await rows(harness, Invite)] == [1]


async def test_resident_may_skip_room_and_phone(harness: Harness) -> None:
    token = await harness.invite("resident", "xh-g2-m2", "xh-b12")
    user = harness.user("tg-5002", name="路人")
    await user.send(f"/start {token}")
    await user.press("就叫“路人”")
    assert "请回复您的房号" in user.last().text
    await user.press("跳过")
    assert "请留下联系电话" in user.last().text
    await user.press("跳过")
    assert user.last().message.menu
    roles = await _roles_of(harness, "tg-5002")
    assert roles[0].room is None
    assert (await _person_of(harness, "tg-5002")).phone is None
    assert (await _person_of(harness, "tg-5002")).name == "路人"


async def test_foreign_button_inside_bind_flow_is_refused(harness: Harness) -> None:
    token = await harness.invite("resident", "xh-g1-m1", "xh-b02")
    user = harness.user("tg-5003")
    await user.send(f"/start {token}")
    before = await snapshot(harness)
    await user.press_payload("f:cat:repair")
    assert "这个按钮已过期" in user.last().text
    assert await snapshot(harness) == before


async def test_member_worker_and_head_invites(harness: Harness) -> None:
    cases = [
        ("member", "xh-g1-m1", "tg-6001", "党员/志愿者", "第一网格1号微网格"),
        ("worker", "xh-g2-m2", "tg-6002", "网格员", "第二网格2号微网格"),
        ("head", "xh-g3", "tg-6003", "网格长", "第三网格"),
    ]
    for role, grid, uid, role_name, grid_name in cases:
        token = await harness.invite(role, grid)
        user = harness.user(uid, name="U7104")
        await user.send(f"/start {token}")
        assert f"您已登记为{grid_name}的{role_name}" in user.texts()[0]
        assert "请问怎么称呼您" in user.texts()[0]
        await user.send(f"老{role_name[:2]}")
        assert "请留下手机号码" in user.last().text
        await user.send("139-1234-5678")
        assert "好了！" in user.last().text and user.last().message.menu
        assert (await _person_of(harness, uid)).phone == "13912345678"
        assert (await _person_of(harness, uid)).name == f"老{role_name[:2]}"
        roles = await _roles_of(harness, uid)
        grid_id, _ = await _ids(harness, grid)
        assert [(r.role, r.grid_id, r.building_id) for r in roles] == [(role, grid_id, None)]
    # The new worker's menu offers the dispatch queue; the member's does not.
    worker_menu = menu_keys(harness.user("tg-6002").last())
    member_menu = menu_keys(harness.user("tg-6001").last())
    assert "📥 待派工单" in worker_menu and "📥 待派工单" not in member_menu
    assert "🤝 我的任务" in member_menu


async def test_known_person_gains_a_role(harness: Harness) -> None:
    resident = await harness.login("p-zhang-ayi")
    token = await harness.invite("member", "xh-g1-m1")
    people = await harness.count(Person)
    await resident.send(f"/start {token}")
    assert "您已登记为第一网格1号微网格的党员/志愿者" in resident.texts()[0]
    assert await harness.count(Person) == people
    assert sorted(r.role for r in await _roles_of(harness, "p-zhang-ayi")) == [
        "member",
        "resident",
    ]


async def test_bad_invites_are_refused_and_change_nothing(harness: Harness) -> None:
    good = await harness.invite("resident", "xh-g1-m1", "xh-b01")
    expired = await harness.invite("resident", "xh-g1-m1", "xh-b01", days=-1)
    revoked = await harness.invite("member", "xh-g1-m1")
    async with harness.app.sessionmaker() as session, session.begin():
        inv = (await session.scalars(select(Invite).order_by(Invite.id.desc()))).first()
        assert inv is not None
        await revoke_invite(session, inv.id)
    forged_sig = good[:-1] + ("A" if good[-1] != "A" else "B")
    # Same shape, another invite's id: the signature cannot match.
    forged_id = "i" + "z" + good[good.index("_") :]
    cases = [
        ("hello", "邀请码不完整"),
        ("i1_short", "邀请码不完整"),
        ("x" * 64, "邀请码不完整"),
        (forged_sig, "这个邀请码无效"),
        (forged_id, "这个邀请码无效"),
        (expired, "这个邀请已过期"),
        (revoked, "已被社区撤销"),
    ]
    before = await snapshot(harness)
    for n, (token, answer) in enumerate(cases):
        user = harness.user(f"tg-bad-{n}")
        await user.send(f"/start {token}")
        assert answer in user.last().text, (token, user.texts())
        assert len(user.inbox) == 1
    assert await snapshot(harness) == before

    # A single-use invite works once; the second person is refused, nothing else changes.
    first, second = harness.user("tg-first"), harness.user("tg-second")
    await first.send(f"/start {good}")
    assert "绑定成功" in first.texts()[0]
    before = await snapshot(harness)
    await second.send(f"/start {good}")
    assert "已经被使用过了" in second.last().text
    assert await snapshot(harness) == before
    # The refused stranger is still a stranger.
    await second.send("你好")
    assert WELCOME in second.last().text


async def test_same_user_redeeming_again_is_told_already(harness: Harness) -> None:
    stairwell = await harness.invite("resident", "xh-g1-m1", "xh-b01", max_uses=None)
    user = harness.user("tg-7001")
    await user.send(f"/start {stairwell}")
    await user.send("陈阿姨")
    await user.press("跳过")
    await user.press("跳过")
    before = await snapshot(harness)
    await user.send(f"/start {stairwell}")
    # One message: "already", where to change her details, and the menu.
    assert "您已经是第一网格1号微网格的居民了" in user.last().text
    assert "要修改称呼、电话或房号，请点“👤 我的信息”" in user.last().text
    assert user.last().message.menu
    after = await snapshot(harness)
    assert after["person"] == before["person"] and after["role"] == before["role"]
    assert after["identity"] == before["identity"]

    # A second member invite for a role the person already holds: "already", too.
    member = await harness.login("p-li-dangyuan")
    token = await harness.invite("member", "xh-g1-m1")
    roles = len(await rows(harness, Role))
    await member.send(f"/start {token}")
    assert "您已经是第一网格1号微网格的党员/志愿者了" in member.texts()[0]
    assert len(await rows(harness, Role)) == roles


async def test_unbound_users_get_the_welcome(harness: Harness) -> None:
    before = await snapshot(harness)
    stranger = harness.user("tg-8001")
    await stranger.send("你好，我家水管漏了")
    assert WELCOME in stranger.last().text
    await stranger.send("/order")
    assert WELCOME in stranger.last().text
    await stranger.send("/myorders")
    assert WELCOME in stranger.last().text
    await stranger.send("/start")
    assert WELCOME in stranger.last().text
    await stranger.send("📝 我要报事")
    assert WELCOME in stranger.last().text
    for payload in ("o:acc:1", "f:ok", "m:order", "or:1:5", "f:lang:en"):
        await stranger.press_payload(payload)
        assert NOT_BOUND in stranger.last().text, payload
    await stranger.photo("photo-ref-1")
    assert WELCOME in stranger.last().text
    await stranger.location(31.2, 107.5)
    assert WELCOME in stranger.last().text
    assert await snapshot(harness) == before


async def test_english_user_binds_in_english(harness: Harness) -> None:
    token = await harness.invite("resident", "xh-g1-m1", "xh-b03")
    user = harness.user("tg-9001", name="Alex", locale="en-US")
    await user.send(f"/start {token}")
    assert "You're registered at 翠屏小区3栋" in user.texts()[0]
    assert "What should we call you" in user.last().text
    await user.press("Call me “Alex”")
    assert "flat number" in user.last().text
    await user.press("Skip")
    await user.press("Skip")
    assert "All set!" in user.last().text  # one message: "all set" with the menu
    assert "📝 Report a problem" in user.last().message.menu[0]  # type: ignore[index]
    stranger = harness.user("tg-9002", locale="en")
    await stranger.send("hello")
    assert "Scan the QR code" in stranger.last().text
