"""The per-minute rollup (cloud/dataapi/rollup.py) against the raw-sample downsampler (cloud/dataapi/series.py).

Two independent implementations of the same definitions (mean/min/max per bucket; energy = each sample
held until the next, at most 300 s): folding in arbitrary chunks, as catch-up runs do, must give what one
pass over all the samples gives.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.dataapi.rollup import fold
from cloud.dataapi.series import aggregate

T0 = 1_772_409_600.0  # 2026-03-02T00:00:00Z, on a whole day


samples = st.lists(
    st.tuples(st.floats(min_value=0.5, max_value=400.0), st.floats(min_value=-5000.0, max_value=5000.0)),
    min_size=2,
    max_size=120,
)


def _series(steps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    t, out = T0, []
    for dt, v in steps:
        t += dt
        out.append((round(t, 3), v))
    return out


@settings(max_examples=200, deadline=None)
@given(samples, st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=10))
def test_chunked_fold_equals_one_pass_downsampling(steps: list[tuple[float, float]], cuts: list[int]) -> None:
    pts = _series(steps)
    tails: dict[str, list[float]] = {}
    cells: dict[tuple[str, str, int], list[float]] = {}
    i = 0
    for n in [*cuts, len(pts)]:
        chunk = pts[i : i + n]
        i += len(chunk)
        for key, c in fold([("m", t, {"power_w": v}) for t, v in chunk], tails).items():
            old = cells.get(key)
            cells[key] = c if old is None else [old[0] + c[0], old[1] + c[1], min(old[2], c[2]),
                                                max(old[3], c[3]), old[4] + c[4]]  # fmt: skip
    # The raw downsampler at 15 min, with the last sample's hold cut at the last sample (still pending).
    end = pts[-1][0]
    raw = aggregate(pts, T0, end, 900, energy=True)
    for b in raw:
        k0 = int(b.start.timestamp()) // 60
        minutes = [c for (_d, _f, m), c in cells.items() if k0 <= m < k0 + 15]
        counted = [c for c in minutes if c[0] > 0]
        assert sum(int(c[0]) for c in counted) == b.count
        assert math.isclose(sum(c[1] for c in counted) / b.count, b.mean, rel_tol=1e-9, abs_tol=1e-6)
        assert min(c[2] for c in counted) == b.min and max(c[3] for c in counted) == b.max
        assert b.energy_wh is not None
        assert math.isclose(sum(c[4] for c in minutes), b.energy_wh, rel_tol=1e-9, abs_tol=1e-6)


def test_non_numeric_and_non_finite_values_are_not_rolled_up() -> None:
    tails: dict[str, list[float]] = {}
    cells = fold([("ev", T0, {"connected": True, "state": "B", "power_w": math.nan, "current_a": 6.0})], tails)
    assert list(cells) == [("ev", "current_a", int(T0 // 60))]
