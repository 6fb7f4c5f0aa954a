"""Message catalogs: every user-facing sentence lives in ``locales/<lang>/LC_MESSAGES/*.po``.

Message ids are symbolic keys (``order.received``); the catalogs hold the sentences, zh_CN first.
Catalogs are read with Babel at start-up (no compile step), and a missing translation falls back
to the default language, then to the key itself so that a gap is visible rather than fatal.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from babel.messages.pofile import read_po

log = logging.getLogger(__name__)

DOMAIN = "gridbot"
SUPPORTED = ("zh_CN", "en")


def normalize_locale(code: str | None, default: str = "zh_CN") -> str:
    """Map a platform language code (``zh-hans``, ``en-US``, ``de``) to a catalog we have."""
    if not code:
        return default
    low = code.replace("-", "_").lower()
    if low.startswith("zh"):
        return "zh_CN"
    if low.startswith("en"):
        return "en"
    return default if default in SUPPORTED else "en"


class Translator:
    """Looks up and formats sentences by key and locale."""

    def __init__(self, catalogs: dict[str, dict[str, str]], default: str = "zh_CN") -> None:
        self.catalogs = catalogs
        self.default = default

    @classmethod
    def load(cls, locales_dir: Path, default: str = "zh_CN") -> Translator:
        """Read every ``<lang>/LC_MESSAGES/gridbot.po`` under ``locales_dir``."""
        catalogs: dict[str, dict[str, str]] = {}
        for po_path in sorted(locales_dir.glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
            lang = po_path.parent.parent.name
            with po_path.open("rb") as fh:
                catalog = read_po(fh, locale=lang)
            catalogs[lang] = {
                str(msg.id): str(msg.string)
                for msg in catalog
                if msg.id and msg.string and not msg.fuzzy
            }
        if default not in catalogs:
            raise FileNotFoundError(f"no {default} catalog under {locales_dir}")
        return cls(catalogs, default)

    def t(self, locale: str | None, key: str, **kwargs: Any) -> str:
        """The sentence ``key`` in ``locale``, formatted with ``kwargs``."""
        lang = locale if locale in self.catalogs else self.default
        text = self.catalogs[lang].get(key) or self.catalogs[self.default].get(key)
        if text is None:
            log.warning("missing message %s", key)
            return key
        return text.format(**kwargs) if kwargs else text

    def has(self, key: str) -> bool:
        """Whether the default catalog knows ``key``."""
        return key in self.catalogs[self.default]

    def all_variants(self, key: str) -> set[str]:
        """The sentence in every language (to recognise a menu label whatever the language)."""
        return {cat[key] for cat in self.catalogs.values() if key in cat}
