"""The links printed on invites and stairwell sheets name the real bot, never a placeholder.

An administrator runs ``gridbot invite`` / ``gridbot qr-sheet`` with the deployment's settings:
the bot's username comes from Telegram (``getMe``, asked with the configured token, or learned
by the running service) and is kept in the database; without any way to know it, the command
refuses (exit 2) instead of printing ``t.me/your_bot`` on paper.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import bot.admin.cli_admin as cli_admin
from bot.app import Gridbot
from bot.cli import main
from bot.config import load_settings
from bot.printing.qr_sheet import BuildingPage, SheetWords
from tests.fakes.telegram_server import FakeTelegramServer
from tests.fakes.wechat_server import SAMPLE_APPID, FakeWeChatServer

DEMO = str(Path(__file__).resolve().parents[2] / "bot" / "demo" / "community.yaml")
INVITE = ["invite", "--role", "resident", "--grid", "xh-g1-m1", "--building", "xh-b01"]


def _config(tmp_path: Path, **values: Any) -> str:
    values = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}",
        "secret_key": "links-test",
        "qr_dir": str(tmp_path / "qr"),
        **values,
    }
    path = tmp_path / "gridbot.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return str(path)


def _invites(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "admin.db") as conn:
        return int(conn.execute("SELECT count(*) FROM invite").fetchone()[0])


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def test_without_a_known_bot_the_invite_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    assert await _cli("--config", config, "import", DEMO) == 0
    capsys.readouterr()

    assert await _cli("--config", config, *INVITE) == 2
    err = capsys.readouterr()
    assert "your_bot" not in err.out + err.err
    assert "GRIDBOT_TELEGRAM_TOKEN" in err.err and "--bot-username" in err.err
    assert await _cli("--config", config, "qr-sheet", "--grid", "xh-g1") == 2
    assert "--bot-username" in capsys.readouterr().err
    assert _invites(tmp_path) == 0  # nothing was created
    assert not (tmp_path / "qr").exists()

    # a name that cannot be a Telegram username is a usage error too
    assert await _cli("--config", config, *INVITE, "--bot-username", "my bot!") == 2
    assert _invites(tmp_path) == 0


async def test_the_username_is_asked_from_telegram_once_and_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FakeTelegramServer(bot_username="xinhua_grid_bot") as tg:
        config = _config(tmp_path, telegram_token=tg.token, telegram_api_url=tg.base_url)
        assert await _cli("--config", config, "import", DEMO) == 0
        capsys.readouterr()

        assert await _cli("--config", config, *INVITE, "--json") == 0
        info = json.loads(capsys.readouterr().out)
        assert info["telegram_link"] == f"https://t.me/xinhua_grid_bot?start={info['token']}"
        assert len(tg.calls("getMe")) == 1

        # the next command reads it from the database: no second getMe
        assert await _cli("--config", config, *INVITE, "--json") == 0
        again = json.loads(capsys.readouterr().out)
        assert again["telegram_link"].startswith("https://t.me/xinhua_grid_bot?start=")
        assert len(tg.calls("getMe")) == 1

    # a CLI run without the token (the service's environment not loaded) still knows it
    bare = _config(tmp_path)
    assert await _cli("--config", bare, *INVITE, "--json") == 0
    assert json.loads(capsys.readouterr().out)["telegram_link"].startswith(
        "https://t.me/xinhua_grid_bot?start="
    )


async def test_telegram_unreachable_gives_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(
        tmp_path,
        telegram_token="123456:TEST",
        telegram_api_url=f"http://127.0.0.1:{_closed_port()}/bot",
    )
    assert await _cli("--config", config, "import", DEMO) == 0
    capsys.readouterr()
    assert await _cli("--config", config, *INVITE) == 2
    err = capsys.readouterr().err
    assert "cannot learn the Telegram bot's username" in err and "--bot-username" in err
    assert _invites(tmp_path) == 0


async def test_the_running_service_teaches_the_cli_the_username(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}"
    async with FakeTelegramServer(bot_username="xinhua_grid_bot") as tg:
        settings = load_settings(
            database_url=database_url, demo=True, secret_key="links-test",
            telegram_token=tg.token, telegram_api_url=tg.base_url,
            telegram_file_url=tg.file_url, media_dir=tmp_path / "media",
        )
        app = Gridbot(settings)
        await app.prepare()
        app.enable("telegram")
        await app.start()
        await app.stop()

    # the administrator's shell has neither the token nor network access to Telegram
    assert await _cli("--config", _config(tmp_path), *INVITE) == 0
    assert "telegram: https://t.me/xinhua_grid_bot?start=" in capsys.readouterr().out


async def test_stairwell_sheets_encode_the_real_bot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: list[str] = []
    real_sheet = cli_admin.write_sheet

    def spy(
        pages: list[tuple[str, BuildingPage]], words: SheetWords, folder: Path, stem: str
    ) -> list[Path]:
        encoded.extend(page.link for _, page in pages)
        return real_sheet(pages, words, folder, stem)

    monkeypatch.setattr(cli_admin, "write_sheet", spy)
    async with FakeTelegramServer(bot_username="xinhua_grid_bot") as tg:
        config = _config(tmp_path, telegram_token=tg.token, telegram_api_url=tg.base_url)
        assert await _cli("--config", config, "import", DEMO) == 0
        assert await _cli("--config", config, "qr-sheet", "--grid", "xh-g1-m1") == 0
    assert encoded and all(
        link.startswith("https://t.me/xinhua_grid_bot?start=i") for link in encoded
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_wechat_down_still_prints_the_invite_and_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(
        tmp_path,
        wechat_appid=SAMPLE_APPID,
        wechat_secret="secret",
        wechat_api_url=f"http://127.0.0.1:{_closed_port()}",
    )
    assert await _cli("--config", config, "import", DEMO) == 0
    capsys.readouterr()

    code = await _cli("--config", config, *INVITE, "--bot-username", "xinhua_grid_bot", "--json")
    out, err = capsys.readouterr()
    assert code == cli_admin.EXIT_PARTIAL == 3
    info = json.loads(out)  # the invite is printed, whole
    assert info["telegram_link"] == f"https://t.me/xinhua_grid_bot?start={info['token']}"
    assert await asyncio.to_thread(Path(info["qr_png"]).is_file)
    assert "wechat_error" in info
    assert err.startswith(f"warning: invite #{info['id']} created, but its WeChat QR code")
    assert _invites(tmp_path) == 1


async def test_a_wechat_only_deployment_prints_wechat_codes_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = FakeWeChatServer()
    async with api.running():
        config = _config(
            tmp_path, wechat_appid=SAMPLE_APPID, wechat_secret=api.secret,
            wechat_api_url=api.base_url,
        )
        assert await _cli("--config", config, "import", DEMO) == 0
        capsys.readouterr()
        assert await _cli("--config", config, *INVITE, "--json") == 0
        info = json.loads(capsys.readouterr().out)
        assert await _cli("--config", config, "qr-sheet", "--grid", "xh-g1-m1") == 0
        sheets = capsys.readouterr().out.split()
    assert info["telegram_link"] is None and info["qr_png"] is None
    assert info["wechat_qr_url"].startswith("http://weixin.qq.com/q/")
    assert [Path(p).name for p in sheets] == [
        *(f"sheet-xh-g1-m1-wechat-xh-b0{i}.png" for i in (1, 2, 3)),
        "sheet-xh-g1-m1-wechat.pdf",
    ]
