"""Two `gridbot run` on one PostgreSQL behind the compose proxy's nginx configuration
(deploy/nginx.compose.conf): updates reach either instance; one instance is killed mid-burst
and the proxy sends what it could not answer to the other. Every order once, none lost."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.faults.rig import Rig, fake_bot_api, free_port

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
RESIDENTS = 16


@contextlib.asynccontextmanager
async def proxy(tmp: Path, port: int, upstreams: list[int]) -> AsyncIterator[None]:
    """nginx with deploy/nginx.compose.conf, the instances' names replaced by local ports."""
    site = (ROOT / "deploy" / "nginx.compose.conf").read_text()
    ports = iter(upstreams)
    site = re.sub(r"server\s+gridbot-\d+:8080", lambda _: f"server 127.0.0.1:{next(ports)}",
                  site)
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    (tmp / "site.conf").write_text(site)
    (tmp / "nginx.conf").write_text(
        f"pid {tmp}/nginx.pid;\nerror_log {tmp}/nginx-error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp}/body;\n"
        f"  proxy_temp_path {tmp}/proxy;\n  include {tmp}/site.conf;\n}}\n"
    )
    assert NGINX is not None
    proc = await asyncio.create_subprocess_exec(
        NGINX, "-p", f"{tmp}/", "-c", str(tmp / "nginx.conf"), "-g", "daemon off;",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.terminate()
        await proc.wait()


async def updates_handled(port: int) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return sum(float(v) for v in re.findall(
        r'^gridbot_updates_total\{[^}]*outcome="ok"[^}]*\} (\S+)$', text, re.M))


@pytest.mark.skipif(NGINX is None, reason="no nginx (tests/run.sh installs Debian's)")
async def test_two_instances_behind_the_proxy_one_killed_mid_burst(
    database_url: str, tmp_path: Path
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite is single-instance")
    proxy_port, a_port, b_port = free_port(), free_port(), free_port()
    async with fake_bot_api() as tg:
        rig = Rig(tg, database_url, tmp_path, mode="webhook")
        await rig.prepare(RESIDENTS)
        hook = {"GRIDBOT_TELEGRAM_WEBHOOK_URL":
                f"http://127.0.0.1:{proxy_port}/telegram/webhook"}
        a, b = rig.service(a_port, **hook), rig.service(b_port, **hook)
        async with proxy(tmp_path, proxy_port, [a_port, b_port]):
            await a.start()
            await b.start()
            try:
                await a.ready()
                await b.ready()
                burst = asyncio.gather(*(rig.place_order(u, patience=60)
                                         for u in rig.residents))
                await tg.wait_until(lambda: rig.replies() >= RESIDENTS * 3, timeout=60)
                served = (await updates_handled(a_port), await updates_handled(b_port))
                await a.kill()
                rig.figures.kills += 1
                await burst
                await rig.settle()
            finally:
                await b.stop()
                await a.stop()
        f = rig.figures
        print(f"\n[two instances behind nginx, one killed] {f.line()}; updates handled "
              f"before the kill: {served[0]:.0f} by one, {served[1]:.0f} by the other")
        assert served[0] > 0 and served[1] > 0, "the proxy used both instances"
        assert f.lost == 0 and f.duplicated == 0 and f.unsent_rows == 0 and f.gave_up == 0
        assert f.stored == RESIDENTS == len(f.acknowledged)
