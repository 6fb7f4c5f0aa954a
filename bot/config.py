"""Settings from environment variables (``GRIDBOT_*``) and an optional TOML file.

Environment variables win over the file. ``gridbot --help`` lists every setting with its
description, generated from this class, so the two never drift apart.
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import os
import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field, field_validator
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "GRIDBOT_"
#: Shortest Open311 API key accepted (a key is a password the city system sends).
OPEN311_KEY_MIN = 16


def _read_only() -> list[Literal["read", "post"]]:
    return ["read"]


class Open311Key(BaseModel):
    """What one Open311 API key is: the client's name and what it may do."""

    name: str = Field(min_length=1, max_length=64)
    can: list[Literal["read", "post"]] = Field(default_factory=_read_only)


def installed_locales() -> Path:
    """The catalogs shipped with the code: the ``locales`` package's folder, in a checkout or
    in site-packages alike."""
    return Path(str(importlib.resources.files("locales")))


def state_dir() -> Path:
    """Where the service keeps files it writes, unless told otherwise: systemd's
    ``$STATE_DIRECTORY`` (the unit's ``StateDirectory=``, e.g. ``/var/lib/gridbot``; the first
    one when several are given), else the working directory."""
    first = os.environ.get("STATE_DIRECTORY", "").split(":", 1)[0].strip()
    return Path(first) if first else Path()


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
    telegram_connections: int = Field(
        12,
        ge=5,
        le=20,
        description="Bot API requests at once (sends, button answers, photo downloads); "
        "the delivery worker sends on all but 4 of them. Raise for a slow link.",
    )
    web_host: str = Field("127.0.0.1", description="Address of the web server")
    web_port: int = Field(8080, description="Port of the web server")
    webchat_enabled: bool | None = Field(
        None,
        description="Serve the local web chat at /chat, where anyone may act as anyone: "
        "only on a loopback web host (refused otherwise). Unset: on with the demo on a "
        "loopback host when no Telegram webhook or WeChat callback is served, else off",
    )
    demo: bool = Field(True, description="Load the demo community into an empty database")
    console_enabled: bool | None = Field(
        None,
        description="Serve the web console at /console/ (heads and admins sign in with a "
        "one-time link they ask for with /console in chat). Unset: on with the demo, else off; "
        "in production serve it behind TLS (GRIDBOT_PUBLIC_URL=https://…)",
    )
    public_url: str | None = Field(
        None,
        description="Public base URL of the web server (https://grid.example.org): the "
        "console's sign-in links start with it (default: http://<web host>:<web port>)",
    )
    console_idle_minutes: int = Field(
        30, ge=1, le=24 * 60, description="A console session ends after this many idle minutes"
    )
    console_report_seconds: int = Field(
        300, ge=30, le=24 * 3600,
        description="The console's overview reports of this month are recomputed in the "
        "background (by the scheduler's leader) when older than this many seconds",
    )
    console_report_batch: int = Field(
        40, ge=1, le=10_000,
        description="Overview reports computed at most per background run (the top grids and "
        "the recently viewed first; the rest at the next run)",
    )
    console_report_wait_ms: int = Field(
        100, ge=0, le=60_000,
        description="An overview with no kept report waits this long for it before it shows "
        "what it has and says the figures are being computed; only when it is expected in "
        "time (its last computation of any month was as quick; never computed: a subtree of "
        "fewer than 50 grids), else it answers at once and computes after the page",
    )
    demo_duties: bool = Field(
        True, description="With the demo community, also load its demo patrol and visit plans"
    )
    timezone: str = Field("Asia/Shanghai", description="Default time zone of the community")
    default_locale: str = Field("zh_CN", description="Language when the user's is unknown")
    secret_key: str | None = Field(
        None, description="Key that signs invites (default: generated once, kept in the database)"
    )
    invite_days: int = Field(14, description="Days an invite stays valid unless told otherwise")
    max_text_length: int = Field(2000, description="Longest text accepted from a user")
    duplicate_window_minutes: int = Field(
        120,
        ge=0,
        description="A resident submitting an order like one of theirs still open (same category"
        " and building) within this many minutes is asked whether it is the same thing first"
        " (0: never asked)",
    )
    log_level: str = Field("INFO", description="Logging level")
    locales_dir: Path = Field(
        default_factory=installed_locales,
        description="Folder of the message catalogs (default: those installed with the code)",
    )
    qr_dir: Path = Field(
        default_factory=lambda: state_dir() / "qr",
        description="Folder where QR code PNGs are written "
        "(default: qr/ under $STATE_DIRECTORY, else under the working directory)",
    )
    media_dir: Path = Field(
        default_factory=lambda: state_dir() / "media",
        description="Folder for photos residents and members send, on every platform "
        "(default: media/ under $STATE_DIRECTORY, else under the working directory)",
    )

    wechat_appid: str | None = Field(
        None, description="WeChat Official Account AppID; with the token it enables WeChat"
    )
    wechat_secret: str | None = Field(None, description="WeChat Official Account AppSecret")
    wechat_token: str | None = Field(
        None, description="Token entered in the WeChat admin console (signs callbacks)"
    )
    wechat_aes_key: str | None = Field(
        None, description="EncodingAESKey (43 characters): set it to use safe (AES) mode"
    )
    wechat_api_url: str = Field(
        "https://api.weixin.qq.com", description="WeChat API base URL (a test fake, a proxy)"
    )
    wechat_reply_deadline: float = Field(
        4.0, description="Seconds to wait for the handler before answering WeChat 'success'"
    )
    wechat_timestamp_skew: int = Field(
        300, description="Seconds a WeChat callback's timestamp may differ from our clock"
    )
    wechat_push_quota: int = Field(
        5, description="Customer-service messages allowed per user per 48-hour window"
    )
    wechat_msgmenu: bool = Field(
        False, description="Send choices as tappable msgmenu messages (else numbered text)"
    )
    wechat_templates: dict[str, str | dict[str, Any]] = Field(
        {},
        description="Template per push kind outside the 48-hour window, JSON: "
        '{"offer": "…", "accepted": "…", "rate": "…", "reminder": "…", "other": "…"}; '
        'a kind may also be {"id": "…", "fields": {"first": "{title}", "keyword1": '
        '"{number}", "keyword2": "{time}", "remark": "{text}"}}',
    )

    # ---- 企业微信 (WeCom): one self-built app (自建应用) of one corp ----
    wecom_corp_id: str | None = Field(
        None, description="WeCom corp ID (企业ID); with the agent id, secret, token and AES "
        "key it enables WeCom"
    )
    wecom_agent_id: int | None = Field(None, description="WeCom app AgentId (应用 AgentId)")
    wecom_secret: str | None = Field(None, description="WeCom app Secret (应用 Secret)")
    wecom_token: str | None = Field(
        None, description="Token of the app's 接收消息 settings (signs callbacks)"
    )
    wecom_aes_key: str | None = Field(
        None, description="EncodingAESKey of the app's 接收消息 settings (43 characters)"
    )
    wecom_api_url: str = Field(
        "https://qyapi.weixin.qq.com/cgi-bin",
        description="WeCom API base URL, up to /cgi-bin (a test fake, a proxy)",
    )

    # ---- duties and timers (issue 4) ----
    scheduler_enabled: bool = Field(
        True, description="Run the duty scheduler (one per database; others wait or are refused)"
    )
    scheduler_misfire_grace: int = Field(
        6 * 3600,
        description="Seconds a reminder missed while the service was down may still fire "
        "(once) after a restart; later than that it is logged and recorded as skipped",
    )
    scheduler_lease_seconds: int = Field(
        30, description="Scheduler lease length; the leader renews it every third of it"
    )
    scheduler_sweep_seconds: int = Field(
        60, description="Seconds between sweeps of order clocks, patrol deadlines, whistles"
    )
    scheduler_concurrency: int = Field(8, description="Duty jobs run at the same time at most")
    scheduler_batch: int = Field(
        25, description="Reminders written per transaction in a burst (the loop yields between)"
    )
    quiet_hours: str = Field(
        "22:00-07:00", description="Default quiet hours (non-urgent pushes wait), HH:MM-HH:MM"
    )
    order_dispatch_minutes: int = Field(
        30, description="Order not dispatched in this many minutes: broadcast automatically"
    )
    order_accept_minutes: int = Field(
        60, description="Order not accepted in this many minutes: escalate one level"
    )
    order_overdue_escalate_minutes: int = Field(
        120, description="Minutes after the deadline reminder before an order is escalated"
    )
    order_rate_days: int = Field(7, description="Days a done order waits for a rating")
    whistle_remind_minutes: int = Field(
        10, description="Minutes before unanswered people of a whistle are reminded (once)"
    )
    digest_time: str = Field("18:00", description="Local time of the daily digest to grid heads")
    month_end_days: int = Field(
        3, description="Days before month end when owed visits are pre-reminded (月末预提醒)"
    )

    # ---- Open311 GeoReport v2 (the city platform) ----
    open311_keys: dict[str, Open311Key] = Field(
        {},
        description="Open311 API keys, JSON: "
        '{"<key>": {"name": "12345", "can": ["read", "post"]}}; the name is the client '
        "(city ids are unique per client)",
    )
    open311_public_read: bool = Field(
        False, description="Let anyone read /open311/v2 services and requests without a key"
    )
    open311_radius_m: float = Field(
        300.0,
        gt=0,
        description="A city request's lat/long goes to the nearest building with coordinates "
        "within this many metres (else to the top of the tree)",
    )

    @field_validator("open311_keys")
    @classmethod
    def _long_keys(cls, value: dict[str, Open311Key]) -> dict[str, Open311Key]:
        short = [client.name for key, client in value.items() if len(key) < OPEN311_KEY_MIN]
        if short:
            raise ValueError(
                f"Open311 keys must be at least {OPEN311_KEY_MIN} characters "
                f"(too short: the key of {', '.join(sorted(short))})"
            )
        return value

    # ---- points (积分) ----
    points_rating_bonus: int = Field(
        5, ge=0, le=1000, description="Points for the member when the resident rates 4-5 stars"
    )
    points_visit: int = Field(
        3, ge=0, le=1000, description="Points for a visit logged (once per plan and local day)"
    )
    points_patrol: int = Field(
        2, ge=0, le=1000, description="Points for a patrol checked in by its deadline"
    )
    points_whistle: int = Field(
        2, ge=0, le=1000, description="Points for answering a whistle with 报到 (once per whistle)"
    )

    demo_history: bool = Field(
        True,
        description="With the demo community, an invented month of orders before the current"
        " one (so reports and /bulletin have figures)",
    )
    bulletin_time: str = Field(
        "09:00", description="Local time of the monthly bulletin (月初通报) on the 1st"
    )
    bulletin_weights: dict[str, float] = Field(
        {"response": 30.0, "resolution": 35.0, "satisfaction": 35.0},
        description="Weights of the grid score, JSON: response, resolution, satisfaction,"
        " on_time_completion, completion, on_time_acceptance",
    )
    bulletin_floors: dict[str, float] = Field(
        {"satisfaction": 85.0, "on_time_completion": 90.0},
        description="Floors in percent, JSON: grids below one are named in the bulletin",
    )
    exit_idle_months: int = Field(
        3, description="Exit list: members with no completed order in this many months"
    )
    exit_min_rating: float = Field(
        3.0, description="Exit list: members whose mean rating (same months) is below this"
    )

    @field_validator("bulletin_time")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        hours, _, minutes = value.partition(":")
        if not (hours.isdigit() and minutes.isdigit() and int(hours) < 24 and int(minutes) < 60):
            raise ValueError(f"bulletin_time must be HH:MM, not {value!r}")
        return value

    @field_validator("bulletin_weights", "bulletin_floors")
    @classmethod
    def _known_rates(cls, value: dict[str, float]) -> dict[str, float]:
        from bot.reports.kpi import RATE_NAMES

        unknown = set(value) - set(RATE_NAMES)
        if unknown:
            raise ValueError(
                f"unknown rate {', '.join(sorted(unknown))}; known: {', '.join(RATE_NAMES)}"
            )
        if any(v < 0 for v in value.values()):
            raise ValueError("weights and floors cannot be negative")
        return value

    @field_validator("wechat_templates")
    @classmethod
    def _template_shapes(
        cls, value: dict[str, str | dict[str, Any]]
    ) -> dict[str, str | dict[str, Any]]:
        if value:
            template_specs(value)  # raises ValueError on an unknown field value or shape
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        ZoneInfo(value)
        return value

    @property
    def tz(self) -> ZoneInfo:
        """The configured time zone."""
        return ZoneInfo(self.timezone)

    @property
    def webchat_on(self) -> bool:
        """Whether ``gridbot run`` serves the local web chat.

        ``webchat_enabled`` when set; unset, only the local demo gets it: the demo community on
        a loopback web host that serves no platform callback (a Telegram webhook, WeChat, WeCom:
        each platform's row in :mod:`bot.channels.registry` says when it has one, which means
        a proxy makes this server reachable from outside). :meth:`webchat_refusal` says why an
        enabled web chat may not run.
        """
        if self.webchat_enabled is not None:
            return self.webchat_enabled
        # The table of platforms imports this module (and no adapter: those it imports only
        # when they are built), hence here rather than at the top.
        from bot.channels.registry import serves_public_callbacks

        return self.demo and is_loopback(self.web_host) and not serves_public_callbacks(self)

    @property
    def console_on(self) -> bool:
        """Whether the web console is served: ``console_enabled`` when set, else with the demo."""
        return self.demo if self.console_enabled is None else self.console_enabled

    @property
    def base_url(self) -> str:
        """Where the web server is reached from outside (no trailing slash)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.web_host if ":" not in self.web_host else f"[{self.web_host}]"
        return f"http://{host}:{self.web_port}"

    def webchat_refusal(self) -> str | None:
        """Why the web chat may not be served with these settings, or ``None``: it lets
        anyone act as anyone, so it is refused on a web host that is not loopback."""
        if self.webchat_on and not is_loopback(self.web_host):
            return (
                f"GRIDBOT_WEBCHAT_ENABLED is true but GRIDBOT_WEB_HOST={self.web_host} is not "
                "a loopback address: the local web chat lets anyone act as anyone, so it is "
                "only served on 127.0.0.1, ::1 or localhost. Set GRIDBOT_WEBCHAT_ENABLED=false "
                "(production) or GRIDBOT_WEB_HOST=127.0.0.1."
            )
        return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only listens on this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


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
    settings = Settings(**{**file_values, **overrides})
    refuse_placeholders(settings)
    return settings


#: Values the shipped examples use for "fill this in" (``CHANGE_ME``), and their like.
PLACEHOLDER_RE = re.compile(
    r"change[\s_-]*me|replace[\s_-]*me|fill[\s_-]*me[\s_-]*in|your[_-](?:token|secret|key)",
    re.IGNORECASE,
)


class PlaceholderError(ValueError):
    """A setting still holds an example's placeholder; the message names the setting."""


def refuse_placeholders(settings: Settings) -> None:
    """Refuse settings that still hold a placeholder such as ``CHANGE_ME`` (anywhere in the
    value, e.g. a password inside the database URL): the service would run with a guessable
    secret or a token Telegram refuses. The message names every such setting, never a value.
    """
    found = []
    for name in Settings.model_fields:
        value = getattr(settings, name)
        texts = (
            [str(t) for item in value.items() for t in item]  # keys too (API keys)
            if isinstance(value, dict)
            else [str(value)]
        )
        if value is not None and any(PLACEHOLDER_RE.search(t) for t in texts):
            found.append(f"{ENV_PREFIX}{name.upper()}")
    if found:
        raise PlaceholderError(
            f"{', '.join(found)} still hold{'s' if len(found) == 1 else ''} a placeholder "
            "value (CHANGE_ME): set a real value, or remove the line to use the default "
            "(a platform whose settings are removed is not used)"
        )


def settings_help() -> str:
    """One line per setting, for ``gridbot --help``."""
    lines = []
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "" if default in (None, PydanticUndefined) else f" [default: {default}]"
        lines.append(f"  {ENV_PREFIX}{name.upper():<26} {field.description}{shown}")
    lines.append(
        f"  {ENV_PREFIX}CONFIG{'':<20} Optional TOML file with the same keys in lower case"
    )
    return "\n".join(lines)


# ---- the WeChat section: template messages -------------------------------------------------
# Which template each kind of push uses and what fills its fields; parsed here so that a bad
# ``GRIDBOT_WECHAT_TEMPLATES`` is refused when the settings are loaded (the adapter,
# bot/channels/wechat/, uses the parsed specs).

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

