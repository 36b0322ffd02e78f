"""OCPP 1.6 MeterValues → our reading keys, every number checked (OCPP 1.6 §7.31 SampledValue).

A SampledValue is a *string* with optional measurand (default Energy.Active.Import.Register),
unit (default per measurand), phase, location (default Outlet), context and format. Chargers in
the field put their meter at location Outlet, Body (tests/fixtures/ocpp) or Inlet: all count. We keep the
measurands the controller and the cloud use, convert units, and refuse what is not a finite number
in a physical range: the caller counts and logs each refusal, the rest of the message still counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from zapd.model import PHASE_CURRENT_A, POWER_W, SOC

ENERGY_WH = "energy_wh"  # the charger's cumulative import register (never reset)
CURRENT_A = "current_a"  # current per phase when the charger does not say which phase

# Physical bounds, not configured limits: before zapd's first profile a charger may draw its own
# maximum, which can be above the installer's `max_current_a`; AC charging stops well below these.
MAX_PHASE_CURRENT_A = 100.0
MAX_ENERGY_WH = 1e10  # 10 GWh: no wallbox register gets there
MEASURANDS = ("Power.Active.Import", "Energy.Active.Import.Register", "Current.Import", "SoC")

_SCALE = {
    "Energy.Active.Import.Register": {"Wh": 1.0, "kWh": 1000.0},
    "Power.Active.Import": {"W": 1.0, "kW": 1000.0},
    "Current.Import": {"A": 1.0},
    "SoC": {"Percent": 1.0},
}
_DEFAULT_UNIT = {
    "Energy.Active.Import.Register": "Wh",
    "Power.Active.Import": "W",
    "Current.Import": "A",
    "SoC": "Percent",
}
_PHASE_INDEX = {"L1": 0, "L2": 1, "L3": 2, "L1-N": 0, "L2-N": 1, "L3-N": 2}


@dataclass
class ParsedMeterValues:
    values: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # refused samples: counted, logged once
    ignored: int = 0  # samples we do not use (other measurands, signed data, inlet meters)
    timestamps: list[str] = field(default_factory=list)


def parse_meter_values(meter_value: object, *, voltage_v: float) -> ParsedMeterValues:
    """Later meterValue entries win: a message may carry several timestamps, the newest is last."""
    out = ParsedMeterValues()
    if not isinstance(meter_value, Sequence) or isinstance(meter_value, str):
        out.problems.append("meterValue is not a list")
        return out
    max_power_w = MAX_PHASE_CURRENT_A * 3 * voltage_v
    for entry in meter_value:
        if not isinstance(entry, Mapping):
            out.problems.append("meterValue entry is not an object")
            continue
        ts = entry.get("timestamp")
        if isinstance(ts, str):
            out.timestamps.append(ts)
        phase_power: dict[int, float] = {}
        # the ocpp library hands handlers snake_case keys; accept the wire's camelCase too
        samples = entry.get("sampled_value", entry.get("sampledValue"))
        if not isinstance(samples, Sequence) or isinstance(samples, str):
            out.problems.append("sampledValue is not a list")
            continue
        for sample in samples:
            _one_sample(sample, out, phase_power, max_power_w)
        if POWER_W not in out.values and phase_power:
            out.values[POWER_W] = sum(phase_power.values())
    return out


def _one_sample(sample: Any, out: ParsedMeterValues, phase_power: dict[int, float], max_power_w: float) -> None:
    if not isinstance(sample, Mapping):
        out.problems.append("sampledValue entry is not an object")
        return
    measurand = sample.get("measurand", "Energy.Active.Import.Register")
    location = sample.get("location", "Outlet")
    if measurand not in _SCALE or sample.get("format", "Raw") != "Raw":
        out.ignored += 1
        return
    if location == "EV" and measurand != "SoC":
        # Only the car's SoC comes from the EV; real chargers report their meter as Outlet, Body or Inlet.
        out.ignored += 1
        return
    unit = sample.get("unit", _DEFAULT_UNIT[measurand])
    scale = _SCALE[measurand].get(unit)
    if scale is None:
        out.problems.append(f"{measurand}: unit {unit!r} not understood")
        return
    raw = sample.get("value")
    try:
        value = float(raw) * scale if isinstance(raw, str) else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        out.problems.append(f"{measurand}: value {raw!r} is not a finite number")
        return
    phase = sample.get("phase")
    index = _PHASE_INDEX.get(phase) if isinstance(phase, str) else None
    if phase is not None and index is None:
        out.ignored += 1  # N, L1-L2 ...: not a load phase
        return
    problem = _store(measurand, value, index, out.values, phase_power, max_power_w)
    if problem:
        out.problems.append(problem)


def _store(
    measurand: str,
    value: float,
    index: int | None,
    values: dict[str, float],
    phase_power: dict[int, float],
    max_power_w: float,
) -> str | None:
    if measurand == "Energy.Active.Import.Register":
        if index is not None:
            return None  # per-phase registers add nothing the total does not say
        if not 0.0 <= value <= MAX_ENERGY_WH:
            return f"energy {value:g} Wh outside 0..{MAX_ENERGY_WH:g}"
        values[ENERGY_WH] = value
    elif measurand == "Power.Active.Import":
        if not 0.0 <= value <= max_power_w:
            return f"power {value:g} W outside 0..{max_power_w:g}"
        if index is None:
            values[POWER_W] = value
        else:
            phase_power[index] = value
    elif measurand == "Current.Import":
        if not 0.0 <= value <= MAX_PHASE_CURRENT_A:
            return f"current {value:g} A outside 0..{MAX_PHASE_CURRENT_A:g}"
        values[CURRENT_A if index is None else PHASE_CURRENT_A[index]] = value
    else:  # SoC
        if not 0.0 <= value <= 100.0:
            return f"SoC {value:g} % outside 0..100"
        values[SOC] = value / 100.0
    return None


def parse_meter_value_number(raw: object, what: str) -> tuple[float | None, str | None]:
    """meterStart / meterStop (integer Wh): a number in range, or why not."""
    if isinstance(raw, bool) or not isinstance(raw, int | float | Decimal):
        return None, f"{what} {raw!r} is not a number"
    value = float(raw)
    if not math.isfinite(value) or not 0.0 <= value <= MAX_ENERGY_WH:
        return None, f"{what} {raw!r} outside 0..{MAX_ENERGY_WH:g} Wh"
    return value, None
