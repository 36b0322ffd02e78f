"""The Zap side of the live channel without a network: reconnect spread, and DR windows only ever tighten."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_sync.commands import DemandResponse, DrWindow
from drivers.resilience import Backoff
from zapd.model import Intent

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_a_thousand_reconnects_after_a_restart_are_spread() -> None:
    """Every Zap's first retry after the cloud went away (what ChannelClient uses: 30 s, full jitter)."""
    delays = [Backoff(30.0, 300.0, full_jitter=True).next_delay() for _ in range(1000)]
    assert all(0.0 <= d <= 30.0 for d in delays)
    per_second = Counter(int(d) for d in delays)
    # Uniform over 30 s: ~33 a second; never a crowd in one second, and the whole window is used.
    assert max(per_second.values()) <= 80, per_second.most_common(3)
    assert len(per_second) >= 28
    assert min(delays) < 2.0 and max(delays) > 28.0


class _KV:
    def __init__(self) -> None:
        self.kv: dict[str, str] = {}

    async def kv_get(self, key: str) -> str | None:
        return self.kv.get(key)

    async def kv_set(self, key: str, value: str) -> None:
        self.kv[key] = value


limits = st.one_of(st.none(), st.floats(min_value=0, max_value=1e6, allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(plan_import=limits, plan_export=limits, windows=st.lists(st.tuples(limits, limits), max_size=4))
def test_a_dr_window_never_loosens_a_limit(
    plan_import: float | None, plan_export: float | None, windows: list[tuple[float | None, float | None]]
) -> None:
    dr = DemandResponse(_KV())  # type: ignore[arg-type]
    for i, (imp, exp) in enumerate(windows):
        asyncio.run(dr.add(DrWindow(f"{i:032x}", NOW - timedelta(minutes=1), NOW + timedelta(hours=1), imp, exp), NOW))
    out = dr.overlay(NOW, Intent(grid_import_limit_w=plan_import, grid_export_limit_w=plan_export))
    for before, after, mine in (
        (plan_import, out.grid_import_limit_w, [w[0] for w in windows]),
        (plan_export, out.grid_export_limit_w, [w[1] for w in windows]),
    ):
        bounds = [b for b in (before, *mine) if b is not None]
        assert after == (min(bounds) if bounds else None)
    # Outside the window nothing changes.
    later = dr.overlay(NOW + timedelta(hours=2), Intent(grid_import_limit_w=plan_import))
    assert later.grid_import_limit_w == plan_import


async def test_dr_windows_survive_a_restart(tmp_path: Path) -> None:
    kv = _KV()
    dr = DemandResponse(kv)  # type: ignore[arg-type]
    await dr.add(DrWindow("a" * 32, NOW, NOW + timedelta(hours=1), 1500.0, None), NOW)
    again = DemandResponse(kv)  # type: ignore[arg-type]
    await again.load(NOW + timedelta(minutes=1))
    assert again.overlay(NOW + timedelta(minutes=1), Intent()).grid_import_limit_w == 1500.0
    gone = DemandResponse(kv)  # type: ignore[arg-type]
    await gone.load(NOW + timedelta(hours=2))
    assert gone.windows == []
