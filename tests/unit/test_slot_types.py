"""bench.slot_types: slot types and where their forecast errors meet the grid, on a hand-made slots CSV.

Hand-worked (hourly, import 0.30, export 0.05 EUR/kWh):
* idle, importing 1.0 kW as planned, the house came in at -0.8 kW (PV): error -1.8 kW ("less"); the grid goes
  from paying 0.30 to earning 0.04: -0.34 EUR; 0.8 kWh past zero, sold at 0.05: 0.04 EUR;
* idle, exporting 2.0 kW as planned, the house came in at +0.5 kW: error +2.5 kW ("more"); from earning 0.10 to
  paying 0.15: +0.25 EUR; 0.5 kWh past zero, bought at 0.30: 0.15 EUR;
* balancing (self-consumption), 0.5 kW more load than forecast: +0.15 EUR at the grid, nothing past zero
  counted (the plan exchanged nothing).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.slot_types import classify, main, slot_type

HEADER = (
    "ts,import_price,export_price,load_kw,pv_kw,load_forecast_kw,pv_forecast_kw,planned_battery_kw,battery_kw,"
    "grid_kw,soc,rung_intent\n"
)
ROWS = [
    "2023-01-01T00:00:00Z,0.30,0.05,0.2,1.0,1.0,0.0,0.0,0.8,0.0,0.5,plan/setpoint:up",
    "2023-01-01T01:00:00Z,0.30,0.05,1.0,0.5,0.5,2.5,0.0,-0.5,0.0,0.5,plan/setpoint:down",
    "2023-01-01T02:00:00Z,0.30,0.05,1.5,0.0,1.0,0.0,-1.0,-1.5,0.0,0.4,plan/self_consumption",
    "2023-01-01T03:00:00Z,0.30,0.05,1.5,0.0,nan,nan,nan,0.0,1.5,0.4,self_consumption/self_consumption",
]


def test_slot_types_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "slots.csv"
    path.write_text(HEADER + "\n".join(ROWS) + "\n")
    sums = classify(str(path))
    assert set(sums) == {"idle, import", "idle, export", "balancing"}  # the slot with no plan is left out
    imp, exp, bal = sums["idle, import"], sums["idle, export"], sums["balancing"]
    assert imp.slots == 1 and imp.less_kwh == pytest.approx(1.8) and imp.more_kwh == 0.0
    assert imp.less_eur == pytest.approx(-0.34) and imp.past_zero_kwh == pytest.approx(0.8)
    assert imp.past_zero_eur == pytest.approx(0.04)
    assert exp.more_kwh == pytest.approx(2.5) and exp.more_eur == pytest.approx(0.25)
    assert exp.past_zero_kwh == pytest.approx(0.5) and exp.past_zero_eur == pytest.approx(0.15)
    assert bal.more_kwh == pytest.approx(0.5) and bal.more_eur == pytest.approx(0.15) and bal.past_zero_kwh == 0.0
    assert main([str(path)]) == 0 and main([]) == 2


@pytest.mark.parametrize(
    ("battery_kw", "grid_kw", "expected"),
    [
        (-2.0, 0.5, "discharge, import"),
        (-2.0, -1.0, "discharge, export"),
        (3.0, 2.0, "charge, import"),
        (2.9, -0.2, "surplus charge"),
        (0.0, 1.0, "idle, import"),
        (0.0, -2.0, "idle, export"),
    ],
)
def test_slot_type_names(battery_kw: float, grid_kw: float, expected: str) -> None:
    assert slot_type(battery_kw, grid_kw, "plan/setpoint") == expected
