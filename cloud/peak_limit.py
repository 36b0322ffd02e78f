"""The import limit a plan slot carries where the site's tariff bills a capacity (demand) charge.

A capacity charge bills each calendar month's highest 15-minute import. The planner's LP sees import up to
the month's peak so far as free (it is paid already), so it may plan up to that peak, but never above it
unless a higher peak pays for itself. Without a limit at the edge, a forecast error (more load than
forecast while the plan imports) sets a new peak the plan did not choose, and every later plan treats that
higher peak as free: the peak ratchets up month by month (docs/cloud-planning.md, "capacity charge").
So each slot's `grid_import_limit_w` is the higher of the month's billed peak so far and the slot's planned
import: the edge's envelope then stops charging, or discharges within the reserve, to hold the site under
it (zapd/envelope.py `clamp_batteries`: a negative fuse headroom discharges), and the plan's own choices
stay possible.
"""

from __future__ import annotations

import math
from typing import Final

# Plan limits are sent in whole steps of this many watts, rounded up (never below what the plan needs).
LIMIT_STEP_W: Final = 100.0


def round_up_w(power_w: float) -> float:
    """`power_w` rounded up to the next LIMIT_STEP_W (a limit the plan itself must never exceed)."""
    return math.ceil(max(0.0, power_w) / LIMIT_STEP_W) * LIMIT_STEP_W


def peak_import_limit_w(peak_so_far_kw: float, planned_import_kw: float, connection_w: float) -> float:
    """max(billed peak so far, planned import), rounded up, never above the connection's limit (W).

    Inputs that are not finite numbers leave the connection's limit (no tightening on a value we cannot read).
    """
    if not (math.isfinite(peak_so_far_kw) and math.isfinite(planned_import_kw)):
        return connection_w
    return min(connection_w, round_up_w(max(peak_so_far_kw, planned_import_kw, 0.0) * 1000.0))


__all__ = ["LIMIT_STEP_W", "peak_import_limit_w", "round_up_w"]
