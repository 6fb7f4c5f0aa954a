"""The platforms Gridbot talks to, in one table: adding a platform is one adapter module and
one row here (plus its settings section and catalog keys).

Each row says when the platform is configured and where its ``build`` function is; the
module is imported only when configured, so an unused platform's library is never loaded.
``build(host)`` makes the adapter from its own settings and what the host gives every adapter
(:class:`~bot.channels.base.ChannelHost`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.channels.base import Adapter, ChannelHost
from bot.config import Settings

if TYPE_CHECKING:  # mypy checks every adapter against the port; nothing is imported at run time
    from bot.channels.memory import MemoryChannel
    from bot.channels.telegram import TelegramChannel
    from bot.channels.webchat import WebChatChannel
    from bot.channels.wechat import WeChatChannel
    from bot.channels.wecom import WeComChannel

    _PORTED: tuple[type[Adapter], ...] = (
        MemoryChannel, WebChatChannel, TelegramChannel, WeChatChannel, WeComChannel
    )


@dataclass(frozen=True)
class AdapterSpec:
    """One platform: its channel name, whether the settings configure it, its builder."""

    name: str
    configured: Callable[[Settings], bool]
    #: ``module:function`` taking a :class:`ChannelHost` and returning the adapter.
    builder: str

    def build(self, host: ChannelHost) -> Adapter:
        module, _, function = self.builder.partition(":")
        make: Callable[[ChannelHost], Adapter] = getattr(importlib.import_module(module), function)
        return make(host)


ADAPTERS: tuple[AdapterSpec, ...] = (
    AdapterSpec("web", lambda s: s.webchat_on, "bot.channels.webchat:build"),
    AdapterSpec("telegram", lambda s: bool(s.telegram_token), "bot.channels.telegram:build"),
    AdapterSpec(
        "wechat", lambda s: bool(s.wechat_appid and s.wechat_token), "bot.channels.wechat:build"
    ),
    AdapterSpec(
        "wecom",
        lambda s: bool(
            s.wecom_corp_id and s.wecom_agent_id is not None and s.wecom_secret
            and s.wecom_token and s.wecom_aes_key
        ),
        "bot.channels.wecom:build",
    ),
)


def configured(settings: Settings) -> list[AdapterSpec]:
    """The platforms the settings configure, in the table's order."""
    return [spec for spec in ADAPTERS if spec.configured(settings)]


def spec_named(name: str) -> AdapterSpec:
    """The table's row for channel ``name``."""
    for spec in ADAPTERS:
        if spec.name == name:
            return spec
    raise LookupError(f"no channel adapter is named {name!r}")
