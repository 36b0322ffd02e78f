"""Where the factor PV forecast is biased: by month x local hour, by lead, with and without the nowcast.

`python -m bench.pv_bias TRACE.csv [--table VARIANT]` re-runs the backtest's PV forecaster offline (the same
functions: `learn_pv_factor` over the last 14 days, `learn_pv_shape`, `pv_nowcast`; hourly re-plans) on a trace
with its `# site:` line and prints, per variant, the forecast minus the measured energy (kWh) over the year
and over the site's four winter months (Nov-Feb north of the equator, May-Aug south of it) and the MAE over
sunlit slots, for the first hour of each plan (lead 0, the slots a plan executes) and for the same slots
forecast a day earlier (lead 24 h, where the nowcast has faded); then one variant's lead-0 bias by month x local
hour. Variants: `factor` (no nowcast), `nowcast` (the default: ratio bounded 0.2-1.6), `uncapped` (nowcast
ratio bounded 0.2-5), and each with `+shape`. The first 14 days are left out (no factor yet). Figures:
docs/cloud-planning.md, "PV forecast bias".
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from cloud.backtest import read_traces, site_config
from cloud.forecast import (
    NOWCAST_RECENT_H,
    FloatArray,
    Location,
    PvArray,
    PvShape,
    clear_sky,
    forecast_pv,
    learn_pv_factor,
    learn_pv_shape,
    pv_nowcast,
)

WINDOW_DAYS: Final = 14  # the backtest's factor window (cloud.backtest.Planner._pv_model)
UNCAPPED: Final = (0.2, 5.0)


@dataclass(frozen=True, slots=True)
class Variant:
    nowcast: tuple[float, float] | None  # the nowcast's ratio bounds; None: no nowcast
    shape: bool


VARIANTS: Final = {
    "factor": Variant(None, False),
    "nowcast": Variant((0.2, 1.6), False),
    "uncapped": Variant(UNCAPPED, False),
    "factor+shape": Variant(None, True),
    "nowcast+shape": Variant((0.2, 1.6), True),
    "uncapped+shape": Variant(UNCAPPED, True),
}


def forecasts(path: str, lead_h: float = 24.0) -> tuple[pd.DataFrame, float, float]:
    """Per slot: measured PV, clear sky and each variant's lead-0 and lead-`lead_h` forecast (kW);
    plus the slot length (h) and the site's latitude."""
    cfg = site_config(path)
    tr = read_traces(path)
    lat, lon, kwp = cfg.lat, cfg.lon, cfg.pv_kwp
    array = PvArray(kwp, cfg.tilt_deg, cfg.azimuth_deg)
    spd, dt = tr.slots_per_day, tr.dt_h
    lead = round(lead_h / dt)
    horizon = lead + round(1 / dt)
    sky = clear_sky(Location(lat, lon), [array], tr.start, tr.step, tr.n + horizon).pv_kw
    step = max(1, round(1 / dt))  # hourly re-plans, as the backtest's default
    out: dict[str, FloatArray] = {}
    for name in VARIANTS:
        out[name] = np.full(tr.n, np.nan)
        out[name + "@lead"] = np.full(tr.n, np.nan)
    day = -1
    shape, origin = PvShape.flat(spd), 0
    for k in range(0, tr.n, step):
        if k // spd != day:
            lo = max(0, k - WINDOW_DAYS * spd)
            factor = learn_pv_factor(tr.pv_kw[lo:k], sky[lo:k], spd, kwp)
            shape = learn_pv_shape(tr.pv_kw[lo:k], sky[lo:k], spd, kwp, factor.typical)
            day, origin = k // spd, k
        lo = max(0, k - round(NOWCAST_RECENT_H / dt))
        m = min(step, tr.n - k)
        for name, v in VARIANTS.items():
            ahead = shape.at(k - origin, horizon) if v.shape else 1.0
            behind = shape.at(lo - origin, k - lo) if v.shape else 1.0
            pv = forecast_pv(sky[k : k + horizon], factor) * ahead
            if v.nowcast is not None:
                recent = forecast_pv(sky[lo:k], factor) * behind
                pv = pv_nowcast(pv, tr.pv_kw[lo:k], recent, dt, kwp, ratio_bounds=v.nowcast)
            out[name][k : k + m] = pv[:m]
            if k + lead < tr.n:
                n = min(m, tr.n - k - lead)
                out[name + "@lead"][k + lead : k + lead + n] = pv[lead : lead + n]
    index = pd.date_range(tr.start, periods=tr.n, freq=tr.step).tz_convert(cfg.tz)
    frame = pd.DataFrame({"pv": tr.pv_kw, "sky": sky[: tr.n], **out}, index=index)
    return frame.iloc[WINDOW_DAYS * spd + lead :], dt, lat


def summary(frame: pd.DataFrame, dt: float, lat: float) -> pd.DataFrame:
    """Per variant: bias (kWh) over the year and the winter months, MAE (kW, sunlit slots), at both leads."""
    winter = frame.index.month.isin([11, 12, 1, 2] if lat >= 0 else [5, 6, 7, 8])
    sunlit = frame["sky"] > 0
    rows = {}
    for name in VARIANTS:
        row = {}
        for col, tag in ((name, "lead 0"), (name + "@lead", "day ahead")):
            err = frame[col] - frame["pv"]
            row[f"{tag} bias kWh"] = err.sum() * dt
            row[f"{tag} winter kWh"] = err[winter].sum() * dt
            row[f"{tag} MAE kW"] = err[sunlit].abs().mean()
        rows[name] = row
    out = pd.DataFrame(rows).T
    out.attrs["measured"] = (frame["pv"].sum() * dt, frame["pv"][winter].sum() * dt)
    return out


def by_month_hour(frame: pd.DataFrame, dt: float, column: str) -> pd.DataFrame:
    """Forecast minus measured energy (kWh) by month (rows) x local hour (columns), hours with any energy."""
    err = (frame[column] - frame["pv"]) * dt
    table = err.groupby([frame.index.month, frame.index.hour]).sum().unstack().fillna(0.0)
    return table.loc[:, (table.abs() >= 0.5).any()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pv_bias", description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--table", choices=list(VARIANTS) + [v + "@lead" for v in VARIANTS], default="nowcast")
    args = parser.parse_args(argv)
    frame, dt, lat = forecasts(args.trace)
    table = summary(frame, dt, lat)
    year, winter = table.attrs["measured"]
    print(f"{args.trace}: measured {year:.0f} kWh, winter months {winter:.0f} kWh")
    print(table.round(4).to_string())
    print(f"\n{args.table}: forecast - measured, kWh, by month x local hour")
    print(by_month_hour(frame, dt, args.table).round(0).astype(int).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
