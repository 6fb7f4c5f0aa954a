"""The ``gridbot`` command as an operator runs it: separate processes, environment settings.

Admin commands on a temporary SQLite file; ``gridbot run`` started for real (web chat, health,
Telegram through the fake Bot API server in polling and in webhook mode) and stopped with
SIGTERM. Every subprocess has a timeout and is killed in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.config import ENV_PREFIX, Settings
from tests.fakes.telegram_server import FakeTelegramServer, SentMessage
from tests.support.messages import has

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "bot" / "demo" / "community.yaml"
DEMO_CODES = {
    "slp", "xinhua", "xh-g1", "xh-g2", "xh-g3",
    "xh-g1-m1", "xh-g1-m2", "xh-g1-m3", "xh-g2-m1", "xh-g2-m2", "xh-g2-m3",
    "xh-g3-m1", "xh-g3-m2",
}  # fmt: skip
TABLES = ("community", "grid", "building", "person", "role", "category")
COMMAND_TIMEOUT = 60.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0  # "exits within a few seconds": it takes about one


# ---- helpers ---------------------------------------------------------------------------------


def _env(**settings: str) -> dict[str, str]:
    """The current environment without any GRIDBOT_ setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"{ENV_PREFIX}{k.upper()}": v for k, v in settings.items()})
    return env


def gridbot(*args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """Run ``gridbot ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=cwd,
        env=_env(**settings),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def snapshot(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the community tables, to prove a command changed nothing."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in TABLES}


def codes(tree: list[dict[str, Any]]) -> set[str]:
    """Every grid code of a ``gridbot grids --json`` forest."""
    found: set[str] = set()
    for node in tree:
        found.add(node["code"])
        found |= codes(node["children"])
    return found


class Service:
    """``gridbot run`` in a subprocess; output goes to files (no pipe to fill up)."""

    def __init__(self, workdir: Path, port: int | None = None, **settings: str) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out = workdir / "gridbot.out"
        self.err = workdir / "gridbot.err"
        settings.setdefault("database_url", sqlite_url(workdir / "gridbot.db"))
        settings["web_port"] = str(self.port)
        settings.setdefault("log_level", "WARNING")
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bot.cli", "run"],
                cwd=workdir,
                env=_env(**settings),
                stdout=out,
                stderr=err,
            )

    def output(self) -> str:
        """What the process printed so far (for assertion messages)."""
        return f"stdout:\n{self.out.read_text()}\nstderr:\n{self.err.read_text()}"

    async def ready(self, client: httpx.AsyncClient) -> None:
        """Wait until /healthz answers 200."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"gridbot run exited with {self.proc.returncode}\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                response = await client.get(f"{self.url}/healthz", timeout=2)
                if response.status_code == 200:
                    assert response.json() == {"status": "ok"}
                    return
            await asyncio.sleep(0.1)
        pytest.fail(f"gridbot run did not become healthy in {START_TIMEOUT}s\n{self.output()}")

    async def terminate(self) -> int:
        """SIGTERM, then the exit code (fails the test if it takes longer than STOP_TIMEOUT)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        while self.proc.poll() is None:
            if time.monotonic() - started > STOP_TIMEOUT:
                pytest.fail(f"gridbot run ignored SIGTERM for {STOP_TIMEOUT}s\n{self.output()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        """Make sure the process is gone."""
        if self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_TIMEOUT)


@contextlib.asynccontextmanager
async def running(
    workdir: Path, port: int | None = None, **settings: str
) -> AsyncIterator[tuple[Service, Any]]:
    """A healthy ``gridbot run`` and an HTTP client; killed whatever happens."""
    service = Service(workdir, port, **settings)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            await service.ready(client)
            yield service, client
    finally:
        service.kill()


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "work"
    path.mkdir()
    yield path


# ---- (a) help --------------------------------------------------------------------------------


def test_help_lists_every_setting(tmp_path: Path) -> None:
    result = gridbot("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in Settings.model_fields:
        assert f"{ENV_PREFIX}{name.upper()}" in result.stdout, name
    assert f"{ENV_PREFIX}CONFIG" in result.stdout
    for command in ("run", "migrate", "import", "grids", "invite", "qr-sheet"):
        assert command in result.stdout


# ---- (b) admin commands ----------------------------------------------------------------------


def test_import_grids_invite(tmp_path: Path) -> None:
    db = tmp_path / "admin.db"
    url = sqlite_url(db)

    first = gridbot("import", str(DEMO), cwd=tmp_path, database_url=url)
    assert first.returncode == 0, first.stderr
    assert "imported" in first.stdout and "dachuan-xinhua" in first.stdout
    imported = snapshot(db)
    assert len(imported["grid"]) == len(DEMO_CODES) and len(imported["building"]) == 20

    tree_text = gridbot("grids", cwd=tmp_path, database_url=url)
    assert tree_text.returncode == 0, tree_text.stderr
    for code in ("xh-g1", "xh-g1-m1", "xh-g3-m2"):
        assert code in tree_text.stdout
    tree_json = gridbot("grids", "--json", cwd=tmp_path, database_url=url)
    assert tree_json.returncode == 0, tree_json.stderr
    tree = json.loads(tree_json.stdout)
    assert [node["code"] for node in tree] == ["slp"]
    assert codes(tree) == DEMO_CODES
    assert tree[0]["totals"]["buildings"] == 20

    # The same file again: nothing changes, and the report says so.
    again = gridbot("import", str(DEMO), cwd=tmp_path, database_url=url)
    assert again.returncode == 0, again.stderr
    assert "no changes" in again.stdout and "imported" not in again.stdout
    assert snapshot(db) == imported

    # A bad file is rejected whole, with file:line, and the database stays as it was.
    lines = DEMO.read_text(encoding="utf-8").splitlines()
    target = "  - {code: xh-b03, grid: xh-g1-m1, name: 翠屏小区3栋, address: 新华路12号}"
    number = lines.index(target) + 1
    lines[number - 1] = target.replace("grid: xh-g1-m1", "grid: xh-g9-m9").replace(
        "翠屏小区3栋", "翠屏小区3栋（改）"
    )
    bad = tmp_path / "bad-community.yaml"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rejected = gridbot("import", str(bad), cwd=tmp_path, database_url=url)
    assert rejected.returncode == 1, rejected.stdout
    assert f"{bad}:{number}:" in rejected.stderr, rejected.stderr
    assert "xh-g9-m9" in rejected.stderr
    assert snapshot(db) == imported

    # An invite: a short URL-safe token and its QR code.
    out = tmp_path / "qr"
    invite = gridbot(
        "invite", "--role", "resident", "--grid", "xh-g1-m1", "--building", "xh-b01",
        "--json", "--out", str(out), "--bot-username", "gridbot", cwd=tmp_path,
        database_url=url,
    )  # fmt: skip
    assert invite.returncode == 0, invite.stderr
    info = json.loads(invite.stdout)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", info["token"]), info["token"]
    assert info["role"] == "resident" and info["building"] == "xh-b01"
    png = Path(info["qr_png"])
    assert png.parent == out and png.is_file()
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# ---- (c) run: web chat and health ------------------------------------------------------------


async def test_run_serves_web_chat_and_stops_on_sigterm(workdir: Path) -> None:
    async with running(workdir) as (service, client):
        page = await client.get(f"{service.url}/chat/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert 'data-testid="panes"' in page.text
        personas = await client.get(f"{service.url}/chat/api/personas")
        assert personas.status_code == 200
        names = [p["name"] for p in personas.json()]
        assert "张阿姨" in names and "王网格员" in names
        root = await client.get(f"{service.url}/", follow_redirects=False)
        assert root.status_code == 307 and root.headers["location"] == "/chat/"
        # No token: no Telegram, so the webhook route is not there.
        hook = await client.post(f"{service.url}/telegram/webhook", content=b"{}")
        assert hook.status_code == 404
        assert await service.terminate() == 0, service.output()
    assert "/chat/" in service.out.read_text()
    assert "Traceback" not in service.err.read_text(), service.output()
    assert (workdir / "gridbot.db").is_file()


# ---- (d) run with a Telegram token: polling --------------------------------------------------


async def test_run_with_token_polls_telegram(workdir: Path) -> None:
    async with (
        FakeTelegramServer() as tg,
        running(
            workdir,
            telegram_token=tg.token,
            telegram_api_url=tg.base_url,
            telegram_file_url=tg.file_url,
        ) as (service, _client),
    ):
        await tg.wait_until(lambda: bool(tg.calls("getUpdates")), timeout=START_TIMEOUT)
        await tg.wait_until(lambda: bool(tg.commands), timeout=START_TIMEOUT)  # the menu
        visitor = tg.user(5001, "访客")
        await visitor.send_command("start")
        welcome: SentMessage = await tg.wait_for(5001, has("二维码"), timeout=15)
        assert welcome.chat_id == 5001
        assert await service.terminate() == 0, service.output()
    assert "polling" in service.out.read_text()
    assert tg.token not in service.err.read_text(), "the bot token leaked into the logs"


# ---- (e) run with a Telegram token: webhook --------------------------------------------------


async def test_run_with_token_serves_the_webhook(workdir: Path) -> None:
    port = free_port()
    hook_url = f"http://127.0.0.1:{port}/telegram/webhook"
    async with (
        FakeTelegramServer() as tg,
        running(
            workdir,
            port=port,
            telegram_token=tg.token,
            telegram_api_url=tg.base_url,
            telegram_file_url=tg.file_url,
            telegram_mode="webhook",
            telegram_webhook_url=hook_url,
            telegram_webhook_secret="s3cret",
        ) as (service, client),
    ):
        await tg.wait_until(lambda: tg.webhook_url is not None, timeout=START_TIMEOUT)
        assert tg.webhook_url == hook_url and tg.webhook_secret == "s3cret"
        assert tg.calls("setWebhook")[-1]["secret_token"] == "s3cret"

        visitor = tg.user(5002, "访客")
        update = await visitor.send_command("start")
        await tg.wait_for(5002, has("二维码"), timeout=15)
        assert (update["update_id"], 200) in tg.webhook_deliveries
        assert not tg.calls("getUpdates")

        good = {"X-Telegram-Bot-Api-Secret-Token": "s3cret"}
        wrong = await client.post(
            hook_url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "nope"}
        )
        assert wrong.status_code == 403
        missing = await client.post(hook_url, json=update)
        assert missing.status_code == 403
        for body in (b"{not json", b"[]", b'{"message": {}}', b"\xff\xfe"):
            malformed = await client.post(hook_url, content=body, headers=good)
            assert malformed.status_code == 400, body
        # None of that reached the core: still exactly one welcome.
        assert len([m for m in tg.sent(5002) if "二维码" in (m.text or "")]) == 1
        assert await service.terminate() == 0, service.output()
    assert "webhook" in service.out.read_text()


# ---- (f) run with the port taken -------------------------------------------------------------


def test_run_with_the_port_taken_says_so_and_exits_1(workdir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        result = gridbot(
            "run", cwd=workdir, web_port=str(port), database_url=sqlite_url(workdir / "g.db")
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Gridbot is running" not in result.stdout  # only once the port is ours
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "GRIDBOT_WEB_PORT" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "g.db").exists()  # refused before anything started


def test_a_placeholder_setting_is_refused_by_name(workdir: Path) -> None:
    result = gridbot(
        "grids", cwd=workdir, secret_key="CHANGE_ME", database_url=sqlite_url(workdir / "g.db")
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: GRIDBOT_SECRET_KEY still holds a placeholder")
    assert "Traceback" not in result.stderr
    assert not (workdir / "g.db").exists()  # refused before touching anything
