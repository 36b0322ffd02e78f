"""Fixtures the unit tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from zapd.store import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A real SQLite store in the test's temp dir (the controller writes its command log there)."""
    s = await Store.open(tmp_path / "zapd.sqlite")
    yield s
    await s.close()
