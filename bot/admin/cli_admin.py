"""Admin subcommands of the ``gridbot`` command line: import, grids, invite, invites,
qr-sheet.

``bot/cli.py`` builds the parser and calls :func:`add_admin_commands`; each command is a sync
function ``(settings, args) -> exit code`` that opens its own engine, migrates the schema, does
its work in one transaction and disposes the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.admin.cli_wechat import wechat_configured, wechat_qr, wechat_sheet_urls
from bot.admin.grid_tree import grid_tree, render_tree
from bot.admin.importer import CommunityFileError, import_community
from bot.config import Settings
from bot.core.invites import (
    create_invite,
    remember_bot_username,
    signing_key,
    stored_bot_username,
    telegram_link,
    valid_bot_username,
)
from bot.core.responsibility import ancestors, people_with_role
from bot.i18n import Translator
from bot.printing.qr import qr_png
from bot.printing.qr_sheet import BuildingPage, SheetWords, write_sheet
from models.base import utcnow
from models.db import make_engine, make_sessionmaker, upgrade
from models.grid import Building, Community, Grid
from models.people import ROLE_HEAD, ROLE_RESIDENT, ROLE_WORKER, ROLES, Invite, Person, Role

_T = TypeVar("_T")

#: Chinese names of the roles, for the captions printed under QR codes.
ROLE_LABELS_ZH = {
    "resident": "居民",
    "member": "党员志愿者",
    "worker": "网格员",
    "head": "网格长",
    "admin": "社区管理员",
}

SHEET_DAYS = 180


#: Exit status of ``invite`` / ``qr-sheet`` when the invites were created and printed but their
#: WeChat QR codes could not be made (the WeChat API failed): a partial success.
EXIT_PARTIAL = 3


class CliError(Exception):
    """A command failed in a way the user can fix; the message is printed after ``error:``.

    ``status`` is the exit status: 1 by default, 2 for a usage or configuration error.
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _run(settings: Settings, work: Callable[[AsyncSession], Awaitable[_T]]) -> _T:
    """Run ``work`` in one transaction on a migrated database; roll back if it raises."""

    async def main() -> _T:
        engine = make_engine(settings.database_url)
        try:
            await upgrade(engine)
            async with make_sessionmaker(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def _fail(message: str, status: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


# --------------------------------------------------------------------------------------------
# The Telegram bot's username, for t.me links


def _read_stored_username(settings: Settings, bot_id: str | None) -> str | None:
    async def work(session: AsyncSession) -> str | None:
        return await stored_bot_username(session, bot_id)

    return _run(settings, work)


def _store_username(settings: Settings, bot_id: str, username: str) -> None:
    async def work(session: AsyncSession) -> None:
        await remember_bot_username(session, bot_id, username)

    _run(settings, work)


def bot_username_for_links(settings: Settings, explicit: str | None) -> str | None:
    """The bot username that ``t.me`` links name; ``None`` when Telegram is not used at all
    (WeChat only). Raises :class:`CliError` (status 2) rather than print a placeholder link.

    In order: ``--bot-username``; the one kept in the database for the configured token (the
    service stores it at start-up); ``getMe`` with the configured token (then kept too); with
    no token, the one the service kept.
    """
    if explicit:
        if not valid_bot_username(explicit):
            raise CliError(f"--bot-username: not a Telegram username: {explicit!r}", 2)
        return explicit.lstrip("@")
    token = settings.telegram_token
    bot_id = token.split(":", 1)[0] if token else None
    stored = _read_stored_username(settings, bot_id)
    if stored:
        return stored
    if token:
        assert bot_id is not None
        from bot.channels.telegram import fetch_bot_username

        try:
            username = asyncio.run(fetch_bot_username(token, settings.telegram_api_url))
        except ValueError as exc:
            raise CliError(
                f"cannot learn the Telegram bot's username: {exc}.\n"
                "Fix the token (GRIDBOT_TELEGRAM_TOKEN) or pass --bot-username NAME "
                "(the @name from @BotFather).",
                2,
            ) from None
        _store_username(settings, bot_id, username)
        return username
    if wechat_configured(settings):
        return None  # a WeChat-only deployment: its codes open the Official Account
    raise CliError(
        "the Telegram bot's username is unknown, so the QR code would be a dead link.\n"
        "Set GRIDBOT_TELEGRAM_TOKEN (its username is then asked from Telegram), or pass "
        "--bot-username NAME, or configure WeChat (GRIDBOT_WECHAT_APPID and _SECRET).",
        2,
    )


# --------------------------------------------------------------------------------------------
# import


def import_files(
    settings: Settings,
    files: list[str],
    load: Callable[[AsyncSession, Path], Awaitable[object]],
) -> int:
    """Load every file with ``load`` in one transaction, all or nothing; print each report."""

    async def work(session: AsyncSession) -> list[object]:
        return [await load(session, Path(f)) for f in files]

    try:
        reports = _run(settings, work)
    except CommunityFileError as exc:
        return _fail(f"{exc}\nnothing was imported")
    for report in reports:
        print(report)
    return 0


async def hand_over(session: AsyncSession, settings: Settings, person_ids: set[int]) -> str:
    """Hand the open work of people who lost roles to whoever is responsible now (in the
    caller's transaction; the running service delivers the notices). A line per person."""
    from bot.core.handover import hand_over as release
    from bot.i18n import Translator

    tr = Translator.load(settings.locales_dir, settings.default_locale)
    now = utcnow()
    lines = []
    for person_id in sorted(person_ids):
        person = await session.get(Person, person_id)
        assert person is not None
        released = await release(session, tr, settings.default_locale, now, person)
        if released.anything:
            lines.append(f"  open work of {person.name} [{person.key}]: {released}")
    return "\n".join(lines)


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    """Import community files (YAML or CSV) in one transaction; all or nothing. Open work of
    people who lost roles is handed over in the same transaction."""

    async def load(session: AsyncSession, path: Path) -> str:
        report = await import_community(session, path, fmt=args.format)
        handed = await hand_over(session, settings, report.lost_roles)
        return f"{report}\n{handed}" if handed else str(report)

    return import_files(settings, args.files, load)


# --------------------------------------------------------------------------------------------
# person remove


def cmd_person_remove(settings: Settings, args: argparse.Namespace) -> int:
    """Remove a person's roles (all, or those matching ``--role`` / ``--grid``) and hand their
    open work over. The person's history (orders, events, points) stays."""

    async def work(session: AsyncSession) -> str:
        person = await session.scalar(select(Person).where(Person.key == args.key))
        if person is None:
            raise CliError(f"no person with key {args.key}")
        stmt = select(Role).where(Role.person_id == person.id)
        if args.role:
            stmt = stmt.where(Role.role == args.role)
        if args.grid:
            stmt = stmt.where(Role.grid_id == (await _grid_by_code(session, args.grid)).id)
        roles = list(await session.scalars(stmt))
        if not roles:
            raise CliError(f"{person.name} [{person.key}] holds no such role; nothing changed")
        grids = {g.id: g.code for g in await session.scalars(select(Grid))}
        removed = ", ".join(f"{r.role} of {grids.get(r.grid_id, '?')}" for r in roles)
        for role in roles:
            await session.delete(role)
        await session.flush()
        handed = await hand_over(session, settings, {person.id})
        text = f"removed from {person.name} [{person.key}]: {removed}"
        return f"{text}\n{handed}" if handed else f"{text}\n  no open work to hand over"

    try:
        print(_run(settings, work))
    except CliError as exc:
        return _fail(str(exc), exc.status)
    return 0


# --------------------------------------------------------------------------------------------
# grids


def cmd_grids(settings: Settings, args: argparse.Namespace) -> int:
    """Print the grid tree with the number of buildings and people of each grid."""
    tree = _run(settings, grid_tree)
    if args.json:
        print(json.dumps(tree, ensure_ascii=False, indent=2))
    else:
        print(render_tree(tree))
    return 0


# --------------------------------------------------------------------------------------------
# invite


async def _grid_by_code(session: AsyncSession, code: str) -> Grid:
    grid = await session.scalar(select(Grid).where(Grid.code == code))
    if grid is None:
        raise CliError(f"unknown grid {code}")
    return grid


async def _building_by_code(session: AsyncSession, code: str) -> Building:
    building = await session.scalar(select(Building).where(Building.code == code))
    if building is None:
        raise CliError(f"unknown building {code}")
    return building


def _caption(role: str, place: str, code: str, expires: str) -> str:
    return f"{ROLE_LABELS_ZH.get(role, role)}邀请 · {place}\n{role} · {code} · until {expires}"


def cmd_invite(settings: Settings, args: argparse.Namespace) -> int:
    """Create one invite, print its token and links, and write its QR code(s).

    Exit status 0; 1 or 2 (nothing created) for a bad argument or an unknown bot username;
    :data:`EXIT_PARTIAL` when the invite was created and printed but its WeChat code failed.
    """
    if args.role == ROLE_RESIDENT and not args.building:
        return _fail("a resident invite needs --building")
    if args.uses is not None and args.uses < 1:
        return _fail("--uses must be at least 1")
    days = settings.invite_days if args.days is None else args.days
    if days <= 0:
        return _fail("--days must be positive")
    if args.single:
        max_uses: int | None = 1
    elif args.uses is not None:
        max_uses = args.uses
    else:
        max_uses = None if args.role == ROLE_RESIDENT else 1
    out_dir = Path(args.out) if args.out else settings.qr_dir
    try:
        username = bot_username_for_links(settings, args.bot_username)
    except CliError as exc:
        return _fail(str(exc), exc.status)

    async def work(session: AsyncSession) -> dict[str, Any]:
        grid = await _grid_by_code(session, args.grid)
        building = await _building_by_code(session, args.building) if args.building else None
        grid_id = grid.id
        if building is not None:
            home = await session.get(Grid, building.grid_id)
            assert home is not None
            if not home.path.startswith(grid.path):
                raise CliError(f"building {building.code} is not in grid {grid.code}")
            if args.role == ROLE_RESIDENT:
                grid_id = home.id
        key = await signing_key(session, settings)
        expires_at = utcnow() + timedelta(days=days)
        invite, token = await create_invite(
            session,
            key,
            role=args.role,
            grid_id=grid_id,
            building_id=building.id if building else None,
            expires_at=expires_at,
            max_uses=max_uses,
        )
        name = f"invite-{invite.id}-{args.role}-{grid.code}"
        if building is not None:
            name += f"-{building.code}"
        expires_local = expires_at.astimezone(settings.tz)
        place = building.name if building else grid.name
        code = building.code if building else grid.code
        caption = _caption(args.role, place, code, expires_local.date().isoformat())
        link = telegram_link(username, token) if username else None
        png = qr_png(link, out_dir / f"{name}.png", caption) if link else None
        return {
            "id": invite.id,
            "token": token,
            "role": args.role,
            "grid": grid.code,
            "building": building.code if building else None,
            "max_uses": max_uses,
            "expires_at": expires_local.isoformat(),
            "telegram_link": link,
            "qr_png": str(png) if png else None,
            "_place": place,
            "_caption": caption,
            "_stem": name,
        }

    try:
        info = _run(settings, work)
    except CliError as exc:
        return _fail(str(exc), exc.status)
    place = info.pop("_place")
    caption = info.pop("_caption")
    stem = info.pop("_stem")
    status = 0
    warning = None
    if wechat_configured(settings):
        try:
            info.update(
                wechat_qr(
                    settings,
                    info["token"],
                    permanent=max_uses is None and args.role == ROLE_RESIDENT,
                    days=days,
                    png_path=out_dir / f"{stem}-wechat.png",
                    caption=caption,
                )
            )
        except Exception as exc:  # the invite exists: print it, and say what is missing
            warning = f"invite #{info['id']} created, but its WeChat QR code failed: {exc}"
            info["wechat_error"] = str(exc)
            status = EXIT_PARTIAL
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
    else:
        uses = "unlimited uses" if max_uses is None else f"{max_uses} use(s)"
        target = info["building"] or info["grid"]
        print(f"invite #{info['id']}: {info['role']} of {place} [{target}]")
        print(f"  {uses}, valid until {info['expires_at']}")
        print(f"token:    {info['token']}")
        if info["telegram_link"]:
            print(f"telegram: {info['telegram_link']}")
            print(f"qr code:  {info['qr_png']}")
        if "wechat_qr_png" in info:
            print(f"wechat:   {info['wechat_qr_url']} (QR code: {info['wechat_qr_png']})")
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return status


# --------------------------------------------------------------------------------------------
# qr-sheet


def cmd_qr_sheet(settings: Settings, args: argparse.Namespace) -> int:
    """One multi-use resident invite per building under a grid, printed one building a page.

    Per micro-grid: ``sheet-<grid>-<building>.png`` for each building and ``sheet-<grid>.pdf``
    with all its pages (Telegram links; none when Telegram is not used at all); with WeChat
    configured the same again as ``sheet-<grid>-wechat…`` with the account's permanent codes.
    """
    days = SHEET_DAYS if args.days is None else args.days
    if days <= 0:
        return _fail("--days must be positive")
    out_dir = Path(args.out) if args.out else settings.qr_dir
    try:
        username = bot_username_for_links(settings, args.bot_username)
    except CliError as exc:
        return _fail(str(exc), exc.status)
    tr = Translator.load(settings.locales_dir, settings.default_locale)
    lang = args.lang or settings.default_locale

    #: Per micro-grid: file stem, the shared footer, and (file name, page, token) per building.
    sheets: list[tuple[str, str, list[tuple[str, BuildingPage, str]]]] = []

    def words(footer: str, scan_key: str) -> SheetWords:
        return SheetWords(
            heading=tr.t(lang, "qr.heading"),
            steps=tr.t(lang, "qr.steps", scan=tr.t(lang, scan_key)),
            footer=footer,
        )

    async def caretaker(session: AsyncSession, grid: Grid) -> str:
        workers = await people_with_role(session, grid.id, ROLE_WORKER)
        if workers:
            return tr.t(lang, "qr.worker", name="、".join(await _names(session, workers)))
        for above in [grid, *await ancestors(session, grid)]:
            heads = await people_with_role(session, above.id, ROLE_HEAD)
            if heads:
                return tr.t(lang, "qr.head", name="、".join(await _names(session, heads)))
        return ""

    async def work(session: AsyncSession) -> list[Path]:
        top = await _grid_by_code(session, args.grid)
        stmt = (
            select(Building, Grid)
            .join(Grid, Building.grid_id == Grid.id)
            .where(Grid.path.startswith(top.path, autoescape=True))
            .order_by(Grid.path, Building.code)
        )
        groups: dict[int, tuple[Grid, list[Building]]] = {}
        for building, grid in await session.execute(stmt):
            groups.setdefault(grid.id, (grid, []))[1].append(building)
        if not groups:
            raise CliError(f"no buildings under grid {top.code}")
        key = await signing_key(session, settings)
        expires_at = utcnow() + timedelta(days=days)
        until = expires_at.astimezone(settings.tz).date().isoformat()
        written: list[Path] = []
        for grid, buildings in groups.values():
            community = await session.get(Community, grid.community_id)
            footer = tr.t(
                lang, "qr.footer", community=community.name if community else "", until=until
            )
            looks_after = await caretaker(session, grid)
            pages: list[tuple[str, BuildingPage, str]] = []
            for building in buildings:
                _invite, token = await create_invite(
                    session,
                    key,
                    role=ROLE_RESIDENT,
                    grid_id=grid.id,
                    building_id=building.id,
                    expires_at=expires_at,
                    max_uses=None,
                )
                link = telegram_link(username, token) if username else ""
                page = BuildingPage(building.name, link, looks_after)
                pages.append((building.code, page, token))
            stem = f"sheet-{grid.code}"
            if username:  # without Telegram (WeChat only) there is no t.me sheet
                written += write_sheet(
                    [(name, page) for name, page, _ in pages],
                    words(footer, "qr.scan_telegram"),
                    out_dir,
                    stem,
                )
            sheets.append((stem, footer, pages))
        return written

    try:
        paths = _run(settings, work)
    except CliError as exc:
        return _fail(str(exc))
    if wechat_configured(settings):
        # Stairwell codes never expire on WeChat (QR_LIMIT_STR_SCENE); the invite behind
        # them still does, after --days.
        try:
            for stem, footer, pages in sheets:
                urls = wechat_sheet_urls(settings, [token for _, _, token in pages])
                paths += write_sheet(
                    [
                        (name, replace(page, link=url))
                        for (name, page, _), url in zip(pages, urls, strict=True)
                    ],
                    words(footer, "qr.scan_wechat"),
                    out_dir,
                    f"{stem}-wechat",
                )
        except Exception as exc:  # the invites and Telegram sheets exist
            for done in paths:
                print(done)
            return _fail(f"invites created, but the WeChat QR codes failed: {exc}", EXIT_PARTIAL)
    for path in paths:
        print(path)
    return 0


async def _names(session: AsyncSession, person_ids: list[int]) -> list[str]:
    rows = await session.execute(select(Person.id, Person.name).where(Person.id.in_(person_ids)))
    names: dict[int, str] = {pid: name for pid, name in rows.all()}
    return [names[i] for i in person_ids if i in names]


# --------------------------------------------------------------------------------------------
# invites list | revoke


def invite_status(invite: Invite, now: datetime) -> str:
    """``revoked``, ``expired``, ``used up`` or ``open``: whether the invite still binds."""
    if invite.revoked:
        return "revoked"
    if now >= invite.expires_at:
        return "expired"
    if invite.max_uses is not None and invite.uses >= invite.max_uses:
        return "used up"
    return "open"


def cmd_invites_list(settings: Settings, args: argparse.Namespace) -> int:
    """List invites (open ones unless ``--all``), newest first, optionally under one grid."""
    now = utcnow()

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        stmt = (
            select(Invite, Grid.code, Building.code)
            .join(Grid, Grid.id == Invite.grid_id)
            .outerjoin(Building, Building.id == Invite.building_id)
            .order_by(Invite.id.desc())
        )
        if args.grid:
            top = await _grid_by_code(session, args.grid)
            stmt = stmt.where(Grid.path.startswith(top.path, autoescape=True))
        rows = []
        for invite, grid_code, building_code in await session.execute(stmt):
            status = invite_status(invite, now)
            if status != "open" and not args.all:
                continue
            rows.append(
                {
                    "id": invite.id,
                    "role": invite.role,
                    "grid": grid_code,
                    "building": building_code,
                    "uses": invite.uses,
                    "max_uses": invite.max_uses,
                    "expires_at": invite.expires_at.astimezone(settings.tz).isoformat(),
                    "created_at": invite.created_at.astimezone(settings.tz).isoformat(),
                    "status": status,
                }
            )
        return rows

    try:
        rows = _run(settings, work)
    except CliError as exc:
        return _fail(str(exc), exc.status)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    if not rows:
        print("no open invites" if not args.all else "no invites")
        return 0
    print(f"{'id':>5}  {'role':<8} {'grid':<12} {'building':<10} {'uses':>7}  "
          f"{'valid until':<10}  status")  # fmt: skip
    for r in rows:
        uses = f"{r['uses']}/{'∞' if r['max_uses'] is None else r['max_uses']}"
        print(
            f"{r['id']:>5}  {r['role']:<8} {r['grid']:<12} {r['building'] or '-':<10} "
            f"{uses:>7}  {r['expires_at'][:10]:<10}  {r['status']}"
        )
    return 0


def cmd_invites_revoke(settings: Settings, args: argparse.Namespace) -> int:
    """Revoke invites by id, or every open invite on and under ``--grid``; all or nothing."""
    if not args.ids and not args.grid:
        return _fail("name the invites to revoke (IDs) or --grid CODE", 2)
    now = utcnow()

    async def work(session: AsyncSession) -> tuple[list[int], list[int]]:
        invites: list[Invite] = []
        for invite_id in args.ids:
            invite = await session.get(Invite, invite_id)
            if invite is None:
                raise CliError(f"unknown invite #{invite_id}; nothing was revoked")
            invites.append(invite)
        if args.grid:
            top = await _grid_by_code(session, args.grid)
            stmt = (
                select(Invite)
                .join(Grid, Grid.id == Invite.grid_id)
                .where(Grid.path.startswith(top.path, autoescape=True))
                .order_by(Invite.id)
            )
            invites += [i for i in await session.scalars(stmt) if invite_status(i, now) == "open"]
        revoked, already = [], []
        for invite in invites:
            if invite.revoked:
                already.append(invite.id)
            elif invite.id not in revoked:
                invite.revoked = True
                revoked.append(invite.id)
        await session.flush()
        return revoked, already

    try:
        revoked, already = _run(settings, work)
    except CliError as exc:
        return _fail(str(exc), exc.status)
    if revoked:
        print(f"revoked: {', '.join(f'#{i}' for i in revoked)}")
    if already:
        print(f"already revoked: {', '.join(f'#{i}' for i in already)}")
    if not revoked and not already:
        print("no open invites there: nothing to revoke")
    return 0


# --------------------------------------------------------------------------------------------
# registration


def add_admin_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``import``, ``grids``, ``invite`` and ``qr-sheet`` on the main CLI's subparsers.

    Each sets ``func`` to a sync ``(settings, args) -> int`` handler.
    """
    p = subparsers.add_parser(
        "import",
        help="import community files (YAML tree, or CSV lists of buildings/people)",
        description="Import community files in one transaction: a bad file rejects them all.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="community.yaml, buildings.csv, …")
    p.add_argument(
        "--format", choices=("yaml", "csv"), default=None, help="default: from the file suffix"
    )
    p.set_defaults(func=cmd_import)

    person = subparsers.add_parser(
        "person",
        help="remove someone's roles (open work is handed over)",
        description="A community file is the truth for the people it lists; someone it no "
        "longer lists is kept until removed here.",
    )
    psub = person.add_subparsers(dest="person_command", metavar="ACTION", required=True)
    p = psub.add_parser(
        "remove",
        help="remove a person's roles (all, or one role / grid); their open offers and "
        "orders go back to the grid's worker or head",
    )
    p.add_argument("key", metavar="KEY", help="the person's key in the community file")
    p.add_argument("--role", choices=ROLES, help="only this role")
    p.add_argument("--grid", metavar="CODE", help="only roles on this grid")
    p.set_defaults(func=cmd_person_remove)

    p = subparsers.add_parser("grids", help="show the grid tree with buildings and people")
    p.add_argument("--json", action="store_true", help="print JSON instead of a tree")
    p.set_defaults(func=cmd_grids)

    p = subparsers.add_parser(
        "invite",
        help="create an invite (token, Telegram link, QR code PNG)",
        description="Residents get building-bound invites of unlimited use by default; other "
        "roles single-use ones.",
    )
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--grid", required=True, metavar="CODE", help="grid the role is on")
    p.add_argument("--building", metavar="CODE", help="building (required for residents)")
    uses = p.add_mutually_exclusive_group()
    uses.add_argument("--uses", type=int, metavar="N", help="how many people may use it")
    uses.add_argument("--single", action="store_true", help="one use only")
    p.add_argument("--days", type=int, metavar="D", help="days valid (default: invite_days)")
    p.add_argument("--out", metavar="DIR", help="folder for the PNG (default: qr_dir)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--bot-username",
        metavar="NAME",
        help="Telegram bot username for the link (default: asked from Telegram with the "
        "configured token, and kept in the database)",
    )
    p.set_defaults(func=cmd_invite)

    invites = subparsers.add_parser(
        "invites",
        help="list or revoke invites",
        description="A revoked invite no longer binds: whoever scans it is told, politely.",
    )
    isub = invites.add_subparsers(dest="invites_command", metavar="ACTION", required=True)
    p = isub.add_parser("list", help="open invites, newest first (--all: every invite)")
    p.add_argument("--grid", metavar="CODE", help="only invites on this grid and below")
    p.add_argument("--all", action="store_true", help="also revoked, expired and used up")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_invites_list)
    p = isub.add_parser("revoke", help="revoke invites by id, or all open ones under a grid")
    p.add_argument("ids", nargs="*", type=int, metavar="ID", help="invite numbers (see list)")
    p.add_argument("--grid", metavar="CODE", help="every open invite on this grid and below")
    p.set_defaults(func=cmd_invites_revoke)

    p = subparsers.add_parser(
        "qr-sheet",
        help="print-ready stairwell QR sheets: one resident invite per building, a page each",
    )
    p.add_argument("--grid", required=True, metavar="CODE")
    p.add_argument("--out", metavar="DIR", help="folder for the PNGs and PDFs (default: qr_dir)")
    p.add_argument("--days", type=int, metavar="D", help=f"days valid (default: {SHEET_DAYS})")
    p.add_argument(
        "--bot-username",
        metavar="NAME",
        help="Telegram bot username for the links (default: as for invite)",
    )
    p.add_argument(
        "--lang", choices=("zh_CN", "en"), help="language of the printed words (default locale)"
    )
    p.set_defaults(func=cmd_qr_sheet)
