"""The monthly bulletin (月初通报): the figures of a subtree for a month against the month
before, child grids ranked by the weighted score, grids below a floor named, hot categories
and buildings, the exit list, a chart, and the ledger as a document.

On day 1 of each month at ``bulletin_time`` (:func:`bot.scheduler.monthly_bulletin`) every
community admin and every grid head gets the bulletin of each grid they hold that role on; a
head or admin can ask for one any time with ``/bulletin [YYYY-MM] [grid code]``
(:mod:`handlers.reports`). Everything goes through the outbox: the chart with the text, then
the workbook as a document (a platform that cannot send files, WeChat, skips that one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.config import Settings
from bot.core.duties.service import DutyService
from bot.i18n import Translator
from bot.media import MediaStore
from bot.ports import Outbound
from bot.reports.chart import GridBar, render_grid_chart
from bot.reports.kpi import (
    ExitEntry,
    Period,
    Report,
    Scope,
    build_report,
    exit_list,
    fmt_minutes,
    load_scope,
    month_before,
)
from bot.reports.ledger import Labels, write_xlsx
from models import Grid, OutboxMessage, Role
from models.people import ROLE_ADMIN, ROLE_HEAD

log = logging.getLogger(__name__)

#: The rates of section 2, in this order.
BULLETIN_RATES = (
    "response",
    "on_time_acceptance",
    "on_time_completion",
    "completion",
    "resolution",
    "satisfaction",
)
TOP = 3


@dataclass
class Composed:
    """One bulletin in one language: the text, the chart (PNG) and the ledger (xlsx)."""

    parts: list[str]
    chart: bytes
    ledger: bytes
    ledger_name: str
    caption: str


def bulletin_text(
    report: Report, exits: list[ExitEntry], tr: Translator, lang: str, settings: Settings
) -> str:
    """The text of the bulletin (sections 1–5 of accountability.md)."""
    return "\n\n".join(bulletin_parts(report, exits, tr, lang, settings))


def bulletin_parts(
    report: Report, exits: list[ExitEntry], tr: Translator, lang: str, settings: Settings
) -> list[str]:
    """The bulletin in three messages: the figures (1–2), the ranking and the floors (3), hot
    spots and the exit list (4–5); each fits a WeChat text (2,000 bytes) for a community of
    a dozen grids."""
    lb = Labels(tr, lang)

    def t(key: str, **args: object) -> str:
        return tr.t(lang, f"bulletin.{key}", **{k: str(v) for k, v in args.items()})

    sep = t("sep")
    f, p = report.total.figures, report.total.previous
    lines = [t("title", grid=report.total.name, period=report.period.label), "", t("basic_head")]
    lines.append(t("basic", received=f.received, previous=p.received, done=f.completion.num,
                   cancelled=f.cancelled))
    if f.received:
        top = list(f.by_category.items())[:TOP]
        lines.append(t("top_categories", items=sep.join(
            t("share_item", name=lb.category(code), count=n, share=f"{n / f.received:.0%}")
            for code, n in top)))
    lines += ["", t("rates_head")]
    for name in BULLETIN_RATES:
        lines.append(t("rate_line", name=lb.rate(name), now=f.rate(name).percent(),
                       before=p.rate(name).percent()))
    lines.append(t("revisits", opened=f.revisits_opened, done=f.revisits_done,
                   open=f.revisits_open))
    lines.append(t("escalations", escalated=f.escalated, auto_closed=f.auto_closed))

    def span(name: str) -> str:
        times = f.times.get(name, {})
        return f"{fmt_minutes(times.get('median'))} / {fmt_minutes(times.get('p90'))}"

    lines.append(t("times", dispatch=span("dispatch"), accept=span("accept"), done=span("done")))
    lines.append(t("duties", patrol=f.patrol_coverage.percent(),
                   visit=f.visit_completion.percent(), whistle=f.whistle_answer.percent()))
    weights = sep.join(
        t("weight_item", name=lb.rate(n), weight=f"{w:g}")
        for n, w in settings.bulletin_weights.items() if w > 0
    )
    figures, lines = lines, [t("ranking_head", weights=weights)]
    if not report.children:
        lines.append(t("no_children"))
    for row in report.children:
        if row.rank is None or row.score is None:
            lines.append(t("unranked", grid=row.name))
        else:
            lines.append(t("rank_line", rank=row.rank, grid=row.name, score=f"{row.score:.1f}",
                           received=row.figures.received,
                           satisfaction=row.figures.satisfaction.percent()))
    below = [r for r in [report.total, *report.children] if r.below]
    if below:
        lines.append(t("below_head"))
        for row in below:
            items = sep.join(
                t("below_item", name=lb.rate(n), value=ratio.percent(), floor=f"{floor:g}")
                for n, ratio, floor in row.below
            )
            lines.append(t("below_line", grid=row.name, items=items))
    else:
        lines.append(t("none_below"))
    first, lines = lines, [t("hot_head")]

    def spots(items: list[tuple[str, int, str]]) -> str:
        return sep.join(
            t("hot_item", name=name, count=n, satisfaction=sat) for name, n, sat in items
        ) or t("hot_none")

    lines.append(t("hot_categories", items=spots(
        [(lb.category(s.name), s.orders, s.satisfaction.percent())
         for s in report.categories[:TOP]])))
    lines.append(t("hot_buildings", items=spots(
        [(s.name, s.orders, s.satisfaction.percent()) for s in report.buildings[:TOP]])))
    lines += ["", t("exit_head", months=settings.exit_idle_months,
                    rating=f"{settings.exit_min_rating:g}")]
    grids = report.scope.grids
    for e in exits:
        grid = grids[e.grid_id].name if e.grid_id in grids else ""
        if "idle" in e.reasons:
            lines.append(t("exit_idle", name=e.name, grid=grid, months=settings.exit_idle_months))
        if "rating" in e.reasons and e.mean_rating is not None:
            lines.append(t("exit_rating", name=e.name, grid=grid, rating=f"{e.mean_rating:.1f}"))
    if not exits:
        lines.append(t("exit_none"))
    return ["\n".join(figures), "\n".join(first), "\n".join(lines)]


def chart_bars(report: Report) -> list[GridBar]:
    """Per child grid (the subtree itself when it has none): received, done (办结: done or
    closed at the month's end) and 满意率."""
    rows = report.children or [report.total]
    by_code = sorted(rows, key=lambda r: r.code)
    return [
        GridBar(r.name, r.figures.received, r.figures.completion.num,
                r.figures.satisfaction.value)
        for r in by_code
    ]


def compose(
    report: Report, exits: list[ExitEntry], tr: Translator, lang: str, settings: Settings
) -> Composed:
    """Text, chart and workbook of one bulletin in one language (CPU work: call it in a
    thread)."""

    def t(key: str, **args: str) -> str:
        return tr.t(lang, f"bulletin.{key}", **args)

    grid, period = report.total.name, report.period.label
    chart = render_grid_chart(
        chart_bars(report),
        title=t("chart_title", grid=grid, period=period),
        labels={
            "received": t("chart_received"),
            "done": t("chart_done"),
            "satisfaction": t("chart_satisfaction"),
        },
    )
    ledger = write_xlsx(report, tr, lang)
    name = f"{tr.t(lang, 'report.title', grid=grid, period=period)}.xlsx".replace("/", "-")
    return Composed(
        bulletin_parts(report, exits, tr, lang, settings),
        chart,
        ledger,
        name,
        t("ledger_caption", grid=grid, period=period),
    )


class BulletinMaker:
    """Builds bulletins inside one transaction and stores their chart and ledger in the media
    store, once per subtree, month and language."""

    def __init__(
        self,
        session: AsyncSession,
        settings: Settings,
        tr: Translator,
        now: datetime,
        media: MediaStore | None = None,
    ) -> None:
        self.session, self.settings, self.tr, self.now = session, settings, tr, now
        self.media = media or MediaStore(settings.media_dir)
        self._reports: dict[tuple[str, str], tuple[Report, list[ExitEntry]]] = {}
        self._made: dict[tuple[str, str, str], list[Outbound]] = {}

    async def report(self, scope: Scope, period: Period) -> tuple[Report, list[ExitEntry]]:
        """The figures and the exit list of a subtree for a month (computed once)."""
        key = (scope.path, period.label)
        if key not in self._reports:
            report = await build_report(self.session, self.settings, scope, period, self.now)
            exits = await exit_list(self.session, self.settings, scope, period.end)
            self._reports[key] = (report, exits)
        return self._reports[key]

    async def messages(self, scope: Scope, period: Period, lang: str) -> list[Outbound]:
        """The bulletin's messages: the chart with sections 1–2, section 3, sections 4–5,
        then the ledger document."""
        key = (scope.path, period.label, lang)
        if key not in self._made:
            report, exits = await self.report(scope, period)
            made = await asyncio.to_thread(compose, report, exits, self.tr, lang, self.settings)
            chart = await self.media.save(made.chart)
            ledger = await self.media.save_document(made.ledger, "xlsx")
            self._made[key] = [
                Outbound(made.parts[0], photo=chart),
                *(Outbound(part) for part in made.parts[1:]),
                Outbound(made.caption, document=ledger, document_name=made.ledger_name),
            ]
        return self._made[key]


def _fixed(message: Outbound) -> Callable[[str], Outbound]:
    """A render function that ignores the language (the message is made in it already)."""
    return lambda _lang: message


async def recipients(session: AsyncSession) -> dict[str, list[int]]:
    """Grid code → the people holding an admin or head role on it: who gets which subtree's
    bulletin (top grids first)."""
    rows = await session.execute(
        select(Grid.code, Role.person_id)
        .join(Grid, Grid.id == Role.grid_id)
        .where(Role.role.in_((ROLE_ADMIN, ROLE_HEAD)))
        .order_by(Grid.depth, Grid.id, Role.person_id)
    )
    out: dict[str, list[int]] = {}
    for code, pid in rows.all():
        if pid not in out.setdefault(code, []):
            out[code].append(pid)
    return out


async def monthly_for_grid(
    duties: DutyService, code: str, people: list[int], due_at: datetime
) -> int:
    """The bulletin of the grid ``code`` for the month before ``due_at`` to ``people``; once
    per person, grid and month (a ``duty_fire`` row written with the messages, in the caller's
    transaction), quiet hours respected. The figures are computed only if someone still needs
    them. Returns how many went out."""
    period = month_before(due_at, duties.settings.tz)
    scope = await load_scope(duties.session, code)
    assert scope.root is not None
    maker = BulletinMaker(duties.session, duties.settings, duties.tr, duties.now)
    sent = 0
    for person_id in people:
        if not await duties.fire_once("bulletin", f"{person_id}:{scope.root.id}", period.end):
            continue
        if await duties.notify.identity_of(person_id) is None:
            continue
        lang = await duties.notify.locale_of(person_id)
        rows: list[OutboxMessage] = []
        for message in await maker.messages(scope, period, lang):
            row = await duties.notify.to_person(person_id, _fixed(message))
            if row is not None:
                row.not_before = duties.now  # the scheduler's clock, not the wall clock
                rows.append(row)
        await duties.hold(rows, scope.root.id)
        sent += 1
    return sent


async def monthly(runtime_service: Callable[[], Any], due_at: datetime) -> int:
    """Day 1: the bulletin of the month before to every admin and head, for each grid they
    hold that role on, one transaction per grid (``runtime_service`` opens one: a
    :class:`~bot.core.duties.service.DutyService` context), so each grid's messages go out as
    soon as they are made and a failure costs one grid. Returns how many went out."""
    async with runtime_service() as duties:
        groups = await recipients(duties.session)
    sent = 0
    for code, people in groups.items():
        async with runtime_service() as duties:
            sent += await monthly_for_grid(duties, code, people, due_at)
    log.info("monthly bulletin (due %s): %d sent", due_at.isoformat(), sent)
    return sent
