"""Pictures for officials: charts of the monthly figures (matplotlib, headless)."""
