"""``gridbot invite`` with a WeChat QR code, ``gridbot wechat menu``, and the shared token."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bot.channels.wechat import WeChatApi
from bot.cli import main
from models.db import make_engine, make_sessionmaker, upgrade
from tests.fakes.wechat_server import SAMPLE_APPID, FakeWeChatServer


def _config(tmp_path: Path, api: FakeWeChatServer, database_url: str) -> Path:
    path = tmp_path / "gridbot.toml"
    path.write_text(
        f'database_url = "{database_url}"\n'
        f'secret_key = "cli-test"\n'
        f'qr_dir = "{tmp_path / "qr"}"\n'
        f'wechat_appid = "{SAMPLE_APPID}"\n'
        f'wechat_secret = "{api.secret}"\n'
        f'wechat_api_url = "{api.base_url}"\n'
    )
    return path


async def test_invite_prints_a_wechat_qr_code(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = FakeWeChatServer()
    async with api.running():
        config = str(_config(tmp_path, api, database_url))
        assert await asyncio.to_thread(main, ["--config", config, "import",
                                              str(Path("bot/demo/community.yaml"))]) == 0
        capsys.readouterr()
        code = await asyncio.to_thread(main, [
            "--config", config, "invite", "--role", "resident", "--grid", "xh-g1-m1",
            "--building", "xh-b01", "--json"])
        assert code == 0
        info = json.loads(capsys.readouterr().out)
        code = await asyncio.to_thread(main, [
            "--config", config, "invite", "--role", "member", "--grid", "xh-g1-m1",
            "--days", "60", "--json"])
        member = json.loads(capsys.readouterr().out)
    stairwell, single = api.qrcodes
    assert stairwell["action_name"] == "QR_LIMIT_STR_SCENE"  # stairwell codes never expire
    assert stairwell["action_info"]["scene"]["scene_str"] == info["token"]
    assert single["action_name"] == "QR_STR_SCENE"
    assert single["expire_seconds"] == 30 * 24 * 3600  # WeChat's longest
    assert single["action_info"]["scene"]["scene_str"] == member["token"]
    assert info["wechat_qr_url"].startswith("http://weixin.qq.com/q/")
    assert await asyncio.to_thread(Path(info["wechat_qr_png"]).is_file)


async def test_menu_is_installed(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = FakeWeChatServer()
    async with api.running():
        config = str(_config(tmp_path, api, database_url))
        assert await asyncio.to_thread(main, ["--config", config, "wechat", "menu"]) == 0
    (menu,) = api.menus
    names = [b["name"] for b in menu["button"]]
    assert names == ["报事", "我的工单", "我的网格"]
    keys = [b.get("key") for b in menu["button"][1]["sub_button"]]
    assert keys == ["myorders", "tasks", "queue"]
    keys = [b.get("key") for b in menu["button"][2]["sub_button"]]
    assert keys == ["mygrid", "me", "link", "help"]
    assert "installed" in capsys.readouterr().out


async def test_two_processes_share_one_token(database_url: str) -> None:
    api = FakeWeChatServer()
    async with api.running():
        engine = make_engine(database_url)
        await upgrade(engine)
        maker = make_sessionmaker(engine)
        first = WeChatApi(SAMPLE_APPID, api.secret, maker, base_url=api.base_url)
        second = WeChatApi(SAMPLE_APPID, api.secret, maker, base_url=api.base_url)
        try:
            tokens = await asyncio.gather(*(first.access_token() for _ in range(5)))
            assert len(set(tokens)) == 1
            assert await second.access_token() == tokens[0]  # read from the shared cache
            assert len(api.token_calls) == 1
            # WeChat refuses it: one forced refresh, and the other process follows.
            api.expire_token()
            fresh = await first.access_token(stale=tokens[0])
            assert fresh != tokens[0]
            assert await second.access_token(stale=tokens[0]) == fresh
            assert len(api.token_calls) == 2
        finally:
            await first.close()
            await second.close()
            await engine.dispose()
