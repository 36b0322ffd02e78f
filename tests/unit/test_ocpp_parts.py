"""The OCPP driver's pure parts: MeterValues parsing, the profiles it builds, the config example block."""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.ocpp.config import OcppDevice
from drivers.ocpp.meter_values import ENERGY_WH, parse_meter_values
from drivers.ocpp.profiles import baseline_profile, composite_limit, limit_in_unit
from zapd.model import PHASE_CURRENT_A, POWER_W, SOC

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "ocpp" / "meter_values_body_location.json"


def test_a_recorded_charger_message_with_its_meter_in_the_body() -> None:
    """Recorded in the field (see tests/fixtures/ocpp/README.md): location Body, phases L1-N.., power in kW."""
    payload = json.loads(FIXTURE.read_text())
    parsed = parse_meter_values(payload["meterValue"], voltage_v=230)
    assert parsed.problems == []
    assert parsed.values[ENERGY_WH] == 12.0
    assert parsed.values[POWER_W] == 0.0
    assert [parsed.values[k] for k in PHASE_CURRENT_A] == [0.0, 0.0, 0.0]
    assert parsed.ignored == 3  # the three voltages
    assert parsed.timestamps == ["2025-02-21T07:26:31Z"]


def test_defaults_of_a_sampled_value_follow_the_spec() -> None:
    """§7.45: no measurand = Energy.Active.Import.Register, no unit = Wh."""
    parsed = parse_meter_values([{"sampledValue": [{"value": "1234.5"}]}], voltage_v=230)
    assert parsed.values == {ENERGY_WH: 1234.5}


def test_per_phase_power_adds_up_and_soc_is_a_fraction() -> None:
    samples = [
        {"value": "2.3", "measurand": "Power.Active.Import", "phase": "L1", "unit": "kW"},
        {"value": "2300", "measurand": "Power.Active.Import", "phase": "L2", "unit": "W"},
        {"value": "55", "measurand": "SoC", "location": "EV", "unit": "Percent"},
        {"value": "999", "measurand": "Temperature", "unit": "Celsius"},
        {"value": "0A1B", "measurand": "Power.Active.Import", "format": "SignedData"},
    ]
    parsed = parse_meter_values([{"sampledValue": samples}], voltage_v=230)
    assert parsed.values[POWER_W] == pytest.approx(4600)
    assert parsed.values[SOC] == pytest.approx(0.55)
    assert parsed.ignored == 2 and parsed.problems == []


@given(st.one_of(st.text(max_size=12), st.sampled_from(["nan", "inf", "-inf", "-5", "1e308", "1e12"])))
def test_no_text_becomes_a_value_outside_the_physical_range(text: str) -> None:
    samples = [
        {"value": text, "measurand": m, "unit": u}
        for m, u in (("Power.Active.Import", "W"), ("Current.Import", "A"), ("SoC", "Percent"))
    ] + [{"value": text, "measurand": "Energy.Active.Import.Register", "unit": "kWh"}]
    parsed = parse_meter_values([{"sampledValue": samples}], voltage_v=230)
    v = parsed.values
    assert all(math.isfinite(x) for x in v.values())
    assert 0 <= v.get(POWER_W, 0) <= 100 * 3 * 230 and 0 <= v.get("current_a", 0) <= 100
    assert 0 <= v.get(SOC, 0) <= 1 and 0 <= v.get(ENERGY_WH, 0) <= 1e10
    assert len(parsed.problems) + len(v) == 4  # each sample either counts or is refused with a reason


@pytest.mark.parametrize("bad", [None, "x", [1], [{"sampledValue": "x"}], [{"sampledValue": [7]}]])
def test_malformed_meter_value_shapes_are_problems_not_crashes(bad: object) -> None:
    parsed = parse_meter_values(bad, voltage_v=230)
    assert parsed.values == {} and parsed.problems


def test_limits_round_down_and_watts_cover_the_phases() -> None:
    assert limit_in_unit(10.07, "A", 3, 230) == 10.0
    assert limit_in_unit(10.0, "W", 3, 230) == 6900
    assert limit_in_unit(16.0, "W", 1, 230) == 3680
    periods = baseline_profile(6.0, "A")["chargingSchedule"]["chargingSchedulePeriod"]
    assert periods == [{"startPeriod": 0, "limit": 6.0}]


def test_composite_schedule_in_watts_is_read_back_in_amps() -> None:
    schedule = {"chargingRateUnit": "W", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 6900}]}
    assert composite_limit(schedule, "W", 3, 230) == pytest.approx(10.0)
    assert composite_limit({"chargingSchedulePeriod": []}, "A", 3, 230) is None
    assert composite_limit({"chargingSchedulePeriod": [{"startPeriod": 0, "limit": "x"}]}, "A", 3, 230) is None


def test_the_commented_example_in_zapd_example_toml_validates() -> None:
    text = (ROOT / "config" / "zapd.example.toml").read_text()
    block = re.search(r'^# \[\[devices\]\]\n# driver = "ocpp"\n.*?(?=\n\n)', text, re.S | re.M)
    assert block is not None
    lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in block.group(0).splitlines()]
    data = tomllib.loads("\n".join(lines))
    device = OcppDevice.model_validate(data["devices"][0])
    assert device.charge_points[0].fallback_current_a == 6


def test_the_chargers_clock_offset_is_the_median_of_its_recent_timestamps() -> None:
    from datetime import UTC, datetime, timedelta

    from drivers.ocpp.charge_point import ChargerClock

    clock = ChargerClock()
    assert clock.offset_s == 0.0  # nothing known: our clock
    now = datetime.now(UTC)
    for _ in range(5):
        clock.observe((now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    clock.observe((now - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ"))  # one replayed offline sample
    clock.observe("not a time")
    assert abs(clock.offset_s - 3600) < 5
    near = ChargerClock()
    near.observe((now + timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert near.offset_s == 0.0  # under 30 s: taken as in sync
