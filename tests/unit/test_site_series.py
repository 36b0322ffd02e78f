"""Telemetry → 15-minute series: load from the balance, unknown stays unknown, stale SoC is no SoC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cloud.assets import AssetsError, decode_assets
from cloud.site_series import bin_readings

T0 = datetime(2026, 6, 1, tzinfo=UTC)
Q = timedelta(minutes=15)


def test_load_is_derived_from_the_grid_balance() -> None:
    rows = [
        (1, "m", "meter", T0, {"power_w": 1000.0}),
        (2, "m", "meter", T0 + timedelta(minutes=5), {"power_w": 3000.0}),  # mean 2 kW import
        (3, "pv", "pv", T0, {"power_w": 1500.0}),
        (4, "b", "battery", T0, {"power_w": 2500.0, "soc": 0.4}),  # charging 2.5 kW
        (5, "m", "meter", T0 + Q, {"power_w": -500.0}),
        (6, "b", "battery", T0 + Q, {"power_w": 0.0, "soc": 0.45}),
    ]
    s = bin_readings(rows, T0, T0 + 3 * Q, Q, has_battery=True, has_ev=False)
    # load = grid - battery + pv = 2 - 2.5 + 1.5 = 1.0 kW
    assert s.load_kw[0] == pytest.approx(1.0)
    assert s.grid_kw[1] == pytest.approx(-0.5)
    assert np.isnan(s.pv_kw[1])  # the inverter said nothing: unknown for the PV factor...
    assert s.load_kw[1] == pytest.approx(0.0)  # ...but 0 in the balance (-0.5 - 0 + 0, clipped)
    assert np.isnan(s.load_kw[2])  # no meter reading: unknown, not 0
    assert s.soc == pytest.approx(0.45)
    assert s.last_seq == 6


def test_stale_soc_is_unknown_and_missing_battery_reading_makes_load_unknown() -> None:
    rows = [(1, "b", "battery", T0, {"power_w": 0.0, "soc": 0.5}), (2, "m", "meter", T0 + 3 * Q, {"power_w": 100.0})]
    s = bin_readings(rows, T0, T0 + 4 * Q, Q, has_battery=True, has_ev=False)
    assert s.soc is None  # 60 minutes old at the end of the window
    assert np.isnan(s.load_kw[3])  # battery exists but did not report in that slot
    s2 = bin_readings(rows[1:], T0, T0 + 4 * Q, Q, has_battery=False, has_ev=False)
    assert s2.load_kw[3] == pytest.approx(0.1)


def test_assets_decode_and_errors() -> None:
    a = decode_assets({"location": {"lat": 52, "lon": 5}, "grid": {"max_import_kw": 10, "max_export_kw": 5},
                       "pv": [{"kwp": 3}, {"kwp": 2, "azimuth_deg": 90}]})  # fmt: skip
    assert a.pv_kwp == 5 and a.battery is None
    with pytest.raises(AssetsError, match="none"):
        decode_assets(None)
    with pytest.raises(AssetsError, match="lat"):
        decode_assets({"location": {"lat": 100, "lon": 5}, "grid": {"max_import_kw": 1, "max_export_kw": 1}})
    with pytest.raises(AssetsError, match="soc_min"):
        decode_assets(
            {"location": {"lat": 1, "lon": 1}, "grid": {"max_import_kw": 1, "max_export_kw": 1},
             "battery": {"capacity_kwh": 5, "max_charge_kw": 2, "max_discharge_kw": 2, "soc_min": 0.9, "soc_max": 0.5}}
        )  # fmt: skip


def test_the_grid_meter_the_zap_named_is_the_grid_never_a_busier_sub_meter() -> None:
    # A DSMR 4 grid meter (every 10 s: 2 readings here) and a Shelly on the heat pump reporting every second
    # (5 readings): by count the sub-meter would win and the planner would learn the heat pump as the house.
    rows = [(i, "meter", "meter", T0 + timedelta(seconds=10 * i), {"power_w": 2000.0}) for i in range(2)]
    rows += [(10 + i, "mq.heat_pump", "meter", T0 + timedelta(seconds=i), {"power_w": 600.0}) for i in range(5)]
    rows.sort(key=lambda r: r[3])
    named = bin_readings(rows, T0, T0 + 2 * Q, Q, has_battery=False, has_ev=False, grid_meter="meter")
    assert named.grid_kw[0] == pytest.approx(2.0) and named.load_kw[0] == pytest.approx(2.0)
    guessed = bin_readings(rows, T0, T0 + 2 * Q, Q, has_battery=False, has_ev=False)
    assert guessed.grid_kw[0] == pytest.approx(0.6)  # what an older Zap without roles gets: the busiest meter
    only_sub = [r for r in rows if r[1] != "meter"]
    silent = bin_readings(only_sub, T0, T0 + 2 * Q, Q, has_battery=False, has_ev=False, grid_meter="meter")
    assert np.isnan(silent.grid_kw[0]) and np.isnan(silent.load_kw[0])  # the grid meter said nothing: unknown
