"""The config models of the Modbus families: register-map devices and meters, SunSpec, EV chargers.

They share field definitions (one meaning, one description), so they live in one module;
drivers/modbus/family.py registers each `driver` kind with its factory (drivers/modbus/factory.py),
which is imported only when a config uses a Modbus device.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from drivers.config_base import (
    BatteryLimits,
    CommandTimeout,
    DeviceId,
    DeviceModel,
    EvLimits,
    MeterRole,
    PollPeriod,
    RtuLineMixin,
    WritesPerHour,
    _same_as,
)
from drivers.config_types import EvChargerMixin, RoleMeterMixin
from drivers.modbus.config_mixins import SunSpecMeterMixin

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


RequestTimeout = Annotated[
    float,
    Field(
        gt=0, le=60, description="Timeout of each Modbus request in s; a request that takes longer is a driver error."
    ),
]
RtuFrameGap = Annotated[
    float | None,
    Field(
        ge=0,
        le=10_000,
        description=(
            "Quiet time between frames in ms. Not set: 3.5 character times (1.75 ms above 19200 bit/s), as "
            "Modbus RTU requires."
        ),
    ),
]
RtuRequestCap = Annotated[
    float | None,
    Field(
        gt=0,
        le=1000,
        description="Cap on Modbus requests per second on this serial line; requests beyond it wait. Not set: no cap.",
    ),
]


class RtuLineDevice(RtuLineMixin, DeviceModel):
    """The keys every device on an RS-485 line has, defined once for all RTU kinds.

    They come first, after `driver` and `id` (each kind narrows `driver` to its own literal, and may give
    `id` its own description: a redefined field keeps its place), so every RTU kind lists its line the same
    way in docs/config-reference.md. Devices on one port must share baudrate, parity, stopbits and bytesize
    (zapd/config.py checks it).
    """

    driver: str
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


class ModbusTcpDevice(DeviceModel):
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
    timeout_s: RequestTimeout = 3.0
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


class ModbusRtuDevice(RtuLineDevice):
    """A register-map device on an RS-485 line; every device on one port must share its line settings."""

    driver: Literal["modbus_rtu"] = Field(
        description=(
            "A hybrid inverter or battery on an RS-485 line (Modbus RTU), through a register map. Its DERs "
            "are `<id>.battery` and `<id>.pv` (when the map has PV). Devices on one serial port must share "
            "baudrate, parity, stopbits and bytesize, and need different unit ids."
        )
    )
    map: RegisterMapName
    poll_s: PollPeriod = 5.0
    timeout_s: RequestTimeout = 1.0
    min_gap_ms: RtuFrameGap = None
    max_requests_per_s: RtuRequestCap = None
    max_writes_per_hour: WritesPerHour = 360
    command_timeout_s: CommandTimeout = 300
    battery: BatteryLimits = Field(default=BatteryLimits(), description="Limits of the battery behind this device.")


class SunSpecTcpDevice(SunSpecMeterMixin, DeviceModel):
    """A SunSpec inverter/battery/meter; what it has is discovered, the flags say which DERs to expect."""

    driver: Literal["sunspec_tcp"] = Field(
        description=(
            "A SunSpec inverter (Fronius, SMA, SolarEdge, ...) over Modbus-TCP: zapd reads its model chain "
            "and learns model, limits and capacity from it; battery control uses SunSpec model 124, or model "
            "704 (DERCtlAC) where 124 is absent and model 714 shows a storage-only DER (not on a hybrid: "
            "docs/devices.md). Its DERs are `<id>.pv`, `<id>.battery` and `<id>.meter`."
        )
    )
    id: DeviceId
    host: str = Field(min_length=1, description="IP address or host name of the inverter.")
    port: int = Field(default=502, ge=1, le=65535, description="Modbus-TCP port.")
    unit_id: int = Field(default=1, ge=0, le=247, description="Modbus unit (slave) id.")
    poll_s: PollPeriod = 5.0
    timeout_s: RequestTimeout = 3.0
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
            "Written to the inverter (model 124 `InOutWRte_RvrtTms`, or 704 `WSetRvrtTms`): without a write "
            "from zapd for this many s it drops zapd's charge/discharge setpoint and returns to its own control."
        ),
    )
    has_battery: bool = Field(
        default=False,
        description=(
            "A battery behind the inverter: report and control it as `<id>.battery`. Not set: none (a PV-only "
            "inverter gets no battery DER). A scan that shows a storage model with an implemented point while "
            "this is false, or none while it is true, is a configuration error naming the fix; `zapd devices "
            "scan --host` prints the right value."
        ),
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
            "`carlo_gavazzi_em340`, `abb_b23_b24`, ...; see docs/devices.md), a path to your own file, or `auto`: "
            "recognise the meter's profile at start (read-only probes)."
        ),
    ),
]


class ModbusMeterTcpDevice(RoleMeterMixin, DeviceModel):
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


class ModbusMeterRtuDevice(RoleMeterMixin, RtuLineDevice):
    """A read-only meter on an RS-485 line; it shares the line rules of `modbus_rtu` devices on its port."""

    driver: Literal["modbus_meter_rtu"] = Field(
        description=(
            "A grid, PV, EV or sub-meter on an RS-485 line (Modbus RTU), read through a meter profile. Its DER "
            "is `<id>`. Devices on one serial port must share baudrate, parity, stopbits and bytesize, and need "
            "different unit ids."
        )
    )
    map: MeterMapName
    poll_s: PollPeriod = 5.0
    timeout_s: RequestTimeout = 1.0
    min_gap_ms: RtuFrameGap = None
    max_requests_per_s: RtuRequestCap = None
    role: MeterRole = Field(default="grid", description=_METER_ROLE_DESCRIPTION)


class SunSpecRtuDevice(SunSpecMeterMixin, RtuLineDevice):
    """A SunSpec inverter on an RS-485 line: the SunSpec driver over a serial bus (line rules as `modbus_rtu`)."""

    driver: Literal["sunspec_rtu"] = Field(
        description=(
            "A SunSpec inverter or battery on an RS-485 line (Modbus RTU): as `sunspec_tcp`, its model chain says "
            "what it is. Its DERs are `<id>.pv`, `<id>.battery` and `<id>.meter`. Devices on one serial port must "
            "share baudrate, parity, stopbits and bytesize, and need different unit ids."
        )
    )
    poll_s: PollPeriod = 5.0
    timeout_s: RequestTimeout = 1.0
    min_gap_ms: RtuFrameGap = None
    max_requests_per_s: RtuRequestCap = None
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


class ModbusEvDevice(EvChargerMixin, DeviceModel):
    driver: Literal["modbus_ev"] = Field(
        description=(
            'An EV charger over Modbus-TCP (Alfen Eve: enable active load balancing with data source "Energy '
            'Management System" in ACE Service Installer), also one on RS-485 behind a TCP gateway. Its DER is '
            "`<id>.ev`. A charger wired to zapd's own RS-485 adapter is `modbus_ev_rtu`."
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
            "Register map: `alfen_eve`, `abb_terra_ac`, `mennekes_amtron`, `phoenix_ev_eth`, `wallbe_phoenix_ev` "
            "or `schneider_evlink_pro_ac` (shipped; see docs/devices.md) or a path to your own file."
        ),
    )
    poll_s: PollPeriod = 5.0
    timeout_s: RequestTimeout = 3.0
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


class ModbusEvRtuDevice(EvChargerMixin, RtuLineDevice):
    """An EV charger on an RS-485 line: the `modbus_ev` driver over a serial bus (line rules as `modbus_rtu`)."""

    driver: Literal["modbus_ev_rtu"] = Field(
        description=(
            "An EV charger on an RS-485 line (Modbus RTU), through a register map whose vendor document offers "
            "RTU (shipped: `abb_terra_ac`). Its DER is `<id>.ev`. Devices on one serial port must share baudrate, "
            "parity, stopbits and bytesize, and need different unit ids."
        )
    )
    id: str = _same_as(ModbusEvDevice, "id")
    map: str = Field(
        min_length=1,
        description=(
            "Register map of a charger that speaks Modbus RTU: `abb_terra_ac` (shipped; the other shipped chargers "
            'are Modbus-TCP only, docs/devices.md) or a path to your own file with `transports = ["rtu"]` in its '
            "[ev] table."
        ),
    )
    poll_s: PollPeriod = 5.0
    timeout_s: RequestTimeout = 1.0
    min_gap_ms: RtuFrameGap = None
    max_requests_per_s: RtuRequestCap = None
    keepalive_s: float = _same_as(ModbusEvDevice, "keepalive_s")
    ev: EvLimits = _same_as(ModbusEvDevice, "ev")
