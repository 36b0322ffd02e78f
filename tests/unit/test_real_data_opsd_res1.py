"""The fourth real household (OPSD DE_KN_residential1, 2016) is what its source says, and its traces add up.

Expected values come from the source, not from the code under test: the first and the closing rows of 2016 in
`household_data_60min_singleindex.csv` (2016-01-01T00:00Z: import 2912.808, PV 6404.501 kWh; 2017-01-01T00:00Z:
8064.514, 15769.629), the sun at Konstanz (PV before sunrise on the source's stamps: they run 1 h early all year),
the ENTSO-E NL 2023 prices and the tariff formula in bench/data/README.md. This house has no export meter: its PV
is sold on its own meter, so what it used is what its import meter counts (the meter never dips under the PV).
The built traces are checked against the raw meter readings hour by hour.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cloud.backtest import read_traces
from tests.opsd_meters import DATA, assert_nl_replay, highest_elevation, readings

METERS = ("grid_import_kwh", "pv_kwh")
START = datetime(2016, 1, 1, tzinfo=UTC)
HOURS = 8784  # 2016 is a leap year
HOUR = timedelta(hours=1)


def _readings() -> tuple[list[datetime], dict[str, np.ndarray]]:
    return readings("residential1_2016", METERS)


def test_raw_meters_are_the_2016_year_of_the_source() -> None:
    stamps, m = _readings()
    assert len(stamps) == HOURS + 1 and stamps[0] == START and stamps[-1] == START + HOUR * HOURS
    assert all(b - a == HOUR for a, b in itertools.pairwise(stamps))
    assert [float(m[k][0]) for k in METERS] == [2912.808, 6404.501]
    assert [float(m[k][-1]) for k in METERS] == [8064.514, 15769.629]
    for k in METERS:  # no field is empty in 2016, and cumulative meters never run backwards
        assert np.all(np.isfinite(m[k])) and np.all(np.diff(m[k]) >= 0), k
    assert [round(float(m[k][-1] - m[k][0]), 3) for k in METERS] == [5151.706, 9365.128]


def test_pv_is_sold_on_its_own_meter() -> None:
    """Behind a shared meter 8 kW of PV would push a 0.3-0.5 kW house's import to zero on every sunny midday;
    this import meter counts the house's base load in every hour of the year, sunny ones alike."""
    _, m = _readings()
    imp, pv = np.diff(m["grid_import_kwh"]), np.diff(m["pv_kwh"])
    sunny = pv > 3.0
    assert sunny.sum() > 1000
    assert float(imp.min()) > 0.25
    assert float(np.median(imp[sunny])) >= float(np.median(imp[pv == 0]))


def test_source_clock_runs_an_hour_early_all_year() -> None:
    """PV in hours that end before sunrise on the source's stamps, mornings only, in winter as in summer: a
    reading stamped t is the meter at t + 1 h. On the true clock no PV is counted with the sun below the horizon."""
    stamps, m = _readings()
    pv = np.diff(m["pv_kwh"])
    hours = stamps[:-1]
    dark = (highest_elevation(hours) < -3.0) & (pv > 0.02)  # the sun 3 degrees down all hour, yet 20 Wh or more
    when = [hours[i] for i in np.flatnonzero(dark)]
    assert len(when) >= 40
    assert all(2 <= t.hour <= 7 for t in when)  # before sunrise: production shows up an hour early
    months = {t.month for t in when}  # winter and summer alike: no daylight-saving pattern
    assert len(months) >= 7 and months & {11, 12, 1, 2} and months & {6, 7, 8}
    true = [t + HOUR for t in hours]
    assert not np.any((highest_elevation(true) < -3.0) & (pv > 0.02))


@pytest.mark.parametrize("zone", ["nl", "be"])
def test_trace_is_the_meters_hour_by_hour(zone: str) -> None:
    _, m = _readings()
    imp, pvm = (np.diff(m[k]) for k in METERS)
    tr = read_traces(str(DATA / f"opsd_kn_res1_{zone}_2023.csv"))
    assert tr.step == HOUR and tr.n == HOURS and tr.start == START + HOUR  # the true clock: 1 h later
    load, pv = np.asarray(tr.load_kw), np.asarray(tr.pv_kw)
    assert np.all(np.isfinite(load)) and np.all(np.isfinite(pv))
    assert np.max(np.abs(load - imp)) <= 0.0005 and np.max(np.abs(pv - pvm)) <= 0.0005  # 3 decimals as written
    assert abs(float(load.sum()) - 5151.706) < 0.05 and abs(float(pv.sum()) - 9365.128) < 0.05
    assert np.all(tr.import_price > tr.export_price)


def test_nl_prices_follow_the_house_local_clock_and_weekdays() -> None:
    """House local 2016-01-01 (a Friday) gets the NL spot of Friday 2023-01-06, hour by local hour; past the end
    of 2023 the price days continue at 2023-01-02, so 2016-12-26 (a Monday) gets Monday 2023-01-02."""
    tr = read_traces(str(DATA / "opsd_kn_res1_nl_2023.csv"))
    # the trace starts at 2016-01-01T01Z = 02:00 CET; 2023-01-06 02:00 CET is 2023-01-06T01Z
    pairs = [
        (datetime(2016, 7, 1, 10, tzinfo=UTC), datetime(2023, 7, 7, 10, tzinfo=UTC)),  # summer time both
        (datetime(2016, 12, 25, 11, tzinfo=UTC), datetime(2023, 12, 31, 11, tzinfo=UTC)),  # before the wrap
        (datetime(2016, 12, 26, 11, tzinfo=UTC), datetime(2023, 1, 2, 11, tzinfo=UTC)),  # after the wrap
    ]
    assert_nl_replay(tr, datetime(2023, 1, 6, 1, tzinfo=UTC), 22, pairs)
