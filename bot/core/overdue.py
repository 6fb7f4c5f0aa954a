"""When an open order is overdue: one definition, used by the order clocks (which act on it)
and by ``/queue`` (which shows it).

An order's current state has one clock (its values resolved per category and level by
:func:`bot.core.order_clocks.resolve_clocks`, shown by ``gridbot clocks``), counted from the
order's last change (``updated_at``, set by every transition):

* waiting for dispatch (submitted, escalated): ``dispatch_minutes`` — nobody dispatched it;
* dispatched (offered): ``accept_minutes`` — nobody accepted it;
* accepted: ``deadline_hours`` — the member has not finished it.

The order is *overdue* from that moment on (``now >= due``). A done order waits for the
resident's rating; that is not the handler's delay, so it has no due time here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Protocol

from models import Order
from models.orders import ACCEPTED, AWAITING_DISPATCH, DISPATCHED


class StateClocks(Protocol):
    """The clock values :func:`due_at` reads (``bot.core.order_clocks.Clocks`` has them)."""

    @property
    def dispatch_minutes(self) -> int: ...

    @property
    def accept_minutes(self) -> int: ...

    @property
    def deadline_hours(self) -> int: ...


def due_at(order: Order, clocks: StateClocks) -> datetime | None:
    """When the clock of the order's current state runs out; ``None`` for a state without one."""
    if order.status in AWAITING_DISPATCH:
        return order.updated_at + timedelta(minutes=clocks.dispatch_minutes)
    if order.status == DISPATCHED:
        return order.updated_at + timedelta(minutes=clocks.accept_minutes)
    if order.status == ACCEPTED:
        return order.updated_at + timedelta(hours=clocks.deadline_hours)
    return None


def overdue_by(order: Order, clocks: StateClocks, now: datetime) -> timedelta | None:
    """How long the order has been overdue (``timedelta(0)`` at the very moment it falls
    due), or ``None`` when it is not."""
    due = due_at(order, clocks)
    if due is None or now < due:
        return None
    return now - due
