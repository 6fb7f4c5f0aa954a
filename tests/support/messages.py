"""Finding a message in what a channel sent (one predicate, not a copy per test module)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Sent(Protocol):
    """A message a fake platform server recorded (``tests/fakes``): its text, if any, and id."""

    @property
    def text(self) -> str | None: ...

    @property
    def message_id(self) -> int: ...


def has(part: str, after: int = 0) -> Callable[[Sent], bool]:
    """A predicate for ``wait_for`` and friends: a text message holding ``part``, newer than
    the message ``after`` (default: any)."""
    return lambda m: m.text is not None and part in m.text and m.message_id > after

