"""Generate `synthetic_nl_2025_hourly.csv`: a SYNTHETIC year of hourly traces for `zapcloud backtest`.

No real market data could be fetched or reproduced reliably when this was written, so the prices are a
seeded model shaped like the Dutch day-ahead market of recent years (not real prices):
* a daily fuel-cost level following a slow random walk around 80 EUR/MWh, higher in winter;
* the "duck": morning and evening peaks, a midday dip that deepens with sunshine, so sunny spring and
  summer weekends go below zero;
* wind episodes (multi-day AR(1)) that push prices down for days;
* a Dutch dynamic-contract retail price: (spot + 0.02 markup + 0.035 grid fee + 0.1016 energy tax) × 1.21,
  export at spot (net metering ignored);
PV: pvlib clear sky for a 5 kWp south-facing 35° array at De Bilt, dimmed by a daily cloud regime
(Markov chain: clear / mixed / overcast) and hourly noise. Load: a 3 500 kWh/year household with morning
and evening peaks, more at weekends and in winter, with noise.

Run: `python bench/data/make_synthetic_year.py` (deterministic: seed 2025).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pvlib

OUT = Path(__file__).with_name("synthetic_nl_2025_hourly.csv")


def main() -> None:
    rng = np.random.default_rng(2025)
    times = pd.date_range("2025-01-01T00:00Z", "2025-12-31T23:00Z", freq="1h")
    n = len(times)
    days = n // 24
    loc = pvlib.location.Location(52.1, 5.18, tz="UTC", altitude=2)
    mid = times + pd.Timedelta(minutes=30)
    sky = loc.get_clearsky(mid, model="ineichen")
    sun = loc.get_solarposition(mid)
    poa = pvlib.irradiance.get_total_irradiance(
        35, 180, sun["apparent_zenith"], sun["azimuth"], sky["dni"], sky["ghi"], sky["dhi"], model="isotropic"
    )
    clear_pv = 5.0 * np.nan_to_num(poa["poa_global"].to_numpy()) / 1000.0 * 0.76
    # daily cloud regime: 0 clear, 1 mixed, 2 overcast
    trans = np.array([[0.55, 0.35, 0.10], [0.25, 0.45, 0.30], [0.10, 0.35, 0.55]])
    regime = np.zeros(days, dtype=int)
    for d in range(1, days):
        summer = 0.5 + 0.5 * math.sin((d - 80) / 365 * 2 * math.pi)
        p = trans[regime[d - 1]].copy()
        p[0] += 0.12 * summer
        p[2] -= 0.12 * summer
        p = np.clip(p, 0.02, None)
        regime[d] = rng.choice(3, p=p / p.sum())
    dim_day = np.array([0.95, 0.6, 0.22])[regime]
    dim = np.repeat(dim_day, 24) * np.clip(rng.normal(1.0, 0.15, n), 0.3, 1.25)
    pv = np.clip(clear_pv * np.clip(dim, 0.0, 1.0), 0.0, None)

    hod = times.hour.to_numpy() + 0.5
    dow = times.dayofweek.to_numpy()
    doy = times.dayofyear.to_numpy()
    winter = 0.5 + 0.5 * np.cos((doy - 15) / 365 * 2 * np.pi)
    weekend = dow >= 5
    shape = (
        0.25
        + 0.45 * np.exp(-(((hod - 7.5) / 1.3) ** 2)) * ~weekend
        + 0.35 * np.exp(-(((hod - 10) / 2.5) ** 2)) * weekend
        + 0.9 * np.exp(-(((hod - 19) / 2.2) ** 2))
        + 0.15 * np.exp(-(((hod - 13) / 2) ** 2))
    )
    load = shape * (1 + 0.35 * winter) * np.clip(rng.lognormal(0.0, 0.28, n), 0.4, 3.0)
    load *= 3500.0 / load.sum()

    level = np.zeros(days)
    level[0] = 95.0
    for d in range(1, days):
        level[d] = level[d - 1] + 0.04 * (80 + 25 * winter[d * 24] - level[d - 1]) + rng.normal(0, 3.0)
    wind = np.zeros(days)
    for d in range(1, days):
        wind[d] = 0.7 * wind[d - 1] + rng.normal(0, 0.45)
    wind_h = np.repeat(np.clip(wind, -1.5, 2.5), 24)
    sunshine = np.repeat(dim_day, 24) * clear_pv / 4.3
    duck = (
        18 * np.exp(-(((hod - 8) / 1.6) ** 2))
        + 35 * np.exp(-(((hod - 19.5) / 2.0) ** 2))
        - 95 * sunshine
        - 12 * np.exp(-(((hod - 3.5) / 2.5) ** 2))
    )
    spot = np.repeat(level, 24) * (1 - 0.12 * weekend) + duck - 22 * wind_h + rng.normal(0, 5, n)
    spot = np.where(spot < -20, -20 + (spot + 20) * 0.3, spot)  # bids floor the dips
    spot_kwh = np.round(spot / 1000.0, 5)
    import_price = np.round((spot_kwh + 0.02 + 0.035 + 0.1016) * 1.21, 5)
    export_price = spot_kwh
    with OUT.open("w") as fh:
        fh.write("# SYNTHETIC data (bench/data/make_synthetic_year.py, seed 2025), not real market prices.\n")
        fh.write("ts,import_price,export_price,load_kw,pv_kw\n")
        for i, ts in enumerate(times):
            fh.write(
                f"{ts.strftime('%Y-%m-%dT%H:%M:%SZ')},{import_price[i]:.5f},{export_price[i]:.5f},"
                f"{load[i]:.3f},{pv[i]:.3f}\n"
            )
    neg = int((spot < 0).sum())
    print(
        f"{OUT.name}: {n} rows, spot mean {spot.mean():.1f} EUR/MWh, {neg} negative hours, "
        f"PV {pv.sum():.0f} kWh, load {load.sum():.0f} kWh"
    )


if __name__ == "__main__":
    main()
