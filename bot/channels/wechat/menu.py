"""The account's custom menu: its buttons (installed with ``gridbot wechat menu``) and the click
keys that come back as commands."""

from __future__ import annotations

from typing import Any

from bot.channels.wechat.api import WeChatApi
from bot.i18n import Translator

#: Menu click keys and the commands they run (anything else is ignored).
MENU_KEYS = ("order", "myorders", "tasks", "queue", "mygrid", "me", "link", "help")


def menu_definition(tr: Translator, lang: str) -> dict[str, Any]:
    """The account's custom menu: 报事 / 我的工单 (orders, tasks, queue) / 我的网格 (grid,
    my details, link, help). Each click arrives as the matching command."""

    def click(key: str, label_key: str) -> dict[str, str]:
        return {"type": "click", "name": tr.t(lang, label_key), "key": key}

    return {
        "button": [
            click("order", "wechat.menu_order"),
            {
                "name": tr.t(lang, "wechat.menu_orders"),
                "sub_button": [
                    click("myorders", "wechat.menu_myorders"),
                    click("tasks", "wechat.menu_tasks"),
                    click("queue", "wechat.menu_queue"),
                ],
            },
            {
                "name": tr.t(lang, "wechat.menu_grid"),
                "sub_button": [
                    click("mygrid", "wechat.menu_mygrid"),
                    click("me", "wechat.menu_me"),
                    click("link", "wechat.menu_link"),
                    click("help", "wechat.menu_help"),
                ],
            },
        ]
    }


async def install_menu(api: WeChatApi, tr: Translator, lang: str) -> dict[str, Any]:
    """``menu/create`` with :func:`menu_definition`."""
    return await api.call("menu/create", menu_definition(tr, lang))
