"""Settings from environment variables (``GRIDBOT_*``) and an optional TOML file.

Environment variables win over the file. ``gridbot --help`` lists every setting with its
description, generated from this class, so the two never drift apart.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "GRIDBOT_"


class Settings(BaseSettings):
    """Every setting of the service. Field descriptions are the ``--help`` text."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    database_url: str = Field(
        "sqlite+aiosqlite:///gridbot.db",
        description="Database URL: SQLite (single instance) or postgresql+asyncpg://…",
    )
    telegram_token: str | None = Field(None, description="Telegram bot token; unset = no Telegram")
    telegram_api_url: str = Field(
        "https://api.telegram.org/bot",
        description="Bot API base URL (own telegram-bot-api server, or a test fake)",
    )
    telegram_file_url: str | None = Field(
        None, description="Bot API file base URL (default: derived from the API URL)"
    )
    telegram_mode: Literal["polling", "webhook"] = Field(
        "polling", description="polling (development, one instance) or webhook (production)"
    )
    telegram_webhook_url: str | None = Field(
        None, description="Public https URL of /telegram/webhook, registered at start-up"
    )
    telegram_webhook_secret: str | None = Field(
        None, description="Secret checked against X-Telegram-Bot-Api-Secret-Token"
    )
    web_host: str = Field("127.0.0.1", description="Address of the web server")
    web_port: int = Field(8080, description="Port of the web server")
    webchat_enabled: bool = Field(
        True,
        description="Serve the local web chat at /chat (anyone may pick an identity: "
        "never enable it on a public address)",
    )
    demo: bool = Field(True, description="Load the demo community into an empty database")
    timezone: str = Field("Asia/Shanghai", description="Default time zone of the community")
    default_locale: str = Field("zh_CN", description="Language when the user's is unknown")
    secret_key: str | None = Field(
        None, description="Key that signs invites (default: generated once, kept in the database)"
    )
    invite_days: int = Field(14, description="Days an invite stays valid unless told otherwise")
    max_text_length: int = Field(2000, description="Longest text accepted from a user")
    log_level: str = Field("INFO", description="Logging level")
    locales_dir: Path = Field(
        Path(__file__).resolve().parent.parent / "locales",
        description="Folder of the message catalogs",
    )
    qr_dir: Path = Field(Path("qr"), description="Folder where QR code PNGs are written")
    media_dir: Path = Field(
        Path("media"), description="Folder for photos sent through the local web chat"
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        ZoneInfo(value)
        return value

    @property
    def tz(self) -> ZoneInfo:
        """The configured time zone."""
        return ZoneInfo(self.timezone)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from an optional TOML file, then the environment, then ``overrides``."""
    path = config_file or os.environ.get(f"{ENV_PREFIX}CONFIG")
    file_values: dict[str, Any] = {}
    if path:
        with open(path, "rb") as fh:
            file_values = tomllib.load(fh)
    # Values from the environment must beat the file: drop file keys the environment sets.
    file_values = {
        k: v for k, v in file_values.items() if f"{ENV_PREFIX}{k}".upper() not in os.environ
    }
    unknown = set(file_values) - set(Settings.model_fields)
    if unknown:
        raise ValueError(f"unknown settings in {path}: {', '.join(sorted(unknown))}")
    return Settings(**{**file_values, **overrides})


def settings_help() -> str:
    """One line per setting, for ``gridbot --help``."""
    lines = []
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "" if default is None else f" [default: {default}]"
        lines.append(f"  {ENV_PREFIX}{name.upper():<26} {field.description}{shown}")
    lines.append(
        f"  {ENV_PREFIX}CONFIG{'':<20} Optional TOML file with the same keys in lower case"
    )
    return "\n".join(lines)
