"""The one failure/recovery latch and the one backoff (drivers/resilience.py)."""

from __future__ import annotations

import random

import pytest
import structlog
from structlog.testing import capture_logs

from drivers.resilience import Backoff, FailureLatch

log = structlog.get_logger("test")


def test_latch_logs_a_streak_once_and_its_end_once() -> None:
    t = [100.0]
    latch = FailureLatch(log, "area.thing_failed", "area.thing_recovered", monotonic=lambda: t[0], device="d1")
    with capture_logs() as logs:
        assert latch.ok() is False  # nothing known yet, no first_ok_event: silent
        assert latch.failed(error="disk full") is True
        for _ in range(5):
            assert latch.failed(error="disk full") is False
        t[0] = 112.34
        assert latch.ok() is True
        assert latch.ok() is False
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("area.thing_failed", "error"),
        ("area.thing_recovered", "info"),
    ]
    assert logs[0]["device"] == "d1" and logs[0]["error"] == "disk full"
    assert logs[1]["failures"] == 6 and logs[1]["failed_for_s"] == 12.3
    assert not latch.failing and latch.streak == 0


def test_link_latch_logs_connected_first_then_down_and_up() -> None:
    latch = FailureLatch(log, "x.link_down", "x.link_up", first_ok_event="x.connected", level="warning")
    with capture_logs() as logs:
        latch.ok(topics=3)
        latch.ok()
        latch.failed(reason="eof")
        latch.failed(reason="refused")
        latch.ok()
    assert [e["event"] for e in logs] == ["x.connected", "x.link_down", "x.link_up"]
    assert logs[1]["log_level"] == "warning" and logs[1]["reason"] == "eof"


def test_a_failure_before_the_first_success_is_logged() -> None:
    latch = FailureLatch(log, "x.link_down", "x.link_up", first_ok_event="x.connected")
    with capture_logs() as logs:
        latch.failed(reason="refused")
        latch.ok()
    assert [e["event"] for e in logs] == ["x.link_down", "x.link_up"]


def test_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    b = Backoff(1.0, 8.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(6)]
    for d, base in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert base * 0.5 <= d <= base
    b.reset()
    assert b.next_delay() <= 1.0


@pytest.mark.parametrize(("initial", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_backoff_refuses_bad_bounds(initial: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, cap)
