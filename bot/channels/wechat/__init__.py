"""The WeChat Official Account (公众号): the only package, with :mod:`bot.channels.wecom`, that
imports ``wechatpy``. One module per part:

- :mod:`~bot.channels.wechat.api`: the HTTP API client (shared access token, calls, media,
  customer-service and template messages, error codes, QR codes);
- :mod:`~bot.channels.wechat.callback`: a callback verified (signature, timestamp, replay,
  XML safety, decryption) and parsed into an :class:`~bot.ports.Inbound`;
- :mod:`~bot.channels.wechat.window`: the push policy (48-hour window and its quota);
- :mod:`~bot.channels.wechat.render`: an Outbound as WeChat text, options and templates;
- :mod:`~bot.channels.wechat.uploads`: media-store files as WeChat media ids;
- :mod:`~bot.channels.wechat.menu`: the account's custom menu;
- :mod:`~bot.channels.wechat.adapter`: the adapter composing them, and its ``build``.
"""

from bot.channels.wechat.adapter import SKIPPED, WeChatChannel, build
from bot.channels.wechat.api import WeChatApi, create_qr
from bot.channels.wechat.callback import sanitize_cdata, signature, to_inbound
from bot.channels.wechat.menu import install_menu, menu_definition
from bot.channels.wechat.render import clip_bytes
from bot.channels.wechat.window import push_kind

__all__ = [
    "SKIPPED",
    "WeChatApi",
    "WeChatChannel",
    "build",
    "clip_bytes",
    "create_qr",
    "install_menu",
    "menu_definition",
    "push_kind",
    "sanitize_cdata",
    "signature",
    "to_inbound",
]
