"""The neutral port between channels and handlers: inbound events and outbound messages.

A channel adapter turns a platform update into an :class:`Inbound` and makes one call into the
core; what the core sends back is an :class:`Outbound` that each adapter renders the best way its
platform can (inline keyboards on Telegram, menus or numbered options on WeChat, HTML buttons in
the local web chat).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

#: Telegram's callback_data limit; every payload fits it on every platform.
MAX_PAYLOAD_BYTES = 64


@dataclass(frozen=True)
class Button:
    """A tappable choice: a label for people and an opaque payload for the server."""

    label: str
    payload: str

    def __post_init__(self) -> None:
        if len(self.payload.encode()) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"button payload longer than {MAX_PAYLOAD_BYTES} bytes")


@dataclass
class Outbound:
    """A message to show a user: text, rows of buttons, an optional photo and reply menu."""

    text: str
    buttons: list[list[Button]] = field(default_factory=list)
    photo: str | None = None
    menu: list[list[str]] | None = None
    remove_menu: bool = False
    ask_location: str | None = None
    #: A file to send after (or instead of) the text: a media-store reference
    #: (``media:<name>.xlsx``) and the file name people see. Platforms that cannot send files
    #: (WeChat) skip a message that carries one.
    document: str | None = None
    document_name: str | None = None
    #: A voice message to send after the text (a media-store reference ``media:<name>.ogg``
    #: or a platform file id); platforms that cannot play it send what they can (a file, or
    #: the text, which says a voice message exists).
    voice: str | None = None
    #: What kind of push this is (``menu``, ``offer``, ``accepted``, ``rate``, ``reminder``):
    #: platforms with push rules (WeChat) pick a template by it, or drop a bare menu.
    kind: str | None = None
    #: A platform that cannot show ``buttons`` and ``menu`` on one message (Telegram) sends
    #: the menu after it on a message with this text; others show both on this message.
    menu_note: str | None = None

    def to_payload(self) -> dict[str, Any]:
        """Serialise for the outbox (JSON)."""
        data: dict[str, Any] = {"text": self.text}
        if self.buttons:
            data["buttons"] = [[[b.label, b.payload] for b in row] for row in self.buttons]
        if self.photo:
            data["photo"] = self.photo
        if self.menu:
            data["menu"] = self.menu
        if self.remove_menu:
            data["remove_menu"] = True
        if self.ask_location:
            data["ask_location"] = self.ask_location
        if self.kind:
            data["kind"] = self.kind
        if self.voice:
            data["voice"] = self.voice
        if self.menu_note:
            data["menu_note"] = self.menu_note
        if self.document:
            data["document"] = self.document
            data["document_name"] = self.document_name or self.document.rsplit(":", 1)[-1]
        return data

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> Outbound:
        """Rebuild from an outbox payload."""
        return cls(
            text=data["text"],
            buttons=[
                [Button(label, payload) for label, payload in row]
                for row in data.get("buttons", [])
            ],
            photo=data.get("photo"),
            menu=data.get("menu"),
            remove_menu=bool(data.get("remove_menu")),
            ask_location=data.get("ask_location"),
            kind=data.get("kind"),
            voice=data.get("voice"),
            menu_note=data.get("menu_note"),
            document=data.get("document"),
            document_name=data.get("document_name"),
        )

    def all_buttons(self) -> list[Button]:
        """Every button, row by row."""
        return [b for row in self.buttons for b in row]


@dataclass
class Inbound:
    """One thing a user did on a platform, in platform-neutral terms.

    ``dedupe_key`` identifies the platform delivery (Telegram ``update_id``, WeChat ``MsgId``);
    the same key twice is handled once. ``button`` is the payload of a pressed button and is
    untrusted user input. ``photo`` is a platform file reference the channel can resolve.
    ``photo_lost`` tells that the user sent a photo that could not be stored (``photo`` is
    then ``None``): the user is told, and the flow goes on without it.
    """

    channel: str
    user_id: str
    chat_id: str
    dedupe_key: str | None = None
    text: str | None = None
    button: str | None = None
    button_message_id: str | None = None
    photo: str | None = None
    location: tuple[float, float] | None = None
    locale: str | None = None
    display_name: str | None = None
    received_at: datetime | None = None
    photo_lost: bool = False
    #: A voice message (a platform file reference, like ``photo``), and whether one was sent
    #: but could not be stored (like ``photo_lost``).
    voice: str | None = None
    voice_lost: bool = False
    #: Written in a group chat (``chat_id`` is the group, not the person): the core answers
    #: there without private data and never makes it the person's chat for pushes.
    group: bool = False


@dataclass
class HandleResult:
    """What the adapter needs after the core handled an event.

    ``toast`` is the short acknowledgement of a button press (Telegram's answerCallbackQuery);
    messages themselves always travel through the outbox.
    """

    toast: str | None = None
    duplicate: bool = False
    outbox_ids: list[int] = field(default_factory=list)


class IntakeUnavailable(Exception):
    """The core could not handle an event for a reason outside it (the database went away,
    timed out or is locked) and stored nothing: the channel must make the platform deliver the
    event again (HTTP 500 to a webhook, no confirmation when polling). The dedupe row, written
    with everything the event causes, makes the second delivery safe."""


#: The one call a channel makes into the core for each inbound event.
Intake = Callable[[Inbound], Awaitable[HandleResult]]
