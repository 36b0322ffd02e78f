"""Soak, CI size: one simulated hour with 10 devices polled every (simulated) second; memory stays flat.

Promise checked: the daemon can run for months, so nothing it holds grows with the number of
readings, polls, commands or uploads. The full 24-hour version with its figures is
`python -m bench.soak`; this one runs the same site for one simulated hour at 60x (a minute)
and fails if RSS grows by more than 10 MB after the warm-up, or if the backlog does not drain.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import soak

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_one_simulated_hour_10_devices_memory_flat(tmp_path: Path) -> None:
    result = soak(tmp_path, hours=1.0, speed=60.0, samples=12, warmup_fraction=0.25)
    print("\n" + result.describe())
    assert result.readings > 10 * 3600 / 2, "zapd fell far behind the 1 s polling"
    assert result.growth_mb < 10.0, f"RSS grew {result.growth_mb:.1f} MB after warm-up"
    assert result.outbox_depth < 5000, "uploads did not keep up"
