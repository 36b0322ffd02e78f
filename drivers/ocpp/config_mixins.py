"""What the OCPP config models do beyond their keys, pydantic-free (see drivers/config_types.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from drivers.config_types import ChargerLimit, EvLimitsMixin

if TYPE_CHECKING:
    from drivers.config_structs import EvLimits


class OcppChargePointMixin(EvLimitsMixin):
    """A charge point's table holds its limits as flat keys: an `EvLimits` in all but name."""

    __slots__ = ()

    if TYPE_CHECKING:
        safe_current_a: float | None

    @property
    def limits(self) -> EvLimits:
        """The charger's limits as the one EV limit type: the config keeps them as flat keys of the charge
        point's table (a format in use), the envelope and the drivers take them as one `EvLimits`."""
        from drivers.config_structs import EvLimits  # the daemon's struct; that module imports this one

        return EvLimits(
            max_current_a=self.max_current_a,
            min_current_a=self.min_current_a,
            phases=1 if self.phases == 1 else 3,
            voltage_v=self.voltage_v,
        )

    @property
    def fallback_current_a(self) -> float:
        """What the charger falls back to without zapd: `safe_current_a`, else `min_current_a`."""
        return self.min_current_a if self.safe_current_a is None else self.safe_current_a


class OcppDeviceMixin:
    __slots__ = ()

    if TYPE_CHECKING:
        id: str
        charge_points: Sequence[Any]  # OcppChargePoint: the pydantic model or the daemon's struct

    def charger_limits(self) -> list[ChargerLimit]:
        return [(f"devices.{self.id}.charge_points.{cp.id}", cp.limits) for cp in self.charge_points]
