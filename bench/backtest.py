"""Backtest rows: per dataset and tariff, a year of the whole chain (rolling planner, forecasts, the edge's own
controller code executing the plans), against no battery, the edge's self-consumption rule and perfect foresight.

Datasets (bench/data/README.md has sources, licences and every transformation):
* `ausgrid_c12_nl_2023.csv`: a REAL measured household (Ausgrid customer 12, half-hourly load and PV, a full
  year) under REAL NL 2023 day-ahead prices and a Dutch dynamic tariff without net metering;
* `ausgrid_c12_be_2023.csv`: the same house under REAL BE 2023 prices and a Flemish dynamic tariff;
* `opsd_kn_res4_{nl,be}_2023.csv`: a second REAL measured household (OPSD DE_KN_residential4, Konstanz, hourly,
  2016; ~10 kWp PV, heat pump, EV) under the same REAL prices and tariffs;
* `opsd_kn_res3_{nl,be}_2023.csv`: a third REAL measured household (OPSD DE_KN_residential3, Konstanz, hourly,
  2016-03 .. 2017-02; 4.85 kWp nearly flat PV);
* `opsd_kn_res1_{nl,be}_2023.csv`: a fourth REAL measured household (OPSD DE_KN_residential1, Konstanz, hourly,
  2016; ~9.7 kWp PV sold on its own meter, the household load = its import meter);
* `be_2023_real_prices_hourly.csv`: REAL BE 2023 prices, a SYNTHETIC house (5 kWp PV);
* `synthetic_nl_2025_hourly.csv`: everything SYNTHETIC (kept for continuity with earlier numbers).
* `opsd_kn_res4_nl_2023.csv@15min`: house 2 again at 15-minute slots, each hourly row held over its four
  quarters: a timing row (four times the decisions and LP slots, as a quarter-hourly meter or price series
  gives), not a forecasting one (held rows are no real quarter-hourly series; docs/cloud-planning.md, "A year
  at 15-minute slots").
* the six Konstanz years again with `--pv-index apg_at_solar_dayahead_utc.csv`: a REAL regional day-ahead PV
  forecast (Austrian Power Grid, the Austrian control area's PV; bench/data/README.md).
Each dataset's year takes about a minute on a quiet 2-core machine (the oracle's year solves meanwhile in a
second process), so the seventeen take a quarter of an hour or more.
10 kWh / 5 kW battery, 95 % each way, SoC 10-95 %, hourly re-plans over up to 48 h of published prices.
Targets (issue 11): capture >= 0.90, planner - rule >= 50 % of oracle - rule, a year <= 60 s.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from cloud.backtest import WORST_DAYS, Config, Traces, hold, read_traces, run, site_config
from cloud.forecast_pv_index import read_pv_index

COMMAND = "python -m bench.backtest"
DATA = Path(__file__).resolve().parent / "data"
TARGET_S = 60.0


@dataclass(frozen=True)
class Dataset:
    """A bench year: the trace file (its `# site:` line names the house: bench/data/README.md has the sources)."""

    file: str
    label: str
    hold_minutes: int | None = None  # slots this long, each row held (`zapcloud backtest --step-minutes`)
    pv_index: str | None = None  # a regional day-ahead PV forecast (`zapcloud backtest --pv-index`)

    @property
    def name(self) -> str:
        """How the bench's command line names the year: the file, with the held step after an @ and the index
        file after a +."""
        name = self.file if self.hold_minutes is None else f"{self.file}@{self.hold_minutes}min"
        return name if self.pv_index is None else f"{name}+{self.pv_index}"

    def traces(self) -> Traces:
        traces = read_traces(str(DATA / self.file))
        if self.hold_minutes is not None:
            traces = hold(traces, timedelta(minutes=self.hold_minutes))
        if self.pv_index is None:
            return traces
        index = read_pv_index(str(DATA / self.pv_index), traces.start, traces.step, traces.n)
        return replace(traces, pv_index=index)

    @property
    def cfg(self) -> Config:
        """The default battery (10 kWh / 5 kW, the same for every house) at the house the trace's line names."""
        return site_config(str(DATA / self.file))


DATASETS = [
    Dataset("ausgrid_c12_nl_2023.csv", "real house, real NL 2023 prices"),
    Dataset("ausgrid_c12_be_2023.csv", "real house, real BE 2023 prices"),
    Dataset("opsd_kn_res4_nl_2023.csv", "real house 2 (Konstanz), real NL 2023 prices"),
    Dataset("opsd_kn_res4_be_2023.csv", "real house 2 (Konstanz), real BE 2023 prices"),
    Dataset("opsd_kn_res3_nl_2023.csv", "real house 3 (Konstanz), real NL 2023 prices"),
    Dataset("opsd_kn_res3_be_2023.csv", "real house 3 (Konstanz), real BE 2023 prices"),
    Dataset("opsd_kn_res1_nl_2023.csv", "real house 4 (Konstanz), real NL 2023 prices"),
    Dataset("opsd_kn_res1_be_2023.csv", "real house 4 (Konstanz), real BE 2023 prices"),
    Dataset("be_2023_real_prices_hourly.csv", "synthetic house, real BE 2023 prices"),
    Dataset("synthetic_nl_2025_hourly.csv", "synthetic house, synthetic NL prices"),
]
# The Konstanz houses again with a REAL regional day-ahead PV forecast (Austrian Power Grid's forecast of the
# Austrian control area's PV, published the day before; bench/data/README.md): the product's `--pv-index`.
APG_INDEX = "apg_at_solar_dayahead_utc.csv"
INDEX_YEARS = [
    Dataset(ds.file, f"{ds.label}, with APG's real day-ahead PV forecast", pv_index=APG_INDEX)
    for ds in DATASETS
    if ds.file.startswith("opsd_kn_")
]
# Years the bench runs for time only (not scored as datasets by bench.forecast_scores or bench.warm_start).
TIMING_YEARS = [
    Dataset("opsd_kn_res4_nl_2023.csv", "real house 2 (Konstanz) held at 15-minute slots, real NL 2023 prices", 15),
]


def year_rows(ds: Dataset, cfg: Config | None = None) -> list[dict[str, str]]:
    """The year's rows: costs, capture, share, worst days and wall time; for a year held at a finer step, its
    costs and wall time only (held rows are no real series at that step, so its capture is not a house's)."""
    traces = ds.traces()
    report = run(traces, cfg or ds.cfg)
    costs = " / ".join(f"{report.by_name(n).cost:.2f}" for n in ("no battery", "self-consumption rules"))
    costs += " / " + " / ".join(f"{report.by_name(n).cost:.2f}" for n in ("planner", "perfect foresight"))
    table = [
        {
            "name": f"backtest EUR/year no battery / rule / planner / oracle ({ds.label})",
            "value": costs,
            "target": "-",
            "command": COMMAND,
        },
        {
            "name": f"backtest capture ratio (planner saving / oracle saving, {ds.label})",
            "value": f"{report.capture_ratio:.3f}",
            "target": ">= 0.90",
            "command": COMMAND,
        },
        {
            "name": f"backtest planner - rule as share of oracle - rule ({ds.label})",
            "value": f"{report.over_rule:.3f}",
            "target": ">= 0.50",
            "command": COMMAND,
        },
        {
            "name": f"backtest planner: the {WORST_DAYS} costliest days, EUR ({ds.label})",
            "value": f"{report.worst_days['planner']:.2f}",
            "target": "-",
            "command": COMMAND,
        },
        {
            "name": f"backtest year wall time ({report.replans} re-plans of {traces.step}, {ds.label})",
            "value": f"{report.total_wall_s:.1f} s",
            "target": f"<= {TARGET_S:g} s",
            "command": COMMAND,
        },
    ]
    return table if ds.hold_minutes is None else [table[0], table[-1]]


def rows() -> list[dict[str, str]]:
    return [row for ds in (*DATASETS, *INDEX_YEARS, *TIMING_YEARS) for row in year_rows(ds)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    years = (*DATASETS, *INDEX_YEARS, *TIMING_YEARS)
    names = [ds.name for ds in years]
    parser.add_argument(
        "files", nargs="*", metavar="TRACE", help=f"bench years to run (default: all): {', '.join(names)}"
    )
    chosen = parser.parse_args(argv).files
    if unknown := sorted(set(chosen) - set(names)):
        parser.error(f"not a bench year: {', '.join(unknown)}")
    table = [r for ds in years if not chosen or ds.name in chosen for r in year_rows(ds)]
    widths = {k: max(len(k), *(len(r[k]) for r in table)) for k in ("name", "value", "target", "command")}
    print("  ".join(k.ljust(widths[k]) for k in widths))
    print("  ".join("-" * widths[k] for k in widths))
    for r in table:
        print("  ".join(r[k].ljust(widths[k]) for k in widths))
    return 0


__all__ = ["DATASETS", "INDEX_YEARS", "TIMING_YEARS", "Dataset", "rows", "year_rows"]

if __name__ == "__main__":
    sys.exit(main())
