"""One person, two platforms: /link codes and /push (platform-neutral, run on two in-memory
channels standing for Telegram and WeChat)."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from bot.channels.memory import MemoryChannel
from bot.core.notify import Notifier
from models import Identity, LinkCode, Person
from tests.conftest import Harness


def code_in(text: str) -> str:
    match = re.search(r"\b(\d{6})\b", text)
    assert match, text
    return match.group(1)


async def test_link_push_and_refusals(harness: Harness) -> None:
    h = harness
    side = MemoryChannel(name="side")
    h.app.add_channel(side)
    zhang = await h.login("p-zhang-ayi")
    await zhang.send("/link")
    code = code_in(zhang.last().text)

    stranger = side.user(h.intake, "s-1", name="张阿姨的微信")
    wrong = "000000" if code != "000000" else "111111"
    await stranger.send(f"/link {wrong}")
    assert "不正确" in stranger.last().text
    await stranger.send(f"/link {code}")
    assert "绑定成功" in " ".join(stranger.texts())
    async with h.app.sessionmaker() as session:
        person = await session.scalar(select(Person).where(Person.key == "p-zhang-ayi"))
        assert person is not None
        count = await session.scalar(
            select(func.count()).select_from(Identity).where(Identity.person_id == person.id))
        assert count == 2
        assert (await session.scalars(select(LinkCode.used_at))).all()[0] is not None

    # A code works once; someone who already has a role cannot be merged away.
    await zhang.send("/link")
    second = code_in(zhang.last().text)
    other = side.user(h.intake, "s-2")
    await other.send(f"/link {second}")
    assert "不能再绑定第二个" in other.last().text  # zhang has a "side" account already
    third = MemoryChannel(name="third")
    h.app.add_channel(third)
    member = third.user(h.intake, "t-1")
    await member.send(f"/start {await h.invite('member', 'xh-g1-m1')}")
    await member.send(f"/link {second}")
    assert "不能合并" in member.last().text
    late = side.user(h.intake, "s-3")
    await late.send(f"/link {code}")
    assert "不正确" in late.last().text

    # Pushes go where the person chose, else where they wrote last.
    await zhang.send("/push side")
    assert "以后通知都发到" in zhang.last().text
    async with h.app.sessionmaker() as session:
        notifier = Notifier(session, h.app.tr, "zh_CN")
        chosen = await notifier.identity_of(person.id)
        assert chosen is not None and chosen.channel == "side"
    await zhang.send("/push telegram")
    assert "没有账号" in zhang.last().text
    await zhang.send("/push auto")
    async with h.app.sessionmaker() as session:
        notifier = Notifier(session, h.app.tr, "zh_CN")
        last = await notifier.identity_of(person.id)
        assert last is not None and last.channel == "memory"  # zhang wrote last
