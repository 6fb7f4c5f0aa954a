"""Fault runs with real processes, reported as figures (not pass/fail).

Each round: a fresh database (SQLite file, or a fresh PostgreSQL database dropped after), the
fake Bot API, N residents bound on Telegram, `gridbot run` as a child process; the residents
place orders at once and, at a random moment of the burst, the fault strikes:

* ``kill``: ``kill -9`` of the service, restarted at once (as systemd would after RestartSec);
* ``term``: SIGTERM under load (the seconds it took to exit), then a restart;
* ``db``: PostgreSQL cut for ``--outage`` seconds (every connection dropped, new ones refused,
  through a relay: the shared server itself is not restarted).

Printed per round and in total: orders acknowledged (the resident saw a number) / stored /
duplicated / lost, replies sent twice, rows left unsent, residents who got no answer, 429s, and
the seconds from the fault to the first reply after it.

    .venv/bin/python bench/faults.py                       # kill, SQLite and PostgreSQL, polling
    .venv/bin/python bench/faults.py --fault kill term db --mode webhook --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.faults.rig import Figures, Rig, TcpProxy, fake_bot_api  # noqa: E402
from tests.support.pg import fresh_database  # noqa: E402


async def one_round(db: str, mode: str, fault: str, residents: int, outage: float,
                    tmp: Path) -> tuple[Figures, float | None]:
    """One round; the figures, and for ``term`` the seconds SIGTERM took."""
    stop_seconds = None
    async with contextlib.AsyncExitStack() as stack:
        if db == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp / 'gridbot.db'}"
        else:
            url = await stack.enter_async_context(fresh_database("gridbot_faults"))
        async with fake_bot_api() as tg, TcpProxy("127.0.0.1", 5432) as proxy:
            if fault == "db":
                parts = urlsplit(url)
                netloc = f"{parts.username}@127.0.0.1:{proxy.port}"
                url = urlunsplit(parts._replace(netloc=netloc))
            rig = Rig(tg, url, tmp, mode=mode)
            await rig.prepare(residents)
            service = rig.service()
            await service.start()
            await service.ready()
            burst = asyncio.gather(*(rig.place_order(u, patience=90) for u in rig.residents))
            # A random moment of the burst: after 1 to 6 replies per resident on average.
            await tg.wait_until(lambda: rig.replies() >= residents * random.uniform(1, 6),
                                timeout=120)
            before, struck = rig.replies(), time.monotonic()
            if fault == "kill":
                await service.kill()
                rig.figures.kills += 1
            elif fault == "term":
                stop_seconds = await service.stop()
                # Replies sent while stopping do not count: from the exit to the first
                # reply of the restarted service.
                before, struck = rig.replies(), time.monotonic()
            else:
                proxy.cut()
                await asyncio.sleep(outage)
                proxy.restore()
            if fault in ("kill", "term"):
                service = rig.service()
                await service.start()
            try:
                await tg.wait_until(lambda: rig.replies() > before, timeout=90)
                rig.figures.recovery_seconds.append(time.monotonic() - struck)
            except (TimeoutError, AssertionError):
                pass
            await burst
            await rig.settle()
            await service.stop()
        return rig.figures, stop_seconds
    raise AssertionError("unreachable")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fault", nargs="+", choices=("kill", "term", "db"), default=["kill"])
    parser.add_argument("--db", nargs="+", choices=("sqlite", "postgresql"),
                        default=["sqlite", "postgresql"])
    parser.add_argument("--mode", nargs="+", choices=("polling", "webhook"),
                        default=["polling"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--residents", type=int, default=20)
    parser.add_argument("--outage", type=float, default=5.0, help="seconds the database is away")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    random.seed(args.seed)
    bad = 0
    for fault in args.fault:
        for db in args.db:
            if fault == "db" and db == "sqlite":
                continue
            for mode in args.mode:
                totals = Figures()
                recov: list[float] = []
                stops: list[float] = []
                for n in range(args.rounds):
                    with tempfile.TemporaryDirectory(prefix="gridbot-faults-") as tmp:
                        f, stop = await one_round(db, mode, fault, args.residents,
                                                  args.outage, Path(tmp))
                    print(f"{fault:4} {db:10} {mode:7} round {n + 1}: {f.line()}"
                          + (f"; SIGTERM exit {stop:.1f} s" if stop is not None else ""),
                          flush=True)
                    totals.residents += f.residents
                    totals.kills += f.kills
                    totals.acknowledged |= {f"{n}:{x}" for x in f.acknowledged}
                    totals.stored += f.stored
                    totals.duplicated += f.duplicated
                    totals.lost += f.lost
                    totals.sends_doubled += f.sends_doubled
                    totals.unsent_rows += f.unsent_rows
                    totals.gave_up += f.gave_up
                    totals.too_many_requests += f.too_many_requests
                    recov += f.recovery_seconds
                    stops += [stop] if stop is not None else []
                    bad += f.lost + f.duplicated + f.unsent_rows + f.gave_up
                med = f"{statistics.median(recov):.1f}" if recov else "–"
                worst = f"{max(recov):.1f}" if recov else "–"
                stop_text = (
                    f", SIGTERM exit median {statistics.median(stops):.1f} s" if stops else ""
                )
                print(f"== {fault} {db} {mode}: {args.rounds} rounds, "
                      f"{len(totals.acknowledged)} acknowledged, {totals.stored} stored, "
                      f"{totals.duplicated} duplicated, {totals.lost} lost, "
                      f"{totals.sends_doubled} sent twice, {totals.unsent_rows} unsent, "
                      f"{totals.gave_up} gave up, {totals.too_many_requests} × 429; "
                      f"fault → first reply median {med} s, worst {worst} s{stop_text}",
                      flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(asyncio.run(main()))
