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
# A plan's import this close above the peak is the peak (LP feasibility noise; far below a meter's resolution).
PEAK_TOLERANCE_W: Final = 1.0


def round_up_w(power_w: float) -> float:
    """`power_w` rounded up to the next LIMIT_STEP_W (a limit the plan itself must never exceed)."""
    return math.ceil(max(0.0, power_w) / LIMIT_STEP_W) * LIMIT_STEP_W


def peak_import_limit_w(peak_so_far_kw: float, planned_import_kw: float, connection_w: float) -> float:
    """max(billed peak so far, planned import) in whole watts, never above the connection's limit (W).

    Not rounded up to LIMIT_STEP_W: every watt of slack above the billed peak is a watt a forecast error may
    add to it, and the next plan's peak so far is that higher value (measured: the Ausgrid months' peaks rose
    in 100 W steps, a planned night charge at the peak so far each time, the edge filling the rounding with
    the load's error). A plan import within PEAK_TOLERANCE_W of the peak (the solver's noise) is the peak.
    Inputs that are not finite numbers leave the connection's limit (no tightening on a value we cannot read).
    """
    if not (math.isfinite(peak_so_far_kw) and math.isfinite(planned_import_kw)):
        return connection_w
    need_w = max(peak_so_far_kw, planned_import_kw, 0.0) * 1000.0
    return min(connection_w, float(math.ceil(need_w - PEAK_TOLERANCE_W)))


__all__ = ["LIMIT_STEP_W", "PEAK_TOLERANCE_W", "peak_import_limit_w", "round_up_w"]
