"""The one delivery path: a durable outbox drained under each platform's limits.

Rows are written in the same transaction as the state change they report, so a crash between
commit and send loses nothing: a row is claimed with a lease (``claimed_until``) and a row whose
lease ran out is claimed again. On PostgreSQL several instances drain one outbox.

Limits — per chat (Telegram ~1 msg/s), global (~30 msg/s), per group (20/min), and a pause when
the platform answers 429 ``retry_after`` — are a bot's, not a process's: each channel has one
:class:`~bot.send_budget.SendBudget`, shared by every instance through PostgreSQL (this
process's own on SQLite, which is single-instance). See :mod:`bot.send_budget`.

Per-chat order across instances: a chat's rows are sent by one deliverer at a time, in id order.
A PostgreSQL claim (:meth:`Deliverer._claim_shared`) first takes a transaction-scoped advisory
lock (``pg_try_advisory_xact_lock``) on each chat of the first due rows, skipping chats that
another claim is locking; then a second statement — whose snapshot is taken after the locks
were granted, so it sees every claim committed before — claims the due rows of those chats
unless anyone holds an unexpired claim (``sending``) of the chat. Two concurrent claims thus
never split a chat's rows, and a chat being sent to by one instance is left to it until its
rows are recorded sent or handed back. Both statements use indexes (``ix_outbox_status_due``
and the primary key for the due rows, ``ix_outbox_chat`` for a chat's rows).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    and_,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from bot.aio import wait_event
from bot.channels.base import Channel, DeliveryError, RetryAfter, RowSender, Unreachable
from bot.instance import holder_is_gone, new_holder
from bot.ports import Outbound
from bot.send_budget import UNLIMITED, LocalBudget, PostgresBudget, SendBudget
from models import OutboxMessage, utcnow
from models.messaging import OUT_FAILED, OUT_PENDING, OUT_SENDING, OUT_SENT

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)
#: Seconds between two looks for rows claimed by dead processes of this host.
RESCUE_INTERVAL = 5.0
MAX_ATTEMPTS = 8
BATCH = 200
#: Recorded as the platform id of an edit skipped because a newer one was already shown.
SUPERSEDED = "superseded"
#: Seconds between two delivery passes at the most (each pass is one transaction).
PASS_INTERVAL = 0.02
#: Chats served at once per channel, at most, in seconds of its global limit (a chat gets one
#: message a second: 2 × 30 chats keep Telegram's 30/s busy). Claiming rows for more chats only
#: parks them in senders waiting for the global limit, and each claim then sorts the whole
#: backlog: at 65,000 reminders, ~100 ms a claim on the loop and 75 % of the limit sent.
SENDER_SECONDS = 2


class Deliverer:
    """Drains the outbox through the channels."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        channels: Mapping[str, Channel],
        *,
        clock: Callable[[], datetime] = utcnow,
        on_unreachable: Callable[[OutboxMessage], Awaitable[None]] | None = None,
        holder: str | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        #: Written into every claim (``outbox.claimed_by``); see :mod:`bot.instance`.
        self.holder = holder or str(new_holder())
        self._next_rescue = 0.0
        self._held_channels: set[str] = set()
        #: Called with a row that failed because its person cannot be reached by push.
        self.on_unreachable = on_unreachable
        #: Chats whose rows this process leaves alone for now (a passive reply is being made).
        self._held: dict[str, dict[str, int]] = defaultdict(dict)
        self.channels = dict(channels)
        self.clock = clock
        #: Each channel's send budget (made on first use: limits are set before sending starts).
        self.budgets: dict[str, SendBudget] = {}
        #: Requests in flight per channel, at most ``limits.max_in_flight`` (this process's pool).
        self._slots: dict[str, asyncio.Semaphore] = {}
        #: One sender per channel at a time asks the budget for a slot (the others would only
        #: poll the same window).
        self._gates: dict[str, asyncio.Lock] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent_count = 0
        self._marks: list[dict[str, object]] = []
        self._sent_refs: dict[tuple[str, str, str], tuple[str, int]] = {}
        self._busy: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.failed_count = 0
        #: (channel, "sent" | "failed" | "retry_after") → how many, since start (/metrics).
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def add_channel(self, channel: Channel) -> None:
        """Register a channel started after the deliverer."""
        self.channels[channel.name] = channel
        self.budgets.pop(channel.name, None)

    def hold(self, channel: str, chat_id: str) -> None:
        """Leave this chat's rows alone until :meth:`release` (WeChat answers the event that
        produced them with a passive reply, which must win against a customer-service send)."""
        held = self._held[channel]
        held[chat_id] = held.get(chat_id, 0) + 1

    def release(self, channel: str, chat_id: str) -> None:
        """Undo one :meth:`hold`; the chat's rows go out with the next pass."""
        held = self._held[channel]
        left = held.get(chat_id, 0) - 1
        if left > 0:
            held[chat_id] = left
        else:
            held.pop(chat_id, None)
            self.wake()

    async def claim_for_passive(self, ids: list[int]) -> list[int]:
        """Mark pending rows as sent by a passive reply (platform id ``passive``); return the
        ids claimed. A conditional UPDATE: a row another deliverer claimed first is left to
        it, so a message never goes out twice."""
        if not ids:
            return []
        async with self.sessionmaker() as session, session.begin():
            result = await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_(ids), OutboxMessage.status == OUT_PENDING)
                .values(
                    status=OUT_SENT,
                    sent_at=self.clock(),
                    platform_message_id="passive",
                    attempts=OutboxMessage.attempts + 1,
                    claimed_until=None,
                )
                .returning(OutboxMessage.id)
            )
            claimed = [int(r[0]) for r in result.all()]
        self.sent_count += len(claimed)
        return claimed

    def hold_channel(self, name: str) -> None:
        """Claim nothing for channel ``name`` until :meth:`release_channel` (it is not set up:
        its rows wait in the outbox rather than fail)."""
        self._held_channels.add(name)

    def release_channel(self, name: str) -> None:
        """Deliver through ``name`` again."""
        self._held_channels.discard(name)
        self.wake()

    def wake(self) -> None:
        """New rows were committed: look now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        """Free the rows of dead deliverers on this host, then run the drain loop."""
        try:
            await self.rescue_claims()
        except Exception:
            log.exception("could not check the outbox for claims of dead processes")
        self._next_rescue = time.monotonic() + RESCUE_INTERVAL
        self._task = asyncio.create_task(self._run(), name="gridbot-delivery")

    async def stop(self) -> None:
        """Stop the loop and the senders, record what was sent, and hand every row still
        claimed by this deliverer back to the outbox (another instance, or the next start,
        sends it at once). A row whose send was cut off mid-request may go out twice."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        senders = list(self._busy.values())
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        await self._flush_marks()
        async with self.sessionmaker() as session, session.begin():
            result = await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.claimed_by == self.holder,
                       OutboxMessage.status == OUT_SENDING)
                .values(status=OUT_PENDING, claimed_until=None, claimed_by=None)
            )
        if result.rowcount:  # type: ignore[attr-defined]
            log.info("stopped: %s claimed outbox rows handed back", result.rowcount)  # type: ignore[attr-defined]

    async def rescue_claims(self) -> int:
        """Hand back the rows claimed by deliverers whose process is gone (this host; see
        :mod:`bot.instance`) without waiting for their claims to run out; return how many."""
        async with self.sessionmaker() as session:
            holders = (
                await session.scalars(
                    select(OutboxMessage.claimed_by)
                    .where(OutboxMessage.status == OUT_SENDING,
                           OutboxMessage.claimed_by.is_not(None))
                    .distinct()
                )
            ).all()
        gone = [h for h in holders if h and h != self.holder and holder_is_gone(h)]
        if not gone:
            return 0
        async with self.sessionmaker() as session, session.begin():
            result = await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.claimed_by.in_(gone), OutboxMessage.status == OUT_SENDING)
                .values(status=OUT_PENDING, claimed_until=None, claimed_by=None)
            )
        freed = int(result.rowcount or 0)  # type: ignore[attr-defined]
        log.warning("%s outbox rows claimed by %s dead process(es) handed back", freed, len(gone))
        return freed

    async def _run(self) -> None:
        last_pass = -PASS_INTERVAL
        while True:
            # Under load every commit wakes us: passes at most every PASS_INTERVAL gather the
            # rows (and the sent-records) of several commits into one transaction.
            gap = last_pass + PASS_INTERVAL - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            self._wake.clear()
            last_pass = time.monotonic()
            if last_pass >= self._next_rescue:  # a sibling on this host may have died
                self._next_rescue = last_pass + RESCUE_INTERVAL
                try:
                    await self.rescue_claims()
                except Exception:
                    log.exception("could not check the outbox for claims of dead processes")
            try:
                handled = await self._start_senders()
            except Exception:
                log.exception("delivery pass failed")
                handled = 0
            if handled:
                continue
            await wait_event(self._wake, 1.0)

    async def _start_senders(self) -> int:
        """Claim due rows of chats not being served and start one sender per chat.

        Chats are independent: a chat that pacing keeps busy (a worker receiving one card per
        second) must not hold back the others, so the loop does not wait for senders to finish.
        """
        full = self._full_channels() | self._held_channels
        if len(full & set(self.channels)) == len(self.channels):
            await self._flush_marks()  # nothing to claim now: record what was sent
            return 0
        rows = await self._claim([name for name in self.channels if name not in full])
        if not rows:
            return 0
        deadline = time.monotonic() + LEASE.total_seconds() / 2
        for key, chat_rows in self._by_chat(rows).items():
            task = asyncio.create_task(self._serve_chat(key, chat_rows, deadline))
            self._busy[key] = task
            task.add_done_callback(functools.partial(self._sender_done, key))
        return len(rows)

    async def _serve_chat(
        self, key: tuple[str, str], rows: list[OutboxMessage], deadline: float
    ) -> None:
        try:
            await self._send_chat(key, rows, deadline)
        except Exception:
            log.exception("sender for a %s chat failed", key[0])
        # Its sent-records go with the next pass's claim (woken by _sender_done).

    def _sender_done(self, key: tuple[str, str], _task: asyncio.Task[None]) -> None:
        self._busy.pop(key, None)
        self._wake.set()  # that chat may have more waiting

    def _full_channels(self) -> set[str]:
        """Channels serving as many chats as their global limit can feed (``SENDER_SECONDS``)."""
        busy: dict[str, int] = defaultdict(int)
        for channel_name, _ in self._busy:
            busy[channel_name] += 1
        full = set()
        for name, channel in self.channels.items():
            rate = channel.limits.global_per_second
            if rate < UNLIMITED and busy[name] >= SENDER_SECONDS * rate:
                full.add(name)
        return full

    @staticmethod
    def _by_chat(rows: list[OutboxMessage]) -> dict[tuple[str, str], list[OutboxMessage]]:
        by_chat: dict[tuple[str, str], list[OutboxMessage]] = defaultdict(list)
        for row in rows:
            by_chat[(row.channel, row.chat_id)].append(row)
        return by_chat

    async def _claim(self, channels: list[str] | None = None) -> list[OutboxMessage]:
        """One transaction: record the rows sent since the last pass, then claim the next due
        rows of ``channels`` (all by default; none: only record). Sent-records that could not
        be written are kept for the next try."""
        if channels is None:
            channels = [name for name in self.channels if name not in self._held_channels]
        marks, self._marks = self._marks, []
        if not marks and not channels:
            return []
        try:
            async with self.sessionmaker() as session, session.begin():
                if marks:
                    await session.execute(update(OutboxMessage), marks)
                rows = await self._claim_rows(session, channels) if channels else []
        except BaseException:
            self._marks = marks + self._marks
            raise
        if marks and self._sent_refs:  # the database knows these message ids now
            flushed = {m["id"] for m in marks}
            self._sent_refs = {k: v for k, v in self._sent_refs.items() if v[1] not in flushed}
        return rows

    async def _claim_rows(self, session: AsyncSession, channels: list[str]) -> list[OutboxMessage]:
        now = self.clock()
        due = or_(
            (OutboxMessage.status == OUT_PENDING) & (OutboxMessage.not_before <= now),
            (OutboxMessage.status == OUT_SENDING) & (OutboxMessage.claimed_until < now),
        )
        # Chats held for a passive reply, or being served by a sender, are left alone.
        excluded: dict[str, set[str]] = defaultdict(set)
        for channel_name, held in self._held.items():
            excluded[channel_name].update(held)
        for channel_name, chat_id in self._busy:
            excluded[channel_name].add(chat_id)
        left_alone = [
            not_(and_(OutboxMessage.channel == name, OutboxMessage.chat_id.in_(list(chats))))
            for name, chats in excluded.items()
            if chats
        ]
        if session.bind and session.bind.dialect.name == "postgresql":
            rows = await self._claim_shared(session, channels, due, left_alone, now)
        else:  # SQLite: one instance, one writer
            stmt = (
                select(OutboxMessage)
                .where(OutboxMessage.channel.in_(channels), due, *left_alone)
                .order_by(OutboxMessage.id)
                .limit(BATCH)
            )
            rows = list((await session.scalars(stmt)).all())
        if rows:
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_([r.id for r in rows]))
                .values(status=OUT_SENDING, claimed_until=now + LEASE, claimed_by=self.holder)
            )
        return rows

    async def _claim_shared(
        self,
        session: AsyncSession,
        channels: list[str],
        due: ColumnElement[bool],
        left_alone: list[ColumnElement[bool]],
        now: datetime,
    ) -> list[OutboxMessage]:
        """PostgreSQL: claim due rows of chats that no other deliverer is sending to.

        1. The chats of the first due rows, none of whose rows another deliverer holds, are
           locked with ``pg_try_advisory_xact_lock`` (held until this transaction ends); a chat
           another claim is locking right now is skipped.
        2. A second statement, whose snapshot is taken after those locks were granted, claims
           the due rows of the locked chats — unless a row of the chat is claimed (``sending``,
           unexpired) by anyone: a claim that committed just before is seen.

        So a chat's rows are sent by one deliverer at a time, in id order, and two concurrent
        claims never split a chat's due rows between them.
        """
        other = aliased(OutboxMessage)
        nobody_sending = ~exists().where(
            other.channel == OutboxMessage.channel,
            other.chat_id == OutboxMessage.chat_id,
            other.status == OUT_SENDING,
            other.claimed_until >= now,
        )
        first = (
            select(OutboxMessage.channel, OutboxMessage.chat_id)
            .where(OutboxMessage.channel.in_(channels), due, nobody_sending, *left_alone)
            .order_by(OutboxMessage.id)
            .limit(BATCH)
            .subquery()
        )
        chats = select(first.c.channel, first.c.chat_id).distinct().subquery()
        key = func.hashtextextended(chats.c.channel + literal(":") + chats.c.chat_id, 0)
        locked = (
            await session.execute(
                select(chats.c.channel, chats.c.chat_id).where(
                    func.pg_try_advisory_xact_lock(key)
                )
            )
        ).all()
        if not locked:
            return []
        stmt = (
            select(OutboxMessage)
            .where(
                tuple_(OutboxMessage.channel, OutboxMessage.chat_id).in_(
                    [(c, chat) for c, chat in locked]
                ),
                due,
                nobody_sending,
            )
            .order_by(OutboxMessage.id)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
        return list((await session.scalars(stmt)).all())

    async def drain_once(self) -> int:
        """Claim due rows and send them, chat by chat in order; return how many were handled."""
        rows = await self._claim()
        if not rows:
            return 0
        deadline = time.monotonic() + LEASE.total_seconds() / 2
        try:
            await asyncio.gather(
                *(
                    self._send_chat(key, chat_rows, deadline)
                    for key, chat_rows in self._by_chat(rows).items()
                )
            )
        finally:
            await self._flush_marks()
        return len(rows)

    async def _send_chat(
        self, key: tuple[str, str], rows: list[OutboxMessage], deadline: float
    ) -> None:
        channel_name, chat_id = key
        for index, row in enumerate(rows):
            if not await self._take_slot(channel_name, chat_id, deadline):
                # Pacing would keep these rows past half their lease, and another instance
                # could then claim and send them too: hand them back for a later pass.
                await self._release(rows[index:], timedelta(0), None)
                return
            try:
                message_id = await self._deliver(row)
            except RetryAfter as err:
                await self._end_slot(channel_name, chat_id)
                self.counts[(channel_name, "retry_after")] += 1
                await self.budget(channel_name).pause(err.seconds)
                await self._release(rows[index:], timedelta(seconds=err.seconds), str(err))
                return
            except DeliveryError as err:
                await self._end_slot(channel_name, chat_id)
                await self._failed(row, err)
                continue
            except BaseException as err:
                await self._end_slot(channel_name, chat_id)
                if not isinstance(err, Exception):
                    raise
                # An adapter bug must not lose the row.
                log.exception("channel %s raised while sending", channel_name)
                await self._failed(row, DeliveryError(repr(err)))
                continue
            await self._end_slot(channel_name, chat_id)
            self._mark_sent(row, message_id)

    def budget(self, name: str) -> SendBudget:
        """The send budget of channel ``name``: shared by every instance on PostgreSQL, this
        process's own on SQLite (one instance) and for channels without limits."""
        budget = self.budgets.get(name)
        if budget is None:
            channel = self.channels[name]
            bind = self.sessionmaker.kw.get("bind")
            shared = isinstance(bind, AsyncEngine) and bind.dialect.name == "postgresql"
            if isinstance(bind, AsyncEngine) and shared and (
                channel.limits.global_per_second < UNLIMITED
            ):
                budget = PostgresBudget(bind, name, channel.limits, is_group=channel.is_group)
            else:
                budget = LocalBudget(channel.limits, is_group=channel.is_group)
            self.budgets[name] = budget
        return budget

    async def _take_slot(self, name: str, chat_id: str, deadline: float) -> bool:
        """Wait until the budget gives ``chat_id`` a send slot (True), or give up (False) when
        waiting would pass ``deadline``. A slot also holds one of the channel's in-flight
        places; :meth:`_end_slot` gives both back."""
        budget = self.budget(name)
        slots = self._slots.get(name)
        if slots is None:
            slots = self._slots[name] = asyncio.Semaphore(self.channels[name].limits.max_in_flight)
        gate = self._gates.setdefault(name, asyncio.Lock())
        while True:
            await slots.acquire()
            try:
                async with gate:
                    while (wait := await budget.take(chat_id)) > 0:
                        if await budget.chat_wait(chat_id) > 0 or (
                            time.monotonic() + wait > deadline
                        ):
                            break  # this chat must wait: leave the gate to the others
                        # The channel is full: wait for the window holding the gate, so
                        # that this process's other senders do not poll the same window.
                        await asyncio.sleep(wait)
                    else:
                        return True
            except BaseException:  # cancelled or failed while waiting: the place is unused
                slots.release()
                raise
            slots.release()
            if time.monotonic() + wait > deadline:
                return False
            await asyncio.sleep(wait)

    async def _end_slot(self, name: str, chat_id: str) -> None:
        """The request of a slot taken by :meth:`_take_slot` finished, whatever its outcome."""
        self._slots[name].release()
        try:
            await self.budget(name).record(chat_id)
        except Exception:  # the slot then counts as in flight until IN_FLIGHT_BOUND
            log.exception("could not record a send on %s", name)

    async def _deliver(self, row: OutboxMessage) -> str:
        channel = self.channels[row.channel]
        message = Outbound.from_payload(row.payload)
        if isinstance(channel, RowSender):
            # Channels with push rules (WeChat) need the row itself: its kind, ref and person.
            return await channel.deliver_row(row, message)
        if not row.edit_ref:
            return await channel.send(row.chat_id, message)
        just_sent = self._sent_refs.get((row.channel, row.chat_id, row.edit_ref))
        if just_sent is not None:
            return await channel.edit(row.chat_id, just_sent[0], message)
        async with self.sessionmaker() as session, session.begin():
            newer = await session.scalar(
                select(OutboxMessage.id)
                .where(
                    OutboxMessage.edit_ref == row.edit_ref,
                    OutboxMessage.chat_id == row.chat_id,
                    OutboxMessage.channel == row.channel,
                    OutboxMessage.status == OUT_SENT,
                    OutboxMessage.id > row.id,
                )
                .limit(1)
            )
            if newer is not None:
                # Ids follow the order in which edits were made, commits need not: a later
                # version of this message is already showing, so this one would undo it.
                return SUPERSEDED
            original = await session.scalar(
                select(OutboxMessage)
                .where(
                    OutboxMessage.ref == row.edit_ref,
                    OutboxMessage.chat_id == row.chat_id,
                    OutboxMessage.channel == row.channel,
                )
                .order_by(OutboxMessage.id.desc())
                .limit(1)
            )
        if original is not None and original.platform_message_id:
            return await channel.edit(row.chat_id, original.platform_message_id, message)
        # The original never went out: the edit is the message to show.
        return await channel.send(row.chat_id, message)

    def _mark_sent(self, row: OutboxMessage, message_id: str) -> None:
        """Remember a sent row; the next pass records it in the transaction of its claim (or
        :meth:`_flush_marks`, when draining or stopping), together with the others.

        Until then the row is still claimed under its lease: a crash in between re-sends it
        after the lease (at least once, as with any send whose record did not survive).
        """
        self._marks.append(
            {
                "id": row.id,
                "status": OUT_SENT,
                "sent_at": self.clock(),
                "platform_message_id": message_id,
                "attempts": row.attempts + 1,
                "claimed_until": None,
            }
        )
        if row.ref:
            self._sent_refs[(row.channel, row.chat_id, row.ref)] = (message_id, row.id)
        self.sent_count += 1
        self.counts[(row.channel, "sent")] += 1

    async def _flush_marks(self) -> None:
        """Record the rows sent since the last pass (see :meth:`_claim`)."""
        await self._claim([])

    async def _release(
        self, rows: list[OutboxMessage], delay: timedelta, error: str | None
    ) -> None:
        async with self.sessionmaker() as session, session.begin():
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_([r.id for r in rows]))
                .values(
                    status=OUT_PENDING,
                    not_before=self.clock() + delay,
                    claimed_until=None,
                    error=error,
                )
            )

    async def _failed(self, row: OutboxMessage, err: DeliveryError) -> None:
        attempts = row.attempts + 1
        final = err.permanent or attempts >= MAX_ATTEMPTS
        backoff = timedelta(seconds=min(2**attempts, 300))
        async with self.sessionmaker() as session, session.begin():
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row.id)
                .values(
                    status=OUT_FAILED if final else OUT_PENDING,
                    attempts=attempts,
                    not_before=self.clock() + backoff,
                    claimed_until=None,
                    error=str(err)[:500],
                )
            )
        if final:
            self.failed_count += 1
            self.counts[(row.channel, "failed")] += 1
            log.warning(
                "outbox %s to %s failed for good after %s attempts", row.id, row.channel, attempts
            )
            if isinstance(err, Unreachable) and self.on_unreachable is not None:
                try:
                    await self.on_unreachable(row)
                except Exception:
                    log.exception("could not report unreachable outbox %s", row.id)
                self.wake()
