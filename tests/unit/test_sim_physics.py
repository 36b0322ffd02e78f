"""The simulator behaves like hardware: dead time, ramp, rounding, noise, a late averaging meter; ideal by default.

Expected values are worked out from the stated dynamics (a 1.5 s dead time and a 3 kW/s ramp take a
3 kW step 1.5 + 1.0 s), not read off the simulator.
"""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime, timedelta

import pytest

from drivers.sim.physics import (
    DSMR5_METER,
    HYBRID_INVERTER,
    ActuatorDynamics,
    BatteryModel,
    MeterDynamics,
    SimSite,
)

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)
STEP = 0.1


def battery(dynamics: ActuatorDynamics) -> BatteryModel:
    return BatteryModel(capacity_wh=1e6, soc=0.5, dynamics=dynamics)


def run(b: BatteryModel, seconds: float) -> list[tuple[float, float]]:
    out, t = [], 0.0
    for _ in range(round(seconds / STEP)):
        b.step(STEP)
        t += STEP
        out.append((round(t, 6), b.power_w))
    return out


def test_ideal_by_default_a_write_acts_at_the_next_step() -> None:
    b = BatteryModel()
    b.command(2500.0)
    b.step(1.0)
    assert b.power_w == 2500.0


def test_dead_time_then_ramp() -> None:
    b = battery(ActuatorDynamics(delay_s=1.5, ramp_w_per_s=3000.0))
    b.command(3000.0)
    trace = dict(run(b, 4.0))
    assert trace[1.5] == 0.0  # still in the dead time
    assert trace[2.0] == pytest.approx(1500.0)  # half a second of a 3 kW/s ramp
    assert trace[2.5] == pytest.approx(3000.0)
    assert trace[4.0] == pytest.approx(3000.0)


def test_the_device_acts_in_its_resolution_and_the_register_reads_back_what_was_written() -> None:
    b = battery(ActuatorDynamics(setpoint_step_w=100.0, reading_step_w=10.0))
    b.command(1234.0)
    b.step(1.0)
    assert b.setpoint_w == 1234.0  # what a read-back of the setpoint register returns
    assert b.power_w == 1200.0
    assert b.measured_power_w() == 1200.0


def test_reading_noise_has_the_stated_spread() -> None:
    b = battery(ActuatorDynamics(noise_w=10.0))
    b.command(1000.0)
    b.step(1.0)
    readings = [b.measured_power_w() for _ in range(2000)]
    assert statistics.mean(readings) == pytest.approx(1000.0, abs=1.5)
    assert statistics.stdev(readings) == pytest.approx(10.0, rel=0.1)


def test_the_meter_reports_the_average_of_its_window_late() -> None:
    site = SimSite(load_scale=0.0, load_offset_w=0.0, pv_override_w=0.0, meter=MeterDynamics(window_s=1.0, delay_s=0.5))
    t = T0
    for _ in range(20):  # 2 s at 0 W
        site.step(t)
        t += timedelta(seconds=STEP)
    site.load_offset_w = 1000.0  # a kettle: +1 kW from now on
    switched = t
    for _ in range(10):
        site.step(t)
        t += timedelta(seconds=STEP)
    # Window [now - 1.5 s, now - 0.5 s]: at switched + 0.5 s nothing of the step; at + 1.0 s half; at + 1.5 s all.
    assert site.metered_grid_w(switched + timedelta(seconds=0.5)) == pytest.approx(0.0, abs=0.01)
    assert site.metered_grid_w(switched + timedelta(seconds=1.0)) == pytest.approx(500.0, abs=0.01)
    site.step(t)
    for _ in range(5):
        t += timedelta(seconds=STEP)
        site.step(t)
    assert site.metered_grid_w(switched + timedelta(seconds=1.5)) == pytest.approx(1000.0, abs=0.01)
    assert site.grid_w == 1000.0  # the truth is instant


def test_presets_are_realistic_and_the_dataclasses_refuse_nonsense() -> None:
    assert 1.0 <= HYBRID_INVERTER.delay_s <= 2.0 and 1000.0 <= HYBRID_INVERTER.ramp_w_per_s <= 10_000.0
    assert DSMR5_METER.window_s == 1.0  # DSMR 5: a telegram every second
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError):
            ActuatorDynamics(delay_s=bad)
        with pytest.raises(ValueError):
            MeterDynamics(window_s=bad)
    with pytest.raises(ValueError):
        ActuatorDynamics(ramp_w_per_s=0.0)
