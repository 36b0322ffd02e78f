"""What the Modbus config models do beyond their keys, pydantic-free (see drivers/config_types.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.config_types import MeterDer, MeterRole


class SunSpecMeterMixin:
    """A SunSpec inverter that may carry a meter (`has_meter`): its DER is `<id>.meter`."""

    __slots__ = ()

    if TYPE_CHECKING:
        id: str
        has_meter: bool
        meter_role: MeterRole | None

    def meter_ders(self) -> list[MeterDer]:
        if not self.has_meter:
            return []
        return [MeterDer(f"{self.id}.meter", self.meter_role or "grid", f"devices.{self.id}.meter_role")]
