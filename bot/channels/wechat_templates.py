"""WeChat template messages: which template each kind of push uses and what fills its fields.

Kept apart from :mod:`bot.channels.wechat` (no platform library here) so that the settings can
validate ``GRIDBOT_WECHAT_TEMPLATES`` when they are loaded.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Values a template field may name: ``{title}`` (first line), ``{number}`` (order number),
#: ``{text}`` (the rest of the message), ``{time}`` (local time of the push).
TEMPLATE_VALUES = ("title", "number", "text", "time")


@dataclass(frozen=True)
class TemplateSpec:
    """The template of one kind of push: its id and, optionally, what fills each field
    (``{"first": "{title}", "keyword1": "{number}", ...}``); without a mapping the fields are
    ``first`` (title), ``keyword1`` (the rest) and ``remark``."""

    id: str
    fields: Mapping[str, str] | None = None


def template_specs(raw: Mapping[str, Any] | None) -> dict[str, TemplateSpec]:
    """Parse ``GRIDBOT_WECHAT_TEMPLATES``: per kind a template id, or
    ``{"id": ..., "fields": {field: format}}``; raise ``ValueError`` on anything else."""
    specs: dict[str, TemplateSpec] = {}
    for kind, value in (raw or {}).items():
        if isinstance(value, str):
            if value:
                specs[str(kind)] = TemplateSpec(value)
            continue
        if not isinstance(value, Mapping) or not isinstance(value.get("id"), str):
            raise ValueError(
                f"wechat template {kind!r}: a template id or {{'id': ..., 'fields': ...}}"
            )
        unknown = set(value) - {"id", "fields"}
        if unknown:
            raise ValueError(f"wechat template {kind!r}: unknown keys {sorted(unknown)}")
        fields = value.get("fields")
        if fields is not None:
            if not isinstance(fields, Mapping) or not fields:
                raise ValueError(f"wechat template {kind!r}: 'fields' must be a non-empty object")
            for name, fmt in fields.items():
                if not isinstance(name, str) or not isinstance(fmt, str):
                    raise ValueError(f"wechat template {kind!r}: field values must be strings")
                try:
                    named = [f for _, f, _, _ in string.Formatter().parse(fmt) if f is not None]
                except ValueError as err:
                    raise ValueError(f"wechat template {kind!r}.{name}: {err}") from err
                bad = [f for f in named if f not in TEMPLATE_VALUES]
                if bad:
                    raise ValueError(
                        f"wechat template {kind!r}.{name}: unknown {bad}; "
                        f"use {', '.join('{' + v + '}' for v in TEMPLATE_VALUES)}"
                    )
            fields = {str(k): str(v) for k, v in fields.items()}
        specs[str(kind)] = TemplateSpec(str(value["id"]), fields)
    return specs


__all__ = ["TEMPLATE_VALUES", "TemplateSpec", "template_specs"]
