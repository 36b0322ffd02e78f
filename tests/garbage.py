"""Garbage input for the envelope property tests (issue 10 item 2): NaN, ±Inf and absurd magnitudes.

Shared by tests/unit/test_envelope.py and test_ev_envelope.py, so both draw the same garbage and
classify a meter as known by the same physical rule (a finite power within 10 MW, finite phase
currents within 10 kA, finite site limits) without reading it from the code under test.
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

from zapd.envelope import SiteLimits
from zapd.state import Snapshot

anything = st.floats(allow_nan=True, allow_infinity=True)


def maybe_bad(good: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    """Mostly a sane value, often any float at all (NaN, ±Inf, ±1e308, subnormals)."""
    return st.one_of(good, anything, st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308]))


def ok(x: float | None, lo: float, hi: float) -> bool:
    return x is not None and math.isfinite(x) and lo <= x <= hi


def meter_known(snapshot: Snapshot, site: SiteLimits) -> bool:
    """Whether the fuse and export limits can be checked against this meter reading at all."""
    phases = snapshot.phase_currents_a
    return (
        ok(snapshot.grid_w, -1e7, 1e7)
        and (phases is None or all(ok(a, -1e4, 1e4) for a in phases))
        and ok(site.fuse_limit_w, -math.inf, math.inf)
        and ok(site.fuse_a, 0, math.inf)
        and ok(site.voltage_v, 1, math.inf)
    )
