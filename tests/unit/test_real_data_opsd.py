"""The second real household (OPSD DE_KN_residential4, 2016) is what its source says, and its traces add up.

Expected values come from the source, not from the code under test: the first and the closing rows of
`household_data_60min_singleindex.csv` for 2016 (2016-01-01T00:00Z: import 1144.970, export 732.641, PV 1133.900
kWh; 2017-01-01T00:00Z: 5064.364, 9463.590, 12134.881), the hours the source leaves empty, the sun at Konstanz
(no PV in the dark: the source's stamps run 1 h late in summer time), the ENTSO-E NL 2023 prices and the
tariff formula in bench/data/README.md.
The built traces are checked against the raw meter readings hour by hour.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cloud.backtest import read_traces
from tests.opsd_meters import DATA, elevation, readings, spot

METERS = ("grid_import_kwh", "grid_export_kwh", "pv_kwh")
START = datetime(2016, 1, 1, tzinfo=UTC)
HOURS = 8784  # 2016 is a leap year
# Hours whose reading the source leaves empty in all three meters (and the three where only PV was read).
EMPTY = (
    [(START + timedelta(days=54, hours=13 + i)) for i in range(2)]  # 2016-02-24 13-14Z
    + [datetime(2016, 4, 22, 15, tzinfo=UTC) + timedelta(hours=i) for i in range(54)]
    + [datetime(2016, 10, 21, 10, tzinfo=UTC) + timedelta(hours=i) for i in range(12)]
    + [datetime(2016, 12, 21, h, tzinfo=UTC) for h in (10, 11, 12, 13, 15, 16)]
)
PV_ONLY = [datetime(2016, 12, 21, h, tzinfo=UTC) for h in (10, 15, 16)]


def _readings() -> tuple[list[datetime], dict[str, np.ndarray]]:
    return readings("residential4_2016", METERS)


def test_raw_meters_are_the_2016_year_of_the_source() -> None:
    stamps, m = _readings()
    assert len(stamps) == HOURS + 1 and stamps[0] == START and stamps[-1] == START + timedelta(hours=HOURS)
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(stamps))
    first = [float(m[k][0]) for k in METERS]
    last = [float(m[k][-1]) for k in METERS]
    assert first == [1144.970, 732.641, 1133.900] and last == [5064.364, 9463.590, 12134.881]
    for k in METERS:  # cumulative meters never run backwards
        known = m[k][np.isfinite(m[k])]
        assert np.all(np.diff(known) >= 0), k
    empty = {stamps[i] for i in range(len(stamps)) if np.isnan(m["grid_import_kwh"][i])}
    assert empty == set(EMPTY)
    assert {stamps[i] for i in range(len(stamps)) if np.isfinite(m["pv_kwh"][i]) and stamps[i] in empty} == set(PV_ONLY)
    assert all(np.isnan(m["grid_export_kwh"][i]) == (stamps[i] in empty) for i in range(len(stamps)))
    # year totals of the meters (the house's published character: ~11 MWh PV, more exported than imported)
    assert round(float(last[0] - first[0]), 3) == 3919.394
    assert round(float(last[1] - first[1]), 3) == 8730.949
    assert round(float(last[2] - first[2]), 3) == 11000.981


def _true_clock(stamps: list[datetime], m: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Readings on true UTC hours: during summer time (2016-03-27T01Z .. 10-30T01Z) the source's stamps are 1 h
    late; its 2016-03-27T01Z row (wall 02:00, which does not exist) is dropped, 2016-10-30T00Z has no reading."""
    summer = (datetime(2016, 3, 27, 2, tzinfo=UTC), datetime(2016, 10, 30, 1, tzinfo=UTC))
    out = {k: np.full(HOURS + 1, np.nan) for k in METERS}
    for i, t in enumerate(stamps):
        if t == datetime(2016, 3, 27, 1, tzinfo=UTC):
            continue
        true = t - timedelta(hours=1) if summer[0] <= t < summer[1] else t
        k = int((true - START) / timedelta(hours=1))
        for name in METERS:
            out[name][k] = m[name][i]
    return out


def test_source_clock_runs_an_hour_late_in_summer_time_only() -> None:
    """PV after dark on the source's stamps: only on summer-time evenings, so the stamps are 1 h late then."""
    stamps, m = _readings()
    pv = np.diff(m["pv_kwh"])  # hour t = reading(t + 1 h) - reading(t)
    el = elevation(stamps[:-1])
    dark = (el < -8.0) & (pv > 0.03)  # the whole hour in the dark, yet 30 Wh or more
    when = [stamps[i] for i in np.flatnonzero(dark)]
    assert len(when) >= 30
    assert all(datetime(2016, 3, 27, tzinfo=UTC) <= t < datetime(2016, 10, 30, tzinfo=UTC) for t in when)
    assert all(15 <= t.hour <= 20 for t in when)  # evenings: production shows up an hour after sunset
    # on the true clock nothing is produced in the dark, all year
    true = _true_clock(stamps, m)
    pv_true = np.diff(true["pv_kwh"])
    hours = [START + timedelta(hours=k) for k in range(HOURS)]
    night = (elevation(hours) < -8.0) & np.isfinite(pv_true)
    assert night.sum() > 3000 and float(pv_true[night].max()) <= 0.005


@pytest.mark.parametrize("zone", ["nl", "be"])
def test_trace_is_the_meters_hour_by_hour(zone: str) -> None:
    m = _true_clock(*_readings())
    imp, exp, pvm = (np.diff(m[k]) for k in METERS)
    tr = read_traces(str(DATA / f"opsd_kn_res4_{zone}_2023.csv"))
    assert tr.step == timedelta(hours=1) and tr.n == HOURS and tr.start == START
    load, pv = np.asarray(tr.load_kw), np.asarray(tr.pv_kw)
    assert np.all(load >= 0) and np.all(pv >= 0)
    measured = np.isfinite(imp) & np.isfinite(exp) & np.isfinite(pvm)
    net = imp - exp + pvm
    ok = measured & (net >= 0)
    # energy balance load - pv = import - export in every measured hour, to the meters' 1 Wh (plus rounding)
    assert np.max(np.abs((load - pv)[ok] - (imp - exp)[ok])) <= 0.0015
    assert np.max(np.abs(pv[np.isfinite(pvm)] - pvm[np.isfinite(pvm)])) <= 0.0015
    clipped = measured & (net < 0)  # export meter ahead of the PV meter: load clipped at 0
    assert 1 <= clipped.sum() <= 20 and np.all(load[clipped] == 0) and float(-net[clipped].sum()) < 2.5
    # gaps: 81 load hours, 77 PV hours filled, and the filling keeps each meter's energy across the gap
    assert (~measured).sum() == 81 and (~np.isfinite(pvm)).sum() == 77
    assert abs(float(pv.sum()) - 11000.981) < 0.05
    assert abs(float(load.sum()) - (6189.426 + float(-net[clipped].sum()))) < 0.1
    known = np.flatnonzero(np.isfinite(m["grid_import_kwh"]))
    for a, b in itertools.pairwise(known):
        if b - a > 1:
            i, e, p = (m[k][b] - m[k][a] for k in METERS)
            total = i - e + p
            assert abs(float(load[a:b].sum()) - float(total)) <= 0.001 * (b - a), a
    assert np.all(tr.import_price > tr.export_price)


def test_nl_prices_follow_the_house_local_clock() -> None:
    """House local 2016-01-01 (a Friday) gets the NL spot of Friday 2023-01-06, hour by local hour."""
    nl = spot("nl")
    tr = read_traces(str(DATA / "opsd_kn_res4_nl_2023.csv"))
    # house UTC hour 2016-01-01T00Z is 01:00 CET; 2023-01-06 01:00 CET is 2023-01-06T00Z
    for h in range(23):
        s = nl[datetime(2023, 1, 6, h, tzinfo=UTC)]
        assert tr.export_price[h] == pytest.approx(s, abs=1e-5)
        assert tr.import_price[h] == pytest.approx((s + 0.0225 + 0.12599) * 1.21, abs=1e-5)
    # summer: 2016-07-01 12:00 CEST (10Z, house day 182) gets 2023 day 187 = 2023-07-07 12:00 CEST (10Z)
    k = int((datetime(2016, 7, 1, 10, tzinfo=UTC) - START) / timedelta(hours=1))
    assert tr.export_price[k] == pytest.approx(nl[datetime(2023, 7, 7, 10, tzinfo=UTC)], abs=1e-5)
    assert datetime(2016, 7, 1).weekday() == datetime(2023, 7, 7).weekday()
