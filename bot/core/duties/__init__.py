"""Duties and timers, the domain side: one module per duty kind.

* :mod:`.base` — what they share (transaction, notifier, run-once records, quiet hours, batched
  pushes, who manages what);
* :mod:`.patrols`, :mod:`.visits` (with the month end and households/visit plans),
  :mod:`.whistles`, :mod:`.notices`, :mod:`.digest` — one duty kind each;
* :mod:`.service` — :class:`~bot.core.duties.service.DutyService`, all of them (and the order
  clocks' pass, :mod:`bot.core.order_clocks`) on one object.

Order quiet hours live in :mod:`bot.core.quiet_hours`. This package imports nothing itself, so
that :mod:`bot.core.order_clocks` can build on :mod:`.base` without a cycle.
"""
