"""``gridbot invites list|revoke``: an administrator sees which invites are out there and
withdraws one (a lost member invite, a stairwell sheet to be reprinted); whoever scans a
revoked invite is told politely and gets no role."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import pytest

from bot.admin.cli_admin import add_admin_commands
from bot.config import Settings
from models import Role
from tests.conftest import Harness


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gridbot")
    add_admin_commands(p.add_subparsers(dest="command", required=True))
    return p


async def cli(settings: Settings, *argv: str) -> int:
    args = parser().parse_args(argv)
    code: int = await asyncio.to_thread(args.func, settings, args)
    return code


async def invite(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert await cli(settings, "invite", *argv, "--bot-username", "gridbot", "--json") == 0
    return json.loads(capsys.readouterr().out)


async def listed(settings: Settings, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert await cli(settings, "invites", "list", "--json", *argv) == 0
    return json.loads(capsys.readouterr().out)


async def test_list_and_revoke_invites(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = harness.app.settings
    member = await invite(settings, capsys, "--role", "member", "--grid", "xh-g1-m1")
    stairs = await invite(
        settings, capsys, "--role", "resident", "--grid", "xh-g1-m1", "--building", "xh-b01"
    )
    other = await invite(settings, capsys, "--role", "worker", "--grid", "xh-g2-m1")

    rows = await listed(settings, capsys)
    assert [r["id"] for r in rows] == [other["id"], stairs["id"], member["id"]]  # newest first
    first = rows[-1]
    assert (first["role"], first["grid"], first["building"], first["status"]) == (
        "member", "xh-g1-m1", None, "open",
    )  # fmt: skip
    assert (first["uses"], first["max_uses"]) == (0, 1)
    assert "token" not in first  # a list does not hand out working invites
    assert [r["id"] for r in await listed(settings, capsys, "--grid", "xh-g1")] == [
        stairs["id"],
        member["id"],
    ]

    # The member invite was lost: revoke it.
    assert await cli(settings, "invites", "revoke", str(member["id"])) == 0
    assert capsys.readouterr().out == f"revoked: #{member['id']}\n"
    assert member["id"] not in [r["id"] for r in await listed(settings, capsys)]
    every = {r["id"]: r["status"] for r in await listed(settings, capsys, "--all")}
    assert every[member["id"]] == "revoked"

    # Whoever scans it is told, in their language, and gets no role.
    roles = await harness.count(Role)
    finder = harness.user("finder", name="捡到的人")
    await finder.send(f"/start {member['token']}")
    assert "撤销" in finder.last().text and "网格员" in finder.last().text
    english = harness.user("finder-en", name="Finder", locale="en")
    await english.send(f"/start {member['token']}")
    assert "withdrawn" in english.last().text
    assert await harness.count(Role) == roles

    # Revoking again says so; an unknown number changes nothing.
    assert await cli(settings, "invites", "revoke", str(member["id"])) == 0
    assert "already revoked" in capsys.readouterr().out
    assert await cli(settings, "invites", "revoke", str(stairs["id"]), "9999") == 1
    assert "unknown invite #9999" in capsys.readouterr().err
    assert stairs["id"] in [r["id"] for r in await listed(settings, capsys)]

    # Reprinting a grid's sheets: withdraw every open invite under it.
    assert await cli(settings, "invites", "revoke", "--grid", "xh-g1") == 0
    assert capsys.readouterr().out == f"revoked: #{stairs['id']}\n"
    assert [r["id"] for r in await listed(settings, capsys)] == [other["id"]]
    assert await cli(settings, "invites", "revoke") == 2
    assert "IDs" in capsys.readouterr().err
