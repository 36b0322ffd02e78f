"""OCPP 1.6 smart charging profiles (§3.13, §7.8): how zapd's current becomes what the charger enforces.

Two layers, so a dead zapd leaves a safe current behind without any help from the charger's vendor:

* **baseline**: TxDefaultProfile, connector 0 (every connector), stack level 0, `Relative`, no end,
  limit = the configured safe current. Sent at every (re)connect; the charger keeps it for ever.
* **live**: stack level 1, `Relative` (no clock in the schedule), limit = the controller's current,
  `validTo` = now + profile_validity_s *in the charger's clock*. TxProfile on a running transaction,
  else TxDefaultProfile on the connector (the next session starts at the current zapd wants). zapd
  re-sends it well before validTo; once it stops, the charger drops back to the baseline.

The higher stack level wins while valid (§3.13.2); a profile with the same purpose and stack level
replaces the older one (§5.16.2), so re-sends never pile up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

RateUnit = Literal["A", "W"]
BASELINE_STACK = 0
LIVE_STACK = 1
BASELINE_PROFILE_ID = 1
_LIVE_DEFAULT_ID = 100  # + connector
_LIVE_TX_ID = 200  # + connector


def rfc3339(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def limit_in_unit(current_a: float, unit: RateUnit, phases: int, voltage_v: float) -> float:
    """The schedule's limit: A per phase rounded down to 0.1 A, or the same in W (never above what was asked)."""
    if unit == "A":
        return math.floor(current_a * 10 + 1e-9) / 10
    return math.floor(current_a * phases * voltage_v)


def _schedule(limit: float, unit: RateUnit, number_phases: int | None) -> dict[str, Any]:
    period: dict[str, Any] = {"startPeriod": 0, "limit": limit}
    if number_phases is not None:
        period["numberPhases"] = number_phases
    return {"chargingRateUnit": unit, "chargingSchedulePeriod": [period]}


def baseline_profile(limit: float, unit: RateUnit) -> dict[str, Any]:
    return {
        "chargingProfileId": BASELINE_PROFILE_ID,
        "stackLevel": BASELINE_STACK,
        "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": _schedule(limit, unit, None),
    }


def live_profile(
    connector: int,
    limit: float,
    unit: RateUnit,
    *,
    valid_to: datetime,
    transaction_id: int | None,
    number_phases: int | None,
) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "chargingProfileId": (_LIVE_TX_ID if transaction_id is not None else _LIVE_DEFAULT_ID) + connector,
        "stackLevel": LIVE_STACK,
        "chargingProfilePurpose": "TxProfile" if transaction_id is not None else "TxDefaultProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": _schedule(limit, unit, number_phases),
        "validTo": rfc3339(valid_to),
    }
    if transaction_id is not None:
        profile["transactionId"] = transaction_id
    return profile


def composite_limit(schedule: object, unit: RateUnit, phases: int, voltage_v: float) -> float | None:
    """The limit a GetCompositeSchedule answer applies now, in A per phase; None if it says nothing usable."""
    if not isinstance(schedule, Mapping):
        return None
    periods = schedule.get("chargingSchedulePeriod", schedule.get("charging_schedule_period"))
    got_unit = schedule.get("chargingRateUnit", schedule.get("charging_rate_unit", unit))
    if not isinstance(periods, Sequence) or not periods or got_unit not in ("A", "W"):
        return None
    now = [p for p in periods if isinstance(p, Mapping) and _num(p.get("startPeriod", p.get("start_period"))) == 0]
    if not now:
        return None
    limit = _num(now[0].get("limit"))
    if limit is None or limit < 0:
        return None
    return limit if got_unit == "A" else limit / (phases * voltage_v)


def _num(x: object) -> float | None:
    """The ocpp library decodes JSON numbers with a fraction as Decimal."""
    if isinstance(x, bool) or not isinstance(x, int | float | Decimal):
        return None
    value = float(x)
    return value if math.isfinite(value) else None
