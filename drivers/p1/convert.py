"""From a parsed DSMR telegram to zapd's normalized meter values.

Kept apart from the I/O so every national variant's quirks (units, missing registers,
unsigned currents) can be tested on recorded telegrams without a port.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from drivers.p1.lib import telegram_specifications as specs
from zapd.model import EXPORT_WH, IMPORT_WH, PHASE_CURRENT_A, POWER_W

# dsmr_version string (the names dsmr_parser's own clients accept) → telegram specification.
SPECIFICATIONS: dict[str, dict[str, Any]] = {
    "2.2": specs.V2_2,
    "4": specs.V4,
    "4+": specs.V5,
    "5": specs.V5,
    "5B": specs.BELGIUM_FLUVIUS,
    "5L": specs.LUXEMBOURG_SMARTY,
    "5S": specs.SWEDEN,
    "Q3D": specs.Q3D,
    "ISKRA_IE": specs.ISKRA_IE,
    "5EONHU": specs.EON_HUNGARY,
    "MSn": specs.MSN,
    "SAGEMCOM_T210_D_R": specs.SAGEMCOM_T210_D_R,
}

_SCALE = {"kw": 1000, "w": 1, "kwh": 1000, "wh": 1, "a": 1}


def specification_for(dsmr_version: str, *, encrypted: bool = False) -> dict[str, Any]:
    """The spec for a version; Luxembourg meters with a key send the encrypted (MSn) framing."""
    if encrypted and dsmr_version == "5L":
        return SPECIFICATIONS["MSn"]
    try:
        return SPECIFICATIONS[dsmr_version]
    except KeyError:
        known = ", ".join(sorted(SPECIFICATIONS))
        raise ValueError(f"unknown dsmr_version {dsmr_version!r} (known: {known})") from None


def _number(telegram: Any, name: str) -> Decimal | None:
    """A register in base units (W, Wh, A), or None when the meter does not send it.

    Decimal until the end, so 1.001 kWh + 1.001 kWh is exactly 2002 Wh.
    """
    obj = getattr(telegram, name, None)
    if obj is None:
        return None
    value = getattr(obj, "value", None)
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        return None
    unit = str(getattr(obj, "unit", "") or "").lower()
    return Decimal(value) * _SCALE.get(unit, 1)


def _sum(telegram: Any, names: list[str]) -> Decimal | None:
    parts = [v for v in (_number(telegram, n) for n in names) if v is not None]
    return sum(parts, Decimal(0)) if parts else None


def meter_values(telegram: Any) -> dict[str, float]:
    """power_w (+ import), import_wh, export_wh and signed per-phase currents that the telegram has.

    Raises ValueError when there is no power at all: a reading without it is useless to the
    controller and must not look fresh.
    """
    used = _number(telegram, "CURRENT_ELECTRICITY_USAGE")
    delivered = _number(telegram, "CURRENT_ELECTRICITY_DELIVERY")
    if used is None and delivered is None:
        phase_pos = _sum(telegram, [f"INSTANTANEOUS_ACTIVE_POWER_L{i}_POSITIVE" for i in (1, 2, 3)])
        phase_neg = _sum(telegram, [f"INSTANTANEOUS_ACTIVE_POWER_L{i}_NEGATIVE" for i in (1, 2, 3)])
        if phase_pos is None and phase_neg is None:
            raise ValueError("telegram has no active power")
        used, delivered = phase_pos, phase_neg
    values: dict[str, float] = {POWER_W: float((used or 0) - (delivered or 0))}

    # Tariff registers when the meter has them (NL/BE), else the totals (SE, LU, Q3D).
    imp = _sum(telegram, [f"ELECTRICITY_USED_TARIFF_{i}" for i in (1, 2, 3, 4)])
    if imp is None:
        imp = _number(telegram, "ELECTRICITY_IMPORTED_TOTAL")
    exp = _sum(telegram, [f"ELECTRICITY_DELIVERED_TARIFF_{i}" for i in (1, 2, 3, 4)])
    if exp is None:
        exp = _number(telegram, "ELECTRICITY_EXPORTED_TOTAL")
    if imp is not None:
        values[IMPORT_WH] = float(imp)
    if exp is not None:
        values[EXPORT_WH] = float(exp)

    for i, key in enumerate(PHASE_CURRENT_A, start=1):
        current = _number(telegram, f"INSTANTANEOUS_CURRENT_L{i}")
        if current is None:
            continue
        # Meters print current unsigned; the phase's export register gives the direction.
        pos = _number(telegram, f"INSTANTANEOUS_ACTIVE_POWER_L{i}_POSITIVE")
        neg = _number(telegram, f"INSTANTANEOUS_ACTIVE_POWER_L{i}_NEGATIVE")
        exporting = neg is not None and neg > (pos or 0)
        values[key] = float(-abs(current) if exporting else abs(current))
    return values
