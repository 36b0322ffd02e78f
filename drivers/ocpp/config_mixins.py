"""What the OCPP config models do beyond their keys, pydantic-free (see drivers/config_types.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from drivers.config_types import ChargerLimit


class OcppChargePointMixin:
    __slots__ = ()

    if TYPE_CHECKING:
        min_current_a: float
        safe_current_a: float | None

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
        return [(f"devices.{self.id}.charge_points.{cp.id}", cp.max_current_a, cp.phases) for cp in self.charge_points]
