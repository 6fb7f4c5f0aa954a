"""PostgreSQL goes away mid-burst (every connection dropped, new ones refused for a while)
and comes back: the service reconnects by itself, says "not ready" meanwhile, and loses no
order — the updates it could not store were answered 500 (webhook) or not confirmed
(polling), so Telegram delivered them again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.faults.rig import Rig, TcpProxy, fake_bot_api

pytestmark = pytest.mark.faults

RESIDENTS = 10
OUTAGE_SECONDS = 6


async def readyz(port: int) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        try:
            return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code
        except httpx.HTTPError:
            return 0


@pytest.mark.parametrize("mode", ["webhook", "polling"])
async def test_the_database_restarting_mid_burst_loses_nothing(
    database_url: str, tmp_path: Path, mode: str
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("an embedded SQLite file does not go away")
    real = urlsplit(database_url)
    async with fake_bot_api() as tg, TcpProxy(real.hostname or "127.0.0.1",
                                              real.port or 5432) as proxy:
        proxied = urlunsplit(real._replace(netloc=real.netloc.replace(
            f"{real.hostname}:{real.port}", f"127.0.0.1:{proxy.port}")))
        rig = Rig(tg, proxied, tmp_path, mode=mode)
        await rig.prepare(RESIDENTS)
        service = rig.service()
        await service.start()
        try:
            await service.ready()
            burst = asyncio.gather(*(rig.place_order(u, patience=90) for u in rig.residents))
            await tg.wait_until(lambda: rig.replies() >= RESIDENTS * 2, timeout=60)
            proxy.cut()
            cut_at = time.monotonic()
            await asyncio.sleep(1)
            not_ready = await readyz(rig.port)
            await asyncio.sleep(OUTAGE_SECONDS - 1)
            proxy.restore()
            await service.ready(timeout=60)
            back_after = time.monotonic() - cut_at
            await burst
            await rig.settle()
        finally:
            stop_seconds = await service.stop()
        f = rig.figures
        print(f"\n[database away {OUTAGE_SECONDS} s, {mode}] {f.line()}; ready again "
              f"{back_after:.1f} s after the cut; SIGTERM stop {stop_seconds:.1f} s")
        assert not_ready == 503
        assert f.lost == 0 and f.duplicated == 0 and f.unsent_rows == 0, service.tail()
        assert f.gave_up == 0, service.tail()
        assert f.stored == RESIDENTS == len(f.acknowledged)
