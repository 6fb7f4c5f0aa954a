"""An in-memory channel: the test backend shipped with the package (as errbot does).

It records what the core sends and lets a test act as users (``MemoryUser``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from starlette.routing import BaseRoute

from bot.channels.base import DeliveryError, Limits
from bot.ports import Button, Inbound, Intake, Outbound


@dataclass
class SentMessage:
    """A message as the user currently sees it (edits replace text and buttons)."""

    id: str
    chat_id: str
    message: Outbound
    edits: int = 0
    #: What the message showed before each edit, oldest first.
    history: list[Outbound] = field(default_factory=list)

    @property
    def text(self) -> str:
        """Current text."""
        return self.message.text

    @property
    def buttons(self) -> list[Button]:
        """Current buttons, flattened."""
        return self.message.all_buttons()


@dataclass
class MemoryChannel:
    """Channel that keeps messages in memory; no limits, unless a test sets some."""

    name: str = "memory"
    limits: Limits = field(
        default_factory=lambda: Limits(
            per_chat_interval=0.0, global_per_second=1e9, group_per_minute=10**9
        )
    )
    messages: dict[str, list[SentMessage]] = field(default_factory=dict)
    unreachable: set[str] = field(default_factory=set)
    #: Every delivery in the order it happened: ``("send" | "edit", chat_id, message_id)``.
    log: list[tuple[str, str, str]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    stop_budget: float = 0.5

    def is_group(self, chat_id: str) -> bool:
        """Memory chats are private."""
        return False

    def routes(self) -> list[BaseRoute]:
        """No web routes: tests act as users directly (:class:`MemoryUser`)."""
        return []

    async def claim(self) -> str | None:
        """Nothing to take."""
        return None

    async def start(self) -> None:
        """Nothing to set up."""

    async def stop(self) -> None:
        """Nothing to stop."""

    def banner(self, base_url: str) -> str | None:
        """Nothing to tell an operator."""
        return None

    async def send(self, chat_id: str, message: Outbound) -> str:
        """Record a message."""
        if chat_id in self.unreachable:
            raise DeliveryError("blocked", permanent=True)
        sent = SentMessage(str(next(self._ids)), chat_id, message)
        self.messages.setdefault(chat_id, []).append(sent)
        self.log.append(("send", chat_id, sent.id))
        return sent.id

    async def edit(self, chat_id: str, message_id: str, message: Outbound) -> str:
        """Replace a recorded message."""
        for sent in self.messages.get(chat_id, []):
            if sent.id == message_id:
                sent.history.append(sent.message)
                sent.message = message
                sent.edits += 1
                self.log.append(("edit", chat_id, message_id))
                return message_id
        raise DeliveryError("message to edit not found", permanent=True)

    def user(
        self, intake: Intake, user_id: str, *, name: str = "", locale: str = "zh-hans"
    ) -> MemoryUser:
        """A simulated user of this channel."""
        return MemoryUser(self, intake, user_id, name or user_id, locale)


@dataclass
class MemoryUser:
    """Acts as one person in a private chat with the bot."""

    channel: MemoryChannel
    intake: Intake
    user_id: str
    name: str
    locale: str

    @property
    def chat_id(self) -> str:
        """Private chat id (same as the user id)."""
        return self.user_id

    def _event(self, **kwargs: Any) -> Inbound:
        return Inbound(
            channel=self.channel.name,
            user_id=self.user_id,
            chat_id=self.chat_id,
            dedupe_key=uuid4().hex,
            locale=self.locale,
            display_name=self.name,
            **kwargs,
        )

    async def send(self, text: str) -> str | None:
        """Type a text; return the toast, if any."""
        return (await self.intake(self._event(text=text))).toast

    async def photo(self, ref: str, caption: str | None = None) -> str | None:
        """Send a photo."""
        return (await self.intake(self._event(photo=ref, text=caption))).toast

    async def voice(self, ref: str) -> str | None:
        """Send a voice message."""
        return (await self.intake(self._event(voice=ref))).toast

    async def voice_not_kept(self) -> str | None:
        """Send a voice message the adapter could not keep (its media store failed): the
        core gets the message without it, flagged ``voice_lost``."""
        return (await self.intake(self._event(voice_lost=True))).toast

    async def location(self, lat: float, lon: float) -> str | None:
        """Share a location."""
        return (await self.intake(self._event(location=(lat, lon)))).toast

    async def press_payload(self, payload: str, message_id: str | None = None) -> str | None:
        """Press a button by its raw payload (possibly forged)."""
        return (await self.intake(self._event(button=payload, button_message_id=message_id))).toast

    async def press(self, label_part: str, *, message: SentMessage | None = None) -> str | None:
        """Press the newest button whose label contains ``label_part``."""
        candidates = [message] if message else reversed(self.inbox)
        for sent in candidates:
            for button in sent.buttons:
                if label_part in button.label:
                    return await self.press_payload(button.payload, sent.id)
        raise AssertionError(f"no button {label_part!r} in {self.user_id}'s chat")

    @property
    def inbox(self) -> list[SentMessage]:
        """Everything this user received, oldest first."""
        return self.channel.messages.get(self.chat_id, [])

    def last(self) -> SentMessage:
        """The newest message."""
        assert self.inbox, f"{self.user_id} received nothing"
        return self.inbox[-1]

    def texts(self) -> list[str]:
        """All current texts."""
        return [m.text for m in self.inbox]
