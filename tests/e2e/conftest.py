"""Every test in this folder runs the whole service against a fake platform server: marked
``e2e`` (slow; ``pytest -m "not e2e and not browser and not faults"`` is the fast loop)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)
