"""What every device config model shares: the strict base, the field types several kinds use, the limits.

The driver families (drivers/*/family*.py) define their own config models on top of these, and
zapd/config.py builds its device union from the registry (drivers/registry.py). This module imports
neither, so a family's config can be read without loading any other family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# What the models do (meter DERs, serial ports, chargers) is pydantic-free, shared with the daemon's structs.
from drivers.config_types import METER_ROLES as METER_ROLES
from drivers.config_types import BatteryLimitsMixin, DeviceBehaviour, EvLimitsMixin
from drivers.config_types import ChargerLimit as ChargerLimit
from drivers.config_types import MeterDer as MeterDer
from drivers.config_types import MeterRole as MeterRole
from drivers.config_types import RtuLineMixin as RtuLineMixin
from drivers.config_types import SerialLine as SerialLine
from zapd.bounds import MAX_CAPACITY_WH, MAX_POWER_W

# The highest charging current per phase an EV charger takes (IEC 62196 type 2 AC: 63 A; 80 A single-phase US).
MAX_EV_CURRENT_A = 80


class _Strict(BaseModel):
    """Base of every config model: unknown keys refused, and only finite numbers (TOML has `inf` and `nan`).

    A battery limit of `inf` would otherwise pass and reach the envelope as "not a limit" (unknown:
    the battery is never dispatched); `nan` would fail a `ge` with a misleading message. With
    `allow_inf_nan=False` both are refused as "must be a finite number" (zapd/config_check.py), and
    every number field also has an upper bound (tests/unit/test_config_bounds.py walks them all).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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


class DeviceModel(DeviceBehaviour, _Strict):
    """Base of every `[[devices]]` model; its behaviour (drivers/config_types.py) is the daemon structs' too."""

    if TYPE_CHECKING:  # every model declares these two as fields; not fields here, so its key order stays its own
        driver: str
        id: str


class BatteryLimits(BatteryLimitsMixin, _Strict):
    """A battery's hard limits: the config's `[battery]` table, a device's nameplate, what the envelope holds it to.

    One type from the config to the envelope (issue 15); the daemon runs on its generated struct
    (drivers/config_structs.py), whose behaviour (drivers/config_types.py) is the same.
    """

    capacity_wh: float | None = Field(
        default=None,
        gt=0,
        le=MAX_CAPACITY_WH,
        description=(
            "Usable capacity in Wh; the lower of this and the capacity the device reports is used. Not set: "
            "the capacity the device reports."
        ),
    )
    max_charge_w: float | None = Field(
        default=None,
        ge=0,
        le=MAX_POWER_W,
        description=(
            "Highest charge power in W; the lower of this and the device's nameplate is used. Not set: the nameplate."
        ),
    )
    max_discharge_w: float | None = Field(
        default=None,
        ge=0,
        le=MAX_POWER_W,
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


class EvLimits(EvLimitsMixin, _Strict):
    """An EV charger's limits as installed (the cable, the circuit breaker, the phases wired).

    One type from the config to the envelope (issue 15), as `BatteryLimits` is for batteries.
    """

    max_current_a: float = Field(
        gt=0,
        le=MAX_EV_CURRENT_A,
        description="Highest charging current per phase in A: the lowest of charger, cable and circuit breaker.",
    )
    min_current_a: float = Field(
        default=6.0,
        ge=6,
        le=MAX_EV_CURRENT_A,
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
