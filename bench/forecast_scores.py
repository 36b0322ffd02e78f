"""Score every forecaster on every backtest dataset, in MAE and in money (`python -m bench.forecast_scores`).

MAE: day-ahead (the first 24 h of each forecast), forecasts issued every 6 hours through the year, each from
the data before its origin only, in kW over the slots that have a value.
Money: the planner's EUR/year in the full backtest (cloud/backtest.py, the edge's own controller executing
the plans) with that forecaster and everything else at its default; the oracle's cost for reference. The
default load model is `profile`, the default PV model `factor`, prices are not forecast by default.

Options: `--mae-only` (minutes instead of an hour), dataset file names to restrict the run. `rows()` gives
the MAE part to `make bench`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator

import numpy as np

from bench.backtest import DATA, DATASETS, Dataset
from cloud.backtest import Config, LoadModel, PvModel, Traces, read_traces, run
from cloud.forecast import (
    FloatArray,
    GbmLoadForecaster,
    Location,
    PvArray,
    PvFactor,
    clear_sky,
    forecast_load,
    forecast_load_persistence,
    forecast_pv,
    learn_pv_factor,
)
from cloud.forecast_pv import PvSiteForecaster, SkyGrid

ORIGIN_EVERY_H = 6
HOLIDAYS = {"Australia/Sydney": "AU/NSW", "Europe/Brussels": "BE", "Europe/Amsterdam": "NL"}


def _origins(tr: Traces, warmup_days: int = 14) -> Iterator[int]:
    every = round(ORIGIN_EVERY_H / tr.dt_h)
    day = tr.slots_per_day
    yield from range(warmup_days * day, tr.n - day, every)


def _mae(tr: Traces, actual: FloatArray, forecaster: Callable[[int, int], FloatArray]) -> float:
    day = tr.slots_per_day
    errs: list[FloatArray] = []
    for k in _origins(tr):
        fc = forecaster(k, day)
        a = actual[k : k + day]
        ok = ~np.isnan(a)
        errs.append(np.abs(fc[ok] - a[ok]))
    return float(np.mean(np.concatenate(errs)))


def load_maes(tr: Traces, cfg: Config) -> dict[str, float]:
    spd = tr.slots_per_day
    country, _, subdiv = HOLIDAYS.get(cfg.tz, "").partition("/")
    out = {
        "persistence": _mae(tr, tr.load_kw, lambda k, h: forecast_load_persistence(tr.load_kw[:k], h, spd)),
        "profile": _mae(tr, tr.load_kw, lambda k, h: forecast_load(tr.load_kw[max(0, k - 28 * spd) : k], h, spd)),
    }
    for name, objective in (("gbm", "regression_l1"), ("gbm_mean", "regression")):
        gbm = GbmLoadForecaster(tr.start, tr.step, cfg.tz, country=country or None, subdiv=subdiv or None)
        gbm.objective = objective
        out[name] = _mae(tr, tr.load_kw, lambda k, h, g=gbm: g.forecast(tr.load_kw, k, h))  # type: ignore[misc]
    return out


def pv_maes(tr: Traces, cfg: Config) -> dict[str, float]:
    spd = tr.slots_per_day
    arrays = [PvArray(cfg.pv_kwp, cfg.tilt_deg, cfg.azimuth_deg)]
    loc = Location(cfg.lat, cfg.lon)
    sky = clear_sky(loc, arrays, tr.start, tr.step, tr.n + spd).pv_kw

    def factor(k: int, h: int) -> FloatArray:
        lo = max(0, k - 14 * spd)
        f = learn_pv_factor(tr.pv_kw[lo:k], sky[lo:k], spd, cfg.pv_kwp) if k else PvFactor()
        return forecast_pv(sky[k : k + h], f)

    site = PvSiteForecaster(SkyGrid.compute(loc, tr.start, tr.step, tr.n + spd), arrays)
    return {
        "persistence": _mae(tr, tr.pv_kw, lambda k, h: forecast_load_persistence(tr.pv_kw[:k], h, spd)),
        "factor": _mae(tr, tr.pv_kw, factor),
        "fit": _mae(tr, tr.pv_kw, lambda k, h: site.forecast(tr.pv_kw, k, h)),
    }


def money(ds: Dataset, tr: Traces) -> dict[str, float]:
    cfg = ds.cfg
    hol = HOLIDAYS.get(cfg.tz)
    base = run(tr, cfg, parallel=False)
    out = {"oracle": base.by_name("perfect foresight").cost, "default": base.by_name("planner").cost}
    out["no battery"] = base.by_name("no battery").cost
    variants = {
        "load persistence": dataclasses.replace(cfg, load_model=LoadModel.PERSISTENCE),
        "load gbm": dataclasses.replace(cfg, load_model=LoadModel.GBM, holidays=hol),
        "load gbm_mean": dataclasses.replace(cfg, load_model=LoadModel.GBM_MEAN, holidays=hol),
        "pv fit": dataclasses.replace(cfg, pv_model=PvModel.FIT),
        "price forecast": dataclasses.replace(cfg, price_forecast=True),
    }
    for name, v in variants.items():
        out[name] = run(tr, v, oracle=False).by_name("planner").cost
        print(f"  {ds.file}: {name}: {out[name]:.2f}", file=sys.stderr, flush=True)
    return out


def rows() -> list[dict[str, str]]:
    """`make bench` rows: day-ahead MAE of each forecaster per dataset (the money table is in the docs: it
    takes one backtest year per forecaster, `python -m bench.forecast_scores` without `--mae-only`)."""
    out: list[dict[str, str]] = []
    command = "python -m bench.forecast_scores --mae-only"
    for ds in DATASETS:
        tr = read_traces(str(DATA / ds.file))
        for kind, maes, baseline in (("load", load_maes(tr, ds.cfg), "profile"), ("PV", pv_maes(tr, ds.cfg), "factor")):
            for name, value in maes.items():
                target = "-" if name in ("persistence", baseline) else f"< {maes[baseline]:.4f} ({baseline})"
                out.append(
                    {
                        "name": f"{kind} forecast MAE day-ahead, {name} ({ds.label})",
                        "value": f"{value:.4f} kW",
                        "target": target,
                        "command": command,
                    }
                )
    return out


def main(argv: list[str]) -> int:
    mae_only = "--mae-only" in argv
    files = [a for a in argv if not a.startswith("--")]
    for ds in DATASETS:
        if files and ds.file not in files:
            continue
        tr = read_traces(str(DATA / ds.file))
        lm, pm = load_maes(tr, ds.cfg), pv_maes(tr, ds.cfg)
        print(f"## {ds.file} ({ds.label})")
        print("load MAE kW (day-ahead): " + ", ".join(f"{k} {v:.4f}" for k, v in lm.items()))
        print("PV MAE kW (day-ahead): " + ", ".join(f"{k} {v:.4f}" for k, v in pm.items()), flush=True)
        if not mae_only:
            m = money(ds, tr)
            print("EUR/year: " + ", ".join(f"{k} {v:.2f}" for k, v in m.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
