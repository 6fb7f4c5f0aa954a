"""Static checks of the deployment files in deploy/ (no network, no Docker engine needed)."""

from __future__ import annotations

import configparser
import http.server
import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from bot.channels.registry import ADAPTERS, platform_settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "gridbot.env.example"
TOML_EXAMPLE = DEPLOY / "gridbot.toml.example"
UNIT = DEPLOY / "gridbot.service"
NGINX = DEPLOY / "nginx.conf.example"
NGINX_COMPOSE = DEPLOY / "nginx.compose.conf"

# The settings the service documents (environment variables). Kept in sync with
# bot.config.Settings by test_env_example_matches_bot_config_settings when that module exists.
CORE_SETTINGS = frozenset(
    {
        "GRIDBOT_DATABASE_URL",
        "GRIDBOT_TELEGRAM_TOKEN",
        "GRIDBOT_TELEGRAM_API_URL",
        "GRIDBOT_TELEGRAM_MODE",
        "GRIDBOT_TELEGRAM_WEBHOOK_URL",
        "GRIDBOT_TELEGRAM_WEBHOOK_SECRET",
        "GRIDBOT_WEB_HOST",
        "GRIDBOT_WEB_PORT",
        "GRIDBOT_TIMEZONE",
        "GRIDBOT_SECRET_KEY",
        "GRIDBOT_WEBCHAT_ENABLED",
        "GRIDBOT_DEMO",
        "GRIDBOT_LOG_LEVEL",
        "GRIDBOT_CONFIG",
    }
)
# Further settings of bot.config.Settings, optional and with good defaults (the platforms' own
# are PLATFORM_SETTINGS).
EXTRA_SETTINGS = frozenset(
    {
        "GRIDBOT_DEFAULT_LOCALE",
        "GRIDBOT_INVITE_DAYS",
        "GRIDBOT_MAX_TEXT_LENGTH",
        "GRIDBOT_LOCALES_DIR",
        "GRIDBOT_QR_DIR",
        "GRIDBOT_MEDIA_DIR",
        # duties and timers (issue 4)
        "GRIDBOT_SCHEDULER_ENABLED",
        "GRIDBOT_DEMO_DUTIES",
        "GRIDBOT_SCHEDULER_MISFIRE_GRACE",
        "GRIDBOT_SCHEDULER_LEASE_SECONDS",
        "GRIDBOT_SCHEDULER_SWEEP_SECONDS",
        "GRIDBOT_SCHEDULER_CONCURRENCY",
        "GRIDBOT_SCHEDULER_BATCH",
        "GRIDBOT_QUIET_HOURS",
        "GRIDBOT_ORDER_DISPATCH_MINUTES",
        "GRIDBOT_ORDER_ACCEPT_MINUTES",
        "GRIDBOT_ORDER_OVERDUE_ESCALATE_MINUTES",
        "GRIDBOT_ORDER_RATE_DAYS",
        "GRIDBOT_WHISTLE_REMIND_MINUTES",
        "GRIDBOT_DIGEST_TIME",
        "GRIDBOT_MONTH_END_DAYS",
        # Open311 (the city platform)
        "GRIDBOT_OPEN311_KEYS",
        "GRIDBOT_OPEN311_PUBLIC_READ",
        "GRIDBOT_OPEN311_RADIUS_M",
        # points (积分)
        "GRIDBOT_POINTS_RATING_BONUS",
        "GRIDBOT_POINTS_VISIT",
        "GRIDBOT_POINTS_PATROL",
        "GRIDBOT_POINTS_WHISTLE",
        # Reports and the monthly bulletin
        "GRIDBOT_DEMO_HISTORY",
        "GRIDBOT_BULLETIN_TIME",
        "GRIDBOT_BULLETIN_WEIGHTS",
        "GRIDBOT_BULLETIN_FLOORS",
        "GRIDBOT_EXIT_IDLE_MONTHS",
        "GRIDBOT_EXIT_MIN_RATING",
        # The web console
        "GRIDBOT_CONSOLE_ENABLED",
        "GRIDBOT_PUBLIC_URL",
        "GRIDBOT_CONSOLE_IDLE_MINUTES",
        "GRIDBOT_CONSOLE_REPORT_SECONDS",
        "GRIDBOT_CONSOLE_REPORT_BATCH",
        "GRIDBOT_CONSOLE_REPORT_WAIT_MS",
        # Residents' orders: the "same thing?" question
        "GRIDBOT_DUPLICATE_WINDOW_MINUTES",
    }
)
# Every platform's own settings (``telegram_*``, ``wechat_*``, ``wecom_*``...), from the table of
# platforms: adding a platform adds its settings here without an edit.
PLATFORM_SETTINGS = frozenset(f"GRIDBOT_{name.upper()}" for name in platform_settings())
KNOWN_SETTINGS = CORE_SETTINGS | EXTRA_SETTINGS | PLATFORM_SETTINGS
# Names the config file path, so it is an environment variable only, not a config-file key.
ENV_ONLY = frozenset({"GRIDBOT_CONFIG"})
PREFIX = "GRIDBOT_"
SECRET_SETTINGS = (
    "GRIDBOT_TELEGRAM_TOKEN",
    "GRIDBOT_TELEGRAM_WEBHOOK_SECRET",
    "GRIDBOT_SECRET_KEY",
)
WEBHOOK_PATH = "/telegram/webhook"
# Files and folders the image needs from the build context.
IMAGE_NEEDS = ("pyproject.toml", "README.md", "bot", "handlers", "models", "locales")


# --- helpers ---------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """Split a Dockerfile into (INSTRUCTION, arguments), joining continuation lines."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # blank and comment lines, also inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "Dockerfile ends inside a continued instruction"
    return instructions


def instruction_args(args: str) -> tuple[list[str], list[str]]:
    """Split COPY/ADD arguments into (--flags, operands), for both the JSON and shell forms."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    operands = [w for w in words if not w.startswith("--")]
    return flags, operands


def env_assignments(args: str) -> dict[str, str]:
    """Parse an ENV instruction in the KEY=value form."""
    pairs: dict[str, str] = {}
    for word in shlex.split(args):
        key, sep, value = word.partition("=")
        assert sep, f"ENV in the legacy 'KEY value' form: {args!r}"
        pairs[key] = value
    return pairs


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """The ignore list as (is_exception, regex) pairs, in file order."""
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def is_ignored(path: str) -> bool:
    """Tell whether a context-relative path (or a folder above it) is left out of the build."""
    parts = Path(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negate, regex in dockerignore_patterns():
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored


def env_file_keys(path: Path) -> tuple[dict[str, str], set[str]]:
    """Active KEY=value lines, and keys only shown commented out (``# KEY=value``)."""
    active: dict[str, str] = {}
    commented: set[str] = set()
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            m = re.match(r"#\s*([A-Z][A-Z0-9_]*)=", line)
            if m:
                commented.add(m.group(1))
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=value line: {raw!r}"
        assert key == key.strip() and re.fullmatch(r"[A-Z][A-Z0-9_]*", key), raw
        assert not value.startswith(("'", '"')), f"env files are read literally: {raw!r}"
        active[key] = value
    return active, commented


def read_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep key case
    parser.read(path)
    return parser


def unit_values(path: Path, section: str, key: str) -> list[str]:
    """All values of a (possibly repeated) key; configparser keeps only the last one."""
    values, current = [], None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and line.partition("=")[0].strip() == key:
            values.append(line.partition("=")[2].strip())
    return values


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def as_mapping(value: Any) -> dict[str, str]:
    """A compose environment block, in either the mapping or the list form."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return dict(str(item).partition("=")[::2] for item in value)


def expand_defaults(value: str) -> str:
    """Replace compose ${VAR...} interpolations by a placeholder, to parse the result."""
    return re.sub(r"\$\{[^}]*\}", "placeholder", value)


# --- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_base_user_and_command() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    keywords = [k for k, _ in instructions]
    froms = [a for k, a in instructions if k == "FROM"]
    assert froms, "no FROM"
    assert froms[-1].split()[0].startswith("python:3.11-slim"), froms[-1]

    users = [a for k, a in instructions if k == "USER"]
    assert users, "the image must switch to a non-root user"
    user, _, group = users[-1].partition(":")
    assert user not in {"root", "0"}, users[-1]
    assert group not in {"root", "0"}, users[-1]
    # The user switch comes after the last RUN (install) step and before the command.
    last = {k: i for i, k in enumerate(keywords)}
    assert last["RUN"] < last["USER"] < last["CMD"]

    cmds = [a for k, a in instructions if k == "CMD"]
    assert len(cmds) == 1
    assert json.loads(cmds[0]) == ["gridbot", "run"]
    assert "ENTRYPOINT" not in keywords

    assert any(k == "WORKDIR" and a == "/app" for k, a in instructions)
    assert any(k == "EXPOSE" and "8080" in a.split() for k, a in instructions)
    volumes = [a for k, a in instructions if k == "VOLUME"]
    assert volumes and "/data" in (json.loads(volumes[0]) if "[" in volumes[0] else volumes[0])

    runs = " ".join(a for k, a in instructions if k == "RUN")
    assert re.search(r"pip install --no-cache-dir (-e )?\.", runs), runs


def test_dockerfile_environment_defaults() -> None:
    env: dict[str, str] = {}
    for keyword, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "ENV":
            env.update(env_assignments(args))
    gridbot_env = {k for k in env if k.startswith(PREFIX)}
    assert gridbot_env <= KNOWN_SETTINGS, gridbot_env - KNOWN_SETTINGS
    assert env["GRIDBOT_WEB_HOST"] == "0.0.0.0"
    assert env["GRIDBOT_WEBCHAT_ENABLED"] == "false"
    assert env["GRIDBOT_DATABASE_URL"] == "sqlite+aiosqlite:////data/gridbot.db"
    # Files the service writes must go to the /data volume (/app is read-only for the user).
    assert env["GRIDBOT_QR_DIR"].startswith("/data/")
    assert env.get("GRIDBOT_LOCALES_DIR", "/app/locales") == "/app/locales"


def test_dockerfile_copy_sources_exist_and_are_in_the_context() -> None:
    copied = []
    for keyword, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword not in {"COPY", "ADD"}:
            continue
        flags, operands = instruction_args(args)
        if any(f.startswith("--from") for f in flags):
            continue  # from another stage or image, not from the build context
        assert len(operands) >= 2, args
        for source in operands[:-1]:
            assert not source.startswith(("http://", "https://", "/", "..")), source
            assert (ROOT / source).exists(), f"{keyword} source missing in the repo: {source}"
            if source not in {".", "./"}:
                assert not is_ignored(source), f"{source} is excluded by {DOCKERIGNORE.name}"
            copied.append(source)
    assert copied
    # The package needs the whole project, locales/ included, at run time.
    assert "." in copied or "./" in copied or "locales" in copied


def test_dockerignore_keeps_what_the_image_needs() -> None:
    for path in IMAGE_NEEDS:
        assert (ROOT / path).exists(), path
        assert not is_ignored(path), f"{path} must reach the image"
    for path in (".git", ".venv", "deploy/gridbot.env", "deploy/.env", "gridbot.db"):
        assert is_ignored(path), f"{path} must stay out of the image"


def test_console_script_matches_the_command() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "gridbot" in project["scripts"]


class _HealthHandler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        if self.path != "/healthz":
            self.send_error(404)
            return
        body = json.dumps({"status": "ok" if self.status == 200 else "down"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[http.server.HTTPServer, type[_HealthHandler]]]:
    handler = type("Handler", (_HealthHandler,), {})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()


def _healthcheck_command() -> list[str]:
    checks = [a for k, a in dockerfile_instructions(DOCKERFILE.read_text()) if k == "HEALTHCHECK"]
    assert len(checks) == 1, "exactly one HEALTHCHECK"
    _, _, command = checks[0].partition("CMD ")
    argv = json.loads(command)
    assert argv[0] == "python", argv
    assert "urllib" in " ".join(argv) and "/healthz" in " ".join(argv)
    return [sys.executable, *argv[1:]]


def test_healthcheck_runs_against_healthz(
    health_server: tuple[http.server.HTTPServer, type[_HealthHandler]],
) -> None:
    server, handler = health_server
    argv = _healthcheck_command()
    env = {"GRIDBOT_WEB_PORT": str(server.server_address[1]), "PATH": "/usr/bin:/bin"}

    ok = subprocess.run(argv, env=env, capture_output=True, timeout=20, check=False)
    assert ok.returncode == 0, ok.stderr

    handler.status = 503
    down = subprocess.run(argv, env=env, capture_output=True, timeout=20, check=False)
    assert down.returncode != 0


# --- compose ---------------------------------------------------------------------------------


INSTANCES = ("gridbot-1", "gridbot-2")


def test_compose_services() -> None:
    data = compose()
    services = data["services"]
    assert set(services) >= {"postgres", "proxy", *INSTANCES}

    postgres = services["postgres"]
    assert str(postgres["image"]).startswith("postgres:16")
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    volume_sources = [str(v).split(":")[0] for v in postgres["volumes"]]
    assert any(src in (data.get("volumes") or {}) for src in volume_sources), "named volume"

    for name in INSTANCES:
        gridbot = services[name]
        build = gridbot["build"]
        assert build["context"] == ".."
        assert build["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert gridbot["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert gridbot["restart"] == "unless-stopped"
        assert "ports" not in gridbot, f"{name} is reached through the proxy only"
        assert [str(p) for p in gridbot["expose"]] == ["8080"]
        # One media volume for all: any instance sends a photo another one stored.
        assert "gridbot-data:/data" in gridbot["volumes"]

        env_files = gridbot["env_file"]
        env_files = [env_files] if isinstance(env_files, str | dict) else env_files
        paths = [e["path"] if isinstance(e, dict) else e for e in env_files]
        assert paths == ["gridbot.env"]
        assert (DEPLOY / (paths[0] + ".example")).is_file()

    proxy = services["proxy"]
    assert "127.0.0.1:8080:80" in [str(p) for p in proxy["ports"]]
    [mount] = proxy["volumes"]
    source, target, mode = str(mount).split(":")
    assert (DEPLOY / source).resolve() == NGINX_COMPOSE
    assert target == "/etc/nginx/conf.d/default.conf" and mode == "ro"


def test_compose_proxy_spreads_over_every_instance() -> None:
    text = NGINX_COMPOSE.read_text()
    upstream = re.search(r"upstream gridbot \{(.*?)\}", text, re.S)
    assert upstream
    servers = re.findall(r"server\s+([\w.-]+):(\d+)", upstream.group(1))
    assert sorted(servers) == sorted((name, "8080") for name in INSTANCES)
    # A failed request (including a POST: updates are deduplicated) goes to the other one.
    assert re.search(r"proxy_next_upstream [^;]*http_500[^;]*non_idempotent;", text)
    assert "deny all" in text.split("location ^~ /chat", 1)[1].split("}", 1)[0]


def test_compose_database_url_points_at_postgres() -> None:
    services = compose()["services"]
    env = as_mapping(services["gridbot-1"]["environment"])
    assert {k for k in env if k.startswith(PREFIX)} <= KNOWN_SETTINGS
    url = urlsplit(expand_defaults(env["GRIDBOT_DATABASE_URL"]))
    assert url.scheme == "postgresql+asyncpg"
    assert url.hostname == "postgres"
    assert url.port == 5432
    pg_env = as_mapping(services["postgres"]["environment"])
    assert url.username == pg_env["POSTGRES_USER"]
    assert url.path.lstrip("/") == pg_env["POSTGRES_DB"]
    # The same password variable on both sides.
    password = re.findall(r"\$\{(\w+)", env["GRIDBOT_DATABASE_URL"])
    assert password and password == re.findall(r"\$\{(\w+)", pg_env["POSTGRES_PASSWORD"])
    assert env["GRIDBOT_WEB_HOST"] == "0.0.0.0"


# --- settings --------------------------------------------------------------------------------


def test_env_example_documents_every_known_setting() -> None:
    active, commented = env_file_keys(ENV_EXAMPLE)
    documented = set(active) | commented
    unknown = {k for k in documented if k.startswith(PREFIX)} - KNOWN_SETTINGS
    assert not unknown, f"settings the service does not know: {sorted(unknown)}"
    assert documented >= KNOWN_SETTINGS, sorted(KNOWN_SETTINGS - documented)

    # One comment line right above each setting.
    lines = ENV_EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        key = line.lstrip("# ").partition("=")[0]
        if key in KNOWN_SETTINGS and re.match(r"#?\s*GRIDBOT_\w+=", line):
            assert i > 0 and lines[i - 1].startswith("#"), f"no comment above {key}"


def env_example_values(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """Every setting the example shows, active or commented out (``# KEY=value``)."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        m = re.match(r"#?\s*(GRIDBOT_[A-Z0-9_]+)=(.*)", raw.strip())
        if m:
            values[m.group(1)] = m.group(2)
    return values


def test_env_example_production_values() -> None:
    active, _ = env_file_keys(ENV_EXAMPLE)
    shown = env_example_values()
    assert active["GRIDBOT_WEBCHAT_ENABLED"] == "false"
    assert active["GRIDBOT_DEMO"] == "false"
    assert shown["GRIDBOT_TELEGRAM_MODE"] == "webhook"
    webhook = urlsplit(shown["GRIDBOT_TELEGRAM_WEBHOOK_URL"])
    assert webhook.scheme == "https" and webhook.path == WEBHOOK_PATH
    for key in SECRET_SETTINGS:
        assert "CHANGE_ME" in shown[key], f"{key} must be a placeholder, not a secret"
    # No platform is switched on with a placeholder: each is uncommented by whoever uses it.
    for key in ("GRIDBOT_TELEGRAM_TOKEN", "GRIDBOT_WECHAT_APPID", "GRIDBOT_WECHAT_TOKEN",
                "GRIDBOT_WECOM_CORP_ID", "GRIDBOT_WECOM_TOKEN"):
        assert key not in active, f"{key} is active in the example"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No GRIDBOT_* (nor STATE_DIRECTORY) from the test run's environment."""
    import os

    for key in list(os.environ):
        if key.startswith(PREFIX) or key == "STATE_DIRECTORY":
            monkeypatch.delenv(key)
    return monkeypatch


def _load_env_file(text: str, env: pytest.MonkeyPatch) -> Any:
    from bot.config import load_settings

    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env.setenv(key, value)
    return load_settings()


def test_the_example_as_shipped_is_refused_naming_the_placeholder(
    clean_env: pytest.MonkeyPatch,
) -> None:
    from bot.config import PlaceholderError

    with pytest.raises(PlaceholderError) as refused:
        _load_env_file(ENV_EXAMPLE.read_text(), clean_env)
    message = str(refused.value)
    assert "GRIDBOT_SECRET_KEY" in message and "CHANGE_ME" in message
    assert "GRIDBOT_TELEGRAM_TOKEN" not in message  # not active: nothing to refuse


@pytest.mark.parametrize("value", ["CHANGE_ME", "changeme", "Change-Me", "<change me>"])
def test_placeholders_are_refused_in_any_setting(
    clean_env: pytest.MonkeyPatch, value: str
) -> None:
    from bot.config import PlaceholderError, load_settings

    clean_env.setenv("GRIDBOT_WECHAT_SECRET", value)
    with pytest.raises(PlaceholderError, match="GRIDBOT_WECHAT_SECRET"):
        load_settings()
    clean_env.delenv("GRIDBOT_WECHAT_SECRET")
    key = f"{value}-long-random-key"
    clean_env.setenv("GRIDBOT_OPEN311_KEYS", f'{{"{key}": {{"name": "12345"}}}}')
    with pytest.raises(PlaceholderError, match="GRIDBOT_OPEN311_KEYS"):
        load_settings()  # a secret can be a key of a JSON object, too
    clean_env.delenv("GRIDBOT_OPEN311_KEYS")
    clean_env.setenv("GRIDBOT_DATABASE_URL", f"postgresql+asyncpg://gridbot:{value}@db/gridbot")
    with pytest.raises(PlaceholderError, match="GRIDBOT_DATABASE_URL") as refused:
        load_settings()
    assert "gridbot@db" not in str(refused.value)  # the message names settings, not values


def test_a_wechat_only_deployment_from_the_example(clean_env: pytest.MonkeyPatch) -> None:
    """What an operator in mainland China does: uncomment the WeChat lines, fill them in."""
    lines = []
    for raw in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"#\s*(GRIDBOT_WECHAT_(?:APPID|SECRET|TOKEN|AES_KEY))=(.*)", raw)
        lines.append(f"{m.group(1)}={m.group(2)}" if m else raw)
    text = "\n".join(lines)
    text = text.replace("GRIDBOT_WECHAT_AES_KEY=CHANGE_ME", "GRIDBOT_WECHAT_AES_KEY=" + "k" * 43)
    text = text.replace("CHANGE_ME", "a-real-secret-0123456789")
    settings = _load_env_file(text, clean_env)
    assert settings.telegram_token is None
    assert settings.wechat_appid and settings.wechat_token and settings.wechat_secret
    assert not settings.webchat_enabled and not settings.demo


def test_the_unit_writes_only_where_it_may(clean_env: pytest.MonkeyPatch) -> None:
    """Under the shipped unit, every file the service writes (database, QR codes, photos)
    lands in a writable folder, with the defaults (systemd sets $STATE_DIRECTORY)."""
    from bot.config import load_settings

    unit = read_unit(UNIT)
    service = unit["Service"]
    writable = " ".join(unit_values(UNIT, "Service", "ReadWritePaths")).split()
    state = ["/var/lib/" + d for d in service["StateDirectory"].split()]
    assert set(state) <= set(writable)
    clean_env.setenv("STATE_DIRECTORY", ":".join(state))
    for line in unit_values(UNIT, "Service", "Environment"):
        for word in shlex.split(line):
            key, _, value = word.partition("=")
            clean_env.setenv(key, value)
    clean_env.chdir(service["WorkingDirectory"] if Path("/opt/gridbot").is_dir() else "/")
    settings = load_settings()

    def inside(path: Path) -> bool:
        full = Path(service["WorkingDirectory"]) / path  # relative paths: the working dir
        return any(full.is_relative_to(w) for w in writable)

    assert inside(Path(settings.database_url.split(":///", 1)[1]))
    assert inside(settings.qr_dir), settings.qr_dir
    assert inside(settings.media_dir), settings.media_dir


def test_env_example_matches_bot_config_settings() -> None:
    try:
        spec = importlib.util.find_spec("bot.config")
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        pytest.skip("bot.config does not exist yet; checked against KNOWN_SETTINGS only")
    module = importlib.import_module("bot.config")
    settings_cls = getattr(module, "Settings", None)
    if settings_cls is None or not hasattr(settings_cls, "model_fields"):
        pytest.skip("bot.config has no pydantic-settings class Settings yet")

    fields = {PREFIX + name.upper() for name in settings_cls.model_fields}
    active, commented = env_file_keys(ENV_EXAMPLE)
    documented = {k for k in set(active) | commented if k.startswith(PREFIX)}
    unknown = sorted(documented - ENV_ONLY - fields)
    assert not unknown, f"gridbot.env.example names settings Settings lacks: {unknown}"
    undocumented = sorted(fields - ENV_ONLY - documented)
    assert not undocumented, f"Settings fields missing from gridbot.env.example: {undocumented}"
    assert fields - ENV_ONLY <= KNOWN_SETTINGS, sorted(fields - ENV_ONLY - KNOWN_SETTINGS)

    toml_keys = set(tomllib.loads(TOML_EXAMPLE.read_text()))
    assert toml_keys <= set(settings_cls.model_fields), toml_keys - set(settings_cls.model_fields)


def test_every_platform_has_its_settings_section() -> None:
    """Each platform's prefix names fields of Settings (a misspelt one would leave its settings
    unknown here), and no platform's prefix takes another's fields."""
    from bot.config import Settings

    for spec in ADAPTERS:
        own = {f for f in Settings.model_fields if f.startswith(spec.settings_prefix)}
        assert own, f"no setting starts with {spec.settings_prefix!r} ({spec.name})"
        others = [o.name for o in ADAPTERS if o is not spec and any(
            f.startswith(o.settings_prefix) for f in own)]
        assert not others, (spec.name, others)
    assert {"GRIDBOT_WECHAT_TEMPLATES", "GRIDBOT_WECOM_API_URL"} <= PLATFORM_SETTINGS
    assert "GRIDBOT_DEFAULT_LOCALE" not in PLATFORM_SETTINGS


def toml_documented_keys() -> set[str]:
    """Keys the TOML example sets or shows commented out (``# key = value``, ``# [table]``)."""
    keys = set(tomllib.loads(TOML_EXAMPLE.read_text()))
    for raw in TOML_EXAMPLE.read_text().splitlines():
        m = re.match(r"#\s*(?:\[([a-z0-9_]+)\]|([a-z0-9_]+)\s*=)", raw.strip())
        if m:
            keys.add(m.group(1) or m.group(2))
    return keys


def test_toml_example_parses_and_uses_known_keys() -> None:
    data = tomllib.loads(TOML_EXAMPLE.read_text())
    known = {k.removeprefix(PREFIX).lower() for k in KNOWN_SETTINGS - ENV_ONLY}
    core = {k.removeprefix(PREFIX).lower() for k in CORE_SETTINGS - ENV_ONLY}
    documented = toml_documented_keys()
    assert documented <= known, sorted(documented - known)
    assert documented >= core, sorted(core - documented)
    assert isinstance(data["web_port"], int)
    assert data["webchat_enabled"] is False
    assert data["demo"] is False
    text = TOML_EXAMPLE.read_text()
    webhook = re.search(r'telegram_webhook_url = "([^"]+)"', text)
    assert webhook and urlsplit(webhook.group(1)).path == WEBHOOK_PATH


def test_toml_example_shows_every_setting() -> None:
    """Like the env example: WeChat and the media folder included (same keys as Settings)."""
    from bot.config import Settings

    fields = set(Settings.model_fields)
    documented = toml_documented_keys()
    assert documented >= fields, sorted(fields - documented)
    assert "telegram_token" not in tomllib.loads(TOML_EXAMPLE.read_text())  # opt-in platform


# --- systemd ---------------------------------------------------------------------------------


def test_systemd_unit_has_required_keys() -> None:
    unit = read_unit(UNIT)
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    assert service["User"] == "gridbot"
    assert service["WorkingDirectory"] == "/opt/gridbot"
    assert service["EnvironmentFile"].lstrip("-") == "/etc/gridbot/gridbot.env"
    assert service["ExecStart"] == "/opt/gridbot/.venv/bin/gridbot run"
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "true"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "true"
    assert service["ProtectHome"] in {"true", "read-only", "tmpfs"}
    writable = " ".join(unit_values(UNIT, "Service", "ReadWritePaths")).split()
    assert "/var/lib/gridbot" in writable
    assert unit["Install"]["WantedBy"] == "multi-user.target"

    # The default SQLite database lies in a writable folder.
    environment = " ".join(unit_values(UNIT, "Service", "Environment"))
    m = re.search(r"GRIDBOT_DATABASE_URL=sqlite\+aiosqlite:///(/\S+)", environment)
    assert m and any(m.group(1).startswith(p + "/") for p in writable), environment
    m = re.search(r"GRIDBOT_QR_DIR=(/\S+)", environment)
    assert m and any(m.group(1).startswith(p + "/") for p in writable), environment


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists the ExecStart binary exists: point it at one that does.
    true = shutil.which("true")
    assert true
    text = UNIT.read_text().replace("/opt/gridbot/.venv/bin/gridbot", true)
    unit = tmp_path / "gridbot.service"
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if "gridbot.service" in line]
    assert result.returncode == 0, output
    assert not ours, "\n".join(ours)


# --- nginx -----------------------------------------------------------------------------------


def test_nginx_example_routes() -> None:
    text = NGINX.read_text()
    # A location block's body, allowing one level of nested braces (limit_except { ... }).
    body = r"\{((?:[^{}]|\{[^{}]*\})*)\}"
    locations = dict(re.findall(r"location\s+(?:=\s+|\^~\s+)?(\S+)\s*" + body, text))
    for path in (WEBHOOK_PATH, "/wechat", "/healthz"):
        assert path in locations, f"no location for {path}"
        assert "proxy_pass http://gridbot" in locations[path], path
    assert "deny all" in locations["/chat"]
    assert "proxy_pass" not in locations["/chat"]
    assert re.search(r"server\s+127\.0\.0\.1:8080", text)
    assert "ssl_certificate " in text


@pytest.mark.skipif(shutil.which("nginx") is None, reason="no nginx")
@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")
def test_nginx_example_passes_nginx_t(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
        timeout=60,
        check=True,
    )  # fmt: skip
    site = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", NGINX.read_text())
    site = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", site)
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path}/body;\n"
        f"  proxy_temp_path {tmp_path}/proxy;\n  include {tmp_path}/site.conf;\n}}\n"
    )
    result = subprocess.run(
        ["nginx", "-t", "-p", f"{tmp_path}/", "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("nginx") is None, reason="no nginx")
def test_nginx_compose_proxy_passes_nginx_t(tmp_path: Path) -> None:
    # The instances' names resolve only inside the compose network: stand in for them.
    site = re.sub(r"server\s+gridbot-\d+:", "server 127.0.0.1:", NGINX_COMPOSE.read_text())
    site = site.replace("listen 80;", "listen 127.0.0.1:18080;")
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path}/body;\n"
        f"  proxy_temp_path {tmp_path}/proxy;\n  include {tmp_path}/site.conf;\n}}\n"
    )
    result = subprocess.run(
        ["nginx", "-t", "-p", f"{tmp_path}/", "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- documentation ---------------------------------------------------------------------------


def test_deploy_readme_covers_wechat_and_moving_files() -> None:
    """An operator can set up WeChat alone, and get the community file into the container
    and the printed QR codes out of it."""
    text = (DEPLOY / "README.md").read_text()
    wechat = text[text.index("## WeChat Official Account") :]
    for needle in ("GRIDBOT_WECHAT_APPID", "GRIDBOT_WECHAT_AES_KEY", "/wechat", "白名单",
                   "gridbot wechat menu", "Telegram ones commented out"):  # fmt: skip
        assert needle in wechat, needle
    assert "docker cp community.yaml gridbot:/data/" in text
    assert "docker cp gridbot:/data/qr" in text
    assert "STATE_DIRECTORY" in text and "GRIDBOT_MEDIA_DIR" in text
