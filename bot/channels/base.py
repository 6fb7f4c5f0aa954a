"""The channel port: what the delivery worker needs from every platform adapter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from bot.ports import Intake, Outbound

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
    from starlette.routing import BaseRoute

    from bot.config import Settings
    from bot.i18n import Translator
    from bot.media import MediaStore
    from models import Identity, OutboxMessage



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


class Adapter(Channel, Protocol):
    """A platform adapter as the composition root (:mod:`bot.app`) sees it: the deliverer's
    :class:`Channel` plus a lifecycle and the adapter's own web routes. The root holds a list
    of them, built by :mod:`bot.channels.registry`, and treats every one the same way."""

    #: Seconds :meth:`stop` may take before the service leaves it behind.
    stop_budget: float

    def routes(self) -> list[BaseRoute]:
        """The adapter's web routes (webhooks, pages), mounted on the service's one server."""
        ...

    async def claim(self) -> str | None:
        """Take what this adapter needs for itself alone before it starts (a polling lease);
        return why it must not run here (the service then exits), or ``None``."""
        ...

    async def start(self) -> None:
        """Set-up calls to the platform. Safe to call again after it raised: the service
        retries it with back-off while everything else serves, and holds the channel's
        outbox rows meanwhile."""
        ...

    async def stop(self) -> None:
        """Stop; release what :meth:`claim` took."""
        ...

    def banner(self, base_url: str) -> str | None:
        """One line for the operator when the service is up (where to point the platform)."""
        ...


@runtime_checkable
class RowSender(Protocol):
    """An adapter with push rules that needs the outbox row itself (its kind, ref and person),
    not only the message: the deliverer hands it the row instead of calling ``send``."""

    async def deliver_row(self, row: OutboxMessage, message: Outbound) -> str:
        """Send the row's message by the platform's rules; the platform's message id."""
        ...


@runtime_checkable
class PushPolicy(Protocol):
    """An adapter whose pushes depend on when the person last wrote (WeChat's 48-hour
    window with its quota); the intake calls it in the transaction that stores a message."""

    def on_inbound(self, identity: Identity, now: datetime) -> None:
        """A message from ``identity`` is being stored at ``now``."""
        ...


@dataclass(frozen=True)
class ChannelHost:
    """What the composition root gives every adapter it builds."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    tr: Translator
    intake: Intake
    media: MediaStore
    clock: Callable[[], datetime]
    #: This process as the holder of leases and claims (``host:pid:start:nonce``).
    holder: str
    #: The deliverer, for adapters that answer within the platform's HTTP response (WeChat's
    #: passive reply) and must hold and release a chat's outbox rows.
    deliverer: ChatHold


class ChatHold(Protocol):
    """The deliverer as an adapter with passive replies sees it."""

    def hold(self, channel: str, chat_id: str) -> None: ...

    def release(self, channel: str, chat_id: str) -> None: ...

    async def claim_for_passive(self, ids: list[int]) -> list[int]: ...
