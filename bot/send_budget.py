"""One send budget per bot/account: the platform's limits, kept in-process or shared.

A platform counts what *its* bot receives, whichever process sends it: two ``gridbot run``
instances pacing themselves to 30 msg/s each send 60 msg/s to one bot. A :class:`SendBudget`
holds one channel's limits — the global per-second rate, the per-chat interval, the per-group
window and a pause asked for by the platform (``retry_after``) — and is asked before each send.

- :class:`LocalBudget`: in-process, for SQLite (one instance by design) and unlimited channels.
- :class:`PostgresBudget`: shared by every instance on one PostgreSQL database, in the tables
  ``send_budget`` (a channel's pause, and the row each take locks) and ``send_slot`` (one row per
  request: started, finished). Times come from the database server's clock
  (``clock_timestamp()``), so instances on several hosts agree on every window.

Why PostgreSQL and not Redis (``bench/send_budget.py``; figures in ``bench/README.md``): several
instances already need PostgreSQL, so the shared budget costs no new service to run, back up and
secure; a take costs a few round trips (about 1–2 ms on one host), against one slot every 33 ms
at 30 msg/s, and two processes together reach the limit with either store.

Counting (both implementations): a request counts against the global limit from the moment its
slot is taken until one second (plus :data:`WINDOW_MARGIN`) after it *finished*. A request
reaches the platform no later than it finishes, so whatever the platform counts in its window
ending at our request's arrival, we counted too, even when a connection pool or a slow loop
delayed requests. The per-chat interval and the group window also run from a request's end, and
count every request made (a refused one too: the platform may count it).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from sqlalchemy import TextClause, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.channels.base import Limits

log = logging.getLogger(__name__)

#: Seconds added to each one-second window, for jitter between our clock and the platform's.
WINDOW_MARGIN = 0.04
#: A global rate at or above this is no limit at all (in-memory and local channels).
UNLIMITED = 10_000
#: Seconds after which a slot taken and never recorded (its process died mid-request) stops
#: counting as in flight: no request to a platform lasts longer.
IN_FLIGHT_BOUND = 30.0
#: Seconds to wait before asking again when only requests in flight fill the window.
IN_FLIGHT_POLL = 0.01
#: Seconds to wait before asking again for a chat with a request in flight elsewhere (another
#: instance handing the chat over, or one that died mid-request: then up to IN_FLIGHT_BOUND).
CHAT_IN_FLIGHT_POLL = 0.25
#: Shared slots older than this are deleted (the longest window is a group's minute).
SLOT_KEEP = 120.0
#: One take in this many also deletes a channel's old slots.
PRUNE_EVERY = 256


@runtime_checkable
class SendBudget(Protocol):
    """One channel's send budget. A sender asks :meth:`chat_wait`, sleeps, then :meth:`take`
    until it returns 0 (a slot is taken), sends, and calls :meth:`record` whatever happened."""

    async def chat_wait(self, chat_id: str) -> float:
        """Seconds before ``chat_id`` may get its next message: its interval, its group's
        window, a pause of the whole channel; 0.0 when it may now."""
        ...

    async def take(self, chat_id: str) -> float:
        """Take one send slot for ``chat_id`` if every limit allows it now and return 0.0;
        otherwise take nothing and return the seconds to wait before asking again."""
        ...

    async def record(self, chat_id: str) -> None:
        """The request of the slot taken for ``chat_id`` finished (sent, refused or failed)."""
        ...

    async def pause(self, seconds: float) -> None:
        """The platform answered 429 with ``retry_after``: nobody sends on this channel for
        ``seconds``."""
        ...


def _is_group(chat_id: str) -> bool:
    return chat_id.startswith("-")


class LocalBudget:
    """The limits of one channel counted in this process (SQLite: one instance)."""

    def __init__(self, limits: Limits, *, is_group: Callable[[str], bool] = _is_group) -> None:
        self.limits = limits
        self._is_group = is_group
        self.done: deque[float] = deque()
        self.in_flight: dict[str, int] = defaultdict(int)
        self.next_chat: dict[str, float] = defaultdict(float)
        self.group_sent: dict[str, deque[float]] = defaultdict(deque)
        self.paused_until = 0.0

    async def chat_wait(self, chat_id: str) -> float:
        """See :meth:`SendBudget.chat_wait`."""
        return self._chat_wait(chat_id, time.monotonic())

    def _chat_wait(self, chat_id: str, now: float) -> float:
        wait = max(self.paused_until - now, self.next_chat[chat_id] - now, 0.0)
        if self.in_flight.get(chat_id):
            wait = max(wait, CHAT_IN_FLIGHT_POLL)
        if self._is_group(chat_id):
            window = self.group_sent[chat_id]
            while window and now - window[0] >= 60.0:
                window.popleft()
            if len(window) >= self.limits.group_per_minute:
                wait = max(wait, 60.0 - (now - window[0]))
        return wait

    async def take(self, chat_id: str) -> float:
        """See :meth:`SendBudget.take`."""
        now = time.monotonic()
        wait = self._chat_wait(chat_id, now)
        if wait > 0:
            return wait
        limit = self.limits.global_per_second
        if limit < UNLIMITED:
            window = self.done
            while window and now - window[0] >= 1.0 + WINDOW_MARGIN:
                window.popleft()
            if len(window) + sum(self.in_flight.values()) >= limit:
                return max(window[0] + 1.0 + WINDOW_MARGIN - now, 0.001) if window else (
                    IN_FLIGHT_POLL)
        self.in_flight[chat_id] += 1
        return 0.0

    async def record(self, chat_id: str) -> None:
        """See :meth:`SendBudget.record`."""
        now = time.monotonic()
        left = self.in_flight.get(chat_id, 0) - 1
        if left > 0:
            self.in_flight[chat_id] = left
        else:
            self.in_flight.pop(chat_id, None)
        if self.limits.global_per_second < UNLIMITED:
            self.done.append(now)
        self.next_chat[chat_id] = now + self.limits.per_chat_interval
        if self._is_group(chat_id):
            self.group_sent[chat_id].append(now)

    async def pause(self, seconds: float) -> None:
        """See :meth:`SendBudget.pause`."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)


def _state_sql(*, take: bool) -> TextClause:
    """One statement: read the windows and return the wait; with ``take``, insert a slot when
    the wait is 0 (run after :data:`_LOCK`, in the same transaction)."""
    f8 = "CAST(:{} AS float8)".format
    now = "b.now"
    chat_range = (
        f"channel = :channel AND chat_id = :chat AND started_at > to_timestamp({now} - 60 - "
        f"{f8('bound')}) AND coalesce(done_at, started_at) > to_timestamp({now} - 60)"
    )
    sql = f"""
WITH b AS MATERIALIZED (
  SELECT extract(epoch FROM clock_timestamp())::float8 AS now,
         coalesce(extract(epoch FROM paused_until)::float8, 0) AS paused
  FROM send_budget WHERE channel = :channel
), s AS MATERIALIZED (
  SELECT b.now, b.paused,
    (SELECT count(*) FROM send_slot WHERE channel = :channel AND done_at IS NULL
       AND started_at > to_timestamp({now} - {f8('bound')})) AS in_flight,
    (SELECT count(*) FROM send_slot WHERE channel = :channel
       AND done_at > to_timestamp({now} - {f8('window')})) AS done,
    (SELECT extract(epoch FROM min(done_at))::float8 FROM send_slot WHERE channel = :channel
       AND done_at > to_timestamp({now} - {f8('window')})) AS oldest,
    (SELECT count(*) FROM send_slot WHERE channel = :channel AND chat_id = :chat
       AND done_at IS NULL AND started_at > to_timestamp({now} - {f8('bound')}))
       AS chat_in_flight,
    (SELECT extract(epoch FROM max(done_at))::float8 FROM send_slot WHERE {chat_range})
       AS chat_last,
    (SELECT count(*) FROM send_slot WHERE {chat_range}) AS group_count,
    (SELECT extract(epoch FROM min(coalesce(done_at, started_at)))::float8 FROM send_slot
       WHERE {chat_range}) AS group_oldest
  FROM b
), w AS MATERIALIZED (
  SELECT s.now, greatest(
      s.paused - s.now,
      CASE WHEN s.chat_in_flight > 0 THEN {f8('chat_poll')} ELSE 0 END,
      coalesce(s.chat_last + {f8('interval')} - s.now, 0),
      CASE WHEN CAST(:is_group AS boolean) AND s.group_count >= CAST(:group_limit AS int)
           THEN coalesce(s.group_oldest, s.now) + 60 - s.now ELSE 0 END
    ) AS chat_wait,
    CASE WHEN s.in_flight + s.done >= {f8('limit')}
         THEN coalesce(greatest(s.oldest + {f8('window')} - s.now, 0.001), {f8('poll')})
         ELSE 0 END AS global_wait
  FROM s
)"""
    if not take:
        return text(sql + "\nSELECT greatest(w.chat_wait, 0) AS wait FROM w")
    return text(
        sql
        + """, ins AS (
  INSERT INTO send_slot (channel, chat_id, started_at)
  SELECT :channel, :chat, to_timestamp(w.now) FROM w
  WHERE w.chat_wait <= 0 AND w.global_wait <= 0
  RETURNING id
)
SELECT CASE WHEN w.chat_wait > 0 THEN w.chat_wait ELSE greatest(w.global_wait, 0) END AS wait,
  (SELECT id FROM ins) AS slot
FROM w"""
    )


# A statement's snapshot is taken when it starts, so a take blocked on the lock would not see
# the slot inserted by the take it waited for: the lock is a statement of its own, before.
_LOCK = text("SELECT 1 FROM send_budget WHERE channel = :channel FOR UPDATE")
_PEEK = _state_sql(take=False)
_TAKE = _state_sql(take=True)
_CREATE = text(
    "INSERT INTO send_budget (channel) VALUES (:channel) ON CONFLICT (channel) DO NOTHING"
)
_RECORD = text("UPDATE send_slot SET done_at = clock_timestamp() WHERE id = :slot")
_RECORD_MANY = text(
    "UPDATE send_slot SET done_at = clock_timestamp() WHERE id = ANY(CAST(:slots AS int[]))"
)
#: Stands for a slot taken from the local fallback (the database was out of reach).
LOCAL_SLOT = -1
_PAUSE = text(
    """
UPDATE send_budget SET paused_until = greatest(coalesce(paused_until, clock_timestamp()),
  clock_timestamp() + make_interval(secs => CAST(:seconds AS float8)))
WHERE channel = :channel
"""
)
_PRUNE = text(
    "DELETE FROM send_slot WHERE channel = :channel "
    "AND started_at < clock_timestamp() - make_interval(secs => CAST(:keep AS float8))"
)


class PostgresBudget:
    """The limits of one channel shared by every instance on one PostgreSQL database.

    A take is one transaction that locks the channel's ``send_budget`` row — the takes of all
    instances for one bot go one at a time — then, in one statement, reads the slots of the
    windows and, when every limit allows, inserts a slot. A process that dies
    mid-request leaves a slot that counts as in flight for :data:`IN_FLIGHT_BOUND` seconds.

    While the database is out of reach the process paces itself (:attr:`local`): sending goes
    on at one instance's limits (several instances may then exceed the bot's limit together,
    and a 429 pauses them one by one) rather than stopping until the database is back.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        channel: str,
        limits: Limits,
        *,
        is_group: Callable[[str], bool] = _is_group,
    ) -> None:
        self.engine = engine
        #: Single statements (a peek, a record, a pause) need no transaction of their own.
        self.autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.channel = channel
        self.limits = limits
        self._is_group = is_group
        self._created = False
        self._takes = 0
        #: Slots taken by this process and not yet recorded, by chat (oldest first).
        self._taken: dict[str, list[int]] = defaultdict(list)
        #: Slots whose request finished while the database was out of reach.
        self._unrecorded: list[int] = []
        #: This process's own pacing, used while the database is out of reach (and its
        #: pauses, which are always kept here too).
        self.local = LocalBudget(limits, is_group=is_group)
        self._degraded = False

    def _params(self, chat_id: str) -> dict[str, object]:
        limits = self.limits
        return {
            "channel": self.channel,
            "chat": chat_id,
            "bound": IN_FLIGHT_BOUND,
            "window": 1.0 + WINDOW_MARGIN,
            "poll": IN_FLIGHT_POLL,
            "chat_poll": CHAT_IN_FLIGHT_POLL,
            "interval": float(limits.per_chat_interval),
            "is_group": self._is_group(chat_id),
            "group_limit": int(limits.group_per_minute),
            "limit": float(limits.global_per_second),
        }

    async def _create(self) -> None:
        if not self._created:
            async with self.autocommit.connect() as conn:
                await conn.execute(_CREATE, {"channel": self.channel})
            self._created = True

    def _unreachable(self, err: Exception) -> None:
        if not self._degraded:
            log.warning(
                "send budget of %s: database unreachable (%r); pacing this process alone "
                "until it is back", self.channel, err,
            )
        self._degraded = True

    def _reached(self) -> None:
        if self._degraded:
            log.info("send budget of %s: shared again", self.channel)
        self._degraded = False

    async def chat_wait(self, chat_id: str) -> float:
        """See :meth:`SendBudget.chat_wait`."""
        try:
            await self._create()
            async with self.autocommit.connect() as conn:
                wait = float((await conn.execute(_PEEK, self._params(chat_id))).scalar_one())
        except (SQLAlchemyError, OSError) as err:
            self._unreachable(err)
            return await self.local.chat_wait(chat_id)
        self._reached()
        return max(wait, await self.local.chat_wait(chat_id))

    async def take(self, chat_id: str) -> float:
        """See :meth:`SendBudget.take`. With the database out of reach, this process paces
        itself (:attr:`local`) rather than stop sending."""
        paused = self.local.paused_until - time.monotonic()
        if paused > 0:  # this process was told to wait (even if the database did not hear)
            return paused
        try:
            wait = await self._take_shared(chat_id)
        except (SQLAlchemyError, OSError) as err:
            self._unreachable(err)
            wait = await self.local.take(chat_id)
            if wait <= 0:
                self._taken[chat_id].append(LOCAL_SLOT)
            return wait
        self._reached()
        return wait

    async def _take_shared(self, chat_id: str) -> float:
        await self._create()
        self._takes += 1
        async with self.engine.connect() as conn, conn.begin():
            await conn.execute(_LOCK, {"channel": self.channel})
            if self._unrecorded:  # finished while the database was away: close them now
                await conn.execute(_RECORD_MANY, {"slots": list(self._unrecorded)})
                self._unrecorded.clear()
            if self._takes % PRUNE_EVERY == 1:
                await conn.execute(_PRUNE, {"channel": self.channel, "keep": SLOT_KEEP})
            row = (await conn.execute(_TAKE, self._params(chat_id))).one()
        if row.slot is not None:
            self._taken[chat_id].append(int(row.slot))
        return float(row.wait)

    async def record(self, chat_id: str) -> None:
        """See :meth:`SendBudget.record`."""
        taken = self._taken.get(chat_id)
        if not taken:
            return
        slot = taken.pop(0)
        if not taken:
            del self._taken[chat_id]
        if slot == LOCAL_SLOT:
            await self.local.record(chat_id)
            return
        try:
            async with self.autocommit.connect() as conn:
                await conn.execute(_RECORD, {"slot": slot})
        except (SQLAlchemyError, OSError) as err:
            self._unreachable(err)
            self._unrecorded.append(slot)

    async def pause(self, seconds: float) -> None:
        """See :meth:`SendBudget.pause`."""
        await self.local.pause(seconds)
        try:
            await self._create()
            async with self.autocommit.connect() as conn:
                await conn.execute(_PAUSE, {"channel": self.channel, "seconds": float(seconds)})
        except (SQLAlchemyError, OSError) as err:
            self._unreachable(err)
