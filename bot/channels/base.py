"""The channel port: what the delivery worker needs from every platform adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot.ports import Outbound


@dataclass(frozen=True)
class Limits:
    """A platform's sending limits, applied by the delivery worker.

    ``per_chat_interval``: seconds between two messages to one chat; ``global_per_second``: all
    chats together; ``group_per_minute``: messages per minute to one group chat;
    ``max_in_flight``: requests to the platform at once (more only queue in the HTTP client's
    pool, whose bookkeeping grows with every connection it keeps).
    """

    per_chat_interval: float = 1.0
    global_per_second: float = 30.0
    group_per_minute: int = 20
    max_in_flight: int = 16


class DeliveryError(Exception):
    """Sending failed; ``permanent`` errors are not retried (blocked bot, unknown chat)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class RetryAfter(DeliveryError):
    """The platform asked us to wait ``seconds`` before sending again (HTTP 429)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"retry after {seconds}s")
        self.seconds = seconds


class Unreachable(DeliveryError):
    """The person cannot be reached by push on this channel now (WeChat: outside the 48-hour
    window with no template for this kind of message, or unsubscribed). Permanent; the
    deliverer hands the row to its ``on_unreachable`` hook so that somebody is told."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


class Channel(Protocol):
    """A platform adapter as the delivery worker sees it."""

    name: str
    limits: Limits

    def is_group(self, chat_id: str) -> bool:
        """Whether a chat is a group (group limits apply)."""
        ...

    async def send(self, chat_id: str, message: Outbound) -> str:
        """Send a message; return the platform's message id."""
        ...

    async def edit(self, chat_id: str, message_id: str, message: Outbound) -> str:
        """Replace a sent message (or send a new one where the platform cannot edit)."""
        ...
