"""The web console at ``/console/``: server-rendered pages (Jinja2) for grid heads and
community admins, on the service's one web server.

Who may see what is decided here, on the server, for every request: the viewer's subtree is
the grids they are head or admin of and everything below. Every query carries that condition,
so an order, grid or member outside it answers 404 whatever the URL says. Figures come from the
one KPI module (``bot.reports.kpi``), the chart from the bulletin's chart code, exports from the
ledger writers, and actions call the same core functions as the chat, with the same rules.
"""

from __future__ import annotations

import asyncio
import csv
import hmac
import io
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from bot.config import Settings
from bot.console import auth, kept
from bot.console.queries import OPEN, STATUSES, OrderFilter, order_ids, order_page
from bot.core import points
from bot.core.cards import number
from bot.core.duties.service import DutyService
from bot.core.invites import signing_key
from bot.core.notify import Notifier
from bot.core.orders import ESCALATABLE, OrderError, OrderService
from bot.core.points import PointsRules
from bot.core.quiet_hours import hold_order_pushes
from bot.core.responsibility import can_manage, members_in_subtree
from bot.i18n import SUPPORTED, Translator, normalize_locale
from bot.media import MediaStore
from bot.ports import Outbound
from bot.reports.bulletin import bulletin_parts, chart_bars
from bot.reports.chart import render_grid_chart
from bot.reports.kpi import (
    RATE_NAMES,
    Figures,
    Period,
    Report,
    Scope,
    build_report,
    duty_figures,
    exit_list,
    load_duties,
    load_scope,
    parse_month,
)
from bot.reports.ledger import Labels, order_rows, points_rows, title, together, write_xlsx
from models import (
    Building,
    Category,
    ConsoleAction,
    ConsoleSession,
    Grid,
    Order,
    OrderEvent,
    Person,
    Role,
)
from models.orders import AWAITING_DISPATCH
from models.people import ROLE_ADMIN, ROLE_HEAD, ROLE_RESIDENT

log = logging.getLogger(__name__)

PREFIX = "/console"
COOKIE = "gridbot_console"
#: The language chosen in the console (else the person's, else the community's).
LANG_COOKIE = "gridbot_console_lang"
TEMPLATES = Path(__file__).parent / "templates"
#: Seconds a computed report (members, exports, bulletin) is reused for the same subtree and
#: period. (The overview and its chart read the kept reports of :mod:`bot.console.kept`.)
REPORT_TTL = 30.0
#: Seconds an older report is still shown while a fresh one is computed in the background.
REPORT_STALE = 600.0
#: Reports kept in memory at most (the oldest goes first).
MAX_REPORTS = 128
#: An overview whose figures are being computed reloads itself after this many seconds.
REFRESH_SECONDS = 5
#: Console actions that change the overview's figures (a notice does not).
FIGURE_ACTIONS = ("escalate", "assign", "points")
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
#: The largest id a URL may name (ids are 32-bit integers; a larger number matches nothing).
MAX_ID = 2**31 - 1
#: Grids offered in a filter or the notice form, at most.
MAX_CHOICES = 300
#: Longest notice or reason accepted from a form (the chat's limit is the settings').
MAX_NOTE = 500


#: A posted form: field → value (the last one when repeated).
Form = dict[str, str]
#: Largest form body read (a notice of 500 characters, URL-encoded, fits many times over).
MAX_FORM = 64 * 1024


async def read_form(request: Request) -> Form | None:
    """A URL-encoded form body (the only kind the console's pages send), ``None`` when it is
    larger than :data:`MAX_FORM` or not URL-encoded."""
    from bot.request_body import read_capped

    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    body = await read_capped(request, MAX_FORM)
    if body is None:
        return None
    try:
        return dict(parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=100))
    except (UnicodeDecodeError, ValueError):
        return None


class NotFound(Exception):
    """Outside the viewer's scope, or not there at all: both answer 404 and show nothing."""


class Forbidden(Exception):
    """The viewer may see this but not do it (e.g. a head adjusting points): 403."""


@dataclass
class Viewer:
    """The signed-in head or admin, their language and their subtree."""

    row: ConsoleSession
    person: Person
    lang: str
    roots: list[Grid]
    admin_roots: list[Grid]

    def covers(self, grid: Grid) -> bool:
        """Whether ``grid`` is in the viewer's subtree."""
        return any(grid.path.startswith(r.path) for r in self.roots)

    def scope(self, column: Any) -> Any:
        """A condition: the grid id ``column`` is in the viewer's subtree."""
        return column.in_(
            select(Grid.id).where(
                or_(*(Grid.path.startswith(r.path, autoescape=True) for r in self.roots))
            )
        )

    @property
    def is_admin(self) -> bool:
        """Community admins may adjust points (as in chat: ``/points adjust``)."""
        return bool(self.admin_roots)


def _top(grids: list[Grid]) -> list[Grid]:
    """The grids that are not under another of the list."""
    return [g for g in grids if not any(o is not g and g.path.startswith(o.path)
                                        and o.path != g.path for o in grids)]


Page = Callable[[Request, AsyncSession, Viewer], Awaitable[Response]]


class Console:
    """The console's routes and what they share."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        tr: Translator,
        *,
        clock: Callable[[], datetime],
        media: MediaStore,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.tr = tr
        self.clock = clock
        self.media = media
        self.on_commit = on_commit
        self.secure = settings.base_url.startswith("https://")
        self.idle = timedelta(minutes=settings.console_idle_minutes)
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        #: (subtree path, period) → (when computed, monotonic; the report)
        self._reports: dict[tuple[str, str], tuple[float, Report]] = {}
        self._refreshing: dict[tuple[str, str], asyncio.Task[None]] = {}
        #: (grid id, period) → the overview being computed by this instance
        self._computing: dict[tuple[int, str], asyncio.Future[kept.Overview | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def routes(self) -> list[Route]:
        """Mounted at ``/console``."""
        return [
            Route("/", self._page(self.overview)),
            Route("/login/{token}", self.login_page),
            Route("/login", self.login, methods=["POST"]),
            Route("/lang/{code}", self.choose_language),
            Route("/logout", self._page(self.logout), methods=["POST"]),
            Route("/chart.png", self._page(self.chart)),
            Route("/orders", self._page(self.orders)),
            Route("/orders/export.{fmt}", self._page(self.export_orders)),
            Route("/orders/{order_id:int}", self._page(self.order)),
            Route("/orders/{order_id:int}/photo/{which}", self._page(self.photo)),
            Route("/orders/{order_id:int}/escalate", self._page(self.escalate),
                  methods=["POST"]),
            Route("/orders/{order_id:int}/assign", self._page(self.assign), methods=["POST"]),
            Route("/duties", self._page(self.duties)),
            Route("/members", self._page(self.members)),
            Route("/members/export.csv", self._page(self.export_members)),
            Route("/members/{person_id:int}/points", self._page(self.adjust_points),
                  methods=["POST"]),
            Route("/bulletins", self._page(self.bulletins)),
            Route("/bulletins/{month}", self._page(self.bulletin)),
            Route("/notice", self._page(self.notice), methods=["GET", "POST"]),
        ]

    # ---- plumbing ------------------------------------------------------------------------

    def render(
        self, name: str, lang: str, viewer: Viewer | None = None, status: int = 200, **ctx: Any
    ) -> HTMLResponse:
        """A page in ``lang``; every sentence from the catalogs (``t``)."""

        def t(key: str, **args: Any) -> str:
            return self.tr.t(lang, key, **{k: str(v) for k, v in args.items()})

        html = self.env.get_template(name).render(
            t=t,
            lang=lang,
            viewer=viewer,
            csrf=viewer.row.csrf if viewer else "",
            base=PREFIX,
            **ctx,
        )
        return HTMLResponse(html, status_code=status, headers=_HEADERS)

    def _lang(self, request: Request, person: Person | None = None) -> str:
        """The language chosen in the console, else the person's; before anyone is known,
        the community's (zh_CN first)."""
        chosen = request.cookies.get(LANG_COOKIE)
        if chosen in SUPPORTED:
            return chosen
        if person is not None and person.locale:
            return normalize_locale(person.locale, self.settings.default_locale)
        return self.settings.default_locale

    async def _viewer(self, session: AsyncSession, request: Request) -> Viewer | None:
        row = await auth.current_session(
            session, request.cookies.get(COOKIE), self.clock(), self.idle
        )
        if row is None:
            return None
        person = await session.get(Person, row.person_id)
        roles = (
            await session.execute(
                select(Grid, Role.role)
                .join(Role, Role.grid_id == Grid.id)
                .where(Role.person_id == row.person_id, Role.role.in_((ROLE_HEAD, ROLE_ADMIN)))
                .order_by(Grid.depth, Grid.id)
            )
        ).all()
        if person is None or not roles:  # no longer a head or admin: the session ends
            row.ended_at = self.clock()
            return None
        grids = list(dict.fromkeys(g for g, _ in roles))
        admin = list(dict.fromkeys(g for g, r in roles if r == ROLE_ADMIN))
        return Viewer(row, person, self._lang(request, person), _top(grids), _top(admin))

    def _page(self, fn: Page) -> Callable[[Request], Awaitable[Response]]:
        """A page for signed-in viewers: the session checked (and its idle clock reset), a
        form's CSRF token checked against the session's, scope errors turned into 404/403."""

        async def endpoint(request: Request) -> Response:
            wrote = request.method == "POST"
            async with self.sessionmaker() as session, session.begin():
                viewer = await self._viewer(session, request)
                if viewer is None:
                    lang = self._lang(request)
                    return self.render("signin.html", lang, status=401)
                if wrote:
                    form = await read_form(request) or {}
                    sent = form.get("csrf", "")
                    if not sent or not hmac.compare_digest(sent, viewer.row.csrf):
                        return self.render(
                            "message.html", viewer.lang, viewer, status=403,
                            message=self.tr.t(viewer.lang, "console.csrf_refused"),
                        )
                    request.state.form = form
                try:
                    response = await fn(request, session, viewer)
                except NotFound:
                    return self.render(
                        "message.html", viewer.lang, viewer, status=404,
                        message=self.tr.t(viewer.lang, "console.not_found"),
                    )
                except Forbidden:
                    return self.render(
                        "message.html", viewer.lang, viewer, status=403,
                        message=self.tr.t(viewer.lang, "console.forbidden"),
                    )
            if wrote:
                self.on_commit()  # deliver what the action queued
            return response

        return endpoint

    @staticmethod
    def form(request: Request) -> Form:
        """The (CSRF-checked) form of a POST."""
        form: Form = request.state.form
        return form

    async def _grid(self, session: AsyncSession, viewer: Viewer, code: str | None) -> Grid:
        """The grid ``code`` if it is in the viewer's subtree (404 otherwise); none given: the
        viewer's highest grid."""
        if not code:
            return viewer.roots[0]
        grid = await session.scalar(select(Grid).where(Grid.code == code[:64]))
        if grid is None or not viewer.covers(grid):
            raise NotFound
        return grid

    async def _grid_switch(self, session: AsyncSession, viewer: Viewer, grid: Grid) -> list[Grid]:
        """The grids a page of one grid (overview, duties, members) may switch to: the
        viewer's own (a head of two grids sees both) and the shown grid's children."""
        children = (
            await session.scalars(
                select(Grid).where(Grid.parent_id == grid.id).order_by(Grid.code, Grid.id)
            )
        ).all()  # as Scope.children(), without loading the whole subtree
        return list(dict.fromkeys([*viewer.roots, *children]))

    async def _grid_choices(self, session: AsyncSession, viewer: Viewer) -> list[Any]:
        """The grids a list or a notice may be narrowed to: the viewer's and two levels below
        (code and name; at city scale the micro-grids would make the list unusable)."""
        deepest = min(r.depth for r in viewer.roots) + 2
        return list(
            (
                await session.execute(
                    select(Grid.code, Grid.name)
                    .where(viewer.scope(Grid.id), Grid.depth <= deepest)
                    .order_by(Grid.path)
                    .limit(MAX_CHOICES)
                )
            ).all()
        )

    def _period(self, text: str | None, default: Period | None = None) -> Period | None:
        if not text:
            return default
        try:
            return parse_month(text[:7], self.settings.tz)
        except ValueError:
            raise NotFound from None

    def this_month(self) -> Period:
        """The current local calendar month."""
        local = self.clock().astimezone(self.settings.tz)
        return Period.month(local.year, local.month, self.settings.tz)

    async def report(self, session: AsyncSession, scope: Scope, period: Period) -> Report:
        """The one report of ``scope`` and ``period``, from :func:`build_report`.

        Kept in memory: younger than :data:`REPORT_TTL` it is served as is; older but younger
        than :data:`REPORT_STALE` it is served while a fresh one is computed in the background
        (a city's month takes seconds to compute). Computed here on a first view or after
        :data:`REPORT_STALE`: the members page, exports and bulletins (the overview reads the
        kept reports, :mod:`bot.console.kept`)."""
        key = (scope.path, period.label)
        now = time.monotonic()
        hit = self._reports.get(key)
        if hit is not None and now - hit[0] < REPORT_TTL:
            return hit[1]
        if hit is not None and now - hit[0] < REPORT_STALE:
            if key not in self._refreshing:
                task = asyncio.create_task(self._refresh(key, scope.root.code
                                                         if scope.root else None, period))
                self._refreshing[key] = task
            return hit[1]
        made = await build_report(session, self.settings, scope, period, self.clock())
        self._keep(key, made)
        return made

    def _keep(self, key: tuple[str, str], report: Report) -> None:
        if len(self._reports) >= MAX_REPORTS:
            oldest = min(self._reports, key=lambda k: self._reports[k][0])
            del self._reports[oldest]
        self._reports[key] = (time.monotonic(), report)

    async def _refresh(self, key: tuple[str, str], code: str | None, period: Period) -> None:
        try:
            async with self.sessionmaker() as session:
                scope = await load_scope(session, code)
                made = await build_report(session, self.settings, scope, period, self.clock())
            self._keep(key, made)
        except Exception:  # the stale report stays; the next view tries again
            log.exception("console: could not refresh the report of %s %s", *key)
        finally:
            self._refreshing.pop(key, None)

    async def _audit(
        self, session: AsyncSession, viewer: Viewer, action: str, target: str, detail: str
    ) -> None:
        session.add(
            ConsoleAction(
                person_id=viewer.person.id,
                action=action,
                target=target[:100],
                detail=detail,
                created_at=self.clock(),
            )
        )

    # ---- sign-in -------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        """The link from the chat: a button that signs in (a GET changes nothing, so a link
        preview or a scanner cannot use the link up)."""
        token = request.path_params["token"][: auth.MAX_TOKEN]
        async with self.sessionmaker() as session:
            owner = await auth.link_owner(session, token)
            person = await session.get(Person, owner) if owner is not None else None
        return self.render("login.html", self._lang(request, person), token=token)

    async def choose_language(self, request: Request) -> Response:
        """中文 / English: kept in a cookie of its own (it says nothing about anyone)."""
        code = request.path_params["code"]
        response = RedirectResponse(f"{PREFIX}/", status_code=303, headers=_HEADERS)
        if code in SUPPORTED:
            response.set_cookie(LANG_COOKIE, code, max_age=365 * 86400, httponly=True,
                                samesite="strict", secure=self.secure, path=PREFIX)
        return response

    async def login(self, request: Request) -> Response:
        """Use the link once and open a session; a used, expired or forged link is refused."""
        lang = self._lang(request)
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc != request.headers.get("host"):
            return self.render("message.html", lang, status=403,
                               message=self.tr.t(lang, "console.csrf_refused"))
        form = await read_form(request) or {}
        token = form.get("token", "")
        now = self.clock()
        async with self.sessionmaker() as session, session.begin():
            key = await signing_key(session, self.settings)
            person_id = await auth.consume_link(session, key, token, now)
            allowed = person_id is not None and bool(
                await session.scalar(
                    select(func.count())
                    .select_from(Role)
                    .where(Role.person_id == person_id, Role.role.in_((ROLE_HEAD, ROLE_ADMIN)))
                )
            )
            if person_id is None or not allowed:
                return self.render("message.html", lang, status=403,
                                   message=self.tr.t(lang, "console.link_refused"))
            opened = await auth.open_session(session, person_id, now)
        response = RedirectResponse(f"{PREFIX}/", status_code=303, headers=_HEADERS)
        response.set_cookie(
            COOKIE, opened.cookie, httponly=True, samesite="strict", secure=self.secure,
            path=PREFIX,
        )
        return response

    async def logout(self, request: Request, session: AsyncSession, viewer: Viewer) -> Response:
        """End the session on the server and forget the cookie."""
        await auth.end_session(session, request.cookies.get(COOKIE), self.clock())
        response = self.render("signin.html", viewer.lang, signed_out=True)
        response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict",
                               secure=self.secure)
        return response

    # ---- overview ------------------------------------------------------------------------

    async def stop(self) -> None:
        """Cancel the overview computations this instance started (the next view or the
        background run computes them again) and wait until they have unwound."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _compute(self, grid: Grid, period: Period) -> asyncio.Future[kept.Overview | None]:
        """This instance computes and keeps the overview of ``grid`` and ``period`` in the
        background (once at a time per subtree and month); the future has it (``None``: it
        failed), set before it is stored."""
        key = (grid.id, period.label)
        running = self._computing.get(key)
        if running is not None:
            return running
        done: asyncio.Future[kept.Overview | None] = asyncio.get_running_loop().create_future()
        self._computing[key] = done
        code = grid.code

        async def run() -> None:
            try:
                made = await kept.compute_apart(
                    self.sessionmaker, self.settings, code, period, self.clock()
                )
                done.set_result(made)
                await kept.store(self.sessionmaker, made, viewed_at=self.clock())
            except Exception:  # the next view tries again
                log.exception("console: could not compute the overview of %s %s", code,
                              period.label)
                if not done.done():
                    done.set_result(None)
            finally:
                self._computing.pop(key, None)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return done

    async def kept_overview(
        self, session: AsyncSession, viewer: Viewer, grid: Grid, period: Period
    ) -> tuple[kept.Overview | None, datetime | None, bool]:
        """The kept overview of ``grid`` and ``period`` (never waiting for a computation longer
        than ``console_report_wait_ms``, nor at all for one not expected in that time), when
        the viewer last acted in the console after it was computed (its figures may not show
        that yet), and whether to compute it (again) once the page is on its way (none kept
        and not waited for, older than the cadence, or the viewer acted since)."""
        now = self.clock()
        found = await kept.read(session, grid.id, period.label)
        if found is None:
            wait_ms = self.settings.console_report_wait_ms
            if (grid.id, period.label) in self._computing or not await kept.quick(
                session, grid, wait_ms
            ):
                return None, None, True
            computing = self._compute(grid, period)
            # What this request wrote (the session's last activity) is committed first: the
            # computation's own transaction must not wait for this one (SQLite has one writer,
            # and its transactions begin IMMEDIATE), and the connection goes back to the pool.
            await session.commit()
            try:
                found = await asyncio.wait_for(asyncio.shield(computing), wait_ms / 1000)
            except TimeoutError:
                return None, None, False
            return found, None, False
        acted = await session.scalar(
            select(func.max(ConsoleAction.created_at)).where(
                ConsoleAction.person_id == viewer.person.id,
                ConsoleAction.action.in_(FIGURE_ACTIONS),
                ConsoleAction.created_at > found.computed_at,
            )
        )
        stale = now - found.computed_at > timedelta(seconds=self.settings.console_report_seconds)
        await kept.mark_viewed(session, grid.id, period.label, now)
        return found, acted, stale or acted is not None

    def _clock_text(self, when: datetime) -> str:
        """``14:05`` today, ``2026-11-28 14:05`` another day (local time)."""
        local = when.astimezone(self.settings.tz)
        today = self.clock().astimezone(self.settings.tz).date()
        return local.strftime("%H:%M" if local.date() == today else "%Y-%m-%d %H:%M")

    async def overview(self, request: Request, session: AsyncSession, viewer: Viewer) -> Response:
        """This month against last: the KPIs, the chart, the grids below a floor, from the
        kept report (``bot.console.kept``) with the time it was computed; none kept yet, what
        is cheap (the grid, its children to choose) and a note that it is being computed."""
        grid = await self._grid(session, viewer, request.query_params.get("grid"))
        period = self._period(request.query_params.get("month"), self.this_month())
        assert period is not None
        choices = await self._grid_switch(session, viewer, grid)
        found, acted, again = await self.kept_overview(session, viewer, grid, period)
        query = urlencode({"grid": grid.code, "month": period.label})
        if found is None:
            response = self.render(
                "overview.html", viewer.lang, viewer, report=None, grid=grid, period=period,
                grids=choices, chart_query=query, refresh=REFRESH_SECONDS,
            )
            if again:  # once the page is on its way
                response.background = BackgroundTask(self._spawn, grid, period)
            return response
        report = found.as_report(period)
        lb = Labels(self.tr, viewer.lang)
        rates = [
            (lb.rate(name), report.total.figures.rate(name), report.total.previous.rate(name))
            for name in RATE_NAMES
        ]
        below = [
            (row, [(lb.rate(name), ratio, floor) for name, ratio, floor in row.below])
            for row in report.children
            if row.below
        ]
        response = self.render(
            "overview.html", viewer.lang, viewer, report=report, rates=rates, below=below,
            grid=grid, period=period, chart_query=query, grids=choices,
            computed_at=self._clock_text(found.computed_at),
            acted_at=self._clock_text(acted) if acted is not None else None,
        )
        if again:  # once the page is on its way
            response.background = BackgroundTask(self._spawn, grid, period)
        return response

    async def _spawn(self, grid: Grid, period: Period) -> None:
        self._compute(grid, period)

    async def chart(self, request: Request, session: AsyncSession, viewer: Viewer) -> Response:
        """The bulletin's chart (PNG) of a subtree and month: the same code draws both."""
        grid = await self._grid(session, viewer, request.query_params.get("grid"))
        period = self._period(request.query_params.get("month"), self.this_month())
        assert period is not None
        found = await kept.read(session, grid.id, period.label)
        if found is not None:
            report = found.as_report(period)
        else:
            report = await self.report(session, await load_scope(session, grid.code), period)
        lang = viewer.lang

        def t(key: str, **args: str) -> str:
            return self.tr.t(lang, f"bulletin.{key}", **args)

        png = await asyncio.to_thread(
            render_grid_chart,
            chart_bars(report),
            title=t("chart_title", grid=report.total.name, period=period.label),
            labels={
                "received": t("chart_received"),
                "done": t("chart_done"),
                "satisfaction": t("chart_satisfaction"),
            },
        )
        return Response(png, media_type="image/png", headers=_HEADERS)

    # ---- orders --------------------------------------------------------------------------

    async def _filter(
        self, request: Request, session: AsyncSession, viewer: Viewer
    ) -> OrderFilter:
        q = request.query_params
        grid = await self._grid(session, viewer, q.get("grid")) if q.get("grid") else None
        status = q.get("status") or None
        if status is not None and status != OPEN and status not in STATUSES:
            status = None
        category = (q.get("category") or "")[:32] or None
        digits = "".join(ch for ch in (q.get("q") or "")[:20] if ch.isdigit())
        return OrderFilter(
            grid=grid,
            status=status,
            category=category,
            period=self._period(q.get("month")),
            overdue=q.get("overdue") in ("1", "on", "true"),
            number=min(int(digits), MAX_ID) if digits else None,
        )

    async def orders(self, request: Request, session: AsyncSession, viewer: Viewer) -> Response:
        """The filtered list, newest first, a page at a time (keyset)."""
        f = await self._filter(request, session, viewer)
        before_text = request.query_params.get("before", "")[:12]
        before = min(int(before_text), MAX_ID) if before_text.isdigit() else None
        lines, next_before = await order_page(
            session, self.settings, viewer.scope(Order.grid_id), f, self.clock(), before=before
        )
        kept = {k: v for k, v in request.query_params.items() if k != "before" and v}
        next_url = (
            f"{PREFIX}/orders?{urlencode({**kept, 'before': next_before})}"
            if next_before is not None else None
        )
        categories = (await session.scalars(select(Category.code).order_by(Category.sort))).all()
        grids = await self._grid_choices(session, viewer)
        return self.render(
            "orders.html", viewer.lang, viewer, lines=lines, next_url=next_url, f=f,
            query=kept, categories=categories, grids=grids, statuses=(OPEN, *STATUSES),
            tz=self.settings.tz,
            export_query=urlencode({k: v for k, v in kept.items()}),
        )

    async def _order(self, session: AsyncSession, viewer: Viewer, order_id: int) -> Order:
        if order_id > MAX_ID:
            raise NotFound
        order = await session.scalar(
            select(Order).where(Order.id == order_id, viewer.scope(Order.grid_id))
        )
        if order is None:
            raise NotFound
        return order

    async def order(
        self, request: Request, session: AsyncSession, viewer: Viewer,
        *, error: str | None = None, status: int = 200,
    ) -> Response:
        """One order: its events (who did what when), photos, actions; the resident's phone
        and room only to whom the chat shows them (the handler of the order)."""
        order = await self._order(session, viewer, request.path_params["order_id"])
        events = (
            await session.execute(
                select(OrderEvent, Person.name)
                .outerjoin(Person, Person.id == OrderEvent.actor_id)
                .where(OrderEvent.order_id == order.id)
                .order_by(OrderEvent.created_at, OrderEvent.id)
            )
        ).all()
        grid = await session.get(Grid, order.grid_id)
        handling = await session.get(Grid, order.handling_grid_id)
        building = await session.get(Building, order.building_id)
        assignee = await session.get(Person, order.assignee_id) if order.assignee_id else None
        assert grid is not None and handling is not None
        handler = await can_manage(session, viewer.person.id, handling)
        contact = None
        if handler:
            resident = await session.get(Person, order.resident_id)
            contact = (resident.name if resident else "", resident.phone if resident else None,
                       order.room)
        members = (
            await members_in_subtree(session, handling)
            if handler and order.status in AWAITING_DISPATCH else []
        )
        tz = self.settings.tz
        timeline = [
            (ev.created_at.astimezone(tz).strftime("%Y-%m-%d %H:%M"), name, ev)
            for ev, name in events
        ]
        return self.render(
            "order.html", viewer.lang, viewer, status=status, order=order,
            number=number(order), grid=grid, handling=handling, building=building,
            assignee=assignee, timeline=timeline, contact=contact, members=members,
            can_escalate=handler and order.status in ESCALATABLE,
            created=order.created_at.astimezone(tz).strftime("%Y-%m-%d %H:%M"),
            error=error, done=request.query_params.get("done"),
        )

    async def photo(self, request: Request, session: AsyncSession, viewer: Viewer) -> Response:
        """An order's photo (the resident's, or the member's "done" photo), in scope only."""
        order = await self._order(session, viewer, request.path_params["order_id"])
        which = request.path_params["which"]
        ref = {"order": order.photo, "done": order.done_photo}.get(which)
        path = self.media.path(ref) if ref else None
        if path is None:
            raise NotFound
        data = await asyncio.to_thread(path.read_bytes)
        kind = path.suffix.lstrip(".").replace("jpg", "jpeg")
        return Response(data, media_type=f"image/{kind}", headers=_HEADERS)

    def _services(self, session: AsyncSession) -> tuple[Notifier, OrderService]:
        notifier = Notifier(session, self.tr, self.settings.default_locale)
        service = OrderService(
            session, notifier, self.tr, self.clock(), PointsRules.from_settings(self.settings)
        )
        return notifier, service

    async def _order_action(
        self,
        request: Request,
        session: AsyncSession,
        viewer: Viewer,
        name: str,
        act: Callable[[OrderService, Order, Form], Awaitable[str]],
    ) -> Response:
        """Run a chat action on an order in a savepoint: refused (the chat's sentence), it
        changes nothing; done, it leaves an audit row and its messages in the outbox."""
        order = await self._order(session, viewer, request.path_params["order_id"])
        notifier, service = self._services(session)
        try:
            async with session.begin_nested():
                detail = await act(service, order, self.form(request))
                await hold_order_pushes(session, self.settings, notifier.written, self.clock())
                await self._audit(session, viewer, name, f"order:{order.id}", detail)
        except OrderError as refusal:
            message = self.tr.t(viewer.lang, refusal.key, **refusal.args_)
            return await self.order(request, session, viewer, error=message, status=409)
        return RedirectResponse(
            f"{PREFIX}/orders/{order.id}?done={name}", status_code=303, headers=_HEADERS
        )

    async def escalate(self, request: Request, session: AsyncSession, viewer: Viewer) -> Response:
        """Send the order up the tree with a reason (as ⬆️ in chat)."""

        async def act(service: OrderService, order: Order, form: Form) -> str:
            reason = " ".join(str(form.get("reason", "")).split())[:MAX_NOTE]
            if not reason:
                raise OrderError("console.reason_needed")
            await service.escalate(viewer.person, order.id, reason)
            return reason

        return await self._order_action(request, session, viewer, "escalate", act)

    async def assign(self, request: Request, session: AsyncSession, viewer: Viewer) -> Response:
        """Offer the order to one member (as 👤 assign in chat; the same rules)."""

        async def act(service: OrderService, order: Order, form: Form) -> str:
            member = str(form.get("member", ""))
            if not member.isdigit():
                raise OrderError("error.not_a_member_here")
            await service.assign(viewer.person, order.id, int(member))
            return member

        return await self._order_action(request, session, viewer, "assign", act)

    async def export_orders(
        self, request: Request, session: AsyncSession, viewer: Viewer
    ) -> Response:
        """The filtered list of one month as the ledger (xlsx: the workbook of ``gridbot
        report`` with the order sheet narrowed to the list; csv: that order sheet).

        The list of someone with several subtrees (heads of two grids, neither above the
        other) and no grid chosen spans them all: the ledger is then of each subtree's report,
        each narrowed to the list (no figure of a grid outside the viewer's subtrees, such as a
        common parent's other children), its orders together, by number as in any ledger."""
        fmt = request.path_params["fmt"]
        if fmt not in ("xlsx", "csv"):
            raise NotFound
        f = await self._filter(request, session, viewer)
        period = f.period or self.this_month()
        f = OrderFilter(f.grid, f.status, f.category, period, f.overdue, f.number)
        wanted = await order_ids(
            session, self.settings, viewer.scope(Order.grid_id), f, self.clock()
        )
        reports = []
        for root in [f.grid] if f.grid else viewer.roots:
            scope = await load_scope(session, root.code)
            full = await build_report(session, self.settings, scope, period, self.clock())
            reports.append(_narrowed(full, wanted))
        lb = Labels(self.tr, viewer.lang)
        name = title(reports, lb).replace("/", "-")
        if fmt == "xlsx":
            data = await asyncio.to_thread(write_xlsx, reports, self.tr, viewer.lang)
            return _download(data, f"{name}.xlsx", XLSX)
        headers, rows = order_rows(together(reports), lb, None)
        return _download(_csv(headers, rows), f"{name}.csv", "text/csv; charset=utf-8")

    # ---- duties, members, bulletins ------------------------------------------------------

    async def duties(self, request: Request, session: AsyncSession, viewer: Viewer) -> Response:
        """Today: patrol runs due, done, missed; visits owed; whistles and their answers."""
        grid = await self._grid(session, viewer, request.query_params.get("grid"))
        scope = await load_scope(session, grid.code)
        today = self.clock().astimezone(self.settings.tz).date()
        period = Period.days(today, today, self.settings.tz)
        patrols, visits, whistles = await load_duties(session, scope, period)
        figures = duty_figures(Figures(), patrols, visits, whistles)
        owed = [v for v in visits if v.logged < v.due]
        names = dict(
            (await session.execute(
                select(Person.id, Person.name).where(Person.id.in_({v.member_id for v in owed}))
            )).all()
        ) if owed else {}
        return self.render(
            "duties.html", viewer.lang, viewer, grid=grid, period=period, figures=figures,
            owed=owed, names=names, whistles=whistles, grid_names=scope.grids,
            patrols_due=len(patrols), grids=await self._grid_switch(session, viewer, grid),
        )

    async def members(self, request: Request, session: AsyncSession, viewer: Viewer) -> Response:
        """Members of the subtree: this month's points, open load, mean rating; the exit
        list."""
        grid = await self._grid(session, viewer, request.query_params.get("grid"))
        period = self.this_month()
        scope = await load_scope(session, grid.code)
        report = await self.report(session, scope, period)
        load = {m.person_id: m.open_orders
                for m in await members_in_subtree(session, grid, limit=100_000)}
        exits = await exit_list(session, self.settings, scope, period.end)
        return self.render(
            "members.html", viewer.lang, viewer, grid=grid, period=period,
            members=report.members, load=load, exits=exits, grid_names=scope.grids,
            idle_months=self.settings.exit_idle_months,
            done=request.query_params.get("done"), error=None,
            grids=await self._grid_switch(session, viewer, grid),
        )

    async def export_members(
        self, request: Request, session: AsyncSession, viewer: Viewer
    ) -> Response:
        """The members list as the ledger's 党员积分 sheet (CSV)."""
        grid = await self._grid(session, viewer, request.query_params.get("grid"))
        scope = await load_scope(session, grid.code)
        report = await self.report(session, scope, self.this_month())
        headers, rows = points_rows(report, Labels(self.tr, viewer.lang))
        return _download(_csv(headers, rows), f"{grid.code}-points.csv",
                         "text/csv; charset=utf-8")

    async def adjust_points(
        self, request: Request, session: AsyncSession, viewer: Viewer
    ) -> Response:
        """Add or take away points with a reason: community admins, for people with a role
        in their subtree (the rules of ``/points adjust``); the person is told in chat."""
        if not viewer.is_admin:
            raise Forbidden
        person_id = request.path_params["person_id"]
        if person_id > MAX_ID:
            raise NotFound
        target = await session.get(Person, person_id)
        in_scope = target is not None and await session.scalar(
            select(func.count())
            .select_from(Role)
            .join(Grid, Grid.id == Role.grid_id)
            .where(
                Role.person_id == target.id,
                or_(*(Grid.path.startswith(g.path, autoescape=True) for g in viewer.admin_roots)),
            )
        )
        if target is None or not in_scope:
            raise NotFound
        form = self.form(request)
        lang = viewer.lang
        try:
            delta = points.parse_delta(str(form.get("delta", "")))
            note = points.check_note(str(form.get("reason", "")))
            async with session.begin_nested():
                await points.adjust(
                    session, person_id=target.id, delta=delta, note=note, now=self.clock(),
                    actor_id=viewer.person.id, actor_name=viewer.person.name,
                )
                total = await points.total(session, target.id)
                await self._audit(session, viewer, "points", f"person:{target.id}",
                                  f"{delta:+d} {note}")
                notifier = Notifier(session, self.tr, self.settings.default_locale)
                if target.id != viewer.person.id:
                    await notifier.to_person(
                        target.id,
                        lambda lg: Outbound(self.tr.t(
                            lg, "points.adjusted_you", delta=f"{delta:+d}", reason=note,
                            total=str(total),
                        )),
                    )
        except points.AdjustError as err:
            return self.render(
                "message.html", lang, viewer, status=400,
                message=self.tr.t(lang, err.key, **err.args_),
            )
        query = urlencode({"done": "points", "grid": request.query_params.get("grid", "")})
        return RedirectResponse(f"{PREFIX}/members?{query}", status_code=303, headers=_HEADERS)

    async def bulletins(self, request: Request, session: AsyncSession, viewer: Viewer) -> Response:
        """The archive: every month with orders in the subtree, up to last month."""
        grid = await self._grid(session, viewer, request.query_params.get("grid"))
        first = await session.scalar(
            select(func.min(Order.created_at)).where(viewer.scope(Order.grid_id))
        )
        months: list[str] = []
        period = self.this_month().previous()
        if first is not None:
            start = first.astimezone(self.settings.tz)
            while period.end > start and len(months) < 36:
                months.append(period.label)
                period = period.previous()
        return self.render("bulletins.html", viewer.lang, viewer, grid=grid, months=months)

    async def bulletin(self, request: Request, session: AsyncSession, viewer: Viewer) -> Response:
        """One month's bulletin of a subtree: the same text and chart as in chat."""
        grid = await self._grid(session, viewer, request.query_params.get("grid"))
        period = self._period(request.path_params["month"])
        assert period is not None
        if period.start > self.clock():
            raise NotFound
        scope = await load_scope(session, grid.code)
        report = await self.report(session, scope, period)
        exits = await exit_list(session, self.settings, scope, period.end)
        parts = bulletin_parts(report, exits, self.tr, viewer.lang, self.settings)
        return self.render(
            "bulletin.html", viewer.lang, viewer, grid=grid, period=period, parts=parts,
            chart_query=urlencode({"grid": grid.code, "month": period.label}),
        )

    # ---- notices -------------------------------------------------------------------------

    async def notice(self, request: Request, session: AsyncSession, viewer: Viewer) -> Response:
        """A notice to every resident of a subtree: write, confirm, send (as ``/notice``)."""
        grids = await self._grid_choices(session, viewer)
        if request.method == "GET":
            return self.render("notice.html", viewer.lang, viewer, grids=grids, step="write",
                               text="", grid=None, sent=request.query_params.get("sent"))
        form = self.form(request)
        text = " ".join(str(form.get("text", "")).split())[:MAX_NOTE]
        grid = await self._grid(session, viewer, str(form.get("grid", "")) or None)
        if len(text) < 2:
            return self.render("notice.html", viewer.lang, viewer, grids=grids, step="write",
                               text=text, grid=grid, status=400,
                               error=self.tr.t(viewer.lang, "notice.usage"), sent=None)
        if form.get("confirm") != "yes":
            residents = await session.scalar(
                select(func.count(func.distinct(Role.person_id)))
                .join(Grid, Grid.id == Role.grid_id)
                .where(Grid.path.startswith(grid.path, autoescape=True),
                       Role.role == ROLE_RESIDENT)
            )
            return self.render("notice.html", viewer.lang, viewer, grids=grids, step="confirm",
                               text=text, grid=grid, residents=residents or 0, sent=None)
        notifier = Notifier(session, self.tr, self.settings.default_locale)
        duties = DutyService(session, notifier, self.tr, self.settings, self.clock())
        try:
            sent = await duties.send_notice(viewer.person, text, grid=grid)
        except OrderError as refusal:
            raise Forbidden from refusal
        await self._audit(session, viewer, "notice", f"grid:{grid.code}", text)
        query = urlencode({"sent": sent.recipients})
        return RedirectResponse(f"{PREFIX}/notice?{query}", status_code=303, headers=_HEADERS)


#: Sent with every console response: no caching of pages with people's data, no framing, a
#: referrer only to this site (a sign-in link in the address bar never leaves in a Referer
#: header; "no-referrer" would also blank the Origin of our own forms).
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self' 'unsafe-inline'; "
        "script-src 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
}


def _narrowed(report: Report, wanted: set[int]) -> Report:
    """The report with its order rows narrowed to ``wanted`` (the figures stay the period's)."""
    from dataclasses import replace

    return replace(report, orders=[o for o in report.orders if o.id in wanted])


def _csv(headers: list[str], rows: list[list[Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(headers)
    for row in rows:
        writer.writerow([
            v.strftime("%Y-%m-%d %H:%M") if isinstance(v, datetime) else ("" if v is None else v)
            for v in row
        ])
    return ("\ufeff" + out.getvalue()).encode()  # the BOM: Excel opens UTF-8 CSV as such


def _download(data: bytes, name: str, media_type: str) -> Response:
    from urllib.parse import quote

    headers = dict(_HEADERS)
    headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"
    return Response(data, media_type=media_type, headers=headers)
