"""`zapcloud backtest` at its boundary: every number from the options or a trace file is bounded, and bad input is
one line on stderr naming the option (or the trace row and column) with exit 2, never a traceback.

Fixture: the first day of `bench/data/opsd_kn_res4_nl_2023.csv` (a real measured household, OPSD
DE_KN_residential4, under real ENTSO-E NL 2023 day-ahead prices; bench/data/README.md), hourly, so an in-range
option runs the real backtest in a fraction of a second.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.backtest import (
    Config,
    Forecast,
    TraceError,
    Traces,
    hold,
    no_battery,
    perfect_foresight,
    read_site,
    read_traces,
    rolling_flows,
    settle,
)
from cloud.backtest_config import BOUNDS, MAX_CAPACITY_KWH, MAX_POWER_KW, MAX_PRICE_ABS, SITE_KEYS, add_arguments
from cloud.cli import main

DATA = Path(__file__).resolve().parents[2] / "bench" / "data"
REAL = DATA / "opsd_kn_res4_nl_2023.csv"
HEADER = "ts,import_price,export_price,load_kw,pv_kw"


def _numeric_options() -> dict[str, str]:
    """dest -> option string of every option parsed as a number (found from the parser, so a new one counts)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return {a.dest: a.option_strings[0] for a in parser._actions if a.type in (float, int) and a.option_strings}


@pytest.fixture(scope="module")
def one_day(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [",".join(r.split(",")[:5]) for r in REAL.read_text().splitlines() if not r.startswith("#")]
    assert rows[0] == HEADER  # without the spot_price column
    path = tmp_path_factory.mktemp("trace") / "day.csv"
    path.write_text("\n".join(rows[:25]) + "\n")
    return path


def test_every_numeric_option_has_a_bound() -> None:
    options = _numeric_options()
    assert set(options) <= set(BOUNDS), f"options without a bound: {sorted(set(options) - set(BOUNDS))}"
    for dest, option in options.items():
        assert BOUNDS[dest].option == option


def test_bounds_match_the_systems_own() -> None:
    """The backtest's bounds are zapd's and the cloud's, not a second opinion (imported there, copied here)."""
    from cloud.server.bounds import MAX_PRICE_ABS as server_price
    from zapd.bounds import MAX_CAPACITY_WH, MAX_POWER_W

    ours = (MAX_PRICE_ABS, MAX_POWER_KW * 1000.0, MAX_CAPACITY_KWH * 1000.0)
    assert ours == (server_price, MAX_POWER_W, MAX_CAPACITY_WH)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--days", "nan"),
        ("--days", "inf"),
        ("--days", "-5"),
        ("--days", "0"),
        ("--plot-days", "nan"),
        ("--lat", "1000"),
        ("--efficiency", "1e-300"),
        ("--horizon-hours", "1e9"),
        ("--tilt", "500"),
        ("--battery-kwh", "1e300"),
        ("--pv-kwp", "1e300"),
        ("--cycle-cost", "1e300"),
    ],
)
def test_the_audits_crashes_and_silent_passes_are_refused(
    one_day: Path, option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each of these crashed (ValueError, OverflowError, ZeroDivisionError, MemoryError) or ran a nonsense site."""
    assert main(["backtest", str(one_day), "--no-oracle", option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zapcloud backtest: ") and option in err and err.count("\n") == 1


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_float_for_any_numeric_option_is_run_or_refused_by_name(
    one_day: Path, data: st.DataObject, capsys: pytest.CaptureFixture[str]
) -> None:
    """NaN, ±inf, huge, tiny, negative: exit 0 (the backtest ran) or 2 with the option named; never a traceback."""
    dest, option = data.draw(st.sampled_from(sorted(_numeric_options().items())))
    edges = st.sampled_from([BOUNDS[dest].lo, BOUNDS[dest].hi])
    value = data.draw(st.floats(allow_nan=True, allow_infinity=True) | edges)
    capsys.readouterr()
    code = main(["backtest", str(one_day), "--no-oracle", f"{option}={value!r}"])
    err = capsys.readouterr().err
    in_range = BOUNDS[dest].problem(value) is None
    if not in_range:
        assert code == 2 and option in err, (option, value, err)
    else:
        assert code == 0 or (code == 2 and option in err), (option, value, err)  # e.g. --soc-min above --soc-max
    assert math.isfinite(value) or not in_range


def _trace(tmp_path: Path, row: str, header: str = HEADER) -> Path:
    path = tmp_path / "t.csv"
    path.write_text(f"{header}\n2023-01-01T00:00:00Z,0.3,0.1,0.5,0\n{row}\n2023-01-01T02:00:00Z,0.3,0.1,0.5,0\n")
    return path


@pytest.mark.parametrize(
    ("row", "column"),
    [
        ("2023-01-01T01:00:00Z,1e300,0.1,0.5,0", "import_price"),
        ("2023-01-01T01:00:00Z,0.3,-11,0.5,0", "export_price"),
        ("2023-01-01T01:00:00Z,0.3,0.1,20000,0", "load_kw"),
        ("2023-01-01T01:00:00Z,0.3,0.1,0.5,-1", "pv_kw"),
        ("2023-01-01T01:00:00Z,0.3,0.1,0.5,inf", "pv_kw"),
    ],
)
def test_trace_rows_are_bounded_and_named(tmp_path: Path, row: str, column: str) -> None:
    with pytest.raises(TraceError, match=rf"line 3: {column} = "):
        read_traces(str(_trace(tmp_path, row)))


def test_external_pv_forecast_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(f"{HEADER},fc\n2023-01-01T00:00:00Z,0.3,0.1,0.5,0,\n2023-01-01T01:00:00Z,0.3,0.1,0.5,0,1e9\n")
    with pytest.raises(TraceError, match=r"line 3: fc = 1000000000\.0"):
        read_traces(str(path), "fc")


def test_a_one_second_trace_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(f"{HEADER}\n2023-01-01T00:00:00Z,0.3,0.1,0.5,0\n2023-01-01T00:00:01Z,0.3,0.1,0.5,0\n")
    with pytest.raises(TraceError, match="shorter than 0:05:00"):
        read_traces(str(path))


# --- the trace's own `# site:` line ------------------------------------------------------------------------------

SYDNEY = DATA / "ausgrid_c12_nl_2023.csv"
SYDNEY_ARGS = ["--tz", "Australia/Sydney", "--lat", "-33.87", "--lon", "151.21", "--pv-kwp", "1.04", "--tilt", "20"]
SYDNEY_ARGS += ["--azimuth", "0"]


def _table(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if not line.startswith("wall time")]


def test_every_bench_trace_names_its_whole_house_and_the_bench_runs_it() -> None:
    """Each shipped trace's `# site:` line names every site option (README's sources), and bench/backtest.py
    simulates the house that line names, not a copy of it that could drift."""
    from bench.backtest import DATASETS

    for ds in DATASETS:
        site = read_site(str(DATA / ds.file))
        assert set(site) == set(SITE_KEYS.values()), ds.file
        cfg = ds.cfg
        assert {"tz": cfg.tz, "lat": cfg.lat, "lon": cfg.lon, "pv_kwp": cfg.pv_kwp} == {
            k: site[k] for k in ("tz", "lat", "lon", "pv_kwp")
        }, ds.file
        assert (cfg.tilt_deg, cfg.azimuth_deg) == (site["tilt"], site["azimuth"]), ds.file
        assert cfg.battery_kwh == Config().battery_kwh and cfg.battery_kw == Config().battery_kw, ds.file


def test_the_trace_runs_its_own_house_and_an_option_wins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`zapcloud backtest ausgrid_c12_nl_2023.csv` is the Sydney house, not a silent 5 kWp De Bilt one: the same
    table and per-slot forecasts as with the site given by hand; a site option given wins over the line."""

    def run(*extra: str) -> tuple[list[str], str]:
        slots = tmp_path / "slots.csv"
        assert main(["backtest", str(SYDNEY), "--days", "2", "--no-oracle", "--slots-csv", str(slots), *extra]) == 0
        return _table(capsys), slots.read_text()

    from_header = run()
    assert run(*SYDNEY_ARGS) == from_header
    de_bilt = run("--lat", "52.1", "--lon", "5.18", "--azimuth", "180", "--tz", "Europe/Amsterdam")
    assert de_bilt[1] != from_header[1]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("# site: lat=1000", "line 1: site --lat = 1000.0: must be"),
        ("# site: lat=north", "line 1: site lat='north' is not a number"),
        ("# site: kwp=5", "line 1: unknown '# site:' key 'kwp'"),
        ("# site: tz=Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_a_bad_site_line_is_refused_by_line(
    tmp_path: Path, line: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.csv"
    rows = [r for r in REAL.read_text().splitlines() if not r.startswith("#")][:25]
    path.write_text("\n".join([line, *rows]) + "\n")
    assert main(["backtest", str(path), "--no-oracle"]) == 2
    assert message in capsys.readouterr().err


# --- --tariff: prices from the cloud's own tariff code ----------------------------------------------------------

# The tariffs of bench/data/README.md as a site registers them (NL: import = (spot + 0.0225 + 0.12599) x 1.21,
# export = spot; BE: import = (spot + 0.02 + 0.05 + 0.05) x 1.06, export = spot - 0.01).
NL_TARIFF = (DATA / "tariff_nl_2023.json").read_text()


def _with_spot(tmp_path: Path, days: int = 2) -> Path:
    """The NL trace's first days (with its spot_price column) and its `# site:` line."""
    lines = SYDNEY.read_text().splitlines()
    site = next(r for r in lines if r.startswith("# site:"))
    rows = [r for r in lines if not r.startswith("#")][: 1 + days * 48]
    assert rows[0] == HEADER + ",spot_price"
    path = tmp_path / "spot.csv"
    path.write_text("\n".join([site, *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    "trace",
    [
        "ausgrid_c12_nl_2023",
        "ausgrid_c12_be_2023",
        "opsd_kn_res4_nl_2023",
        "opsd_kn_res4_be_2023",
        "opsd_kn_res3_nl_2023",
        "opsd_kn_res3_be_2023",
        "opsd_kn_res1_nl_2023",
        "opsd_kn_res1_be_2023",
    ],
)
def test_the_shipped_tariffs_give_each_real_traces_own_prices(trace: str) -> None:
    """bench/data/make_real_traces.py computed the prices from the spot by its own formula; cloud/tariffs.py
    computes them from the registered tariff JSON: they agree to the file's 5 decimals, all year."""
    from cloud.tariffs import decode_tariff

    zone = trace.split("_")[-2]
    own = read_traces(str(DATA / f"{trace}.csv"))
    priced = read_traces(
        str(DATA / f"{trace}.csv"), tariff=decode_tariff((DATA / f"tariff_{zone}_2023.json").read_bytes())
    )
    # both files round to 5 decimals: the price (5e-6) and, on the 25-hour day's averaged hour, the spot (x 1.21)
    assert np.allclose(priced.import_price, own.import_price, atol=5e-6 + 1.21 * 5e-6, rtol=0)
    assert np.allclose(priced.export_price, own.export_price, atol=1.1e-5, rtol=0)
    assert np.mean(np.abs(priced.import_price - own.import_price)) < 3e-6


def test_cli_prices_a_trace_by_its_tariff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace, tariff = _with_spot(tmp_path), tmp_path / "nl.json"
    tariff.write_text(NL_TARIFF)
    own = read_traces(str(trace))
    from cloud.tariffs import decode_tariff

    priced = read_traces(str(trace), tariff=decode_tariff(NL_TARIFF.encode()))
    assert np.allclose(priced.import_price, own.import_price, atol=6e-6, rtol=0)
    assert np.array_equal(priced.export_price, own.export_price)
    assert main(["backtest", str(trace), "--tariff", str(tariff), "--days", "2", "--no-oracle"]) == 0
    assert "planner" in capsys.readouterr().out


def test_a_time_of_use_tariff_needs_no_price_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fixed price with an evening grid fee (local time): the trace needs only ts, load and PV."""
    rows = [r for r in REAL.read_text().splitlines() if not r.startswith("#")][:49]
    path = tmp_path / "t.csv"
    path.write_text(
        "\n".join(["ts,load_kw,pv_kw", *(",".join(r.split(",")[:1] + r.split(",")[3:5]) for r in rows[1:])])
    )
    tou = (
        '{"energy": {"kind": "fixed", "price": 0.25}, "vat": 0.2, "timezone": "Europe/Berlin", '
        '"grid_fee": {"default": 0.05, "windows": [{"start": "17:00", "end": "21:00", "value": 0.15}]}, '
        '"export": {"kind": "fixed", "price": 0.08}}'
    )
    from cloud.tariffs import decode_tariff

    tr = read_traces(str(path), tariff=decode_tariff(tou.encode()))
    local_hours = [(tr.start + tr.step * t).astimezone(ZoneInfo("Europe/Berlin")).hour for t in range(tr.n)]
    expected = [(0.25 + (0.15 if 17 <= h < 21 else 0.05)) * 1.2 for h in local_hours]
    assert np.allclose(tr.import_price, expected) and np.all(tr.export_price == 0.08)
    (tmp_path / "tou.json").write_text(tou)
    assert main(["backtest", str(path), "--tariff", str(tmp_path / "tou.json"), "--no-oracle"]) == 0
    capsys.readouterr()
    assert main(["backtest", str(path), "--no-oracle"]) == 2  # without a tariff the price columns are needed
    assert "missing columns import_price, export_price" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("tariff", "message"),
    [
        ("{not json", "--tariff"),
        ('{"energy": {"kind": "spot"}}', "spot_area"),
        ('{"energy": {"kind": "fixed", "price": 0.3}, "capacity": {"price_per_kw": 1000}}', "capacity.price_per_kw"),
        ('{"energy": {"kind": "fixed", "price": 0.3}, "vat": 1e6}', "line 2: the tariff's import price"),
        ('{"energy": {"kind": "spot"}, "spot_area": "NL"}', "missing columns spot_price"),
    ],
)
def test_a_bad_tariff_is_refused(
    tmp_path: Path, one_day: Path, tariff: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "t.json").write_text(tariff)
    assert main(["backtest", str(one_day), "--tariff", str(tmp_path / "t.json"), "--no-oracle"]) == 2
    assert message in capsys.readouterr().err


def test_a_spot_price_beyond_its_bound_is_refused(tmp_path: Path) -> None:
    from cloud.tariffs import decode_tariff

    path = _trace(tmp_path, "2023-01-01T01:00:00Z,0.3,0.1,0.5,0,-50", header=HEADER + ",spot_price")
    path.write_text(path.read_text().replace(",0\n", ",0,0.1\n"))
    with pytest.raises(TraceError, match=r"line 3: spot_price = -50\.0"):
        read_traces(str(path), tariff=decode_tariff(NL_TARIFF.encode()))


# --- separate charge / discharge power and efficiency --------------------------------------------------------------


@pytest.fixture(scope="module")
def two_days() -> Traces:
    return read_traces(str(SYDNEY)).head(2 * 48)


SITE = Config(tz="Australia/Sydney", lat=-33.87, lon=151.21, pv_kwp=1.04, tilt_deg=20.0, azimuth_deg=0.0)


def test_the_shorthands_are_both_directions(two_days: Traces) -> None:
    split = replace(SITE, charge_kw=5.0, discharge_kw=5.0, charge_efficiency=0.95, discharge_efficiency=0.95)
    a, b = rolling_flows(two_days, SITE), rolling_flows(two_days, split)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_charge_and_discharge_limits_and_losses_apply_each_way(two_days: Traces) -> None:
    cfg = replace(SITE, charge_kw=0.4, discharge_kw=1.5, charge_efficiency=0.9, discharge_efficiency=0.99)
    charge, discharge, _, log = rolling_flows(two_days, cfg)
    assert charge.max() <= 0.4 + 1e-9 and discharge.max() <= 1.5 + 1e-9
    assert discharge.max() > 0.4  # the discharge side is not held to the charge limit
    soc = np.concatenate([[cfg.soc_initial], log.soc])
    stored = (charge * 0.9 - discharge / 0.99) * two_days.dt_h / cfg.battery_kwh
    assert np.allclose(np.diff(soc), stored)


def test_cli_charge_discharge_options(one_day: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--charge-kw", "2", "--discharge-kw", "3", "--charge-efficiency", "0.9", "--discharge-efficiency", "0.97"]
    assert main(["backtest", str(one_day), "--no-oracle", *args]) == 0
    assert main(["backtest", str(one_day), "--no-oracle", "--charge-efficiency", "0.2"]) == 2
    assert "--charge-efficiency = 0.2" in capsys.readouterr().err


# --- --step-minutes ----------------------------------------------------------------------------------------------


def test_hold_keeps_every_rows_energy_and_price(one_day: Path) -> None:
    tr = read_traces(str(one_day))
    quarter = hold(tr, timedelta(minutes=15))
    assert quarter.n == 4 * tr.n and quarter.step == timedelta(minutes=15)
    assert np.isclose(quarter.load_kw.sum() * quarter.dt_h, tr.load_kw.sum() * tr.dt_h)
    assert np.array_equal(quarter.import_price[::4], tr.import_price)
    assert np.array_equal(quarter.pv_kw.reshape(-1, 4).min(axis=1), tr.pv_kw)


def test_cli_plans_in_quarter_hours_over_hourly_data(one_day: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backtest", str(one_day), "--step-minutes", "15"]) == 0
    out = capsys.readouterr().out
    assert "96 slots of 0:15:00" in out and "perfect foresight" in out
    for bad in ("45", "120"):
        assert main(["backtest", str(one_day), "--step-minutes", bad, "--no-oracle"]) == 2
        assert "coarser than the data is not supported" in capsys.readouterr().err


# --- a capacity (demand) charge ----------------------------------------------------------------------------------


def test_the_capacity_charge_bills_each_months_peak_in_the_tariffs_zone() -> None:
    """Worked example: 8 hours across a month end, 0.10 EUR/kWh, 4 EUR per kW of each month's peak."""
    start = datetime(2023, 1, 31, 20, tzinfo=UTC)
    load = np.array([1.0, 3.0, 1.0, 5.0, 2.0, 1.0, 1.0, 1.0])
    tr = Traces(start, timedelta(hours=1), np.full(8, 0.1), np.zeros(8), load, np.zeros(8))
    # UTC: January 20:00-23:59 holds the 5 kW hour, February the 2 kW one: 0.1 x 15 kWh + 4 x (5 + 2)
    assert no_battery(tr, replace(Config(), capacity_per_kw=4.0)).cost == pytest.approx(1.5 + 28.0)
    # Amsterdam (UTC+1): 23:00Z is 1 February 00:00, so January's peak is 3 kW and February's 5 kW
    cet = replace(Config(), capacity_per_kw=4.0, capacity_tz="Europe/Amsterdam")
    assert no_battery(tr, cet).cost == pytest.approx(1.5 + 32.0)
    assert no_battery(tr).cost == pytest.approx(1.5)  # without one nothing changes


def _peak(tr: Traces, charge: np.ndarray, discharge: np.ndarray) -> float:
    return float(np.max(tr.load_kw - tr.pv_kw + charge - discharge))


def test_planner_and_oracle_shave_the_peak_a_capacity_charge_bills(two_days: Traces) -> None:
    """The planner is told this month's peak so far and the charge (perfect forecasts: on the first days the
    profile forecaster has no history, and a missed evening peak is the forecaster's error, not the tariff's)."""
    known = replace(SITE, forecast=Forecast.PERFECT)
    cfg = replace(known, capacity_per_kw=30.0, capacity_tz="Australia/Sydney")
    plain_c, plain_d, _, _ = rolling_flows(two_days, known)
    c, d, _, _ = rolling_flows(two_days, cfg)
    assert _peak(two_days, c, d) < _peak(two_days, plain_c, plain_d) - 0.3
    oracle = perfect_foresight(two_days, cfg)
    assert oracle.cost < no_battery(two_days, cfg).cost
    assert oracle.cost <= settle(two_days, c, d, cfg.cycle_cost, "planner", cfg).cost + 1e-6


def test_cli_backtests_a_capacity_tariff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace, tariff = _with_spot(tmp_path), tmp_path / "cap.json"
    tariff.write_text(NL_TARIFF.rstrip()[:-1] + ', "capacity": {"price_per_kw": 4.5}}')
    assert main(["backtest", str(trace), "--tariff", str(tariff)]) == 0
    with_charge = capsys.readouterr().out
    (tmp_path / "nl.json").write_text(NL_TARIFF)
    assert main(["backtest", str(trace), "--tariff", str(tmp_path / "nl.json")]) == 0
    assert _costs(with_charge)["no battery"] > _costs(capsys.readouterr().out)["no battery"]


def _costs(out: str) -> dict[str, float]:
    names = ("no battery", "self-consumption rules", "planner", "perfect foresight")
    rows = (re.match(rf"({'|'.join(names)})\s+(-?[0-9.]+)\s", line) for line in out.splitlines())
    return {m[1]: float(m[2]) for m in rows if m}


def test_the_docs_list_every_option() -> None:
    """docs/cloud-planning.md's Backtest section names every option of `zapcloud backtest`."""
    text = (DATA.parents[1] / "docs" / "cloud-planning.md").read_text()
    section = text[text.index("## Backtest\n") : text.index("### Executing plans")]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    missing = [o for o in options if not re.search(rf"`{re.escape(o)}[` ]", section)]
    assert not missing, f"docs/cloud-planning.md ## Backtest does not list {missing}"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"2023-01-01T00:00:00Z,0.3,0.1,0.5,0\n\xff\xfe\x00garbage\n", "not a text file"),
        (b"2023-01-01T00:00:00Z," + b"9" * 200_000 + b",0.1,0.5,0\n", "field larger than field limit"),
    ],
)
def test_a_broken_trace_file_is_refused(
    tmp_path: Path, body: bytes, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(HEADER.encode() + b"\n" + body)
    assert main(["backtest", str(path), "--no-oracle"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--slots-csv", "--plot"])
def test_an_unwritable_output_is_refused_before_the_run(
    one_day: Path, tmp_path: Path, option: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import cloud.backtest

    def never(*_: object, **__: object) -> None:
        raise AssertionError("the backtest ran")

    monkeypatch.setattr(cloud.backtest, "run", never)
    for path in (tmp_path / "missing" / "out", tmp_path):
        assert main(["backtest", str(one_day), option, str(path)]) == 2
        assert f"{option} {path}: not a file in a writable directory" in capsys.readouterr().err


# --- traces a user brings: other steps, no PV, a daylight-saving hour, a missing row ----------------------------


def _sydney_rows(days: int) -> tuple[list[str], list[str]]:
    """The Ausgrid trace's comment lines and its first `days` of half-hourly rows (header first)."""
    lines = SYDNEY.read_text().splitlines()
    rows = [r for r in lines if not r.startswith("#")]
    return [r for r in lines if r.startswith("#")], rows[: 1 + days * 48]


def _run(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    code = main(["backtest", str(path), "--no-oracle", *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def _cost(out: str, strategy: str) -> float:
    return float(next(line for line in out.splitlines() if line.startswith(strategy)).split()[-5])


def test_quarter_hour_data_held_from_half_hours_runs_like_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    comments, rows = _sydney_rows(2)
    quarter = [rows[0]]
    for row in rows[1:]:
        ts, rest = row.split(",", 1)
        t = datetime.fromisoformat(ts)
        quarter += [f"{(t + timedelta(minutes=m)).isoformat().replace('+00:00', 'Z')},{rest}" for m in (0, 15)]
    half, q = tmp_path / "half.csv", tmp_path / "quarter.csv"
    half.write_text("\n".join([*comments, *rows]) + "\n")
    q.write_text("\n".join([*comments, *quarter]) + "\n")
    code_h, out_h, _ = _run(half, capsys)
    code_q, out_q, err_q = _run(q, capsys)
    assert code_h == code_q == 0 and "Traceback" not in err_q
    assert "192 slots of 0:15:00" in out_q
    assert _cost(out_q, "no battery") == pytest.approx(_cost(out_h, "no battery"), abs=0.01)  # the same energy


def test_a_house_without_pv_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    comments, rows = _sydney_rows(2)
    no_pv = [rows[0], *(",".join([*r.split(",")[:4], "0", *r.split(",")[5:]]) for r in rows[1:])]
    path = tmp_path / "no_pv.csv"
    path.write_text("\n".join([c for c in comments if not c.startswith("# site:")] + no_pv) + "\n")
    code, out, err = _run(path, capsys)
    assert code == 0 and "too little measured PV to learn it from" in err and "Traceback" not in err
    assert re.search(r"^no battery .* 0\.0 +0\.0$", out, re.M)  # nothing exported, no battery throughput


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: [*rows[:60], rows[59], *rows[60:]], "line 62: 2011-07-01T19:00:00Z again: the same time"),
        (lambda rows: rows[:60] + rows[61:], "line 62: 2011-07-01T20:00:00Z follows 2011-07-01T19:00:00Z: 1 row of"),
        (lambda rows: rows[:60] + rows[63:], "3 rows of 0:30:00 missing"),
        (lambda rows: [*rows[:60], rows[30], *rows[60:]], "line 62: 2011-07-01T04:30:00Z is before"),
        (lambda rows: [*rows[:60], rows[60].replace("Z", ""), *rows[61:]], "line 62: ts 2011-07-01T19:30:00 without"),
        (lambda rows: [*rows[:60], rows[60].rsplit(",", 3)[0], *rows[61:]], "line 62: fewer fields than the header's"),
    ],
    ids=["dst-hour-twice", "missing-row", "missing-rows", "out-of-order", "no-utc-offset", "short-row"],
)
def test_a_broken_time_line_is_named_by_its_line_of_the_file(
    tmp_path: Path, edit: object, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The line number is the file's (comments included), so an editor finds it; never a traceback. Line 1 is a
    comment, 2 the header, rows[i] line i + 2: the edit at rows[60] is line 62."""
    _, rows = _sydney_rows(3)
    assert callable(edit)
    path = tmp_path / "t.csv"
    path.write_text("\n".join(["# a comment line", *edit(rows)]) + "\n")
    code, _, err = _run(path, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err


def test_local_timestamps_across_a_daylight_saving_change_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows in local time with their UTC offsets (Europe/Berlin, 26 March 2023: 02:00 CET is 03:00 CEST) are one
    regular UTC series."""
    zone = ZoneInfo("Europe/Berlin")
    start = datetime(2023, 3, 25, tzinfo=UTC)
    rows = [HEADER] + [
        f"{(start + timedelta(hours=h)).astimezone(zone).isoformat()},0.3,0.1,0.5,{max(0, 6 - abs(h % 24 - 12))}"
        for h in range(72)
    ]
    assert "+01:00" in rows[1] and "+02:00" in rows[-1]
    path = tmp_path / "local.csv"
    path.write_text("\n".join(rows) + "\n")
    code, out, err = _run(path, capsys, "--tz", "Europe/Berlin", "--lat", "52.5", "--lon", "13.4")
    assert code == 0 and "72 slots of 1:00:00" in out, err


def test_the_bench_s_timing_year_is_the_house_held_at_its_step() -> None:
    """bench/backtest.py's 15-minute row is house 2's trace with each hourly row held over four quarters, as
    `zapcloud backtest --step-minutes 15` runs it: the same energy, four times the slots."""
    from bench.backtest import DATASETS, TIMING_YEARS

    (held,) = TIMING_YEARS
    assert held.name == "opsd_kn_res4_nl_2023.csv@15min"
    assert held.name not in {ds.name for ds in DATASETS}
    hourly = next(ds for ds in DATASETS if ds.file == held.file).traces().head(48)
    quarters = held.traces().head(4 * 48)
    assert quarters.step.total_seconds() == 900.0 and hourly.step.total_seconds() == 3600.0
    assert quarters.load_kw.reshape(48, 4).tolist() == [[v] * 4 for v in hourly.load_kw.tolist()]
    assert float(quarters.pv_kw.sum()) / 4.0 == pytest.approx(float(hourly.pv_kw.sum()))


def test_the_bench_s_index_years_are_the_konstanz_houses_with_the_real_regional_forecast() -> None:
    """bench/backtest.py's index rows are the six Konstanz years with APG's forecast on their hours, as
    `zapcloud backtest --pv-index bench/data/apg_at_solar_dayahead_utc.csv` reads it: a value on every hour of
    2016 (the Konstanz houses' year), zero at night, the day's peak near local noon."""
    from bench.backtest import DATASETS, INDEX_YEARS

    assert sorted(ds.file for ds in INDEX_YEARS) == sorted(ds.file for ds in DATASETS if "opsd_kn" in ds.file)
    assert not {ds.name for ds in INDEX_YEARS} & {ds.name for ds in DATASETS}
    house = next(ds for ds in INDEX_YEARS if ds.file == "opsd_kn_res4_nl_2023.csv").traces()
    index = house.pv_index
    assert index is not None and len(index) == house.n and not np.isnan(index).any()
    days = index[: (house.n // 24) * 24].reshape(-1, 24)  # the trace starts at 00Z: 01:00 CET
    assert days[:, [0, 1, 21, 22, 23]].max() == 0.0 and days.max() > 400.0  # MW: none at night; the peak
    assert 10 <= int(np.argmax(days.sum(axis=0))) <= 12  # at 11-13 UTC+1: noon in Austria
