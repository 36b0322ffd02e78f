"""Offline scores of the PV forecast's day-to-day part (cloud.forecast_pv_day) on the bench houses.

`python -m bench.pv_day_scores [TRACE.csv ...]` (default: the real houses and the synthetic one). For each
house: the daily clearness k_d = measured / clear-sky energy (the clear sky of the trace's `# site:` line),
its lag-1 autocorrelation (whole year, by quarter, over rolling 28- and 60-day windows), and the day-ahead
daily PV energy error (MAE / RMSE / bias, kWh per day) of

* the mean day (the 14-day factor, today's forecast), persistence (yesterday's clearness), and the AR(1)
  blend m + ρ (k_d − m) with ρ measured over the last 28 or 60 days, each made at the end of day d from
  days ≤ d only;
* a plan made at local hour h of day d for day d + 1: the AR(1) from the last complete day only
  (m + ρ² (k_{d−1} − m)) against `pv_day_outlook` (today so far, weighted by its clear-sky share).

Everything is computed from the past of each forecast only. Results: docs/cloud-planning.md, "PV day
persistence".
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cloud.backtest import read_site, read_traces
from cloud.forecast import Location, PvArray, clear_sky
from cloud.forecast_load import FloatArray
from cloud.forecast_pv_day import clearness_persistence, day_clearness, pv_day_outlook

DATA = Path(__file__).resolve().parent / "data"
HOUSES = ("opsd_kn_res4_nl_2023.csv", "ausgrid_c12_nl_2023.csv", "synthetic_nl_2025_hourly.csv")
MEAN_DAYS = 14  # learn_pv_factor's window in the backtest and the planner worker


def _num(site: dict[str, float | str], key: str, default: float) -> float:
    value = site.get(key, default)
    return float(value)


def _house(path: str) -> tuple[FloatArray, FloatArray, int, float, float]:
    """(measured kW, clear-sky kW, slots per day, kWp, slot hours) of a trace's whole days."""
    site = read_site(path)
    tr = read_traces(path)
    kwp = _num(site, "pv_kwp", 5.0)
    array = PvArray(kwp, _num(site, "tilt", 35.0), _num(site, "azimuth", 180.0))
    location = Location(_num(site, "lat", 52.1), _num(site, "lon", 5.18))
    sky = clear_sky(location, [array], tr.start, tr.step, tr.n).pv_kw
    spd = tr.slots_per_day
    n = tr.n // spd * spd
    return tr.pv_kw[:n], sky[:n], spd, kwp, tr.dt_h


def _errors(name: str, e: list[float]) -> str:
    a = np.asarray(e)
    return f"  {name:44} MAE {np.mean(np.abs(a)):7.3f}  RMSE {np.sqrt(np.mean(a * a)):7.3f}  bias {np.mean(a):+7.3f}"


def score(path: str) -> None:
    pv, sky, spd, kwp, dt = _house(path)
    days = len(pv) // spd
    sunny = sky > 0.02 * kwp
    c_day = (np.where(sunny, sky, 0.0) * dt).reshape(days, spd).sum(axis=1)
    m_day = (np.where(sunny, np.nan_to_num(pv), 0.0) * dt).reshape(days, spd).sum(axis=1)
    k = day_clearness(pv, sky, spd, kwp)
    ok = np.isfinite(k)
    print(f"{Path(path).name}: {days} days, {int(ok.sum())} usable, mean PV {np.mean(m_day):.2f} kWh/day")
    print(f"  lag-1 autocorrelation of k: whole year {clearness_persistence(k, days=days):.3f}", end="")
    print(", by quarter " + " ".join(f"{clearness_persistence(q, days=days):.3f}" for q in np.array_split(k, 4)))
    for window in (28, 60):
        r = [clearness_persistence(k[: d + 1], days=window) for d in range(window, days)]
        p10, p50, p90 = np.quantile(r, [0.1, 0.5, 0.9])
        print(f"  rolling {window} days: P10 {p10:.3f}  median {p50:.3f}  P90 {p90:.3f}")

    def mean_day(d: int) -> float:  # the factor of a plan made after day d (days d-13 .. d)
        lo = max(0, d - MEAN_DAYS + 1)
        use = ok[lo : d + 1]
        return float(m_day[lo : d + 1][use].sum() / c_day[lo : d + 1][use].sum())

    err: dict[str, list[float]] = {}
    for d in range(MEAN_DAYS, days - 1):
        if not (ok[d] and ok[d + 1]):
            continue
        m = mean_day(d)
        fc = {"mean day (14-day factor, today's)": m, "persistence (yesterday)": float(k[d])}
        for window in (28, 60):
            rho = clearness_persistence(k[: d + 1], days=window)
            fc[f"AR(1), rho over {window} days"] = m + rho * (float(k[d]) - m)
        for label, f in fc.items():
            err.setdefault(label, []).append(f * c_day[d + 1] - m_day[d + 1])
    print("  day-ahead daily PV energy, kWh/day (forecast made at the end of day d for day d + 1):")
    for label, e in err.items():
        print(_errors(label, e))

    print("  made at local hour h of day d for day d + 1 (MAE kWh/day): h, last complete day only, with today")
    for hour in (6, 9, 12, 15, 18):
        h = round(hour / dt)
        last_only, partial = [], []
        for d in range(MEAN_DAYS + 1, days - 1):
            if not (ok[d - 1] and ok[d + 1]):
                continue
            m = mean_day(d - 1)
            a, b = d * spd, d * spd + h
            rho = clearness_persistence(k[:d])
            outlook = pv_day_outlook(k[:d], pv[a:b], sky[a:b], float(np.sum(sky[a : a + spd])), m, kwp, rho=rho)
            partial.append(abs(outlook.level(1) * c_day[d + 1] - m_day[d + 1]))
            prior = m + rho * rho * (float(k[d - 1]) - m)
            last_only.append(abs(prior * c_day[d + 1] - m_day[d + 1]))
        print(f"    {hour:2d} h: {np.mean(last_only):7.3f}  {np.mean(partial):7.3f}")


def main(argv: list[str]) -> None:
    for path in argv or [str(DATA / h) for h in HOUSES]:
        score(path)


if __name__ == "__main__":
    main(sys.argv[1:])
