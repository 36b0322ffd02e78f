"""The third real household (OPSD DE_KN_residential3, 2016-03-01 .. 2017-03-01) is what its source says, and its
traces add up.

Expected values come from the source, not from the code under test: the first and the closing rows of the window
in `household_data_60min_singleindex.csv` (2016-03-01T00:00Z: import 20.937, export 0.02, PV 1.51 kWh;
2017-03-01T00:00Z: 3925.58, 2883.775, 4407.242), the sun at Konstanz (PV before sunrise on the source's stamps:
they run 1 h early all year), the ENTSO-E NL 2023 prices and the tariff formula in bench/data/README.md.
The built traces are checked against the raw meter readings hour by hour.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cloud.backtest import read_traces
from tests.opsd_meters import DATA, assert_nl_replay, elevation, highest_elevation, readings

METERS = ("grid_import_kwh", "grid_export_kwh", "pv_kwh")
START = datetime(2016, 3, 1, tzinfo=UTC)
HOURS = 8760  # 2016-03-01 .. 2017-03-01: 365 days
HOUR = timedelta(hours=1)


def _readings() -> tuple[list[datetime], dict[str, np.ndarray]]:
    return readings("residential3_2016_2017", METERS)  # no field is empty in this window


def test_raw_meters_are_the_window_of_the_source() -> None:
    stamps, m = _readings()
    assert len(stamps) == HOURS + 1 and stamps[0] == START and stamps[-1] == START + HOUR * HOURS
    assert all(b - a == HOUR for a, b in itertools.pairwise(stamps))
    assert [float(m[k][0]) for k in METERS] == [20.937, 0.02, 1.51]
    assert [float(m[k][-1]) for k in METERS] == [3925.58, 2883.775, 4407.242]
    for k in METERS:  # cumulative meters never run backwards
        assert np.all(np.diff(m[k]) >= 0), k
    totals = [round(float(m[k][-1] - m[k][0]), 3) for k in METERS]
    assert totals == [3904.643, 2883.755, 4405.732]


def test_source_clock_runs_an_hour_early_all_year() -> None:
    """PV in hours that end before sunrise on the source's stamps, mornings only, in every season: a reading
    stamped t is the meter at t + 1 h. On the true clock no PV is counted with the sun below the horizon."""
    stamps, m = _readings()
    pv = np.diff(m["pv_kwh"])
    hours = stamps[:-1]
    highest = highest_elevation(hours)
    dark = (highest < -3.0) & (pv > 0.02)  # the sun 3 degrees below the horizon all hour, yet 20 Wh or more
    when = [hours[i] for i in np.flatnonzero(dark)]
    assert len(when) >= 20
    assert all(2 <= t.hour <= 5 for t in when)  # before sunrise: production shows up an hour early
    assert len({t.month for t in when}) >= 7  # winter and summer alike: no daylight-saving pattern
    true = [t + HOUR for t in hours]
    assert not np.any((elevation(true) < -3.0) & (pv > 0.02))
    night = elevation(true) < -8.0
    assert night.sum() > 3500 and float(pv[night].max()) == 0.0


@pytest.mark.parametrize("zone", ["nl", "be"])
def test_trace_is_the_meters_hour_by_hour(zone: str) -> None:
    stamps, m = _readings()
    imp, exp, pvm = (np.diff(m[k]) for k in METERS)
    tr = read_traces(str(DATA / f"opsd_kn_res3_{zone}_2023.csv"))
    assert tr.step == HOUR and tr.n == HOURS and tr.start == START + HOUR  # the true clock: 1 h later
    load, pv = np.asarray(tr.load_kw), np.asarray(tr.pv_kw)
    assert np.all(load >= 0) and np.all(pv >= 0)
    net = imp - exp + pvm
    ok = net >= 0
    # energy balance load - pv = import - export in every hour, to the meters' 1 Wh (plus rounding)
    assert np.max(np.abs((load - pv)[ok] - (imp - exp)[ok])) <= 0.0015
    assert np.max(np.abs(pv - pvm)) <= 0.0015
    clipped = ~ok  # the meters disagree (export above PV + import) on the source's faulty days: clipped at 0
    assert clipped.sum() == 29 and np.all(load[clipped] == 0)
    days = {(t + HOUR).date().isoformat() for t, c in zip(stamps[:-1], clipped, strict=True) if c}
    assert days == {"2016-05-26", "2016-05-27", "2016-08-22", "2016-08-23", "2016-12-05", "2016-12-06", "2016-12-07"}
    assert abs(float(-net[clipped].sum()) - 19.699) < 0.002
    assert abs(float(pv.sum()) - 4405.732) < 0.05
    assert abs(float(load.sum()) - (5426.620 + 19.699)) < 0.1
    assert np.all(tr.import_price > tr.export_price)


def test_nl_prices_follow_the_house_local_clock_and_weekdays() -> None:
    """House local 2016-03-01 (a Tuesday) gets the NL spot of Tuesday 2023-02-28, hour by local hour; past the
    end of 2023 the price days continue at 2023-01-02, so 2017-01-02 (a Monday) gets Monday 2023-01-02."""
    tr = read_traces(str(DATA / "opsd_kn_res3_nl_2023.csv"))
    # the trace starts at 2016-03-01T01Z = 02:00 CET; 2023-02-28 02:00 CET is 2023-02-28T01Z
    pairs = [
        (datetime(2016, 7, 5, 10, tzinfo=UTC), datetime(2023, 7, 4, 10, tzinfo=UTC)),  # summer time both
        (datetime(2016, 12, 31, 11, tzinfo=UTC), datetime(2023, 12, 30, 11, tzinfo=UTC)),  # before the wrap
        (datetime(2017, 1, 2, 11, tzinfo=UTC), datetime(2023, 1, 2, 11, tzinfo=UTC)),  # after the wrap
        (datetime(2017, 2, 28, 11, tzinfo=UTC), datetime(2023, 2, 28, 11, tzinfo=UTC)),  # replayed twice
    ]
    assert_nl_replay(tr, datetime(2023, 2, 28, 1, tzinfo=UTC), 22, pairs)
