"""The rolling write budget on a manual clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from drivers.modbus.write_budget import WriteBudget, WriteBudgetExhausted
from zapd.clock import ManualClock


def test_rolling_hour() -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    budget = WriteBudget("dev", 3, clock)
    for _ in range(3):
        budget.spend()
        clock.advance(1000)  # writes at 0, 1000, 2000 s
    with pytest.raises(WriteBudgetExhausted, match="write budget exhausted"):
        budget.spend()  # at 3000 s all three are within the hour
    clock.advance(600)  # 3600 s: the write at 0 s has aged out
    assert budget.remaining() == 1
    budget.spend()
    assert budget.counters == {"writes": 4, "refused": 1}


def test_no_cap_and_bad_cap() -> None:
    budget = WriteBudget("dev", None, ManualClock(datetime(2026, 1, 1, tzinfo=UTC)))
    for _ in range(1000):
        budget.spend()
    assert budget.remaining() is None
    with pytest.raises(ValueError):
        WriteBudget("dev", 0, ManualClock(datetime(2026, 1, 1, tzinfo=UTC)))
