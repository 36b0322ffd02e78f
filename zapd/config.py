"""The daemon's TOML configuration, validated into typed structures at start.

pydantic (not msgspec) validates the config because it reports *every* problem in one pass
with its location, so `zapd config check` can print one `file: key.path: reason` line per
problem; msgspec stops at the first error. msgspec stays the choice for the hot wire formats.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.ocpp.config import OcppDevice
from zapd.paths import DEFAULT_CONFIG_PATH as DEFAULT_CONFIG_PATH
from zapd.paths import DEFAULT_STATE_DIR


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
RegisterMapName = Annotated[
    str,
    Field(
        min_length=1,
        description=(
            "Register map: a name shipped with zapd (`drivers/modbus/maps/NAME.toml`), a path to your own file, "
            "or `auto`: recognise the profile at start (read-only probes; docs/devices.md)."
        ),
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
DsmrVersion = Annotated[
    Literal["2.2", "4", "5", "5B", "5L", "5S", "Q3D"],
    Field(description="DSMR version: 2.2, 4, 5, 5B (Belgium), 5L (Luxembourg), 5S (Sweden) or Q3D."),
]
# Seconds between P1 telegrams, by DSMR version (see docs/decisions.md "P1 telegram intervals" for sources):
# DSMR 2.2 and 4.x every 10 s, DSMR 5.0 (and Belgium's e-MUCS) every second, Luxembourg's Smarty and
# the Swedish P1 recommendation every 10 s; Q3D has no published interval, 10 s is the safe guess
# (a slower meter would otherwise look dead and hold the site).
DSMR_TELEGRAM_INTERVAL_S: dict[str, float] = {
    "2.2": 10.0,
    "4": 10.0,
    "5": 1.0,
    "5B": 1.0,
    "5L": 10.0,
    "5S": 10.0,
    "Q3D": 10.0,
}
TelegramInterval = Annotated[
    float | None,
    Field(
        gt=0,
        le=3600,
        description=(
            "The meter's telegram interval in s; a reading older than three intervals counts as unknown. Not "
            "set: what `dsmr_version` prescribes (10 for 2.2, 4, 5L, 5S and Q3D; 1 for 5 and 5B)."
        ),
    ),
]
MeterRole = Literal["grid", "pv", "ev", "submeter"]
METER_ROLES: tuple[str, ...] = ("grid", "pv", "ev", "submeter")
DecryptionKey = Annotated[
    str | None,
    Field(
        description=(
            'Luxembourg Smarty meters (`dsmr_version = "5L"`): the decryption key from the grid operator, '
            "32 hex digits (AES-128). Not set: telegrams are plain text."
        ),
    ),
]


class SiteConfig(_Strict):
    id: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Site id as registered with the cloud: letters, digits, `.`, `_` and `-`.",
    )
    phases: Literal[1, 3] = Field(default=3, description="Phases of the grid connection.")
    voltage_v: float = Field(
        default=230.0,
        gt=0,
        le=480,
        description="Nominal phase voltage in V; with `fuse_a` and `phases` it sets the site's import limit.",
    )
    fuse_a: float = Field(
        gt=0,
        le=1000,
        description=(
            "Main fuse rating per phase in A. No command may take the site's import above `fuse_a` × "
            "`voltage_v` × `phases` × `control.fuse_margin`."
        ),
    )
    max_export_w: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Grid export limit in W (e.g. set by the DSO): battery discharge is held back so the site exports "
            "no more. Not set: only the fuse limits export."
        ),
    )

    @property
    def fuse_limit_w(self) -> float:
        return self.fuse_a * self.voltage_v * self.phases


class ControlConfig(_Strict):
    tick_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Control cycle period in s; a new meter reading also starts a cycle at once.",
    )
    refresh_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Re-write an unchanged setpoint after this many s, so a device with a command timeout keeps it.",
    )
    deadband_w: float = Field(
        default=50.0,
        ge=0,
        le=10_000,
        description=(
            "A setpoint that moved by this many W or less is not re-written (saves device writes); a move to "
            "0 W is always written."
        ),
    )
    fuse_margin: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="Fraction of the fuse limit the controller may use; 0.95 keeps 5 % headroom for meter lag.",
    )
    dead_time_s: float = Field(
        default=5.0,
        gt=0,
        le=120,
        description=(
            "The longest an inverter takes before it starts to follow a written setpoint, in s (hybrid "
            "inverters: 1-3 s). Two equal battery readings within it do not mean the battery is done "
            "(docs/decisions.md, Closed loop)."
        ),
    )
    settle_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description=(
            "After this many s a battery that has not reached its setpoint is taken as it reads (SoC or "
            "device limit, its own control); at least the dead time plus a full swing at the inverter's ramp."
        ),
    )
    estimate_tolerance_w: float = Field(
        default=50.0,
        ge=0,
        le=1000,
        description=(
            "Rounding and noise of the battery and meter readings in W: the setpoint holds while the site is "
            "within it, and the grid limits are kept this much tighter."
        ),
    )

    @model_validator(mode="after")
    def _settle_after_dead_time(self) -> ControlConfig:
        if self.settle_s <= self.dead_time_s:
            raise ValueError(
                f"settle_s ({self.settle_s:g} s) must be longer than dead_time_s ({self.dead_time_s:g} s): a battery "
                "cannot be done with a setpoint before it has started to follow it"
            )
        return self


class StoreConfig(_Strict):
    state_dir: Path = Field(
        default=DEFAULT_STATE_DIR,
        description="State directory: `zapd.sqlite` (WAL) and `keys/` (the Zap's key pair) live here.",
    )
    retention_days: float = Field(
        default=30.0,
        gt=0,
        le=3650,
        description="Unsent telemetry older than this many days is dropped (counted and logged, never silently).",
    )
    retention_mb: float = Field(
        default=512.0,
        gt=0,
        description=(
            "Size budget of the unsent-telemetry outbox in MiB (about 150 bytes per reading); beyond it the "
            "oldest readings are dropped (counted and logged)."
        ),
    )


class PlanConfig(_Strict):
    file: Path | None = Field(
        default=None,
        description=(
            "A local plan file (JSON, the Plan wire format), used when there is no cloud plan; re-read "
            "when it changes, an invalid file is rejected and logged. Not set: no local plan."
        ),
    )


class CloudConfig(_Strict):
    url: str = Field(
        pattern=r"^https?://",
        description=(
            "Base URL of the zapcloud endpoint: `https://`; plain `http://` only to a loopback address "
            "unless `allow_insecure` is set."
        ),
    )
    allow_insecure: bool = Field(
        default=False,
        description=(
            "Allow plain `http://` to a cloud that is not on loopback (anyone on the path reads the telemetry); "
            "also `zapd run --allow-insecure`."
        ),
    )
    public_key: str = Field(
        min_length=40,
        description=(
            "The cloud's Ed25519 public key: 32 bytes in base64, as printed by `zapcloud serve`. Plans signed "
            "by any other key are rejected."
        ),
    )
    upload_interval_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description=(
            "Seconds between telemetry uploads; while offline readings wait in the outbox (see `[store]` retention)."
        ),
    )
    plan_interval_s: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="Seconds between plan fetches (a conditional GET: cheap when nothing changed).",
    )
    timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description=(
            "Timeout of each request to the cloud in s; a request that takes longer fails and is tried again "
            "at the next interval."
        ),
    )
    batch_max: int = Field(
        default=5000,
        ge=1,
        le=10_000,
        description="Most readings in one upload; a longer backlog goes up in several batches.",
    )

    @field_validator("public_key")
    @classmethod
    def _is_ed25519_key(cls, value: str) -> str:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not base64") from None
        if len(raw) != 32:
            raise ValueError(f"an Ed25519 public key is 32 bytes, this is {len(raw)}")
        return value


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


class ModbusTcpDevice(_Strict):
    driver: Literal["modbus_tcp"] = Field(
        description=(
            "A hybrid inverter or battery over Modbus-TCP, read and controlled through a register map. Its "
            "DERs are `<id>.battery` and `<id>.pv`."
        )
    )
    id: DeviceId
    host: str = Field(min_length=1, description="IP address or host name of the device or its Modbus gateway.")
    port: int = Field(default=502, ge=1, le=65535, description="Modbus-TCP port.")
    unit_id: int = Field(default=1, ge=0, le=247, description="Modbus unit (slave) id.")
    map: RegisterMapName
    poll_s: PollPeriod = 5.0
    timeout_s: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="Timeout of each Modbus request in s; a request that takes longer is a driver error.",
    )
    min_gap_ms: float = Field(
        default=0.0,
        ge=0,
        le=10_000,
        description=(
            "Quiet time between Modbus frames in ms (many TCP-to-RTU gateways need tens of ms). Devices "
            "behind one host and port share the strictest setting."
        ),
    )
    max_requests_per_s: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description=(
            "Cap on Modbus requests per second to this host and port; requests beyond it wait. Not set: no cap."
        ),
    )
    max_writes_per_hour: WritesPerHour = 360
    command_timeout_s: CommandTimeout = 300
    battery: BatteryLimits = Field(default=BatteryLimits(), description="Limits of the battery behind this device.")


class ModbusRtuDevice(_Strict):
    """A register-map device on an RS-485 line; every device on one port must share its line settings."""

    driver: Literal["modbus_rtu"] = Field(
        description=(
            "A hybrid inverter or battery on an RS-485 line (Modbus RTU), through a register map. Its DERs "
            "are `<id>.battery` and `<id>.pv` (when the map has PV). Devices on one serial port must share "
            "baudrate, parity, stopbits and bytesize, and need different unit ids."
        )
    )
    id: DeviceId
    port: str = Field(min_length=1, description="Serial device of the RS-485 adapter, e.g. `/dev/ttyUSB0`.")
    baudrate: int = Field(
        default=9600, ge=300, le=921_600, description="Line speed in bit/s; the same for every device on this port."
    )
    parity: Literal["N", "E", "O"] = Field(
        default="N", description="Parity: none, even or odd; the same for every device on this port."
    )
    stopbits: Literal[1, 2] = Field(default=1, description="Stop bits; the same for every device on this port.")
    bytesize: Literal[7, 8] = Field(default=8, description="Data bits; the same for every device on this port.")
    unit_id: int = Field(default=1, ge=1, le=247, description="Modbus unit (slave) id; unique on this port.")
    map: RegisterMapName
    poll_s: PollPeriod = 5.0
    timeout_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Timeout of each Modbus request in s; a request that takes longer is a driver error.",
    )
    min_gap_ms: float | None = Field(
        default=None,
        ge=0,
        le=10_000,
        description=(
            "Quiet time between frames in ms. Not set: 3.5 character times (1.75 ms above 19200 bit/s), as "
            "Modbus RTU requires."
        ),
    )
    max_requests_per_s: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="Cap on Modbus requests per second on this serial line; requests beyond it wait. Not set: no cap.",
    )
    max_writes_per_hour: WritesPerHour = 360
    command_timeout_s: CommandTimeout = 300
    battery: BatteryLimits = Field(default=BatteryLimits(), description="Limits of the battery behind this device.")

    def line(self) -> tuple[int, str, int, int]:
        return (self.baudrate, self.parity, self.stopbits, self.bytesize)


class SunSpecTcpDevice(_Strict):
    """A SunSpec inverter/battery/meter; what it has is discovered, the flags say which DERs to expect."""

    driver: Literal["sunspec_tcp"] = Field(
        description=(
            "A SunSpec inverter (Fronius, SMA, SolarEdge, ...) over Modbus-TCP: zapd reads its model chain "
            "and learns model, limits and capacity from it; battery control uses SunSpec model 124. Its DERs "
            "are `<id>.pv`, `<id>.battery` and `<id>.meter`."
        )
    )
    id: DeviceId
    host: str = Field(min_length=1, description="IP address or host name of the inverter.")
    port: int = Field(default=502, ge=1, le=65535, description="Modbus-TCP port.")
    unit_id: int = Field(default=1, ge=0, le=247, description="Modbus unit (slave) id.")
    poll_s: PollPeriod = 5.0
    timeout_s: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="Timeout of each Modbus request in s; a request that takes longer is a driver error.",
    )
    min_gap_ms: float = Field(
        default=0.0,
        ge=0,
        le=10_000,
        description=(
            "Quiet time between Modbus frames in ms. Devices behind one host and port share the strictest setting."
        ),
    )
    max_requests_per_s: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description=(
            "Cap on Modbus requests per second to this host and port; requests beyond it wait. Not set: no cap."
        ),
    )
    max_writes_per_hour: int | None = Field(
        default=360,
        ge=1,
        le=100_000,
        description=(
            "Cap on register writes per rolling hour (inverter flash wears out). Beyond it commands are "
            "refused and logged, and the inverter returns to its own control after `revert_timeout_s`."
        ),
    )
    revert_timeout_s: int = Field(
        default=300,
        ge=10,
        le=65_534,
        description=(
            "Written to the inverter (model 124 `InOutWRte_RvrtTms`): without a write from zapd for this many "
            "s it drops zapd's charge/discharge rates and returns to its own control."
        ),
    )
    has_battery: bool = Field(
        default=True, description="Expect a battery behind the inverter: report and control it as `<id>.battery`."
    )
    has_meter: bool = Field(
        default=False, description="Expect a SunSpec meter behind the inverter: report it as `<id>.meter`."
    )
    meter_role: MeterRole | None = Field(
        default=None,
        description=(
            "With `has_meter`: what that meter measures, `grid` (the site's connection point; exactly one per "
            "site), `pv`, `ev` or `submeter`. Not set: `grid`."
        ),
    )
    battery: BatteryLimits = Field(
        default=BatteryLimits(), description="Limits of the battery behind this inverter (with `has_battery`)."
    )

    @model_validator(mode="after")
    def _meter_role_needs_meter(self) -> SunSpecTcpDevice:
        if self.meter_role is not None and not self.has_meter:
            raise ValueError("meter_role needs has_meter = true")
        return self


def _same_as(model: type[BaseModel], key: str) -> Any:
    """The field `key` of `model`, reused: one definition (default, bounds, description) for one meaning."""
    return model.model_fields[key]


_METER_ROLE_DESCRIPTION = (
    "What the meter measures: `grid` (the site's connection point: the fuse and export limits act on "
    "it; exactly one per site), `pv`, `ev` or `submeter` (recorded and shown, never controlled on)."
)
MeterMapName = Annotated[
    str,
    Field(
        min_length=1,
        description=(
            "Meter profile: a name shipped with zapd (`eastron_sdm72`, `eastron_sdm120`, `carlo_gavazzi_em24`, "
            "`carlo_gavazzi_em340`, `abb_b23_b24`, ...; see docs/devices.md) or a path to your own file."
        ),
    ),
]


class ModbusMeterTcpDevice(_Strict):
    """A read-only meter over Modbus-TCP (or behind a TCP-to-RS-485 gateway), laid out by a meter profile."""

    driver: Literal["modbus_meter_tcp"] = Field(
        description="A grid, PV, EV or sub-meter over Modbus-TCP, read through a meter profile. Its DER is `<id>`."
    )
    id: DeviceId
    host: str = _same_as(ModbusTcpDevice, "host")
    port: int = _same_as(ModbusTcpDevice, "port")
    unit_id: int = _same_as(ModbusTcpDevice, "unit_id")
    map: MeterMapName
    poll_s: PollPeriod = 5.0
    timeout_s: float = _same_as(ModbusTcpDevice, "timeout_s")
    min_gap_ms: float = _same_as(ModbusTcpDevice, "min_gap_ms")
    max_requests_per_s: float | None = _same_as(ModbusTcpDevice, "max_requests_per_s")
    role: MeterRole = Field(default="grid", description=_METER_ROLE_DESCRIPTION)


class ModbusMeterRtuDevice(_Strict):
    """A read-only meter on an RS-485 line; it shares the line rules of `modbus_rtu` devices on its port."""

    driver: Literal["modbus_meter_rtu"] = Field(
        description=(
            "A grid, PV, EV or sub-meter on an RS-485 line (Modbus RTU), read through a meter profile. Its DER "
            "is `<id>`. Devices on one serial port must share baudrate, parity, stopbits and bytesize, and need "
            "different unit ids."
        )
    )
    id: DeviceId
    port: str = _same_as(ModbusRtuDevice, "port")
    baudrate: int = _same_as(ModbusRtuDevice, "baudrate")
    parity: Literal["N", "E", "O"] = _same_as(ModbusRtuDevice, "parity")
    stopbits: Literal[1, 2] = _same_as(ModbusRtuDevice, "stopbits")
    bytesize: Literal[7, 8] = _same_as(ModbusRtuDevice, "bytesize")
    unit_id: int = _same_as(ModbusRtuDevice, "unit_id")
    map: MeterMapName
    poll_s: PollPeriod = 5.0
    timeout_s: float = _same_as(ModbusRtuDevice, "timeout_s")
    min_gap_ms: float | None = _same_as(ModbusRtuDevice, "min_gap_ms")
    max_requests_per_s: float | None = _same_as(ModbusRtuDevice, "max_requests_per_s")
    role: MeterRole = Field(default="grid", description=_METER_ROLE_DESCRIPTION)

    def line(self) -> tuple[int, str, int, int]:
        return (self.baudrate, self.parity, self.stopbits, self.bytesize)


class SunSpecRtuDevice(_Strict):
    """A SunSpec inverter on an RS-485 line: the SunSpec driver over a serial bus (line rules as `modbus_rtu`)."""

    driver: Literal["sunspec_rtu"] = Field(
        description=(
            "A SunSpec inverter or battery on an RS-485 line (Modbus RTU): as `sunspec_tcp`, its model chain says "
            "what it is. Its DERs are `<id>.pv`, `<id>.battery` and `<id>.meter`. Devices on one serial port must "
            "share baudrate, parity, stopbits and bytesize, and need different unit ids."
        )
    )
    id: DeviceId
    port: str = _same_as(ModbusRtuDevice, "port")
    baudrate: int = _same_as(ModbusRtuDevice, "baudrate")
    parity: Literal["N", "E", "O"] = _same_as(ModbusRtuDevice, "parity")
    stopbits: Literal[1, 2] = _same_as(ModbusRtuDevice, "stopbits")
    bytesize: Literal[7, 8] = _same_as(ModbusRtuDevice, "bytesize")
    unit_id: int = _same_as(ModbusRtuDevice, "unit_id")
    poll_s: PollPeriod = 5.0
    timeout_s: float = _same_as(ModbusRtuDevice, "timeout_s")
    min_gap_ms: float | None = _same_as(ModbusRtuDevice, "min_gap_ms")
    max_requests_per_s: float | None = _same_as(ModbusRtuDevice, "max_requests_per_s")
    max_writes_per_hour: int | None = _same_as(SunSpecTcpDevice, "max_writes_per_hour")
    revert_timeout_s: int = _same_as(SunSpecTcpDevice, "revert_timeout_s")
    has_battery: bool = _same_as(SunSpecTcpDevice, "has_battery")
    has_meter: bool = _same_as(SunSpecTcpDevice, "has_meter")
    meter_role: MeterRole | None = _same_as(SunSpecTcpDevice, "meter_role")
    battery: BatteryLimits = _same_as(SunSpecTcpDevice, "battery")

    @model_validator(mode="after")
    def _meter_role_needs_meter(self) -> SunSpecRtuDevice:
        if self.meter_role is not None and not self.has_meter:
            raise ValueError("meter_role needs has_meter = true")
        return self

    def line(self) -> tuple[int, str, int, int]:
        return (self.baudrate, self.parity, self.stopbits, self.bytesize)


class P1SerialDevice(_Strict):
    driver: Literal["p1_serial"] = Field(
        description="A smart meter's P1 port (DSMR) through a USB cable. Its DER is `<id>`."
    )
    id: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Device id of the meter, unique in the file: the meter's DER id. Letters, digits, `_` and `-`.",
    )
    port: str = Field(min_length=1, description="Serial port of the P1 cable, e.g. `/dev/ttyUSB0`.")
    baudrate: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Line speed in bit/s. Not set: what the DSMR version prescribes (9600 7E1 for 2.2, 115200 7E1 for "
            "4, 115200 8N1 otherwise)."
        ),
    )
    dsmr_version: DsmrVersion = "5"
    poll_s: TelegramInterval = None
    decryption_key: DecryptionKey = None
    role: MeterRole = Field(
        default="grid",
        description=(
            "What the meter measures: `grid` (the site's connection point: the fuse and export limits act on "
            "it; exactly one per site), `pv`, `ev` or `submeter` (recorded and shown, never controlled on)."
        ),
    )


class P1TcpDevice(_Strict):
    driver: Literal["p1_tcp"] = Field(
        description=(
            "A network P1 reader (or ser2net) that serves the meter's DSMR telegrams over TCP. Its DER is `<id>`."
        )
    )
    id: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Device id of the meter, unique in the file: the meter's DER id. Letters, digits, `_` and `-`.",
    )
    host: str = Field(min_length=1, description="IP address or host name of the P1 reader.")
    port: int = Field(ge=1, le=65535, description="TCP port of the P1 reader.")
    dsmr_version: DsmrVersion = "5"
    poll_s: TelegramInterval = None
    decryption_key: DecryptionKey = None
    role: MeterRole = Field(
        default="grid",
        description=(
            "What the meter measures: `grid` (the site's connection point: the fuse and export limits act on "
            "it; exactly one per site), `pv`, `ev` or `submeter` (recorded and shown, never controlled on)."
        ),
    )


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


class ModbusEvDevice(_Strict):
    driver: Literal["modbus_ev"] = Field(
        description=(
            'An EV charger over Modbus-TCP (Alfen Eve: enable active load balancing with data source "Energy '
            'Management System" in ACE Service Installer). Its DER is `<id>.ev`.'
        )
    )
    id: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9_-]+$",
        description=(
            "Device id of the charger, unique in the file: names its DER and appears in logs. Letters, "
            "digits, `_` and `-`."
        ),
    )
    host: str = Field(min_length=1, description="IP address or host name of the charger.")
    port: int = Field(default=502, ge=1, le=65535, description="Modbus-TCP port.")
    unit_id: int = Field(default=1, ge=0, le=255, description="Modbus unit id; Alfen: 1 = socket 1, 2 = socket 2.")
    map: str = Field(
        default="alfen_eve",
        min_length=1,
        description=(
            "Register map: `alfen_eve`, `abb_terra_ac` or `mennekes_amtron` (shipped; see docs/devices.md) or a "
            "path to your own file."
        ),
    )
    poll_s: PollPeriod = 5.0
    timeout_s: float = Field(
        default=3.0,
        gt=0,
        le=60,
        description="Timeout of each Modbus request in s; a request that takes longer is a driver error.",
    )
    keepalive_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description=(
            "Re-write the charging current this often, in s; keep it below the charger's \"max current valid "
            'time" or the charger falls back to its own safe current.'
        ),
    )
    ev: EvLimits = Field(description="Limits of the charger as installed.")


MqttUnit = Literal["", "W", "kW", "Wh", "kWh", "%", "A", "V"]


class MqttReadingConfig(_Strict):
    topic: str = Field(min_length=1, description="Topic filter to subscribe to; `+` and `#` allowed.")
    key: str = Field(
        min_length=1,
        description=(
            "Reading key the value is stored as: power_w, import_wh, export_wh, soc, connected, charging, "
            "session_wh, ..."
        ),
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        description="Dotted JSON path to the value in the payload. Not set: the payload is a plain number.",
    )
    unit: MqttUnit = Field(
        default="",
        description='Unit of the value, converted to W, Wh, a fraction (%), A or V; "" = already in the key\'s unit.',
    )
    scale: float = Field(default=1.0, description="Extra multiplier on top of the unit conversion; must not be 0.")

    @model_validator(mode="after")
    def _scale_nonzero(self) -> MqttReadingConfig:
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        return self


class MqttDerConfig(_Strict):
    id: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="DER id within the device; the DER is `<device id>.<id>`. Unique within the device.",
    )
    kind: Literal["meter", "pv", "battery", "ev_charger", "load"] = Field(description="What the DER is.")
    preset: Literal["shelly_em", "shelly_em_rpc", "tasmota_sensor", "opendtu"] | None = Field(
        default=None,
        description=(
            "Read a known device's topics without listing readings: `shelly_em` (Shelly status topics), "
            "`shelly_em_rpc` (its NotifyStatus events on `<prefix>/events/rpc`), `tasmota_sensor`, `opendtu`. "
            "Needs `source`. Not set: give `readings`."
        ),
    )
    source: str | None = Field(
        default=None,
        min_length=1,
        description="The preset's topic root: Shelly prefix, Tasmota topic, or OpenDTU `<base>/<inverter serial>`.",
    )
    readings: list[MqttReadingConfig] = Field(
        default_factory=list,
        description="One entry per value to read; needed without a preset, added to the preset's with one.",
    )
    ev: EvLimits | None = Field(
        default=None,
        description="Limits of an `ev_charger` DER controlled through `[[devices.commands]]`; commands need it.",
    )
    role: MeterRole | None = Field(
        default=None,
        description=(
            'For `kind = "meter"`: what it measures, `grid` (the site\'s connection point: the fuse and export '
            "limits act on it; exactly one per site), `pv`, `ev` or `submeter` (recorded, never controlled "
            "on). Not set: `grid`."
        ),
    )

    @model_validator(mode="after")
    def _has_readings(self) -> MqttDerConfig:
        if self.role is not None and self.kind != "meter":
            raise ValueError(f"role is for kind = 'meter' only, this DER is kind = {self.kind!r}")
        if self.preset is not None and self.source is None:
            raise ValueError(f"preset {self.preset!r} needs source (its topic root)")
        if self.preset is None and not self.readings:
            raise ValueError("give a preset or at least one [[...readings]] entry")
        return self


class MqttCommandConfig(_Strict):
    der: str = Field(
        min_length=1,
        description=(
            "Id of the DER this topic controls: one of this device's `ders`, of kind `ev_charger` with an `[ev]` table."
        ),
    )
    topic: str = Field(min_length=1, pattern=r"^[^+#]+$", description="Topic to publish commands to; no wildcards.")
    payload: str = Field(
        default="{value}", description="Payload template: `{value}` is replaced by the charging current in A."
    )
    on_payload: str | None = Field(
        default=None,
        description=(
            "For a relay instead of a setpoint (e.g. a Shelly switch): published for a current above 0. Set "
            "together with `off_payload`."
        ),
    )
    off_payload: str | None = Field(
        default=None, description="For a relay: published for a current of 0. Set together with `on_payload`."
    )
    qos: Literal[0, 1, 2] = Field(default=1, description="MQTT QoS of the commands.")
    retain: bool = Field(default=False, description="Ask the broker to keep the last command for new subscribers.")
    safe_value: float | None = Field(
        default=None, description="Current in A published when zapd stops. Not set: the device is left as it is."
    )

    @model_validator(mode="after")
    def _on_off_pair(self) -> MqttCommandConfig:
        if (self.on_payload is None) != (self.off_payload is None):
            raise ValueError("on_payload and off_payload go together")
        return self


class MqttDevice(_Strict):
    driver: Literal["mqtt"] = Field(
        description=(
            "An MQTT broker connection: one entry per broker, with the DERs it carries in `[[devices.ders]]` "
            "and command topics in `[[devices.commands]]`. Its DERs are `<id>.<der id>`."
        )
    )
    id: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9_-]+$",
        description=(
            "Device id of the broker connection, unique in the file: names its DERs. Letters, digits, `_` and `-`."
        ),
    )
    host: str = Field(min_length=1, description="IP address or host name of the broker.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port.")
    username: str | None = Field(default=None, description="Broker user name, if the broker wants credentials.")
    password: str | None = Field(
        default=None, description="Broker password, if the broker wants credentials; never logged."
    )
    client_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="MQTT client id; must be unique on the broker. Not set: `zapd-<id>`.",
    )
    stale_s: float = Field(
        default=60.0, gt=0, le=86_400, description="A value not refreshed for this many s counts as unknown."
    )
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="Timeout of connect, subscribe and publish in s.")
    keepalive_s: int = Field(
        default=30, ge=5, le=3600, description="MQTT keepalive in s; a dead broker is noticed after about 1.5 × this."
    )
    ders: list[MqttDerConfig] = Field(min_length=1, description="The DERs this broker carries; at least one.")
    commands: list[MqttCommandConfig] = Field(
        default_factory=list,
        description="Command topics for `ev_charger` DERs. None: zapd only reads from this broker.",
    )

    @model_validator(mode="after")
    def _commands_target_chargers(self) -> MqttDevice:
        ders = {d.id: d for d in self.ders}
        if len(ders) != len(self.ders):
            raise ValueError("der ids must be unique within the device")
        for c in self.commands:
            der = ders.get(c.der)
            if der is None:
                raise ValueError(f"command for unknown der {c.der!r}")
            if der.kind != "ev_charger" or der.ev is None:
                raise ValueError(f"der {c.der!r}: commands need kind = 'ev_charger' with an [ev] table of limits")
        return self


DRIVER_NAMES = (
    "modbus_tcp",
    "modbus_rtu",
    "modbus_meter_tcp",
    "modbus_meter_rtu",
    "sunspec_tcp",
    "sunspec_rtu",
    "modbus_ev",
    "mqtt",
    "p1_serial",
    "p1_tcp",
    "ocpp",
)
DeviceConfig = Annotated[
    ModbusTcpDevice
    | ModbusRtuDevice
    | ModbusMeterTcpDevice
    | ModbusMeterRtuDevice
    | SunSpecTcpDevice
    | SunSpecRtuDevice
    | ModbusEvDevice
    | MqttDevice
    | P1SerialDevice
    | P1TcpDevice
    | OcppDevice,
    Field(discriminator="driver"),
]


@dataclass(frozen=True, slots=True)
class MeterDer:
    """A meter DER the config declares, with its role and the key that sets it (for error lines)."""

    der_id: str
    role: MeterRole
    key: str


def meter_ders(devices: Sequence[object]) -> list[MeterDer]:
    """Every meter DER of these devices: P1 and Modbus meters, SunSpec meters (`has_meter`), MQTT `kind = "meter"`."""
    out: list[MeterDer] = []
    for dev in devices:
        if isinstance(dev, P1SerialDevice | P1TcpDevice | ModbusMeterTcpDevice | ModbusMeterRtuDevice):
            out.append(MeterDer(dev.id, dev.role, f"devices.{dev.id}.role"))
        elif isinstance(dev, SunSpecTcpDevice | SunSpecRtuDevice) and dev.has_meter:
            out.append(MeterDer(f"{dev.id}.meter", dev.meter_role or "grid", f"devices.{dev.id}.meter_role"))
        elif isinstance(dev, MqttDevice):
            for der in dev.ders:
                if der.kind == "meter":
                    key = f"devices.{dev.id}.ders.{der.id}.role"
                    out.append(MeterDer(f"{dev.id}.{der.id}", der.role or "grid", key))
    return out


def telegram_interval_s(dev: P1SerialDevice | P1TcpDevice) -> float:
    """The P1 meter's telegram interval: `poll_s` when given, else what its DSMR version sends."""
    return dev.poll_s if dev.poll_s is not None else DSMR_TELEGRAM_INTERVAL_S[dev.dsmr_version]


def _line_text(dev: ModbusRtuDevice | ModbusMeterRtuDevice | SunSpecRtuDevice) -> str:
    return f"{dev.baudrate} {dev.bytesize}{dev.parity}{dev.stopbits}"


RtuLine = ModbusRtuDevice | ModbusMeterRtuDevice | SunSpecRtuDevice


def serial_port_conflicts(devices: list[RtuLine | P1SerialDevice]) -> list[str]:
    """One owner per serial port: RTU devices on a port must agree on the line and on nothing else using it."""
    problems: list[str] = []
    first: dict[str, RtuLine | P1SerialDevice] = {}
    units: dict[tuple[str, int], str] = {}
    for dev in devices:
        other = first.setdefault(dev.port, dev)
        if isinstance(dev, RtuLine):
            unit_owner = units.setdefault((dev.port, dev.unit_id), dev.id)
            if unit_owner != dev.id:
                problems.append(
                    f"devices {unit_owner!r} and {dev.id!r} both use unit id {dev.unit_id} on serial port {dev.port}"
                )
        if other is dev:
            continue
        if isinstance(dev, RtuLine) and isinstance(other, RtuLine):
            if dev.line() != other.line():
                problems.append(
                    f"devices {other.id!r} and {dev.id!r} share serial port {dev.port} with different line "
                    f"settings ({_line_text(other)} vs {_line_text(dev)})"
                )
        else:
            problems.append(f"devices {other.id!r} and {dev.id!r} cannot share serial port {dev.port}")
    return problems


class LogConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info",
        description="Least severe level logged. Logs are key=value on a terminal, JSON lines under systemd.",
    )


class ApiConfig(_Strict):
    socket: Path = Field(
        default=Path("/run/zapd/zapd.sock"),
        description="Unix socket of the local API that `zapctl` talks to (group zapd, mode 0660).",
    )


class HomeAssistantConfig(_Strict):
    enabled: bool = Field(
        default=False,
        description=(
            "Announce zapd's sensors and a mode select to Home Assistant through MQTT discovery and keep "
            "their states up to date."
        ),
    )
    host: str = Field(default="127.0.0.1", min_length=1, description="IP address or host name of the MQTT broker.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port.")
    username: str | None = Field(default=None, description="Broker user name, if the broker wants credentials.")
    password: str | None = Field(default=None, description="Broker password; never logged, redacted in `zapctl diag`.")
    discovery_prefix: str = Field(
        default="homeassistant",
        min_length=1,
        pattern=r"^[^+#]+$",
        description="Home Assistant's discovery prefix (its MQTT integration setting); no wildcards.",
    )
    node_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description=(
            "Node id in the discovery and state topics and in the entities' unique ids: letters, digits, "
            "`_` and `-`. Not set: the site id, with other characters replaced by `_`."
        ),
    )
    base_topic: str = Field(
        default="zapd",
        min_length=1,
        pattern=r"^[^+#]+$",
        description="Root of zapd's own state, availability and command topics: `<base_topic>/<node_id>/...`.",
    )
    state_interval_s: float = Field(
        default=10.0,
        ge=1,
        le=3600,
        description=(
            "Publish every sensor state this often (real s); the rung, the next action and the mode select "
            "are also published as soon as they change."
        ),
    )
    override_minutes: float = Field(
        default=60.0,
        gt=0,
        le=1440,
        description=(
            "How long a mode chosen in Home Assistant's select holds before zapd returns to `auto` by itself "
            "(like `zapctl fallback force --minutes`)."
        ),
    )


class MetricsConfig(_Strict):
    enabled: bool = Field(default=True, description="Serve OpenMetrics (Prometheus) for scraping.")
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address to listen on; keep it on loopback and let the fleet's agent scrape locally.",
    )
    port: int = Field(default=9464, ge=1, le=65535, description="TCP port of the metrics endpoint (`/metrics`).")


class ZapdConfig(_Strict):
    site: SiteConfig = Field(description="The grid connection: the site's id and the limits no command may break.")
    control: ControlConfig = Field(default=ControlConfig(), description="The local control loop.")
    store: StoreConfig = Field(default=StoreConfig(), description="Local state and the telemetry outbox.")
    plan: PlanConfig = Field(default=PlanConfig(), description="A local plan, for sites without a cloud.")
    cloud: CloudConfig | None = Field(
        default=None,
        description=(
            "The zapcloud endpoint for plans and telemetry; needs the Zap's key pair (`zapd keygen`). "
            "Not set: no uploads, plans only from `[plan]`."
        ),
    )
    log: LogConfig = Field(default=LogConfig(), description="Logging.")
    api: ApiConfig = Field(default=ApiConfig(), description="The local API for `zapctl`.")
    metrics: MetricsConfig = Field(
        default=MetricsConfig(), description="Prometheus metrics on localhost (counters, gauges, fallback rung)."
    )
    home_assistant: HomeAssistantConfig = Field(
        default=HomeAssistantConfig(),
        description="Home Assistant MQTT discovery: zapd's sensors and a mode select (see docs/operations.md).",
    )
    devices: list[DeviceConfig] = Field(
        default_factory=list,
        description="One `[[devices]]` table per device; `driver` picks the protocol, `id` must be unique.",
    )

    @property
    def grid_meter(self) -> str | None:
        """DER id of the site's one grid meter (the check refuses two); None when there is none."""
        grid = [m.der_id for m in meter_ders(self.devices) if m.role == "grid"]
        return grid[0] if len(grid) == 1 else None

    @model_validator(mode="after")
    def _unique_device_ids(self) -> ZapdConfig:
        seen: set[str] = set()
        for dev in self.devices:
            if dev.id in seen:
                raise ValueError(f"duplicate device id {dev.id!r}")
            seen.add(dev.id)
        brokers: set[tuple[str, int]] = set()
        for dev in self.devices:
            if isinstance(dev, MqttDevice):
                if (dev.host, dev.port) in brokers:
                    # One connection per broker: put every DER of that broker under one mqtt device.
                    raise ValueError(f"two mqtt devices for broker {dev.host}:{dev.port}")
                brokers.add((dev.host, dev.port))
        serial = [d for d in self.devices if isinstance(d, RtuLine | P1SerialDevice)]
        problems = serial_port_conflicts(serial)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ConfigError(Exception):
    """A config that cannot be used; `lines` are `file: key.path: reason`, one per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def validate_config(data: dict[str, object], source: str) -> ZapdConfig:
    """The config, or ConfigError with every problem; warnings (see zapd.config_check) do not stop it."""
    from zapd.config_check import check_data

    result = check_data(data, source)
    if result.config is None or result.errors:
        raise ConfigError(result.errors)
    return result.config


def load_config(path: Path) -> ZapdConfig:
    from zapd.config_check import check_file

    result = check_file(path)
    if result.config is None or result.errors:
        raise ConfigError(result.errors)
    return result.config
