"""Real processes and real faults: ``gridbot run`` as a child process against the fake Bot API,
residents placing orders through it, and the figures a fault run reports.

Used by ``tests/faults/`` (small runs in CI) and ``bench/faults.py`` (more rounds, printed).
The service runs exactly as an operator starts it (``python -m bot.cli run``, settings from the
environment); the test process owns the fake Bot API server and the residents.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
from sqlalchemy import func, select

from bot.app import Gridbot
from bot.config import load_settings
from models import (
    Building,
    Household,
    Identity,
    Order,
    OutboxMessage,
    Person,
    Role,
    VisitPlan,
)
from tests.fakes.telegram_server import FakeTelegramServer, FakeUser, SentMessage

ROOT = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"工单号\D{0,3}(\d{6})")
FIRST_RESIDENT = 50_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Figures:
    """What a fault run is reported as (not only pass/fail)."""

    residents: int = 0
    kills: int = 0
    acknowledged: set[str] = field(default_factory=set)  # order numbers residents were told
    stored: int = 0
    duplicated: int = 0  # residents with more than one stored order
    lost: int = 0  # numbers told that are not stored
    sends_doubled: int = 0  # receipts that reached a chat more than once
    unsent_rows: int = 0
    recovery_seconds: list[float] = field(default_factory=list)  # kill → first reply after
    too_many_requests: int = 0
    gave_up: int = 0  # residents who saw no reply to a step within the patience

    def line(self) -> str:
        rec = ", ".join(f"{s:.1f}" for s in self.recovery_seconds) or "–"
        return (
            f"residents {self.residents}, kills {self.kills}: acknowledged "
            f"{len(self.acknowledged)}, stored {self.stored}, duplicated {self.duplicated}, "
            f"lost {self.lost}, sends doubled {self.sends_doubled}, unsent {self.unsent_rows}, "
            f"residents who gave up {self.gave_up}, 429s {self.too_many_requests}, "
            f"kill → first reply s: {rec}"
        )


class Service:
    """One ``gridbot run`` child process."""

    def __init__(self, env: dict[str, str], log: Path, port: int) -> None:
        self.env, self.log, self.port = env, log, port
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.cli", "run", cwd=ROOT, env=self.env,
                stdout=out, stderr=out,
            )

    async def ready(self, timeout: float = 60, *, scheduler: str | None = None) -> None:  # noqa: ASYNC109
        """Wait until /readyz answers 200 (and, if given, the scheduler is ``leader`` or
        ``standby`` there)."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    raise RuntimeError(f"gridbot exited {self.proc.returncode}: {self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    answer = await client.get(f"http://127.0.0.1:{self.port}/readyz")
                    if answer.status_code == 200 and (
                        scheduler is None or answer.json().get("scheduler") == scheduler
                    ):
                        return
                await asyncio.sleep(0.1)
        raise TimeoutError(f"gridbot not ready in {timeout} s: {self.tail()}")

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        await self.proc.wait()

    async def stop(self) -> float:
        """SIGTERM; seconds until the process was gone."""
        started = time.monotonic()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return time.monotonic() - started

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Rig:
    """The fake Bot API, a prepared database and N bound residents; starts services."""

    def __init__(self, tg: FakeTelegramServer, database_url: str, tmp: Path, *,
                 mode: str = "webhook") -> None:
        self.tg, self.database_url, self.tmp, self.mode = tg, database_url, tmp, mode
        self.port = free_port()
        self.residents: list[FakeUser] = []
        self.figures = Figures()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDBOT_")}
        env.update({
            "GRIDBOT_DATABASE_URL": self.database_url,
            "GRIDBOT_TELEGRAM_TOKEN": self.tg.token,
            "GRIDBOT_TELEGRAM_API_URL": self.tg.base_url,
            "GRIDBOT_TELEGRAM_FILE_URL": self.tg.file_url,
            "GRIDBOT_TELEGRAM_MODE": self.mode,
            "GRIDBOT_WEB_PORT": str(self.port),
            "GRIDBOT_WEBCHAT_ENABLED": "false",
            "GRIDBOT_DEMO": "false",
            "GRIDBOT_SECRET_KEY": "fault-rig-secret",
            "GRIDBOT_MEDIA_DIR": str(self.tmp / "media"),
            "GRIDBOT_QUIET_HOURS": "00:00-00:00",
            "GRIDBOT_LOG_LEVEL": "WARNING",
        })
        if self.mode == "webhook":
            env["GRIDBOT_TELEGRAM_WEBHOOK_URL"] = f"http://127.0.0.1:{self.port}/telegram/webhook"
            env["GRIDBOT_TELEGRAM_WEBHOOK_SECRET"] = "fault-rig-webhook"
        return env

    def service(self, port: int | None = None, **env: str) -> Service:
        """A ``gridbot run`` (not started) on ``port`` (the rig's by default)."""
        port = port or self.port
        settings = {**self.env(), "GRIDBOT_WEB_PORT": str(port), **env}
        return Service(settings, self.tmp / f"gridbot-{port}.log", port)

    async def prepare(self, residents: int) -> None:
        """The demo community, and ``residents`` people bound to its buildings on Telegram."""
        app = Gridbot(load_settings(database_url=self.database_url, demo=True,
                                    secret_key="fault-rig-secret",
                                    media_dir=self.tmp / "media"))
        try:
            await app.prepare()
            async with app.sessionmaker() as session, session.begin():
                buildings = (await session.scalars(select(Building).order_by(Building.id))).all()
                for n in range(residents):
                    uid = FIRST_RESIDENT + n
                    building = buildings[n % len(buildings)]
                    person = Person(name=f"居民{n}", phone=f"139{n:08d}")
                    session.add(person)
                    await session.flush()
                    session.add(Role(person_id=person.id, grid_id=building.grid_id,
                                     role="resident", building_id=building.id, room=f"{n}-1"))
                    session.add(Identity(person_id=person.id, channel="telegram",
                                         external_id=str(uid), chat_id=str(uid)))
                    self.residents.append(self.tg.user(uid, f"居民{n}"))
        finally:
            await app.engine.dispose()
        self.figures.residents = residents

    async def visit_due(self, member_key: str, uid: int, due_at: datetime) -> FakeUser:
        """A new household paired with ``member_key`` (given Telegram id ``uid``), its first
        visit due at ``due_at``: a reminder the scheduler must send exactly once."""
        app = Gridbot(load_settings(database_url=self.database_url, demo=False,
                                    secret_key="fault-rig-secret", media_dir=self.tmp / "m"))
        try:
            async with app.sessionmaker() as session, session.begin():
                member = await session.scalar(select(Person).where(Person.key == member_key))
                assert member is not None
                building = await session.scalar(select(Building).order_by(Building.id))
                assert building is not None
                household = Household(code=f"hh-fault-{uid}", grid_id=building.grid_id,
                                      building_id=building.id, kind="elderly_alone",
                                      name="故障演练户")
                session.add(household)
                session.add(Identity(person_id=member.id, channel="telegram",
                                     external_id=str(uid), chat_id=str(uid)))
                await session.flush()
                session.add(VisitPlan(household_id=household.id, member_id=member.id,
                                      frequency="weekly", starts_at=due_at))
        finally:
            await app.engine.dispose()
        return self.tg.user(uid, member_key)

    # ---- residents ----------------------------------------------------------------------

    async def place_order(self, user: FakeUser, patience: float = 45) -> str | None:
        """One resident places an order the way the chat leads them; the number they were
        told, or None if a step got no answer within ``patience`` seconds."""
        uid = user.user_id
        try:
            await user.send_command("order")
            ask = await self._next(uid, "类别", patience)
            await user.press_label(ask, "维修报修")
            await self._next(uid, "描述", patience)
            await user.send_text(f"楼道灯坏了（{uid}）")
            photo = await self._next(uid, "照片", patience)
            await user.press_label(photo, "跳过")
            where = await self._next(uid, "位置", patience)
            assert where  # a reply keyboard: its buttons send their label as text
            await user.send_text("跳过")
            confirm = await self._next(uid, "请确认", patience)
            await user.press_label(confirm, "✅ 提交")
            receipt = await self._next(uid, "工单号", patience)
        except TimeoutError:
            self.figures.gave_up += 1
            return None
        match = NUMBER.search(receipt.text or "")
        assert match, receipt.text
        self.figures.acknowledged.add(match.group(1))
        return match.group(1)

    async def _next(self, uid: int, part: str, patience: float) -> SentMessage:
        try:
            return await self.tg.wait_for(
                uid, lambda m: m.text is not None and part in m.text, timeout=patience
            )
        except AssertionError as err:  # the fake's way of saying "not within the timeout"
            raise TimeoutError(str(err)) from err

    def replies(self) -> int:
        """Messages the bot has sent to residents so far."""
        return sum(len(self.tg.sent(u.user_id)) for u in self.residents)

    # ---- figures ------------------------------------------------------------------------

    async def claimed_rows(self) -> int:
        """Outbox rows claimed (``sending``) right now, by anyone."""
        app = Gridbot(load_settings(database_url=self.database_url, demo=False,
                                    secret_key="fault-rig-secret", media_dir=self.tmp / "m"))
        try:
            async with app.sessionmaker() as session:
                return int(await session.scalar(
                    select(func.count()).select_from(OutboxMessage)
                    .where(OutboxMessage.status == "sending")) or 0)
        finally:
            await app.engine.dispose()

    async def settle(self, timeout: float = 60) -> None:  # noqa: ASYNC109
        """Wait until the outbox is empty (every row sent), then count."""
        app = Gridbot(load_settings(database_url=self.database_url, demo=False,
                                    secret_key="fault-rig-secret", media_dir=self.tmp / "m"))
        try:
            deadline = time.monotonic() + timeout
            while True:
                async with app.sessionmaker() as session:
                    unsent = int(await session.scalar(
                        select(func.count()).select_from(OutboxMessage)
                        .where(OutboxMessage.status.in_(("pending", "sending")))) or 0)
                if not unsent or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            f = self.figures
            f.unsent_rows = unsent
            async with app.sessionmaker() as session:
                orders = (await session.scalars(select(Order))).all()
            f.stored = len(orders)
            per_resident: dict[int, int] = {}
            for order in orders:
                per_resident[order.resident_id] = per_resident.get(order.resident_id, 0) + 1
            f.duplicated = sum(n - 1 for n in per_resident.values() if n > 1)
            numbers = {f"{o.id:06d}" for o in orders}
            f.lost = len(f.acknowledged - numbers)
            for user in self.residents:
                receipts = [m.text for m in self.tg.sent(user.user_id)
                            if m.text and NUMBER.search(m.text) and "已收到" in m.text]
                f.sends_doubled += max(0, len(receipts) - len(set(receipts)))
            f.too_many_requests = self.tg.too_many_requests
        finally:
            await app.engine.dispose()


class TcpProxy:
    """A TCP relay to a server (PostgreSQL) that a test can cut: every open connection is
    closed and new ones are refused until :meth:`restore` — what the service sees when its
    database restarts, without touching the real server (others use it too)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.up = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        """The database goes away: connections drop, new ones are refused."""
        self.up = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.up = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}


@contextlib.asynccontextmanager
async def fake_bot_api() -> AsyncIterator[FakeTelegramServer]:
    """The fake Bot API, redelivering a webhook update until it is answered 2xx (as
    Telegram does, for up to a day)."""
    async with FakeTelegramServer(webhook_attempts=600) as tg:
        yield tg


async def kill_and_restart(rig: Rig, service: Service, *, after_replies: int,
                           restart_delay: float = 0.0) -> Service:
    """kill -9 the service once it has sent ``after_replies`` replies, start a new one
    ``restart_delay`` seconds later, and record the seconds from the kill to the first reply
    the new one sends."""
    await rig.tg.wait_until(lambda: rig.replies() >= after_replies, timeout=120)
    await service.kill()
    killed_at, before = time.monotonic(), rig.replies()
    rig.figures.kills += 1
    await asyncio.sleep(restart_delay)
    fresh = rig.service()
    await fresh.start()
    try:
        await rig.tg.wait_until(lambda: rig.replies() > before, timeout=60)
        rig.figures.recovery_seconds.append(time.monotonic() - killed_at)
    except TimeoutError:
        pass  # nothing was left to send: the figures say so
    return fresh
