"""Plausible ranges of every number a reading, a plan or a command may carry.

One table for the whole system: the drivers' guard (drivers/api.py `ReadingGuard`) turns a
reading with a value outside it into a bad reading (the DER is unknown), the envelope treats
such an input as unknown, the telemetry writer stores nothing outside it, and the wire
(cloud_sync/wire.py `check_batch`, `check_plan`) refuses it on both sides. Because the Zap and
the cloud test with the same function, nothing the Zap stores can be refused by the cloud for
its numbers. The ranges are deliberately wide (a house is kilowatts, the bound is 10 MW): they
catch garbage (NaN, ±Inf, a scale factor gone wrong, a unit mix-up by orders of magnitude),
not unusual sites.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final, Literal

MAX_POWER_W: Final = 1e7  # |W|: 10 MW, far above any site behind one fuse
MAX_ENERGY_WH: Final = 1e12  # cumulative counters: 1 TWh
MAX_CURRENT_A: Final = 1e4  # |A| per phase
MAX_VOLTAGE_V: Final = 1e5
MAX_FREQUENCY_HZ: Final = 1e3
MAX_OTHER: Final = 1e12  # any other value key a driver adds (its unit is not known here)

# Upper bounds of the config's keys (zapd/config.py, drivers/*/config.py) beyond the powers above:
# values no real site reaches, so a typo by orders of magnitude or `inf` is refused at `config check`.
MAX_CAPACITY_WH: Final = 1e8  # a battery's usable capacity: 100 MWh (a grid-scale plant, not a site)
MAX_RETENTION_MB: Final = 65_536.0  # outbox budget in MiB: 64 GiB, more than a gateway's storage
MAX_SCALE: Final = 1e6  # |multiplier| on an MQTT reading after its unit conversion

# Timestamps the system can have produced: nothing before this (a gateway without a real-time
# clock boots in 1970) and nothing past this (a clock gone wild). The cloud may be stricter
# around its own clock; these static bounds are the part both sides can check alike.
MIN_TS: Final = datetime(2020, 1, 1, tzinfo=UTC)
MAX_TS: Final = datetime(2100, 1, 1, tzinfo=UTC)

Reason = Literal["nonfinite", "out_of_range"]

# Exact keys first, then suffixes: the well-known keys of zapd/model.py and the unit suffixes
# drivers use for the rest (W, Wh, A, V, Hz).
_EXACT: Final[Mapping[str, tuple[float, float]]] = {
    "soc": (0.0, 1.0),
    "connected": (0.0, 1.0),
    "charging": (0.0, 1.0),
}
_SUFFIX: Final[tuple[tuple[str, tuple[float, float]], ...]] = (
    ("_wh", (0.0, MAX_ENERGY_WH)),
    ("_w", (-MAX_POWER_W, MAX_POWER_W)),
    ("_a", (-MAX_CURRENT_A, MAX_CURRENT_A)),
    ("_v", (0.0, MAX_VOLTAGE_V)),
    ("_hz", (0.0, MAX_FREQUENCY_HZ)),
)


def value_range(key: str) -> tuple[float, float]:
    """The closed interval a value named `key` must lie in."""
    exact = _EXACT.get(key)
    if exact is not None:
        return exact
    for suffix, bounds in _SUFFIX:
        if key.endswith(suffix):
            return bounds
    return (-MAX_OTHER, MAX_OTHER)


def check_value(key: str, value: float) -> Reason | None:
    """None when `value` is a plausible `key`, else why not."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return "nonfinite"
    lo, hi = value_range(key)
    return None if lo <= value <= hi else "out_of_range"


def bad_values(values: Mapping[str, float]) -> dict[str, Reason]:
    """Every key of `values` whose value is not plausible, with the reason."""
    out: dict[str, Reason] = {}
    for key, value in values.items():
        reason = check_value(key, value)
        if reason is not None:
            out[key] = reason
    return out


def check_ts(ts: datetime) -> str | None:
    """None when `ts` is an aware timestamp inside [MIN_TS, MAX_TS), else why not."""
    if ts.tzinfo is None or ts.utcoffset() is None:
        return "timestamp without a UTC offset"
    if not MIN_TS <= ts < MAX_TS:
        return f"timestamp {ts.isoformat()} outside {MIN_TS:%Y}..{MAX_TS:%Y}"
    return None


def known(value: float | None, lo: float = -MAX_POWER_W, hi: float = MAX_POWER_W) -> float | None:
    """`value` when it is a finite number in [lo, hi], else None (unknown): the envelope's input filter."""
    if value is None or not math.isfinite(value) or not lo <= value <= hi:
        return None
    return float(value)


def finite_or(value: float | None, default: float) -> float:
    """`value` when it is finite, else `default` (a limit that is not a number falls back to the safe one)."""
    return float(value) if value is not None and math.isfinite(value) else default
