"""The checks every EV charger driver makes on an EvCurrent before it goes on the wire.

The envelope already clamps at site level; this keeps a bad command (NaN, under the IEC 61851
minimum, more phases than wired) off the wire whatever produced it. One copy for every driver.
"""

from __future__ import annotations

import math

from zapd.model import EvCurrent


def ev_current_refusal(
    command: EvCurrent,
    *,
    min_current_a: float,
    max_current_a: float,
    phases: int,
    can_switch_phases: bool,
    no_switch_reason: str,
) -> str | None:
    """Why the charger must not get this command, or None: 0 A (pause) or min..max A, on the phases it has."""
    a = command.current_a
    if not math.isfinite(a):
        return f"current {a} A is not a number"
    if a != 0.0 and not min_current_a <= a <= max_current_a:
        return f"current {a:g} A outside 0 or {min_current_a:g}..{max_current_a:g} A"
    if command.phases not in (1, 3) or command.phases > phases:
        return f"{command.phases} phase(s) requested, charger set up for {phases}"
    if command.phases != phases and not can_switch_phases:
        return no_switch_reason
    return None
