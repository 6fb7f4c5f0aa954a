"""The platforms Gridbot talks to, in one table: adding a platform is one adapter module and
one row here (plus its settings section and catalog keys).

Each row says when the platform is configured, where its ``build`` function is, which
settings are its own (their prefix) and when it has callbacks from outside; the module is
imported only when configured, so an unused platform's library is never loaded.
``build(host)`` makes the adapter from its own settings and what the host gives every adapter
(:class:`~bot.channels.base.ChannelHost`). Whatever needs the list of platforms asks this
table: the local web chat's default (:attr:`bot.config.Settings.webchat_on`), the deployment
tests' known settings (:func:`platform_settings`).
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
    #: The prefix of the platform's own fields of :class:`Settings` (its settings section).
    settings_prefix: str
    #: Whether, so configured, the platform calls this server from outside (a webhook, a
    #: callback URL): a proxy then makes the server reachable, so the web chat stays off.
    public_callbacks: Callable[[Settings], bool] = lambda s: False

    def build(self, host: ChannelHost) -> Adapter:
        module, _, function = self.builder.partition(":")
        make: Callable[[ChannelHost], Adapter] = getattr(importlib.import_module(module), function)
        return make(host)


ADAPTERS: tuple[AdapterSpec, ...] = (
    AdapterSpec("web", lambda s: s.webchat_on, "bot.channels.webchat:build", "webchat_"),
    AdapterSpec(
        "telegram",
        lambda s: bool(s.telegram_token),
        "bot.channels.telegram:build",
        "telegram_",
        public_callbacks=lambda s: s.telegram_mode == "webhook" and bool(s.telegram_token),
    ),
    AdapterSpec(
        "wechat",
        lambda s: bool(s.wechat_appid and s.wechat_token),
        "bot.channels.wechat:build",
        "wechat_",
        public_callbacks=lambda s: bool(s.wechat_appid and s.wechat_token),
    ),
    AdapterSpec(
        "wecom",
        lambda s: bool(
            s.wecom_corp_id and s.wecom_agent_id is not None and s.wecom_secret
            and s.wecom_token and s.wecom_aes_key
        ),
        "bot.channels.wecom:build",
        "wecom_",
        public_callbacks=lambda s: bool(s.wecom_corp_id and s.wecom_token),
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


def serves_public_callbacks(settings: Settings) -> bool:
    """Whether any platform, as the settings configure it, calls this server from outside."""
    return any(spec.public_callbacks(settings) for spec in ADAPTERS)


def platform_settings() -> frozenset[str]:
    """The names of every platform's own fields of :class:`Settings` (by each row's prefix)."""
    return frozenset(
        name
        for name in Settings.model_fields
        for spec in ADAPTERS
        if name.startswith(spec.settings_prefix)
    )
