"""What the site config does beyond its keys, pydantic-free: shared by the models and the daemon's structs.

zapd/config.py's pydantic models say what each key may hold (`zapd config check`); the daemon runs
on msgspec Structs generated from them (zapd/config_structs.py) so pydantic never loads in its
process. Both inherit these mixins, so a derived value is written once (drivers/config_types.py
does the same for the devices).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from drivers.config_types import DeviceBehaviour, MeterDer


def meter_ders(devices: Sequence[DeviceBehaviour]) -> list[MeterDer]:
    """Every meter DER these devices declare (each model says which it has: `meter_ders()`)."""
    return [m for dev in devices for m in dev.meter_ders()]


class SiteBehaviour:
    __slots__ = ()

    if TYPE_CHECKING:
        fuse_a: float
        voltage_v: float
        phases: int

    @property
    def fuse_limit_w(self) -> float:
        return self.fuse_a * self.voltage_v * self.phases


class ZapdBehaviour:
    __slots__ = ()

    if TYPE_CHECKING:
        devices: Sequence[DeviceBehaviour]

    @property
    def grid_meter(self) -> str | None:
        """DER id of the site's one grid meter (the check refuses two); None when there is none."""
        grid = [m.der_id for m in meter_ders(self.devices) if m.role == "grid"]
        return grid[0] if len(grid) == 1 else None
