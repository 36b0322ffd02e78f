"""The checks every EV charger driver makes on an EvCurrent before it goes on the wire.

The envelope already clamps at site level; this keeps a bad command (NaN, under the IEC 61851
minimum, more phases than wired) off the wire whatever produced it. One copy for every driver.
"""

from __future__ import annotations

import math

from drivers.config_structs import EvLimits
from zapd.model import EvCurrent


def current_refusal(command: EvCurrent, limits: EvLimits) -> str | None:
    """Why the current is outside the charger's limits (not a number, not 0 A nor min..max A), or None."""
    a = command.current_a
    if not math.isfinite(a):
        return f"current {a} A is not a number"
    if a != 0.0 and not limits.min_current_a <= a <= limits.max_current_a:
        return f"current {a:g} A outside 0 or {limits.min_current_a:g}..{limits.max_current_a:g} A"
    return None


def ev_current_refusal(
    command: EvCurrent, limits: EvLimits, *, can_switch_phases: bool, no_switch_reason: str
) -> str | None:
    """Why the charger must not get this command, or None: 0 A (pause) or min..max A, on the phases it has."""
    if (why := current_refusal(command, limits)) is not None:
        return why
    if command.phases not in (1, 3) or command.phases > limits.phases:
        return f"{command.phases} phase(s) requested, charger set up for {limits.phases}"
    if command.phases != limits.phases and not can_switch_phases:
        return no_switch_reason
    return None
