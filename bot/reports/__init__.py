"""Accountability: the KPIs of a grid subtree (:mod:`bot.reports.kpi`), the Excel ledger
(:mod:`bot.reports.ledger`), the monthly bulletin (:mod:`bot.reports.bulletin`) and its
pictures (:mod:`bot.reports.chart`: matplotlib, headless)."""
