"""Signed invites: tokens, tampering, expiry, single use under concurrency."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.config import load_settings
from bot.core import invites
from bot.core.invites import (
    InviteError,
    create_invite,
    redeem_invite,
    revoke_invite,
    signing_key,
    telegram_link,
)
from models.base import utcnow
from models.db import make_engine, make_sessionmaker, upgrade
from models.grid import Building, Community, Grid
from models.messaging import KeyValue
from models.people import Invite

KEY = b"test-key-0123456789"
DEEP_LINK_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """Every test here runs on SQLite and on PostgreSQL (see tests/conftest.py)."""
    eng = make_engine(database_url)
    await upgrade(eng)
    yield eng
    await eng.dispose()


@pytest.fixture
def sm(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


@pytest.fixture
async def place(sm: async_sessionmaker[AsyncSession]) -> tuple[int, int]:
    """A grid and a building in it: (grid id, building id)."""
    async with sm() as session, session.begin():
        community = Community(code="c", name="社区")
        session.add(community)
        await session.flush()
        grid = Grid(community_id=community.id, code="g", name="网格", path="/", depth=0)
        session.add(grid)
        await session.flush()
        grid.path = f"/{grid.id}/"
        building = Building(code="b", grid_id=grid.id, name="1栋")
        session.add(building)
        await session.flush()
        return grid.id, building.id


async def make(
    sm: async_sessionmaker[AsyncSession],
    grid_id: int,
    *,
    role: str = "member",
    building_id: int | None = None,
    days: float = 7,
    max_uses: int | None = 1,
) -> tuple[Invite, str]:
    async with sm() as session, session.begin():
        return await create_invite(
            session,
            KEY,
            role=role,
            grid_id=grid_id,
            building_id=building_id,
            expires_at=utcnow() + timedelta(days=days),
            max_uses=max_uses,
        )


async def redeem(sm: async_sessionmaker[AsyncSession], token: str, key: bytes = KEY) -> Invite:
    async with sm() as session, session.begin():
        return await redeem_invite(session, key, token, utcnow())


async def reason_of(sm: async_sessionmaker[AsyncSession], token: str) -> str:
    with pytest.raises(InviteError) as info:
        await redeem(sm, token)
    return info.value.reason


async def test_round_trip(sm: async_sessionmaker[AsyncSession], place: tuple[int, int]) -> None:
    grid_id, building_id = place
    invite, token = await make(sm, grid_id, role="resident", building_id=building_id, max_uses=3)
    assert DEEP_LINK_RE.match(token), token
    assert len(token) <= 64
    got = await redeem(sm, token)
    assert (got.id, got.role, got.grid_id, got.building_id) == (
        invite.id,
        "resident",
        grid_id,
        building_id,
    )
    assert got.uses == 1
    await redeem(sm, token)
    assert (await redeem(sm, token)).uses == 3
    assert await reason_of(sm, token) == "used"


async def test_unlimited_invite(
    sm: async_sessionmaker[AsyncSession], place: tuple[int, int]
) -> None:
    _invite, token = await make(sm, place[0], role="resident", building_id=place[1], max_uses=None)
    for expected in range(1, 6):
        assert (await redeem(sm, token)).uses == expected


async def test_token_fits_deep_links_even_for_huge_ids(
    sm: async_sessionmaker[AsyncSession], place: tuple[int, int]
) -> None:
    invite = Invite(
        id=2**62,
        role="member",
        grid_id=place[0],
        nonce="abcdefgh",
        expires_at=utcnow(),
    )
    token = invites.invite_token(KEY, invite)
    assert DEEP_LINK_RE.match(token) and len(token) <= 64
    assert invites.parse_token(token)[0] == 2**62


def _flip(token: str, index: int) -> str:
    alphabet = (
        "0123456789abcdefghijklmnopqrstuvwxyz"
        if index < token.index("_")
        else ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    )
    ch = token[index]
    other = alphabet[(alphabet.index(ch) + 1) % len(alphabet)]
    return token[:index] + other + token[index + 1 :]


async def test_tampered_tokens_are_forged(
    sm: async_sessionmaker[AsyncSession], place: tuple[int, int]
) -> None:
    # a second invite, so that a changed id can point at a real row
    await make(sm, place[0])
    _invite, token = await make(sm, place[0])
    id_end = token.index("_")
    parts = {
        "id": range(1, id_end),
        "nonce": range(id_end + 1, id_end + 9),
        "signature": range(id_end + 9, len(token)),
    }
    for part, positions in parts.items():
        for index in (positions[0], positions[-1]):
            assert await reason_of(sm, _flip(token, index)) == "forged", (part, index)
    # a different key is a forgery too
    with pytest.raises(InviteError, match="forged"):
        await redeem(sm, token, key=b"another key")
    # every single-character change fails one way or the other
    for index in range(len(token)):
        assert await reason_of(sm, _flip(token, index)) in ("forged", "malformed")
    assert (await redeem(sm, token)).uses == 1


async def test_tampered_row_is_forged(
    sm: async_sessionmaker[AsyncSession], place: tuple[int, int]
) -> None:
    invite, token = await make(sm, place[0], role="member")
    async with sm() as session, session.begin():
        row = await session.get(Invite, invite.id)
        assert row is not None
        row.role = "admin"
    assert await reason_of(sm, token) == "forged"


@pytest.mark.parametrize("token", ["", "hello", "i_", "i1_short", "i1_" + "a" * 40, "i1_!" * 6])
async def test_malformed(sm: async_sessionmaker[AsyncSession], token: str) -> None:
    assert await reason_of(sm, token) == "malformed"


async def test_unknown_id_is_forged(sm: async_sessionmaker[AsyncSession]) -> None:
    assert await reason_of(sm, "izz_abcdefgh0123456789abcdef") == "forged"


async def test_expired(sm: async_sessionmaker[AsyncSession], place: tuple[int, int]) -> None:
    invite, token = await make(sm, place[0], days=1)
    async with sm() as session:
        with pytest.raises(InviteError, match="expired"):
            await redeem_invite(session, KEY, token, invite.expires_at + timedelta(seconds=1))
        got = await redeem_invite(session, KEY, token, invite.expires_at - timedelta(seconds=1))
        assert got.uses == 1


async def test_single_use_reused(
    sm: async_sessionmaker[AsyncSession], place: tuple[int, int]
) -> None:
    _invite, token = await make(sm, place[0], max_uses=1)
    assert (await redeem(sm, token)).uses == 1
    assert await reason_of(sm, token) == "used"


async def test_revoked(sm: async_sessionmaker[AsyncSession], place: tuple[int, int]) -> None:
    invite, token = await make(sm, place[0], max_uses=None)
    async with sm() as session, session.begin():
        assert await revoke_invite(session, invite.id)
        assert not await revoke_invite(session, 999_999)
    assert await reason_of(sm, token) == "revoked"


async def test_concurrent_redemption_single_winner(
    sm: async_sessionmaker[AsyncSession], place: tuple[int, int]
) -> None:
    invite, token = await make(sm, place[0], max_uses=1)

    async def attempt() -> str:
        try:
            await redeem(sm, token)
        except InviteError as exc:
            return exc.reason
        return "ok"

    results = await asyncio.gather(*(attempt() for _ in range(4)))
    assert sorted(results) == ["ok", "used", "used", "used"]
    async with sm() as session:
        row = await session.get(Invite, invite.id)
        assert row is not None and row.uses == 1


async def test_conditional_update_guards_a_stale_check(
    sm: async_sessionmaker[AsyncSession],
    place: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Even when the check ran before another redemption committed, the UPDATE refuses."""
    invite, token = await make(sm, place[0], max_uses=1)
    await redeem(sm, token)

    async def stale_check(
        session: AsyncSession, key: bytes, tok: str, now: object
    ) -> Invite:  # as if read before the other redemption committed
        row = await session.get(Invite, invite.id)
        assert row is not None
        return row

    monkeypatch.setattr(invites, "check_invite", stale_check)
    assert await reason_of(sm, token) == "used"
    async with sm() as session:
        row = await session.get(Invite, invite.id)
        assert row is not None and row.uses == 1


async def test_create_invite_rejects_bad_arguments(
    sm: async_sessionmaker[AsyncSession], place: tuple[int, int]
) -> None:
    async with sm() as session:
        for kwargs in (
            {"role": "king", "expires_at": utcnow(), "max_uses": 1},
            {"role": "member", "expires_at": utcnow().replace(tzinfo=None), "max_uses": 1},
            {"role": "member", "expires_at": utcnow(), "max_uses": 0},
        ):
            with pytest.raises(ValueError):
                await create_invite(session, KEY, grid_id=place[0], **kwargs)  # type: ignore[arg-type]


async def test_signing_key(sm: async_sessionmaker[AsyncSession]) -> None:
    configured = load_settings(secret_key="configured")
    async with sm() as session:
        assert await signing_key(session, configured) == b"configured"
        assert await session.get(KeyValue, "secret_key") is None

    generated = load_settings(secret_key=None)
    async with sm() as session, session.begin():
        first = await signing_key(session, generated)
    async with sm() as session, session.begin():
        assert await signing_key(session, generated) == first
    assert len(first) >= 32

    async with sm() as session:
        rows = list(await session.scalars(select(KeyValue)))
    assert [r.key for r in rows] == ["secret_key"]


async def test_signing_key_race(sm: async_sessionmaker[AsyncSession]) -> None:
    settings = load_settings(secret_key=None)

    async def one() -> bytes:
        async with sm() as session, session.begin():
            return await signing_key(session, settings)

    keys = await asyncio.gather(one(), one(), one())
    assert len(set(keys)) == 1


async def test_signing_key_insert_conflict(
    sm: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key inserted by someone else between our read and our insert wins."""
    settings = load_settings(secret_key=None)
    async with sm() as session, session.begin():
        original_get: Any = session.get

        async def get_then_lose_race(*args: Any, **kwargs: Any) -> Any:
            result = await original_get(*args, **kwargs)
            # the other process commits its key right now
            await session.execute(insert(KeyValue).values(key="secret_key", value="theirs"))
            return result

        monkeypatch.setattr(session, "get", get_then_lose_race)
        assert await signing_key(session, settings) == b"theirs"


def test_telegram_link() -> None:
    assert telegram_link("gridbot", "i1_x") == "https://t.me/gridbot?start=i1_x"
    assert telegram_link("@gridbot", "i1_x") == "https://t.me/gridbot?start=i1_x"
    with pytest.raises(ValueError, match="not a Telegram bot username"):
        telegram_link("", "i1_x")


async def test_two_instances_keeping_the_bot_username_at_once(
    sm: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both instances of a deployment read 'nothing kept yet' and insert: the second one's
    insert fails on the key, and it updates the row instead of failing its start-up."""
    async with sm() as first, first.begin():
        await invites.remember_bot_username(first, "123", "old_name_bot")
    async with sm() as second, second.begin():

        async def stale_get(*args: Any, **kwargs: Any) -> None:
            return None  # what it read before the first one committed

        monkeypatch.setattr(second, "get", stale_get)
        await invites.remember_bot_username(second, "123", "xinhua_grid_bot")
    async with sm() as check:
        assert await invites.stored_bot_username(check, "123") == "xinhua_grid_bot"
        assert await invites.stored_bot_username(check, "999") is None  # another bot's token
        assert await invites.stored_bot_username(check, None) == "xinhua_grid_bot"
