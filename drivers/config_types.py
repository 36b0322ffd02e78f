"""What the device config models *do*, apart from what their keys may hold: pydantic-free.

Two classes carry each `[[devices]]` table: the pydantic model (drivers/*/config.py), which says what
every key may hold and reports every problem in one pass for `zapd config check`, and the msgspec
Struct the daemon runs on (zapd/config_structs.py, generated from the models), so pydantic never
loads in the long-running process (docs/decisions.md, footprint). Their behaviour -- the meter DERs a
device declares, its serial port, its chargers -- is written once, here and in each family's
`config_mixins.py`, and both classes inherit it. A mixin reads only fields both classes have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

MeterRole = Literal["grid", "pv", "ev", "submeter"]
METER_ROLES: tuple[str, ...] = ("grid", "pv", "ev", "submeter")
SerialLine = tuple[int, str, int, int]  # baudrate, parity, stopbits, bytesize
ChargerLimit = tuple[str, float, int]  # config key of the limits, max_current_a, phases


@dataclass(frozen=True, slots=True)
class MeterDer:
    """A meter DER the config declares, with its role and the key that sets it (for error lines)."""

    der_id: str
    role: MeterRole
    key: str


class DeviceBehaviour:
    """What the site-wide checks ask of a device, whatever its protocol.

    The defaults say "no meter DER, no serial port"; a family overrides what applies to it, so the
    checks in zapd/config.py (one grid meter, one owner per serial port) need no list of kinds.
    """

    __slots__ = ()

    if TYPE_CHECKING:
        id: str

    def meter_ders(self) -> list[MeterDer]:
        """The meter DERs this device declares (for the one-grid-meter rule)."""
        return []

    def serial_port(self) -> str | None:
        """The serial port this device owns, or None when it is not on one."""
        return None

    def serial_line(self) -> SerialLine | None:
        """For a Modbus RTU device: the line settings every device on its port must share."""
        return None

    def serial_unit(self) -> int | None:
        """For a Modbus RTU device: its unit id, unique on its port."""
        return None

    def charger_limits(self) -> list[ChargerLimit]:
        """The EV chargers this device declares, with their limits (held against the site's fuse)."""
        return []


class RtuLineMixin:
    """Serial-port answers of an RTU model (one that has port, baudrate, parity, stopbits, bytesize, unit_id)."""

    __slots__ = ()

    if TYPE_CHECKING:
        port: str
        baudrate: int
        parity: str
        stopbits: int
        bytesize: int
        unit_id: int

    def serial_port(self) -> str | None:
        return self.port

    def serial_line(self) -> SerialLine | None:
        return (self.baudrate, self.parity, self.stopbits, self.bytesize)

    def serial_unit(self) -> int | None:
        return self.unit_id

    def line(self) -> SerialLine:
        return (self.baudrate, self.parity, self.stopbits, self.bytesize)


class RoleMeterMixin:
    """A device that is one meter: its DER is the device id, its role the `role` key."""

    __slots__ = ()

    if TYPE_CHECKING:
        id: str
        role: MeterRole

    def meter_ders(self) -> list[MeterDer]:
        return [MeterDer(self.id, self.role, f"devices.{self.id}.role")]


class EvChargerMixin:
    """A device that is one EV charger with an `[ev]` table of limits."""

    __slots__ = ()

    if TYPE_CHECKING:
        id: str
        ev: Any  # EvLimits: the pydantic model or the daemon's struct

    def charger_limits(self) -> list[ChargerLimit]:
        return [(f"devices.{self.id}.ev", self.ev.max_current_a, self.ev.phases)]
