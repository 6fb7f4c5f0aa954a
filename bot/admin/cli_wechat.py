"""WeChat subcommands of the ``gridbot`` command line, and the WeChat QR code of an invite.

``gridbot wechat menu`` installs the account's custom menu (报事 / 我的工单 / 我的网格);
``gridbot invite`` calls :func:`wechat_qr` and ``gridbot qr-sheet`` :func:`wechat_sheet_urls`
when WeChat is configured, so the printed codes open the Official Account with the invite as
their ``scene_str``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from bot.config import Settings
from bot.i18n import Translator
from bot.printing.qr import qr_png
from models.db import make_engine, make_sessionmaker, upgrade

_T = TypeVar("_T")


def wechat_configured(settings: Settings) -> bool:
    """Whether the WeChat API can be called (AppID and AppSecret are set)."""
    return bool(settings.wechat_appid and settings.wechat_secret)


def _with_api(settings: Settings, work: Callable[[Any], Awaitable[_T]]) -> _T:
    """Run ``work(api)`` with a WeChat API client sharing the service's token cache."""
    from bot.channels.wechat import WeChatApi

    async def main() -> _T:
        engine = make_engine(settings.database_url)
        assert settings.wechat_appid and settings.wechat_secret
        api = WeChatApi(
            settings.wechat_appid,
            settings.wechat_secret,
            make_sessionmaker(engine),
            base_url=settings.wechat_api_url,
        )
        try:
            await upgrade(engine)
            return await work(api)
        finally:
            await api.close()
            await engine.dispose()

    return asyncio.run(main())


def wechat_qr(
    settings: Settings,
    token: str,
    *,
    permanent: bool,
    days: float,
    png_path: Path,
    caption: str | None = None,
) -> dict[str, Any]:
    """Create the parametric QR code of an invite (``scene_str`` = the invite token) and
    write it as a PNG. Stairwell codes (multi-use resident invites) are permanent; others
    temporary (WeChat keeps those at most 30 days)."""
    from bot.channels.wechat import create_qr

    expire = None if permanent else int(days * 86400)
    answer = _with_api(settings, lambda api: create_qr(api, token, expire))
    url = str(answer["url"])
    qr_png(url, png_path, caption)
    return {
        "wechat_qr_url": url,
        "wechat_ticket": answer.get("ticket"),
        "wechat_qr_image": "https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket="
        + str(answer.get("ticket", "")),
        "wechat_qr_png": str(png_path),
        "wechat_expire_seconds": answer.get("expire_seconds"),
    }


def wechat_sheet_urls(settings: Settings, tokens: list[str]) -> list[str]:
    """Permanent parametric QR codes (``QR_LIMIT_STR_SCENE``, ``scene_str`` = the invite
    token) for stairwell sheets, one API session for all; their URLs, in order."""
    from bot.channels.wechat import create_qr

    async def work(api: Any) -> list[str]:
        return [str((await create_qr(api, token, None))["url"]) for token in tokens]

    return _with_api(settings, work)


def cmd_wechat_menu(settings: Settings, args: argparse.Namespace) -> int:
    """Install the account's custom menu."""
    from bot.channels.base import DeliveryError
    from bot.channels.wechat import install_menu, menu_definition

    if not wechat_configured(settings):
        print("error: set GRIDBOT_WECHAT_APPID and GRIDBOT_WECHAT_SECRET", file=sys.stderr)
        return 1
    tr = Translator.load(settings.locales_dir, settings.default_locale)
    lang = args.lang or settings.default_locale
    if args.dry_run:
        import json

        print(json.dumps(menu_definition(tr, lang), ensure_ascii=False, indent=2))
        return 0
    try:
        _with_api(settings, lambda api: install_menu(api, tr, lang))
    except DeliveryError as err:
        print(f"error: WeChat refused the menu: {err}", file=sys.stderr)
        return 1
    print("WeChat menu installed")
    return 0


def add_wechat_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``wechat menu`` on the main CLI's subparsers."""
    wechat = subparsers.add_parser("wechat", help="WeChat Official Account administration")
    sub = wechat.add_subparsers(dest="wechat_command", metavar="ACTION")
    menu = sub.add_parser("menu", help="install the account menu (报事 / 我的工单 / 我的网格)")
    menu.add_argument("--lang", choices=("zh_CN", "en"), help="menu language (default locale)")
    menu.add_argument("--dry-run", action="store_true", help="print the menu JSON only")
    menu.set_defaults(func=cmd_wechat_menu)
