"""An :class:`~bot.ports.Outbound` as WeChat shows it: texts cut to WeChat's size, buttons as
numbered options ("回复 1 接单", or a ``msgmenu``), template messages' fields.

The options are remembered per user (``offered_choices``); a reply "1" (or a msgmenu tap's
``bizmsgmenuid``) comes back as the same neutral button payload (:meth:`Renderer.choice`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channels.wechat.callback import CHANNEL
from bot.config import TemplateSpec
from bot.i18n import Translator
from bot.ports import Outbound
from models import Identity, OfferedChoices

#: WeChat refuses texts over 2048 bytes (passive and customer-service alike).
TEXT_LIMIT_BYTES = 2000
#: Numbered options remembered per user; numbering starts again after the user's next message.
OPTION_LIMIT = 40
#: Longest value put into one template field (bytes).
TEMPLATE_FIELD_BYTES = 600


def clip_bytes(value: str, limit: int = TEXT_LIMIT_BYTES) -> str:
    """Shorten to at most ``limit`` UTF-8 bytes, marking a cut with an ellipsis."""
    data = value.encode()
    if len(data) <= limit:
        return value
    return data[: limit - 3].decode(errors="ignore") + "…"


@dataclass
class Rendered:
    """A message as WeChat text: the whole ``text``; its ``head`` and numbered ``options``
    apart (for a msgmenu)."""

    text: str
    head: str
    options: list[tuple[int, str]]


def msgmenu(rendered: Rendered) -> dict[str, Any]:
    """The ``msgmenu`` of a customer-service message: the head and one line per option."""
    return {
        "head_content": clip_bytes(rendered.head, 1000),
        "list": [{"id": str(n), "content": label[:30]} for n, label in rendered.options],
        "tail_content": "",
    }


def template_data(
    rendered: Rendered, template: TemplateSpec, remark: str, number: str, time: str
) -> dict[str, dict[str, str]]:
    """A template message's fields: by default ``first`` (the first line), ``keyword1`` (the
    rest) and ``remark``; else the template's own fields, formatted with ``{title}``,
    ``{text}``, ``{number}`` (the order's) and ``{time}``."""
    first, _, rest = rendered.text.partition("\n")
    if template.fields is None:
        return {
            "first": {"value": clip_bytes(first, 200)},
            "keyword1": {"value": clip_bytes(rest.strip() or first, 600)},
            "remark": {"value": remark},
        }
    values = {
        "title": first.strip(),
        "text": rest.strip() or first.strip(),
        "number": number,
        "time": time,
    }
    return {
        name: {"value": clip_bytes(fmt.format(**values), TEMPLATE_FIELD_BYTES)}
        for name, fmt in template.fields.items()
    }


class Renderer:
    """Renders messages for one account and remembers the options it numbered."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        tr: Translator,
        clock: Callable[[], datetime],
    ) -> None:
        self.sessionmaker = sessionmaker
        self.tr = tr
        self.clock = clock

    async def render(
        self,
        identity: Identity | None,
        message: Outbound,
        lang: str,
        *,
        photo_sent: bool = False,
    ) -> Rendered:
        """The text with numbered options; the options are remembered for the user's reply.

        Numbers continue across messages until the user writes again, so that "3" still
        means the third option shown since their last message. A photo that does not go out
        as an image (``photo_sent``) is at least mentioned."""
        options: list[tuple[str, str | None]] = [
            (b.label, b.payload) for b in message.all_buttons()
        ]
        if message.ask_location:
            options += [(label, None) for row in message.menu or [] for label in row]
        head = message.text
        if message.photo and not photo_sent:
            note = self.tr.t(lang, "card.has_photo")
            if note not in head:
                head = f"{head}\n{note}" if head.strip() else note
        if not options:
            text_out = head
            if message.ask_location:
                text_out += "\n\n" + self.tr.t(lang, "wechat.send_location")
            return Rendered(text_out, head, [])
        first = 1
        if identity is not None:
            now = self.clock()
            async with self.sessionmaker() as session, session.begin():
                stored = await session.get(OfferedChoices, identity.id, with_for_update=True)
                fresh = await session.get(Identity, identity.id, populate_existing=True)
                last_in = fresh.last_inbound_at if fresh else None
                old: list[Any] = []
                if stored is not None and (last_in is None or stored.created_at >= last_in):
                    old = list(stored.options)
                if len(old) + len(options) > OPTION_LIMIT:
                    old = []
                first = len(old) + 1
                value = old + [[label, payload] for label, payload in options]
                if stored is None:
                    session.add(
                        OfferedChoices(identity_id=identity.id, options=value, created_at=now)
                    )
                else:
                    stored.options, stored.created_at = value, now
        numbered = [(first + i, label) for i, (label, _) in enumerate(options)]
        lines = [head, ""] + [
            self.tr.t(lang, "wechat.option", number=str(n), label=label) for n, label in numbered
        ]
        if message.ask_location:
            lines.append(self.tr.t(lang, "wechat.send_location"))
        return Rendered("\n".join(lines), head, numbered)

    async def choice(
        self, openid: str, text_in: str, menu_id: Any
    ) -> tuple[str | None, str | None]:
        """A reply that is just the number of an offered option (or a msgmenu tap) becomes
        that option: its button payload, or its label as text (location-step keys). Returns
        (button, text)."""
        raw = str(menu_id).strip() if menu_id else text_in.strip()
        if not raw.isdigit() or len(raw) > 3:
            return None, text_in
        number = int(raw)
        async with self.sessionmaker() as session:
            choices = await session.scalar(
                select(OfferedChoices)
                .join(Identity, Identity.id == OfferedChoices.identity_id)
                .where(Identity.channel == CHANNEL, Identity.external_id == openid)
            )
        options = list(choices.options) if choices is not None else []
        if not 1 <= number <= len(options):
            return None, text_in
        label, payload = options[number - 1]
        if payload:
            return str(payload), None
        return None, str(label)
