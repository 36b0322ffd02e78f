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
from typing import TYPE_CHECKING, Literal, Self

from zapd.bounds import MAX_CAPACITY_WH, MAX_POWER_W

MeterRole = Literal["grid", "pv", "ev", "submeter"]
METER_ROLES: tuple[str, ...] = ("grid", "pv", "ev", "submeter")
SerialLine = tuple[int, str, int, int]  # baudrate, parity, stopbits, bytesize


class BatteryLimitsMixin:
    """What a battery's limits do (issue 15: one limit type for batteries, config -> envelope).

    A power or the capacity not set is unknown; the envelope takes unknown as "cannot move" (0 W).
    """

    __slots__ = ()

    if TYPE_CHECKING:
        capacity_wh: float | None
        max_charge_w: float | None
        max_discharge_w: float | None
        reserve_soc: float
        max_soc: float

        def __init__(
            self,
            *,
            capacity_wh: float | None = None,
            max_charge_w: float | None = None,
            max_discharge_w: float | None = None,
            reserve_soc: float = 0.1,
            max_soc: float = 1.0,
        ) -> None: ...

    @classmethod
    def nameplate(cls, *, capacity_wh: float | None, max_charge_w: float | None, max_discharge_w: float | None) -> Self:
        """What a device reports of itself as limits (0 or less, not a finite number, or beyond what the config
        itself may say (zapd/bounds.py): it does not say). So the pydantic model and the struct answer alike,
        neither raising on a garbled register."""

        def said(x: float | None, top: float) -> float | None:
            return x if x is not None and 0 < x <= top else None  # NaN and ±inf fail the comparison

        return cls(
            capacity_wh=said(capacity_wh, MAX_CAPACITY_WH),
            max_charge_w=said(max_charge_w, MAX_POWER_W),
            max_discharge_w=said(max_discharge_w, MAX_POWER_W),
        )

    def within(self, nameplate: BatteryLimitsMixin | None) -> Self:
        """These limits held to a device's nameplate: config may lower a power or the capacity, never raise it
        (the device cannot do more than it says); the SoC bounds are the config's."""

        def lower(mine: float | None, theirs: float | None) -> float | None:
            if mine is None or theirs is None:
                return theirs if mine is None else mine
            return min(mine, theirs)

        if nameplate is None:
            return self
        return type(self)(
            capacity_wh=lower(self.capacity_wh, nameplate.capacity_wh),
            max_charge_w=lower(self.max_charge_w, nameplate.max_charge_w),
            max_discharge_w=lower(self.max_discharge_w, nameplate.max_discharge_w),
            reserve_soc=self.reserve_soc,
            max_soc=self.max_soc,
        )


class EvLimitsMixin:
    """What an EV charger's limits do (issue 15: one limit type for EV chargers, config -> envelope)."""

    __slots__ = ()

    if TYPE_CHECKING:
        max_current_a: float
        min_current_a: float
        phases: int
        voltage_v: float

    @property
    def w_per_a(self) -> float:
        """Power per ampere offered on every phase."""
        return self.phases * self.voltage_v


ChargerLimit = tuple[str, EvLimitsMixin]  # config key of the limits, and the limits


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
        ev: EvLimitsMixin  # EvLimits: the pydantic model or the daemon's struct

    def charger_limits(self) -> list[ChargerLimit]:
        return [(f"devices.{self.id}.ev", self.ev)]
