"""Calibration of the two-stage plan's dark / bright PV days (`--scenarios`) on the bench houses.

`python -m bench.pv_spread_scores [TRACE.csv ...]`: for each house and each day d, the dark / bright ratio over
the mean day m_d (the 14-day factor of day d's plans) that a plan puts on

* today, made at 00 h (from the completed days only),
* the rest of today, made at 12 h (actual: the sunlit slots after 12 h over their clear sky, over m_d),
* tomorrow, made at 14 h (actual: k_(d+1) / m_d),

for the unconditional spread (`cloud.forecast.pv_ratio_spread`, the last 14 days' P10 / P90) and the conditional
one (`cloud.forecast_pv_day.pv_day_spread_from_series`) over 30 / 60 / 120 days; then how often the actual day
fell below dark / above bright (10 % each is calibrated), over all days and after a bright day (today's
clearness in the top third of the house's days), and the quantile (pinball) loss of P10 and P90. Each spread is
computed from the past of its plan only. Results: docs/cloud-planning.md, "Conditional PV spread".
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.pv_day_scores import _house
from cloud.forecast import learn_pv_factor, pv_ratio_spread
from cloud.forecast_pv_day import day_clearness, pv_day_spread_from_series

DATA = Path(__file__).resolve().parent / "data"
HOUSES = (
    "opsd_kn_res4_nl_2023.csv",
    "opsd_kn_res3_nl_2023.csv",
    "ausgrid_c12_nl_2023.csv",
    "synthetic_nl_2025_hourly.csv",
    "be_2023_real_prices_hourly.csv",
)
CASES = (("today 00 h", 0, 0), ("rest of today 12 h", 12, 0), ("tomorrow 14 h", 14, 1))


def _pinball(q: float, forecast: np.ndarray, actual: np.ndarray) -> float:
    e = actual - forecast
    return float(np.mean(np.maximum(q * e, (q - 1.0) * e)))


def score(path: str) -> None:
    pv, sky, spd, kwp, dt = _house(path)
    days = len(pv) // spd
    k = day_clearness(pv, sky, spd, kwp)
    sunny = sky > 0.02 * kwp
    print(f"{Path(path).name}:")
    variants = ("unconditional 14 d", "conditional 30 d", "conditional 60 d", "conditional 120 d")
    rows: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    for d in range(15, days - 1):
        lo = (d - 14) * spd
        a = d * spd
        m = learn_pv_factor(pv[lo:a], sky[lo:a], spd, kwp).typical
        top = np.nanquantile(k, 2 / 3)
        for label, hour, j in CASES:
            now = a + round(hour / dt)
            if j == 1:
                if not np.isfinite(k[d + 1]):
                    continue
                actual = float(k[d + 1]) / m
            else:
                s = sunny[now : a + spd]
                if not s.any() or np.isnan(pv[now : a + spd][s]).any():
                    continue
                actual = float(pv[now : a + spd][s].sum() / sky[now : a + spd][s].sum()) / m
            spreads = {"unconditional 14 d": pv_ratio_spread(pv[lo:a], sky[lo:a], spd, kwp)}
            for window in (30, 60, 120):
                c = pv_day_spread_from_series(pv[:now], sky, a, spd, m, kwp, days=window)
                spreads[f"conditional {window} d"] = c.day(j) if c is not None else spreads["unconditional 14 d"]
            for v, (dark, bright) in spreads.items():
                seen = k[d + j - 1]  # the last complete day before the one forecast
                after = float(np.isfinite(seen) and seen > top)
                rows.setdefault((label, v), []).append((dark, bright, actual, after))
    print(
        f"  {'plan':20} {'spread':20} {'below dark':>10} {'above bright':>12} {'(after bright)':>15}"
        f" {'P10 loss':>8} {'P90 loss':>8} {'dark':>5} {'bright':>6}"
    )
    for label, _, _ in CASES:
        for v in variants:
            r = np.array(rows[(label, v)])
            dark, bright, actual, after = r.T
            below, above = np.mean(actual < dark), np.mean(actual > bright)
            sel = after > 0
            b2, a2 = np.mean(actual[sel] < dark[sel]), np.mean(actual[sel] > bright[sel])
            print(
                f"  {label:20} {v:20} {below:10.1%} {above:12.1%} {b2:7.1%}/{a2:6.1%}"
                f" {_pinball(0.1, dark, actual):8.4f} {_pinball(0.9, bright, actual):8.4f}"
                f" {np.median(dark[sel]):5.2f} {np.median(bright[sel]):6.2f}"
            )


def main(argv: list[str]) -> None:
    for path in argv or [str(DATA / h) for h in HOUSES]:
        score(path)


if __name__ == "__main__":
    main(sys.argv[1:])
