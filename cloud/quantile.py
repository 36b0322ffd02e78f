"""Quantiles of the short series a plan's risk is read from (a fortnight of days, four weeks of ratios).

`numpy.quantile` is generic: for 14 values it spends 40-100 us on dispatch and checks, and a backtest year asks
for 30,000 of them (4 % of a year's wall time at 15-minute slots, by py-spy). This is the same computation, numpy's
default "linear" method (Hyndman and Fan's type 7) with numpy's own interpolation step, for a 1-D array: the
results are bit-identical (tests/unit/test_quantile.py checks that against numpy), so plans do not move.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def linear_quantiles(x: npt.ArrayLike, q: npt.ArrayLike) -> FloatArray:
    """`numpy.quantile(x, q)` for a 1-D `x` and `q` in [0, 1] (a scalar `q` gives a 0-d array).

    A value that is not finite, or an empty `x`, goes to numpy itself, which answers or raises as it always has."""
    values = np.asarray(x, dtype=np.float64)
    qs = np.asarray(q, dtype=np.float64)
    n = values.shape[0] if values.ndim == 1 else 0
    if n == 0 or values.ndim != 1 or not np.isfinite(values).all() or not ((qs >= 0.0) & (qs <= 1.0)).all():
        return np.asarray(np.quantile(values, qs), dtype=np.float64)
    ordered = np.sort(values)
    if n == 1:  # numpy answers the one value itself (its bits: -0.0 stays -0.0, where a + 0 * diff gives +0.0)
        return np.full(qs.shape, ordered[0], dtype=np.float64)
    virtual = (n - 1) * qs
    previous = np.floor(virtual)
    top = virtual >= n - 1
    lo = np.where(top, n - 1, previous).astype(np.intp)
    hi = np.where(top, n - 1, previous + 1).astype(np.intp)
    gamma = virtual - previous
    a, b = ordered[lo], ordered[hi]
    diff = b - a
    # numpy's _lerp: a + diff * t, and from t = 0.5 on b - diff * (1 - t), so both ends are exact
    out = np.where(gamma >= 0.5, b - diff * (1.0 - gamma), a + diff * gamma)
    return np.asarray(out, dtype=np.float64)
