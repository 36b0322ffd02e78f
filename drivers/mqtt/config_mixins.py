"""What the MQTT config model does beyond its keys, pydantic-free (see drivers/config_types.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from drivers.config_types import ChargerLimit, MeterDer


class MqttDeviceMixin:
    """A broker connection: its `kind = "meter"` DERs are meters, those with an `[ev]` table chargers."""

    __slots__ = ()

    if TYPE_CHECKING:
        id: str
        ders: Sequence[Any]  # MqttDerConfig: the pydantic model or the daemon's struct

    def meter_ders(self) -> list[MeterDer]:
        return [
            MeterDer(f"{self.id}.{der.id}", der.role or "grid", f"devices.{self.id}.ders.{der.id}.role")
            for der in self.ders
            if der.kind == "meter"
        ]

    def charger_limits(self) -> list[ChargerLimit]:
        return [(f"devices.{self.id}.ders.{der.id}.ev", der.ev) for der in self.ders if der.ev is not None]
