"""Generate `synthetic_nl_2025_hourly.csv`: a SYNTHETIC year of hourly traces for `zapcloud backtest`; with
`--prices`, the same synthetic load and PV under REAL day-ahead prices (`be_2023_real_prices_hourly.csv`).

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

`--prices bench/data/entsoe_be_2023_dayahead.csv` (real ENTSO-E prices for Belgium, see entsoe_be_prices.py)
keeps the prices real and only synthesises the house: the same PV and load model, on the price file's hours,
at Brussels (Uccle, 50.80 N 4.36 E; pass `--lat 50.80 --lon 4.36` to the backtest too), with the load's daily
shape on Belgian local time (the real prices peak at local 08:00 and 19:00, so a load shape on UTC would sit
an hour or two off them), seed 2023. The retail tariff is a Belgian (Flemish) dynamic contract of 2023:
* import = (spot + 0.020 supplier markup + 0.050 grid fee + 0.050 energy tax and levies) × 1.06 VAT:
  the markup is what dynamic suppliers charged on top of Belpex (margin, green-power and CHP certificates);
  0.05 is the per-kWh part of Fluvius distribution plus Elia transmission (the 2023 capacity tariff per kW of
  monthly peak is left out: the trace has no demand charge); 0.05 is the federal excise and levies of 2023;
  VAT on household electricity has been 6 % since March 2022;
* export = spot - 0.010 (the supplier's fee for taking injection at the spot price; no VAT for a household;
  negative when spot is below 0.01, and the backtest curtails PV then). No net metering (gone for new
  Flemish prosumers since 2021).
Run: `python bench/data/make_synthetic_year.py --prices bench/data/entsoe_be_2023_dayahead.csv`.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pvlib

HERE = Path(__file__).resolve().parent
OUT = HERE / "synthetic_nl_2025_hourly.csv"
OUT_REAL = HERE / "be_2023_real_prices_hourly.csv"
DE_BILT = (52.1, 5.18, 2.0)
UCCLE = (50.80, 4.36, 100.0)

# Belgian dynamic retail tariff, 2023 (EUR/kWh; see the docstring for where each number comes from)
BE_MARKUP = 0.020
BE_GRID_FEE = 0.050
BE_ENERGY_TAX = 0.050
BE_VAT = 0.06
BE_EXPORT_FEE = 0.010


def be_import_price(spot: np.ndarray) -> np.ndarray:
    return np.round((spot + BE_MARKUP + BE_GRID_FEE + BE_ENERGY_TAX) * (1 + BE_VAT), 5)


def be_export_price(spot: np.ndarray) -> np.ndarray:
    return np.round(spot - BE_EXPORT_FEE, 5)


def house(
    rng: np.random.Generator, times: pd.DatetimeIndex, site: tuple[float, float, float], clock: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic (pv_kw, load_kw, dim_day, clear_pv) for hourly UTC `times`; the load's daily shape on `clock`."""
    n = len(times)
    days = n // 24
    lat, lon, altitude = site
    loc = pvlib.location.Location(lat, lon, tz="UTC", altitude=altitude)
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

    local = times if clock == "UTC" else times.tz_convert(clock)
    hod = local.hour.to_numpy() + 0.5
    dow = local.day_of_week.to_numpy()
    doy = local.day_of_year.to_numpy()
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
    return pv, load, dim_day, clear_pv


def write_trace(
    path: Path, comment: str, times: pd.DatetimeIndex, imp: np.ndarray, exp: np.ndarray, load: np.ndarray,
    pv: np.ndarray,
) -> None:  # fmt: skip
    with path.open("w") as fh:
        fh.write(comment)
        fh.write("ts,import_price,export_price,load_kw,pv_kw\n")
        for i, ts in enumerate(times):
            fh.write(f"{ts.strftime('%Y-%m-%dT%H:%M:%SZ')},{imp[i]:.5f},{exp[i]:.5f},{load[i]:.3f},{pv[i]:.3f}\n")


def synthetic() -> None:
    rng = np.random.default_rng(2025)
    times = pd.date_range("2025-01-01T00:00Z", "2025-12-31T23:00Z", freq="1h")
    n = len(times)
    days = n // 24
    pv, load, dim_day, clear_pv = house(rng, times, DE_BILT, "UTC")
    hod = times.hour.to_numpy() + 0.5
    doy = times.day_of_year.to_numpy()
    winter = 0.5 + 0.5 * np.cos((doy - 15) / 365 * 2 * np.pi)
    weekend = times.day_of_week.to_numpy() >= 5

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
    comment = (
        "# SYNTHETIC data (bench/data/make_synthetic_year.py, seed 2025), not real market prices.\n"
        "# site: tz=Europe/Amsterdam lat=52.1 lon=5.18 pv-kwp=5 tilt=35 azimuth=180\n"
    )
    write_trace(OUT, comment, times, import_price, export_price, load, pv)
    neg = int((spot < 0).sum())
    print(
        f"{OUT.name}: {n} rows, spot mean {spot.mean():.1f} EUR/MWh, {neg} negative hours, "
        f"PV {pv.sum():.0f} kWh, load {load.sum():.0f} kWh"
    )


def read_prices(path: Path) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """(UTC hours, EUR/kWh) from a `ts,price_eur_per_kwh` file: contiguous hours, a whole number of days."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    times = pd.DatetimeIndex([pd.Timestamp(r["ts"]) for r in rows]).tz_convert("UTC")
    spot = np.array([float(r["price_eur_per_kwh"]) for r in rows])
    expected = pd.date_range(times[0], periods=len(times), freq="1h")
    if len(times) % 24 or not times.equals(expected):
        raise SystemExit(f"{path}: hours must be contiguous and a whole number of days")
    return times, spot


def real_prices(path: Path, out: Path, seed: int) -> None:
    times, spot = read_prices(path)
    rng = np.random.default_rng(seed)
    pv, load, _, _ = house(rng, times, UCCLE, "Europe/Brussels")
    comment = (
        f"# REAL day-ahead prices (ENTSO-E, bidding zone BE, from {path.name}) with SYNTHETIC load and PV\n"
        f"# (bench/data/make_synthetic_year.py --prices, seed {seed}, Brussels/Uccle 50.80N 4.36E). Import =\n"
        f"# (spot + {BE_MARKUP} markup + {BE_GRID_FEE} grid fee + {BE_ENERGY_TAX} energy tax) x {1 + BE_VAT} VAT; "
        f"export = spot - {BE_EXPORT_FEE}.\n"
        "# site: tz=Europe/Brussels lat=50.80 lon=4.36 pv-kwp=5 tilt=35 azimuth=180\n"
    )
    write_trace(out, comment, times, be_import_price(spot), be_export_price(spot), load, pv)
    print(
        f"{out.name}: {len(times)} rows, spot mean {1000 * spot.mean():.1f} EUR/MWh, {int((spot < 0).sum())} negative "
        f"hours, PV {pv.sum():.0f} kWh, load {load.sum():.0f} kWh"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prices", type=Path, help="real prices (ts,price_eur_per_kwh): synthesise only the house")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=None, help="default: the price file's first year")
    args = parser.parse_args(argv)
    if args.prices is None:
        synthetic()
        return 0
    times, _ = read_prices(args.prices)
    real_prices(args.prices, args.out or OUT_REAL, args.seed if args.seed is not None else times[-1].year)
    return 0


if __name__ == "__main__":
    sys.exit(main())
