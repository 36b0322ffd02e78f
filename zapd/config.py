"""The daemon's TOML configuration, validated into typed structures at start.

pydantic (not msgspec) validates the config because it reports *every* problem in one pass
with its location, so `zapd config check` can print one `file: key.path: reason` line per
problem; msgspec stops at the first error. msgspec stays the choice for the hot wire formats.
"""

from __future__ import annotations

import base64
import binascii
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CONFIG_PATH = Path("/etc/zapd/zapd.toml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteConfig(_Strict):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    phases: Literal[1, 3] = 3
    voltage_v: float = Field(default=230.0, gt=0, le=480)
    fuse_a: float = Field(gt=0, le=1000, description="main fuse rating per phase")
    max_export_w: float | None = Field(default=None, ge=0, description="grid export limit; None = fuse")

    @property
    def fuse_limit_w(self) -> float:
        return self.fuse_a * self.voltage_v * self.phases


class ControlConfig(_Strict):
    tick_s: float = Field(default=10.0, gt=0, le=3600)
    refresh_s: float = Field(default=60.0, gt=0, le=3600, description="re-write an unchanged setpoint")
    deadband_w: float = Field(default=50.0, ge=0, le=10_000)
    fuse_margin: float = Field(default=0.95, gt=0, le=1)


class StoreConfig(_Strict):
    state_dir: Path = Path("/var/lib/zapd")
    retention_days: float = Field(default=30.0, gt=0, le=3650)
    retention_mb: float = Field(default=512.0, gt=0)


class PlanConfig(_Strict):
    file: Path | None = None


class CloudConfig(_Strict):
    url: str = Field(pattern=r"^https?://")
    public_key: str = Field(min_length=40, description="the cloud's Ed25519 public key, base64")
    upload_interval_s: float = Field(default=10.0, gt=0, le=3600)
    plan_interval_s: float = Field(default=60.0, gt=0, le=86_400)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    batch_max: int = Field(default=5000, ge=1, le=10_000)

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
    capacity_wh: float | None = Field(default=None, gt=0)
    max_charge_w: float | None = Field(default=None, ge=0)
    max_discharge_w: float | None = Field(default=None, ge=0)
    reserve_soc: float = Field(default=0.10, ge=0, le=1)
    max_soc: float = Field(default=1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _reserve_below_max(self) -> BatteryLimits:
        if self.reserve_soc >= self.max_soc:
            raise ValueError("reserve_soc must be below max_soc")
        return self


class ModbusTcpDevice(_Strict):
    driver: Literal["modbus_tcp"]
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=247)
    map: str = Field(min_length=1, description="register map name or path")
    poll_s: float = Field(default=5.0, gt=0, le=3600)
    timeout_s: float = Field(default=3.0, gt=0, le=60)
    min_gap_ms: float = Field(default=0.0, ge=0, le=10_000, description="quiet time between frames on the bus")
    max_requests_per_s: float | None = Field(default=None, gt=0, le=1000, description="bus request-rate cap")
    max_writes_per_hour: int | None = Field(default=360, ge=1, le=100_000, description="flash wear cap; none = off")
    command_timeout_s: int = Field(
        default=300, ge=10, le=65_535, description="the device reverts to its own mode without a write this long"
    )
    battery: BatteryLimits = BatteryLimits()


class ModbusRtuDevice(_Strict):
    """A register-map device on an RS-485 line; every device on one port must share its line settings."""

    driver: Literal["modbus_rtu"]
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    port: str = Field(min_length=1, description="serial device, e.g. /dev/ttyUSB0")
    baudrate: int = Field(default=9600, ge=300, le=921_600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(default=1, ge=1, le=247)
    map: str = Field(min_length=1, description="register map name or path")
    poll_s: float = Field(default=5.0, gt=0, le=3600)
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    min_gap_ms: float | None = Field(default=None, ge=0, le=10_000, description="none = 3.5 character times")
    max_requests_per_s: float | None = Field(default=None, gt=0, le=1000)
    max_writes_per_hour: int | None = Field(default=360, ge=1, le=100_000)
    command_timeout_s: int = Field(
        default=300, ge=10, le=65_535, description="the device reverts to its own mode without a write this long"
    )
    battery: BatteryLimits = BatteryLimits()

    def line(self) -> tuple[int, str, int, int]:
        return (self.baudrate, self.parity, self.stopbits, self.bytesize)


class SunSpecTcpDevice(_Strict):
    """A SunSpec inverter/battery/meter; what it has is discovered, the flags say which DERs to expect."""

    driver: Literal["sunspec_tcp"]
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=247)
    poll_s: float = Field(default=5.0, gt=0, le=3600)
    timeout_s: float = Field(default=3.0, gt=0, le=60)
    min_gap_ms: float = Field(default=0.0, ge=0, le=10_000)
    max_requests_per_s: float | None = Field(default=None, gt=0, le=1000)
    max_writes_per_hour: int | None = Field(default=360, ge=1, le=100_000)
    revert_timeout_s: int = Field(default=300, ge=10, le=65_534, description="model 124 InOutWRte_RvrtTms")
    has_battery: bool = True
    has_meter: bool = False
    battery: BatteryLimits = BatteryLimits()


class P1SerialDevice(_Strict):
    driver: Literal["p1_serial"]
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    port: str = Field(min_length=1)
    baudrate: int | None = Field(default=None, gt=0, description="None = what the DSMR version prescribes")
    dsmr_version: Literal["2.2", "4", "5", "5B", "5L", "5S", "Q3D"] = "5"
    poll_s: float = Field(default=1.0, gt=0, le=3600, description="the meter's telegram interval")
    decryption_key: str | None = None


class P1TcpDevice(_Strict):
    driver: Literal["p1_tcp"]
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    dsmr_version: Literal["2.2", "4", "5", "5B", "5L", "5S", "Q3D"] = "5"
    poll_s: float = Field(default=1.0, gt=0, le=3600)
    decryption_key: str | None = None


class EvLimits(_Strict):
    """An EV charger's limits as installed (the cable, the circuit breaker, the phases wired)."""

    max_current_a: float = Field(gt=0, le=80, description="per phase; the lower of charger, cable and breaker")
    min_current_a: float = Field(default=6.0, ge=6, le=80, description="IEC 61851: at least 6 A")
    phases: Literal[1, 3] = 3
    voltage_v: float = Field(default=230.0, gt=0, le=480)
    safe_mode: Literal["minimum", "pause"] = Field(default="minimum", description="what zapd leaves on exit")

    @model_validator(mode="after")
    def _min_below_max(self) -> EvLimits:
        if self.min_current_a > self.max_current_a:
            raise ValueError("min_current_a must not exceed max_current_a")
        return self


class ModbusEvDevice(_Strict):
    driver: Literal["modbus_ev"]
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255, description="Alfen: 1 = socket 1, 2 = socket 2")
    map: str = Field(default="alfen_eve", min_length=1, description="register map name or path")
    poll_s: float = Field(default=5.0, gt=0, le=3600)
    timeout_s: float = Field(default=3.0, gt=0, le=60)
    keepalive_s: float = Field(default=30.0, gt=0, le=3600, description="re-write the setpoint this often")
    ev: EvLimits


MqttUnit = Literal["", "W", "kW", "Wh", "kWh", "%", "A", "V"]


class MqttReadingConfig(_Strict):
    topic: str = Field(min_length=1, description="topic filter; + and # allowed")
    key: str = Field(min_length=1, description="reading value key, e.g. power_w, import_wh, soc")
    path: str | None = Field(default=None, min_length=1, description="dotted JSON path; none = plain number")
    unit: MqttUnit = ""
    scale: float = 1.0

    @model_validator(mode="after")
    def _scale_nonzero(self) -> MqttReadingConfig:
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        return self


class MqttDerConfig(_Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$", description="DER id is <device id>.<id>")
    kind: Literal["meter", "pv", "battery", "ev_charger", "load"]
    preset: Literal["shelly_em", "shelly_em_rpc", "tasmota_sensor", "opendtu"] | None = None
    source: str | None = Field(default=None, min_length=1, description="the preset's topic root")
    readings: list[MqttReadingConfig] = Field(default_factory=list)
    ev: EvLimits | None = None

    @model_validator(mode="after")
    def _has_readings(self) -> MqttDerConfig:
        if self.preset is not None and self.source is None:
            raise ValueError(f"preset {self.preset!r} needs source (its topic root)")
        if self.preset is None and not self.readings:
            raise ValueError("give a preset or at least one [[...readings]] entry")
        return self


class MqttCommandConfig(_Strict):
    der: str = Field(min_length=1, description="id of one of this device's ders")
    topic: str = Field(min_length=1, pattern=r"^[^+#]+$")
    payload: str = Field(default="{value}", description="{value} is replaced by the current in A")
    on_payload: str | None = None
    off_payload: str | None = None
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    safe_value: float | None = Field(default=None, description="published when zapd stops; none = nothing")

    @model_validator(mode="after")
    def _on_off_pair(self) -> MqttCommandConfig:
        if (self.on_payload is None) != (self.off_payload is None):
            raise ValueError("on_payload and off_payload go together")
        return self


class MqttDevice(_Strict):
    driver: Literal["mqtt"]
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    host: str = Field(min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    client_id: str | None = Field(default=None, min_length=1, max_length=64)
    stale_s: float = Field(default=60.0, gt=0, le=86_400, description="a value older than this is unknown")
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    ders: list[MqttDerConfig] = Field(min_length=1)
    commands: list[MqttCommandConfig] = Field(default_factory=list)

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


DRIVER_NAMES = ("modbus_tcp", "modbus_rtu", "sunspec_tcp", "modbus_ev", "mqtt", "p1_serial", "p1_tcp")
DeviceConfig = Annotated[
    ModbusTcpDevice | ModbusRtuDevice | SunSpecTcpDevice | ModbusEvDevice | MqttDevice | P1SerialDevice | P1TcpDevice,
    Field(discriminator="driver"),
]


def _line_text(dev: ModbusRtuDevice) -> str:
    return f"{dev.baudrate} {dev.bytesize}{dev.parity}{dev.stopbits}"


def serial_port_conflicts(devices: list[ModbusRtuDevice | P1SerialDevice]) -> list[str]:
    """One owner per serial port: RTU devices on a port must agree on the line and on nothing else using it."""
    problems: list[str] = []
    first: dict[str, ModbusRtuDevice | P1SerialDevice] = {}
    units: dict[tuple[str, int], str] = {}
    for dev in devices:
        other = first.setdefault(dev.port, dev)
        if isinstance(dev, ModbusRtuDevice):
            unit_owner = units.setdefault((dev.port, dev.unit_id), dev.id)
            if unit_owner != dev.id:
                problems.append(
                    f"devices {unit_owner!r} and {dev.id!r} both use unit id {dev.unit_id} on serial port {dev.port}"
                )
        if other is dev:
            continue
        if isinstance(dev, ModbusRtuDevice) and isinstance(other, ModbusRtuDevice):
            if dev.line() != other.line():
                problems.append(
                    f"devices {other.id!r} and {dev.id!r} share serial port {dev.port} with different line "
                    f"settings ({_line_text(other)} vs {_line_text(dev)})"
                )
        else:
            problems.append(f"devices {other.id!r} and {dev.id!r} cannot share serial port {dev.port}")
    return problems


class LogConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"


class ApiConfig(_Strict):
    socket: Path = Path("/run/zapd/zapd.sock")


class ZapdConfig(_Strict):
    site: SiteConfig
    control: ControlConfig = ControlConfig()
    store: StoreConfig = StoreConfig()
    plan: PlanConfig = PlanConfig()
    cloud: CloudConfig | None = None
    log: LogConfig = LogConfig()
    api: ApiConfig = ApiConfig()
    devices: list[DeviceConfig] = Field(default_factory=list)

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
        serial = [d for d in self.devices if isinstance(d, ModbusRtuDevice | P1SerialDevice)]
        problems = serial_port_conflicts(serial)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ConfigError(Exception):
    """A config that cannot be used; `lines` are `file: key.path: reason`, one per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _key_path(loc: tuple[int | str, ...], data: object) -> str:
    """Turn pydantic's location into `devices[0].port`, dropping union tag names it inserts."""
    parts: list[str] = []
    node: object = data
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        if isinstance(node, dict) and item not in node and item in DRIVER_NAMES:
            continue  # the discriminator branch pydantic reports, not a key the user wrote
        parts.append(("." if parts else "") + item)
        node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


_REASONS = {
    "extra_forbidden": "unknown key",
    "missing": "missing required key",
    "union_tag_invalid": "unknown driver",
    "union_tag_not_found": "missing required key 'driver'",
}


def _reason(err_type: str, msg: str, err_input: object) -> str:
    if err_type == "union_tag_invalid":
        name = err_input.get("driver") if isinstance(err_input, dict) else err_input
        return f"unknown driver {name!r} (expected one of: {', '.join(DRIVER_NAMES)})"
    return _REASONS.get(err_type, msg[0].lower() + msg[1:] if msg else err_type)


def _duplicate_ids(data: dict[str, object], source: str) -> list[str]:
    """Checked on the raw data so a duplicate is reported even when other keys are wrong too."""
    devices = data.get("devices")
    if not isinstance(devices, list):
        return []
    lines: list[str] = []
    first_index: dict[str, int] = {}
    for i, dev in enumerate(devices):
        dev_id = dev.get("id") if isinstance(dev, dict) else None
        if not isinstance(dev_id, str):
            continue
        if dev_id in first_index:
            lines.append(
                f"{source}: devices[{i}].id: duplicate device id {dev_id!r} (first at devices[{first_index[dev_id]}])"
            )
        else:
            first_index[dev_id] = i
    return lines


def validate_config(data: dict[str, object], source: str) -> ZapdConfig:
    lines = _duplicate_ids(data, source)
    try:
        config = ZapdConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = err["loc"]
            reason = _reason(err["type"], err["msg"].removeprefix("Value error, "), err.get("input"))
            if err["type"] == "union_tag_invalid" and loc:
                loc = (*loc, "driver")
            line = f"{source}: {_key_path(tuple(loc), data)}: {reason}"
            if "duplicate device id" not in reason:
                lines.append(line)
        raise ConfigError(lines) from None
    if lines:
        raise ConfigError(lines)
    return config


def load_config(path: Path) -> ZapdConfig:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: (file): cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: (syntax): {exc}"]) from None
    return validate_config(data, str(path))
