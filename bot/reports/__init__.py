"""Accountability: the KPIs of a grid subtree (:mod:`bot.reports.kpi`), the Excel ledger
(:mod:`bot.reports.ledger`) and the monthly bulletin (:mod:`bot.reports.bulletin`)."""
