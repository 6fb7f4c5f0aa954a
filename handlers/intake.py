"""The intake: one inbound event → one transaction → state changes and outbox rows.

Order of business for every event: recognise a redelivery (the dedupe row is written in the same
transaction as everything the event causes, so a crash leaves neither), find who is speaking,
refuse oversized text, then hand it to a button, a command, the user's current flow, or help.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from bot.channels.base import PushPolicy
from bot.config import Settings
from bot.core import payloads
from bot.core.notify import Notifier
from bot.core.orders import OrderError, OrderService
from bot.core.points import PointsRules
from bot.core.quiet_hours import hold_order_pushes
from bot.i18n import Translator, normalize_locale
from bot.ports import HandleResult, Inbound, IntakeUnavailable, Outbound
from handlers import (
    bind,
    commands,
    common,
    duties,
    flows,
    free_text,
    link,
    order_buttons,
    profile,
)
from handlers.context import Ctx
from models import Identity, Person, ProcessedUpdate, utcnow

log = logging.getLogger(__name__)

#: Which handler module answers a button, by its kind. Flow and menu buttons are the intake's
#: own (they depend on the conversation); every other kind is in one module's table.
BUTTONS: Mapping[payloads.PayloadKind, Callable[[Ctx, payloads.Payload], Awaitable[None]]] = {
    **order_buttons.BUTTONS,
    **duties.BUTTONS,
}

Clock = Callable[[], datetime]


class Intake:
    """The platform-neutral core every channel calls (its ``intake``)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        tr: Translator,
        *,
        clock: Clock = utcnow,
        on_commit: Callable[[], None] | None = None,
        push_policies: Mapping[str, PushPolicy] | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.tr = tr
        self.clock = clock
        self.on_commit = on_commit or (lambda: None)
        #: Channel name → its push rules, told of every message stored (WeChat's window).
        self.push_policies = push_policies if push_policies is not None else {}

    async def __call__(self, event: Inbound) -> HandleResult:
        """Handle one event; never raises for bad input (the user gets a polite answer).

        Raises :class:`IntakeUnavailable` when nothing could be stored: the database failed
        (:func:`infrastructure_failure`), or a bug broke the handler and even the apology
        could not be stored. The channel then has the platform deliver the event again. A bug
        whose apology is stored answers normally: the user is told, and a redelivery would
        only fail the same way. Photos and voice messages arrive as media references already
        (the adapter keeps them first: :func:`bot.media.keep_inbound_files`).
        """
        try:
            result = await self._handle(event)
        except Exception as err:
            if infrastructure_failure(err):
                log.warning(
                    "handling %s event failed (%s): nothing stored, to be delivered again",
                    event.channel,
                    type(err).__name__,
                )
                raise IntakeUnavailable(str(type(err).__name__)) from err
            log.exception("handling %s event failed", event.channel)
            result = await self._apologise(event)
        if result.outbox_ids:
            self.on_commit()
        return result

    async def _handle(self, event: Inbound) -> HandleResult:
        now = self.clock()
        try:
            return await self._attempt(event, now, None)
        except OrderError as refusal:
            # The handler refused (bad or stale input, a race lost): its transaction is rolled
            # back whole, so nothing it did stays. Answer in a fresh one. (Cheaper on the
            # common path than a SAVEPOINT around every handler.)
            return await self._attempt(event, now, refusal)

    async def _attempt(
        self, event: Inbound, now: datetime, refusal: OrderError | None
    ) -> HandleResult:
        async with self.sessionmaker() as session, session.begin():
            if event.dedupe_key and not await self._first_delivery(session, event, now):
                log.info("duplicate %s delivery ignored", event.channel)
                return HandleResult(duplicate=True)
            ctx = await self._context(session, event, now)
            if refusal is None:
                await self._screen(ctx)
            else:
                if refusal.end_flow:
                    await ctx.end_conversation()
                ctx.say(refusal.key, **refusal.args_)
                ctx.toast = ctx.t(refusal.key, **refusal.args_)
            # Quiet hours: order pushes to others wait for the morning (urgent ones never).
            await hold_order_pushes(
                session,
                self.settings,
                ctx.notify.written,
                now,
                reply_chat=(event.channel, event.chat_id),
            )
            await session.flush()
            return HandleResult(toast=ctx.toast, outbox_ids=[r.id for r in ctx.notify.written])

    async def _first_delivery(self, session: AsyncSession, event: Inbound, now: datetime) -> bool:
        assert event.dedupe_key is not None
        dialect = session.bind.dialect.name if session.bind else "sqlite"
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = (
            insert(ProcessedUpdate)
            .values(channel=event.channel, dedupe_key=event.dedupe_key, created_at=now)
            .on_conflict_do_nothing()
            .returning(ProcessedUpdate.id)
        )
        result = await session.execute(stmt)
        return result.first() is not None

    async def _context(self, session: AsyncSession, event: Inbound, now: datetime) -> Ctx:
        # Who is speaking, in one statement. On PostgreSQL the identity row is locked for the
        # transaction: one person's events are handled one after the other (their flow state
        # is read and written by each), while different people's run side by side. (SQLite
        # runs writers one at a time anyway.)
        found = (
            await session.execute(
                select(Identity, Person)
                .join(Person, Person.id == Identity.person_id)
                .where(Identity.channel == event.channel, Identity.external_id == event.user_id)
                .with_for_update(of=Identity)
            )
        ).first()
        identity, person = (found[0], found[1]) if found is not None else (None, None)
        first_visit = identity is None or identity.last_inbound_at is None
        if identity is not None and not event.group:
            # A group is never the person's chat: their pushes (offers, a resident's phone)
            # keep going to the private chat, and a group message opens no WeChat window.
            identity.last_inbound_at = now
            policy = self.push_policies.get(event.channel)
            if policy is not None:
                policy.on_inbound(identity, now)
            identity.chat_id = event.chat_id
            if event.locale:
                identity.locale = normalize_locale(event.locale, self.settings.default_locale)
        lang = (
            (person.locale if person and person.locale else None)
            or (identity.locale if identity and identity.locale else None)
            or normalize_locale(event.locale, self.settings.default_locale)
        )
        notifier = Notifier(session, self.tr, self.settings.default_locale)
        return Ctx(
            session=session,
            settings=self.settings,
            tr=self.tr,
            event=event,
            identity=identity,
            person=person,
            lang=lang,
            now=now,
            notify=notifier,
            orders=OrderService(
                session, notifier, self.tr, now, PointsRules.from_settings(self.settings)
            ),
            first_visit=first_visit,
        )

    async def _screen(self, ctx: Ctx) -> None:
        event = ctx.event
        if event.group:
            await self._in_group(ctx)
            return
        if event.photo_lost:
            ctx.say("media.photo_not_kept")
        if event.voice_lost:
            ctx.say("media.voice_not_kept")
        if event.text is not None and len(event.text) > self.settings.max_text_length:
            ctx.say("error.too_long", limit=str(self.settings.max_text_length))
            ctx.toast = ctx.t("error.too_long_short")
            return
        await self._to_handler(ctx)

    async def _to_handler(self, ctx: Ctx) -> None:
        event = ctx.event
        text = (event.text or "").strip()
        if event.button is not None:
            payload = payloads.parse(event.button)
            if payload is None:
                raise OrderError("error.button_invalid")
            await self._button(ctx, payload)
            return
        if text.startswith("/"):
            command, _, arg = text[1:].partition(" ")
            command = command.split("@", 1)[0].lower()
            await commands.run(ctx, command, arg.strip())
            return
        menu_command = common.menu_command(ctx, text)
        if menu_command:
            await ctx.end_conversation()
            await commands.run(ctx, menu_command, "")
            return
        conv = await ctx.conversation()
        if conv is not None:
            await flows.step(ctx, conv)
            return
        if ctx.person is None:
            await bind.welcome(ctx)
            return
        if await flows.is_resident(ctx):
            # A resident's own words (or photo, or voice) outside a flow are the problem
            # they want to report; a bare pleasantry is answered politely.
            if event.photo or event.voice or (text and not free_text.is_courtesy(text)):
                await flows.start_from_message(ctx)
                return
            if text:
                await common.courtesy(ctx)
                return
            if event.photo_lost or event.voice_lost:
                return  # they were told it could not be kept, and asked to write instead
        await common.fallback(ctx)

    async def _button(self, ctx: Ctx, payload: payloads.Payload) -> None:
        if ctx.person is None:
            raise OrderError("error.not_bound")
        if payload.kind is payloads.PayloadKind.FLOW:
            conv = await ctx.conversation()
            if payload.action == "lang":
                await common.set_language(ctx, payload.arg or "")
                return
            if payload.action == "push":
                await link.push(ctx, payload.arg or "")
                return
            if payload.action == "me":  # 改称呼 / 改电话 / 改房号 under /me
                await ctx.end_conversation()
                await profile.edit(ctx, payload.arg or "")
                return
            if conv is None or not flows.belongs(conv, payload):
                # A button of a step already answered: say what came of it when it was
                # carried out (the order's number), else that it expired.
                if await flows.finished(ctx, payload):
                    return
                raise OrderError("error.button_stale")
            await flows.step(ctx, conv, payload)
            return
        if payload.kind is payloads.PayloadKind.MENU:
            await ctx.end_conversation()
            await commands.run(ctx, payload.action, "")
            return
        answer = BUTTONS.get(payload.kind)
        if answer is None:  # pragma: no cover - every kind parse() accepts has its row
            raise OrderError("error.button_invalid")
        await answer(ctx, payload)

    async def _in_group(self, ctx: Ctx) -> None:
        """Something addressed to the bot in a group chat. Whatever it asks, the answer
        could carry private data (orders, offers, phones, rooms), and a flow step would mix
        the group into the person's conversation: a command or a button gets one polite
        sentence asking to talk in private (it names nobody and nothing); other group chatter
        gets no answer at all."""
        event = ctx.event
        if event.button is None and not (event.text or "").strip().startswith("/"):
            return
        # To the group, but about nobody: no person is attached to the row.
        ctx.notify.to_chat(event.channel, event.chat_id, Outbound(ctx.t("group.private_only")))
        ctx.toast = ctx.t("group.private_only_short")

    async def _apologise(self, event: Inbound) -> HandleResult:
        """Something broke: roll back (done), tell the user, keep the dedupe key free for retry."""
        lang = normalize_locale(event.locale, self.settings.default_locale)
        text = self.tr.t(lang, "error.internal")
        try:
            async with self.sessionmaker() as session, session.begin():
                notifier = Notifier(session, self.tr, self.settings.default_locale)
                row = notifier.to_chat(event.channel, event.chat_id, Outbound(text))
                await session.flush()
                return HandleResult(toast=text, outbox_ids=[row.id])
        except Exception as err:
            log.exception("could not even apologise")
            raise IntakeUnavailable("the apology could not be stored") from err


def infrastructure_failure(err: BaseException) -> bool:
    """Whether a handler failed for a reason outside the handlers, which a second delivery of
    the same event may not meet: the database connection dropped or was refused, the database
    is locked or timed out, the pool had no connection, or the network failed."""
    if isinstance(err, OperationalError | InterfaceError | PoolTimeout):
        return True
    if isinstance(err, DBAPIError) and err.connection_invalidated:
        return True
    return isinstance(err, OSError | TimeoutError)
