"""What every device config model shares: the strict base, the field types several kinds use, the limits.

The driver families (drivers/*/family*.py) define their own config models on top of these, and
zapd/config.py builds its device union from the registry (drivers/registry.py). This module imports
neither, so a family's config can be read without loading any other family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Field types several device kinds share: one definition, one description.
DeviceId = Annotated[
    str,
    Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Device id, unique in the file: names its DERs and appears in logs. Letters, digits, `_` and `-`.",
    ),
]
PollPeriod = Annotated[
    float,
    Field(gt=0, le=3600, description="Poll period in s; a reading older than three periods counts as unknown."),
]
WritesPerHour = Annotated[
    int | None,
    Field(
        ge=1,
        le=100_000,
        description=(
            "Cap on register writes per rolling hour (inverter flash wears out). Beyond it commands are "
            "refused and logged, and the device keeps its last setpoint until its command timeout. A setpoint "
            "the device already holds is not written again."
        ),
    ),
]
CommandTimeout = Annotated[
    int,
    Field(
        ge=10,
        le=65_535,
        description=(
            "Written to the device: without a write from zapd for this many s it returns to its own mode. "
            "zapd re-writes within half of it."
        ),
    ),
]
MeterRole = Literal["grid", "pv", "ev", "submeter"]
METER_ROLES: tuple[str, ...] = ("grid", "pv", "ev", "submeter")


@dataclass(frozen=True, slots=True)
class MeterDer:
    """A meter DER the config declares, with its role and the key that sets it (for error lines)."""

    der_id: str
    role: MeterRole
    key: str


SerialLine = tuple[int, str, int, int]  # baudrate, parity, stopbits, bytesize
ChargerLimit = tuple[str, float, int]  # config key of the limits, max_current_a, phases


class DeviceModel(_Strict):
    """Base of every `[[devices]]` model: what the site-wide checks ask of a device, whatever its protocol.

    The defaults say "no meter DER, no serial port"; a family overrides what applies to it, so the
    checks in zapd/config.py (one grid meter, one owner per serial port) need no list of kinds.
    """

    if TYPE_CHECKING:  # every model declares these two as fields; not fields here, so its key order stays its own
        driver: str
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


class BatteryLimits(_Strict):
    capacity_wh: float | None = Field(
        default=None, gt=0, description="Usable capacity in Wh. Not set: the capacity the device reports."
    )
    max_charge_w: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Highest charge power in W; the lower of this and the device's nameplate is used. Not set: the nameplate."
        ),
    )
    max_discharge_w: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Highest discharge power in W; the lower of this and the device's nameplate is used. Not set: the "
            "nameplate."
        ),
    )
    reserve_soc: float = Field(
        default=0.10,
        ge=0,
        le=1,
        description="Never discharge below this SoC (fraction 0..1), whatever a plan says; must be below `max_soc`.",
    )
    max_soc: float = Field(default=1.0, gt=0, le=1, description="Never charge above this SoC (fraction 0..1).")

    @model_validator(mode="after")
    def _reserve_below_max(self) -> BatteryLimits:
        if self.reserve_soc >= self.max_soc:
            raise ValueError("reserve_soc must be below max_soc")
        return self


class EvLimits(_Strict):
    """An EV charger's limits as installed (the cable, the circuit breaker, the phases wired)."""

    max_current_a: float = Field(
        gt=0,
        le=80,
        description="Highest charging current per phase in A: the lowest of charger, cable and circuit breaker.",
    )
    min_current_a: float = Field(
        default=6.0,
        ge=6,
        le=80,
        description=(
            "Lowest charging current per phase in A (IEC 61851: at least 6 A); below it zapd pauses charging. "
            "Must not exceed `max_current_a`."
        ),
    )
    phases: Literal[1, 3] = Field(default=3, description="Phases wired to the charger.")
    voltage_v: float = Field(default=230.0, gt=0, le=480, description="Phase voltage in V, to turn current into power.")
    safe_mode: Literal["minimum", "pause"] = Field(
        default="minimum",
        description="What zapd leaves the charger at when it stops: `minimum` (`min_current_a`) or `pause` (0 A).",
    )

    @model_validator(mode="after")
    def _min_below_max(self) -> EvLimits:
        if self.min_current_a > self.max_current_a:
            raise ValueError("min_current_a must not exceed max_current_a")
        return self


def _same_as(model: type[BaseModel], key: str) -> Any:
    """The field `key` of `model`, reused: one definition (default, bounds, description) for one meaning."""
    return model.model_fields[key]


_METER_ROLE_DESCRIPTION = (
    "What the meter measures: `grid` (the site's connection point: the fuse and export limits act on "
    "it; exactly one per site), `pv`, `ev` or `submeter` (recorded and shown, never controlled on)."
)
