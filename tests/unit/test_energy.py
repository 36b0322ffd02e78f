"""Energy totals for Home Assistant's Energy dashboard (zapd/energy.py): integrated from power,
or from a lifetime register where a DER has one; never going down, across restarts too.
Expected values are plain physics (W × h), not numbers taken from the code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zapd.energy import ENERGY_WH, KV_KEY, MAX_GAP_S, EnergyTotals
from zapd.model import DerKind, Quality, Reading
from zapd.store import Store

T0 = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)


def _r(der: str, kind: DerKind, s: float, quality: Quality = Quality.GOOD, **values: float) -> Reading:
    return Reading(der_id=der, kind=kind, ts=T0 + timedelta(seconds=s), values=values, quality=quality)


def _feed(totals: EnergyTotals, der: str, kind: DerKind, power_w: float, start_s: float, seconds: float) -> None:
    for i in range(int(seconds / 10) + 1):
        totals.add(_r(der, kind, start_s + 10 * i, power_w=power_w))


def test_pv_power_integrates_to_kwh() -> None:
    t = EnergyTotals()
    t.loaded = True
    _feed(t, "inv.pv", DerKind.PV, 2000.0, 0, 1800)  # 2 kW for half an hour
    assert t.kwh("pv_wh") == pytest.approx(1.0)


def test_battery_charge_and_discharge_are_separate_totals() -> None:
    t = EnergyTotals()
    t.loaded = True
    _feed(t, "inv.battery", DerKind.BATTERY, 1000.0, 0, 1800)  # +1 kW (charging) for 30 min
    _feed(t, "inv.battery", DerKind.BATTERY, -500.0, 1810, 3600)  # 0.5 kW out for 1 h
    # The 10 s between the two runs still held +1 kW: 1000 W × 10 s more charged.
    assert t.wh["battery_charge_wh"] == pytest.approx(500.0 + 1000 * 10 / 3600)
    assert t.wh["battery_discharge_wh"] == pytest.approx(500.0)
    assert t.wh["pv_wh"] == 0 and t.wh["ev_wh"] == 0


def test_a_gap_is_not_filled_in() -> None:
    t = EnergyTotals()
    t.add(_r("pv", DerKind.PV, 0, power_w=3000.0))
    t.add(_r("pv", DerKind.PV, MAX_GAP_S + 1, power_w=3000.0))  # the device was stale: unknown energy
    t.add(_r("pv", DerKind.PV, MAX_GAP_S + 61, power_w=3000.0))
    assert t.wh["pv_wh"] == pytest.approx(3000 * 60 / 3600)


def test_register_is_used_where_there_is_one_and_a_reset_is_not_subtracted() -> None:
    t = EnergyTotals()
    kind = DerKind.EV_CHARGER
    for s, wh in ((0, 1000.0), (60, 1050.0), (120, 1020.0), (180, 1070.0)):  # 1020: the counter was reset
        t.add(_r("wallbox", kind, s, power_w=11000.0, **{ENERGY_WH: wh}))
    assert t.wh["ev_wh"] == pytest.approx(50.0 + 50.0)  # the register, not 11 kW × 3 min = 550 Wh
    t.add(_r("wallbox", kind, 240, **{ENERGY_WH: 1070.0 + 1e6}))  # 1 MWh in a minute: a scale error
    assert t.wh["ev_wh"] == pytest.approx(100.0) and t.refused == 2  # the reset and the jump


def test_bad_and_nonfinite_readings_do_not_count() -> None:
    t = EnergyTotals()
    t.add(_r("pv", DerKind.PV, 0, power_w=1000.0))
    t.add(_r("pv", DerKind.PV, 60, Quality.BAD))
    t.add(_r("pv", DerKind.PV, 120, power_w=float("nan")))
    t.add(_r("pv", DerKind.PV, 180, power_w=float("inf")))
    t.add(_r("pv", DerKind.PV, 240, power_w=1000.0))
    t.add(_r("pv", DerKind.PV, 300, power_w=-50.0))  # night noise: PV does not consume into the total
    t.add(_r("pv", DerKind.PV, 360, power_w=0.0))
    assert t.wh["pv_wh"] == pytest.approx(1000 * 60 / 3600)
    t.add(_r("meter", DerKind.METER, 400, power_w=5000.0))
    assert sum(t.wh.values()) == pytest.approx(1000 * 60 / 3600)


def test_nothing_is_shown_before_the_stored_totals_are_back() -> None:
    t = EnergyTotals()
    t.add(_r("pv", DerKind.PV, 0, power_w=1000.0))
    t.add(_r("pv", DerKind.PV, 60, power_w=1000.0))
    assert t.kwh("pv_wh") is None  # publishing 0.0 first would look like a reset to Home Assistant


async def test_totals_survive_a_restart_and_never_go_down(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "zapd.sqlite")
    try:
        first = EnergyTotals()
        await first.load(store)
        _feed(first, "pv", DerKind.PV, 3600.0, 0, 600)  # 3.6 kW for 10 min = 600 Wh
        assert await first.save(store)
        second = EnergyTotals()
        _feed(second, "pv", DerKind.PV, 3600.0, 0, 60)  # counted before the load: kept if larger
        await second.load(store)
        assert second.kwh("pv_wh") == pytest.approx(0.6)
        await store.kv_set(KV_KEY, '{"pv_wh": "lots", "ev_wh": -5}')  # damaged: start from zero, say so
        third = EnergyTotals()
        await third.load(store)
        assert third.kwh("pv_wh") == 0.0 and third.loaded
    finally:
        await store.close()


@given(st.lists(st.tuples(st.floats(-1e4, 1e4), st.floats(0.0, 400.0)), max_size=60))
def test_totals_never_decrease(steps: list[tuple[float, float]]) -> None:
    t = EnergyTotals()
    s = 0.0
    before = dict(t.wh)
    for power, dt in steps:
        s += dt
        for der, kind in (("b", DerKind.BATTERY), ("p", DerKind.PV), ("e", DerKind.EV_CHARGER)):
            t.add(
                _r(der, kind, s, power_w=power, **({ENERGY_WH: abs(power) * 10} if kind is DerKind.EV_CHARGER else {}))
            )
        assert all(t.wh[k] >= before[k] for k in before)
        before = dict(t.wh)
