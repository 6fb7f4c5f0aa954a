"""``gridbot``: run the service and administer communities from the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from bot.admin.cli_admin import add_admin_commands
from bot.admin.cli_clocks import add_clock_commands
from bot.admin.cli_duties import add_duty_commands
from bot.admin.cli_points import add_points_commands
from bot.admin.cli_report import add_report_commands
from bot.admin.cli_wechat import add_wechat_commands
from bot.config import Settings, load_settings, settings_help


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from bot.app import Gridbot

    asyncio.run(Gridbot(settings).serve())
    return 0


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from models.db import make_engine, upgrade

    async def go() -> None:
        engine = make_engine(settings.database_url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(go())
    print("database schema is up to date")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with every setting listed in ``--help``."""
    parser = argparse.ArgumentParser(
        prog="gridbot",
        description="Gridbot: residents' orders, dispatch and duties for community grids.",
        epilog="Settings (environment variables):\n" + settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="TOML settings file (also GRIDBOT_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the service (web chat, Telegram, delivery)")
    run.set_defaults(func=_run)
    migrate = sub.add_parser("migrate", help="create or upgrade the database schema")
    migrate.set_defaults(func=_migrate)
    add_admin_commands(sub)
    add_wechat_commands(sub)
    add_duty_commands(sub)
    add_clock_commands(sub)
    add_points_commands(sub)
    add_report_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gridbot`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        settings = load_settings(args.config)
    except Exception as err:  # a bad setting is the operator's to fix: say which
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request URL at INFO, and Telegram's URLs carry the bot token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    result: int = args.func(settings, args)
    return result


if __name__ == "__main__":
    sys.exit(main())
