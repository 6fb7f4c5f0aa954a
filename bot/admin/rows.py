"""Writing rows in place: only what differs is set, so unchanged rows stay clean."""

from __future__ import annotations

from typing import Any


def assign_changed(obj: object, **values: Any) -> bool:
    """Set the attributes that differ; tell whether any did (so unchanged rows stay clean)."""
    changed = False
    for name, value in values.items():
        if getattr(obj, name) != value:
            setattr(obj, name, value)
            changed = True
    return changed
