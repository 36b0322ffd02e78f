"""Shared readers for the tests of the OPSD household traces (bench/data/raw/opsd_de_kn_*.csv): the raw cumulative
meter readings as the source writes them, the sun at Konstanz and the real day-ahead prices the traces replay.

They read the files themselves (not through bench/data/make_real_traces.py), so a test compares the builder's
output with the source, not the builder with itself."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pvlib
import pytest

from cloud.backtest import Traces

DATA = Path(__file__).resolve().parents[1] / "bench" / "data"
KONSTANZ = (47.66, 9.18)


def readings(house: str, meters: tuple[str, ...]) -> tuple[list[datetime], dict[str, np.ndarray]]:
    """`raw/opsd_de_kn_<house>_{h1,h2,close}.csv` in order: UTC stamps and each meter's kWh (NaN where empty)."""
    stamps: list[datetime] = []
    cols: dict[str, list[float]] = {k: [] for k in meters}
    for part in ("h1", "h2", "close"):
        with (DATA / "raw" / f"opsd_de_kn_{house}_{part}.csv").open(newline="") as fh:
            for row in csv.DictReader(line for line in fh if not line.startswith("#")):
                stamps.append(datetime.fromisoformat(row["utc_timestamp"].replace("Z", "+00:00")))
                for k in meters:
                    cols[k].append(float(row[k]) if row[k] else np.nan)
    return stamps, {k: np.array(v) for k, v in cols.items()}


def elevation(stamps: list[datetime], minutes: int = 30) -> np.ndarray:
    """Apparent sun elevation (degrees) at Konstanz `minutes` after each stamp."""
    t = pd.DatetimeIndex(stamps) + pd.Timedelta(minutes=minutes)
    return np.asarray(pvlib.solarposition.get_solarposition(t, *KONSTANZ)["apparent_elevation"].to_numpy())


def highest_elevation(hours: list[datetime]) -> np.ndarray:
    """The highest the sun gets in each hour starting at `hours` (sampled every 10 minutes)."""
    return np.asarray(np.max([elevation(hours, k) for k in range(0, 61, 10)], axis=0))


def spot(zone: str) -> dict[datetime, float]:
    """The real 2023 day-ahead price (EUR/kWh) of `zone` at each UTC hour."""
    with (DATA / f"entsoe_{zone}_2023_dayahead.csv").open(newline="") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    return {datetime.fromisoformat(r["ts"].replace("Z", "+00:00")): float(r["price_eur_per_kwh"]) for r in rows}


def assert_nl_replay(tr: Traces, first: datetime, hours: int, pairs: list[tuple[datetime, datetime]]) -> None:
    """The trace's first `hours` slots carry the NL spot from UTC hour `first` on (export = spot, import = the
    Dutch dynamic tariff of bench/data/README.md), and each (house hour, price hour) pair the same spot and
    weekday."""
    nl = spot("nl")
    for h in range(hours):
        s = nl[first + timedelta(hours=h)]
        assert tr.export_price[h] == pytest.approx(s, abs=1e-5)
        assert tr.import_price[h] == pytest.approx((s + 0.0225 + 0.12599) * 1.21, abs=1e-5)
    for house, price in pairs:
        k = int((house - tr.start) / timedelta(hours=1))
        assert tr.export_price[k] == pytest.approx(nl[price], abs=1e-5), house
        assert house.weekday() == price.weekday()
