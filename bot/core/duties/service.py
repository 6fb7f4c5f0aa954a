"""The duty service: every duty kind (and the order clocks' pass) on one object, as the
scheduler's jobs, the handlers and the console call them."""

from __future__ import annotations

from bot.core.duties.digest import DigestDuties
from bot.core.duties.notices import NoticeDuties
from bot.core.duties.patrols import PatrolDuties
from bot.core.duties.visits import VisitDuties
from bot.core.duties.whistles import WhistleDuties
from bot.core.order_clocks import OrderClocks


class DutyService(
    PatrolDuties, VisitDuties, WhistleDuties, NoticeDuties, DigestDuties, OrderClocks
):
    """Duty actions on behalf of the scheduler or a person, at a given time, in one transaction."""


__all__ = ["DutyService"]
