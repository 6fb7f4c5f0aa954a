"""Send budget benchmark: what one shared send slot costs, and what two instances reach.

Three budgets, in the same run (see bench/README.md, section "Send budget"):

* ``local``: :class:`bot.send_budget.LocalBudget`, in-process (the baseline, and what SQLite
  uses). Two processes each have their own: together they send twice the limit.
* ``postgres``: :class:`bot.send_budget.PostgresBudget` on a fresh database at 127.0.0.1:5432.
* ``redis``: the same counting in one Lua script per take at 127.0.0.1:6379 (redis-py; here
  only, to compare: Gridbot does not use Redis).

Phases: (1) the cost of one take + record (median, p99) from one process, limits lifted;
(2) two processes sending to 200 chats under a 30 msg/s limit for ``--seconds``: the rate
together and the most sends started in any one second; (3) the outbox claim at ``--pending``
rows due (65,000: a Yunfu reminder burst), before and after the per-chat rule.

    .venv/bin/python bench/send_budget.py [--takes 2000] [--seconds 5] [--pending 65000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, or_, select, text, update  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine  # noqa: E402

from bot.channels.base import Limits  # noqa: E402
from bot.send_budget import (  # noqa: E402
    IN_FLIGHT_BOUND,
    IN_FLIGHT_POLL,
    WINDOW_MARGIN,
    LocalBudget,
    PostgresBudget,
)
from models import Base, OutboxMessage  # noqa: E402

PG_ADMIN = os.environ.get("GRIDBOT_BENCH_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GRIDBOT_BENCH_REDIS", "redis://127.0.0.1:6379/0")
RESULTS_DIR = ROOT / "bench" / "results"
LIMIT = 30
#: Seconds a simulated request lasts.
SEND_SECONDS = 0.005

# KEYS: pause, in flight (zset), done (zset), chat last (hash).
# ARGV: chat, interval, limit, window, bound, poll, slot id.
_REDIS_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if paused > now then return tostring(paused - now) end
local last = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
local interval = tonumber(ARGV[2])
if last + interval > now then return tostring(last + interval - now) end
local window = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[5]))
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3])
if n >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if oldest[2] then return tostring(math.max(tonumber(oldest[2]) + window - now, 0.001)) end
  return ARGV[6]
end
redis.call('ZADD', KEYS[2], now, ARGV[7])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[7])
return '0'
"""
# KEYS: in flight, done, chat last, chat slot. ARGV: chat.
_REDIS_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local slot = redis.call('HGET', KEYS[4], ARGV[1])
if slot then
  redis.call('ZREM', KEYS[1], slot)
  redis.call('ZADD', KEYS[2], now, slot)
  redis.call('HDEL', KEYS[4], ARGV[1])
end
redis.call('HSET', KEYS[3], ARGV[1], tostring(now))
return 1
"""


class RedisBudget:
    """The global window, the per-chat interval and the pause in Redis (no group window)."""

    def __init__(self, url: str, channel: str, limits: Limits) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(url)
        self.limits = limits
        prefix = f"gridbot:budget:{channel}:"
        self.keys = [prefix + k for k in ("pause", "flight", "done", "last", "slot")]
        self._take = self.redis.register_script(_REDIS_TAKE)
        self._record = self.redis.register_script(_REDIS_RECORD)

    async def chat_wait(self, chat_id: str) -> float:
        seconds, micros = await self.redis.time()
        now = seconds + micros / 1e6
        paused = float(await self.redis.get(self.keys[0]) or 0)
        last = float(await self.redis.hget(self.keys[3], chat_id) or 0)
        return max(paused - now, last + self.limits.per_chat_interval - now, 0.0)

    async def take(self, chat_id: str) -> float:
        k = self.keys
        argv = [chat_id, self.limits.per_chat_interval, self.limits.global_per_second,
                1.0 + WINDOW_MARGIN, IN_FLIGHT_BOUND, IN_FLIGHT_POLL, uuid.uuid4().hex]
        return float(await self._take(keys=[k[0], k[1], k[2], k[3], k[4]], args=argv))

    async def record(self, chat_id: str) -> None:
        k = self.keys
        await self._record(keys=[k[1], k[2], k[3], k[4]], args=[chat_id])

    async def pause(self, seconds: float) -> None:
        raise NotImplementedError

    async def reset(self) -> None:
        await self.redis.delete(*self.keys)


async def _pg_database() -> str:
    name = f"gridbot_bench_{uuid.uuid4().hex[:8]}"
    engine = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    await engine.dispose()
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    await engine.dispose()
    return url


async def _drop(url: str) -> None:
    engine = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    await engine.dispose()


def _make(kind: str, url: str, limits: Limits, channel: str) -> tuple[Any, AsyncEngine | None]:
    if kind == "local":
        return LocalBudget(limits), None
    if kind == "postgres":
        engine = create_async_engine(url, pool_size=5)
        return PostgresBudget(engine, channel, limits), engine
    return RedisBudget(REDIS_URL, channel, limits), None


async def _cost(kind: str, url: str, takes: int) -> dict[str, float]:
    """Take + record, one after the other, limits lifted: the cost of the budget itself."""
    limits = Limits(per_chat_interval=0.0, global_per_second=9000, group_per_minute=10**6)
    budget, engine = _make(kind, url, limits, f"cost-{uuid.uuid4().hex[:6]}")
    take_ms: list[float] = []
    record_ms: list[float] = []
    for n in range(takes):
        chat = str(1000 + n % 200)
        t0 = time.perf_counter()
        wait = await budget.take(chat)
        t1 = time.perf_counter()
        await budget.record(chat)
        t2 = time.perf_counter()
        assert wait == 0, wait
        take_ms.append((t1 - t0) * 1000)
        record_ms.append((t2 - t1) * 1000)
    if engine is not None:
        await engine.dispose()
    if kind == "redis":
        await budget.reset()

    def p99(xs: list[float]) -> float:
        return sorted(xs)[int(len(xs) * 0.99) - 1]

    return {
        "take_median_ms": statistics.median(take_ms),
        "take_p99_ms": p99(take_ms),
        "record_median_ms": statistics.median(record_ms),
        "record_p99_ms": p99(record_ms),
    }


def _sender_process(kind: str, url: str, channel: str, seconds: float, start_at: float,
                    queue: Any) -> None:
    """One instance: 40 senders (chats 200 apart per process) for ``seconds``."""

    async def run() -> list[float]:
        limits = Limits(per_chat_interval=1.0, global_per_second=LIMIT, group_per_minute=20)
        budget, engine = _make(kind, url, limits, channel)
        gate = asyncio.Lock()
        starts: list[float] = []
        if time.time() > start_at:
            raise SystemExit("started after the common start: raise the delay")
        await asyncio.sleep(max(start_at - time.time(), 0))
        end = start_at + seconds

        async def sender(chat: str) -> None:
            # As Deliverer._take_slot: one sender of the process at a time asks; it waits
            # for the channel's window holding the gate, and for its chat without it.
            while time.time() < end:
                async with gate:
                    while (wait := await budget.take(chat)) > 0:
                        if await budget.chat_wait(chat) > 0 or time.time() + wait > end:
                            break
                        await asyncio.sleep(wait)
                if wait > 0:
                    await asyncio.sleep(min(wait, max(end - time.time(), 0)))
                    continue
                starts.append(time.time())
                await asyncio.sleep(SEND_SECONDS)
                await budget.record(chat)

        pid = os.getpid()
        await asyncio.gather(*(sender(f"{pid}-{n}") for n in range(40)))
        if engine is not None:
            await engine.dispose()
        return starts

    queue.put(asyncio.run(run()))


def _two_instances(kind: str, url: str, seconds: float) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    channel = f"two-{uuid.uuid4().hex[:6]}"
    start_at = time.time() + 8.0  # both processes imported and connected (a loaded machine)
    procs = [ctx.Process(target=_sender_process, args=(kind, url, channel, seconds, start_at,
                                                        queue)) for _ in range(2)]
    for p in procs:
        p.start()
    starts = sorted(queue.get() + queue.get())
    for p in procs:
        p.join()
    most = 0
    j = 0
    for i, t in enumerate(starts):  # most sends started within any one second
        while starts[j] <= t - 1.0:
            j += 1
        most = max(most, i - j + 1)
    return {"sent": len(starts), "rate_per_s": len(starts) / seconds, "max_in_1s": most}


async def _claim_cost(url: str, pending: int, repeat: int) -> dict[str, float]:
    """The outbox claim at ``pending`` due rows (one chat per 10 rows), old and new."""
    from bot.delivery import Deliverer
    from models.db import make_sessionmaker

    engine = create_async_engine(url)
    due = datetime(2026, 1, 1, tzinfo=UTC)
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE outbox RESTART IDENTITY"))
        rows = [{"channel": "telegram", "chat_id": str(10_000 + n // 10), "payload": {"text": "x"},
                 "status": "pending", "attempts": 0, "not_before": due, "created_at": due}
                for n in range(pending)]
        for i in range(0, pending, 5000):
            await conn.execute(insert(OutboxMessage), rows[i:i + 5000])
        await conn.execute(text("ANALYZE outbox"))

    class _Channel:
        name = "telegram"
        limits = Limits()

    sessionmaker = make_sessionmaker(engine)
    deliverer = Deliverer(sessionmaker, {"telegram": _Channel()})  # type: ignore[dict-item]
    results: dict[str, float] = {}

    async def timed(label: str, claim: Callable[[Any], Awaitable[int]]) -> None:
        ms = []
        for _ in range(repeat):
            async with sessionmaker() as session:
                t0 = time.perf_counter()
                n = await claim(session)
                ms.append((time.perf_counter() - t0) * 1000)
                await session.rollback()  # leave the rows due
        results[f"{label}_median_ms"] = statistics.median(ms)
        results[f"{label}_rows"] = n

    async def new(session: Any) -> int:
        return len(await deliverer._claim_rows(session, ["telegram"]))

    async def old(session: Any) -> int:
        # The claim before the per-chat rule: first due rows by id, FOR UPDATE SKIP LOCKED,
        # then the same UPDATE.
        now = datetime.now(UTC)
        rows = list((await session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.channel.in_(["telegram"]),
                   or_((OutboxMessage.status == "pending") & (OutboxMessage.not_before <= now),
                       (OutboxMessage.status == "sending") & (OutboxMessage.claimed_until < now)))
            .order_by(OutboxMessage.id).limit(200).with_for_update(skip_locked=True))).all())
        await session.execute(
            update(OutboxMessage).where(OutboxMessage.id.in_([r.id for r in rows]))
            .values(status="sending", claimed_until=now + timedelta(seconds=60), claimed_by="x"))
        return len(rows)

    await timed("claim_before", old)
    await timed("claim_per_chat", new)
    await engine.dispose()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--takes", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pending", type=int, default=65_000)
    parser.add_argument("--kinds", default="local,postgres,redis")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    url = asyncio.run(_pg_database())
    report: dict[str, Any] = {"load_before": os.getloadavg(), "limit": LIMIT}
    try:
        for kind in kinds:
            cost = asyncio.run(_cost(kind, url, args.takes))
            two = _two_instances(kind, url, args.seconds)
            report[kind] = {**cost, **two}
            print(f"{kind:9} take p50 {cost['take_median_ms']:.3f} ms  p99 "
                  f"{cost['take_p99_ms']:.3f} ms  record p50 {cost['record_median_ms']:.3f} ms"
                  f" | two processes: {two['rate_per_s']:.1f} msg/s, at most "
                  f"{two['max_in_1s']} started in one second (limit {LIMIT})", flush=True)
        if args.pending:
            claim = asyncio.run(_claim_cost(url, args.pending, 20))
            report["claim"] = claim
            print(f"claim at {args.pending} due rows: before {claim['claim_before_median_ms']:.1f}"
                  f" ms ({claim['claim_before_rows']} rows), per-chat rule "
                  f"{claim['claim_per_chat_median_ms']:.1f} ms "
                  f"({claim['claim_per_chat_rows']} rows)")
    finally:
        asyncio.run(_drop(url))
    report["load_after"] = os.getloadavg()
    print(f"load average before {report['load_before'][0]:.2f}, after "
          f"{report['load_after'][0]:.2f} (2 cores, shared)")
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"send_budget-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"written: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
