"""A plain ``pip install`` (a wheel, not an editable checkout) runs the demo from anywhere.

The wheel is built from the tracked files, installed without dependencies into a fresh
virtual environment that borrows this test environment's third-party packages (offline), and
``gridbot run`` is started from an unrelated directory until ``/healthz`` answers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0
STEP_TIMEOUT = 120


def _run(*argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _tracked_copy(target: Path) -> Path:
    """The project's tracked files only (no .venv, no caches, no egg-info), as a clean tree."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know the tracked files")
    files = _run("git", "ls-files", "-z", cwd=ROOT).split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status, response.read().decode()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the built wheel installed in it; its ``bin`` folder."""
    base = tmp_path_factory.mktemp("packaging")
    source = _tracked_copy(base / "src")
    _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--no-index", "-q", "-w", base / "dist", source,
    )  # fmt: skip
    (wheel,) = (base / "dist").glob("gridbot-*.whl")
    venv = base / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    )
    # Dependencies from this environment: a plain path entry, so that the editable install
    # of the checkout (a .pth hook there) is NOT picked up.
    (site / "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        "-q", wheel,
    )  # fmt: skip
    return venv / "bin"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GRIDBOT_") and k not in ("PYTHONPATH", "STATE_DIRECTORY")
    }
    env.update(extra)
    return env


def test_the_wheel_carries_its_data_and_not_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    probe = (
        "import bot, locales, models.db as db; from bot.config import load_settings; "
        "from bot.app import DEMO_DUTIES, DEMO_FILE; s = load_settings(); "
        "print(bot.__file__); print(s.locales_dir); print(db.MIGRATIONS_DIR); "
        "print(all(p.is_file() for p in (DEMO_FILE, *DEMO_DUTIES)))"
    )
    out = _run(installed / "python", "-c", probe, cwd=tmp_path, env=_clean_env()).split("\n")
    module, catalogs, migrations, demo = out[:4]
    venv = installed.parent
    assert Path(module).is_relative_to(venv), module  # the installed copy, not the checkout
    assert (Path(catalogs) / "zh_CN" / "LC_MESSAGES" / "gridbot.po").is_file()
    assert (Path(catalogs) / "en" / "LC_MESSAGES" / "gridbot.po").is_file()
    assert Path(catalogs).is_relative_to(venv)
    assert any((Path(migrations) / "versions").glob("0001_*.py"))
    assert demo == "True"


def test_the_installed_demo_runs_from_another_directory(
    installed: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = _free_port()
    env = _clean_env(GRIDBOT_WEB_PORT=str(port), GRIDBOT_LOG_LEVEL="WARNING")
    out, err = elsewhere / "out.txt", elsewhere / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [str(installed / "gridbot"), "run"], cwd=elsewhere, env=env, stdout=stdout,
            stderr=stderr,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT
        status = 0
        while time.monotonic() < deadline and status != 200:
            assert proc.poll() is None, f"gridbot run exited\n{out.read_text()}{err.read_text()}"
            with contextlib.suppress(OSError):
                status, _ = _get(f"http://127.0.0.1:{port}/healthz")
            time.sleep(0.1)
        assert status == 200, f"not healthy in {START_TIMEOUT}s\n{err.read_text()}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=15)
    assert "Traceback" not in err.read_text(), err.read_text()
    assert "Gridbot is running" in out.read_text()
    assert (elsewhere / "gridbot.db").is_file()  # state in the working directory, as documented
