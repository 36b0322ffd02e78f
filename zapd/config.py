"""The daemon's TOML configuration, validated into typed structures at start.

pydantic (not msgspec) validates the config because it reports *every* problem in one pass
with its location, so `zapd config check` can print one `file: key.path: reason` line per
problem; msgspec stops at the first error. msgspec stays the choice for the hot wire formats.
The daemon itself runs on msgspec Structs generated from these models (zapd/config_gen.py ->
zapd/config_structs.py, drivers/config_structs.py): `zapd run` checks the file with the models in
a child (zapd/config_load.py), so pydantic never loads in the long-running process. What a model
*does* (the fuse limit, the grid meter) lives in pydantic-free mixins (zapd/config_types.py,
drivers/config_types.py, drivers/*/config_mixins.py) that both inherit.

The `[[devices]]` union is not written here: each driver family registers its config model
(drivers/registry.py), and the union, `DRIVER_NAMES` and the site-wide device checks (one grid
meter, one owner per serial port) are built from what is registered. The device models are
re-exported below for the code and tests that name them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from drivers.config_base import METER_ROLES as METER_ROLES
from drivers.config_base import (
    BatteryLimits,
    CommandTimeout,
    DeviceId,
    DeviceModel,
    EvLimits,
    PollPeriod,
    WritesPerHour,
    _Strict,
)
from drivers.modbus.config import (
    ModbusEvDevice,
    ModbusMeterRtuDevice,
    ModbusMeterTcpDevice,
    ModbusRtuDevice,
    ModbusTcpDevice,
    RegisterMapName,
    SunSpecRtuDevice,
    SunSpecTcpDevice,
)
from drivers.mqtt.config import MqttCommandConfig, MqttDerConfig, MqttDevice, MqttReadingConfig
from drivers.ocpp.config import OcppDevice
from drivers.p1.config import DSMR_TELEGRAM_INTERVAL_S, P1SerialDevice, P1TcpDevice, telegram_interval_s
from drivers.registry import device_models, driver_names
from zapd.bounds import MAX_POWER_W, MAX_RETENTION_MB
from zapd.config_types import SiteBehaviour, ZapdBehaviour
from zapd.config_types import meter_ders as meter_ders
from zapd.paths import DEFAULT_CONFIG_PATH as DEFAULT_CONFIG_PATH
from zapd.paths import DEFAULT_STATE_DIR

__all__ = [
    "DSMR_TELEGRAM_INTERVAL_S",
    "BatteryLimits",
    "CommandTimeout",
    "DeviceId",
    "EvLimits",
    "ModbusEvDevice",
    "ModbusMeterRtuDevice",
    "ModbusMeterTcpDevice",
    "ModbusRtuDevice",
    "ModbusTcpDevice",
    "MqttCommandConfig",
    "MqttDerConfig",
    "MqttDevice",
    "MqttReadingConfig",
    "OcppDevice",
    "P1SerialDevice",
    "P1TcpDevice",
    "PollPeriod",
    "RegisterMapName",
    "SunSpecRtuDevice",
    "SunSpecTcpDevice",
    "WritesPerHour",
    "telegram_interval_s",
]


class SiteConfig(SiteBehaviour, _Strict):
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
        le=MAX_POWER_W,
        description=(
            "Grid export limit in W (e.g. set by the DSO): battery discharge is held back so the site exports "
            "no more. Not set: only the fuse limits export."
        ),
    )


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
        le=MAX_RETENTION_MB,
        description=(
            "Size budget of the unsent-telemetry outbox in MiB (about 150 bytes per reading); beyond it the "
            "oldest readings are dropped (counted and logged)."
        ),
    )
    history_without_cloud_h: float = Field(
        default=24.0,
        gt=0,
        le=8760,
        description=(
            "Without `[cloud]`, the outbox is only local history (`zapctl telemetry`): it keeps this many hours "
            "(and at most 16 MiB); older readings are removed and counted as `expired_without_cloud`."
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
    channel: bool = Field(
        default=True,
        description=(
            "Hold the live channel (a WebSocket the Zap dials, at the cloud URL with ws(s):// and /v1/channel): plan "
            "notices and signed commands arrive at once. Polling goes on either way; off = polling only."
        ),
    )
    channel_status_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="Seconds between live status messages on the channel (a rung or link change is sent at once).",
    )
    channel_reconnect_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description=(
            "After the channel drops, the first reconnect is drawn from 0..this many seconds (full jitter, doubling "
            "per failure up to 300 s), so a fleet does not come back to a restarted cloud in the same second."
        ),
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


DRIVER_NAMES: tuple[str, ...] = driver_names()
if TYPE_CHECKING:
    DeviceConfig = DeviceModel
else:
    DeviceConfig = Annotated[Union[device_models()], Field(discriminator="driver")]  # noqa: UP007


def _line_text(line: tuple[int, str, int, int]) -> str:
    baudrate, parity, stopbits, bytesize = line
    return f"{baudrate} {bytesize}{parity}{stopbits}"


def serial_port_conflicts(devices: Sequence[DeviceModel]) -> list[str]:
    """One owner per serial port: RTU devices on a port must agree on the line and on nothing else using it."""
    problems: list[str] = []
    first: dict[str, DeviceModel] = {}
    units: dict[tuple[str, int], str] = {}
    for dev in devices:
        port = dev.serial_port()
        if port is None:
            continue
        other = first.setdefault(port, dev)
        unit, line = dev.serial_unit(), dev.serial_line()
        if unit is not None:
            unit_owner = units.setdefault((port, unit), dev.id)
            if unit_owner != dev.id:
                problems.append(f"devices {unit_owner!r} and {dev.id!r} both use unit id {unit} on serial port {port}")
        if other is dev:
            continue
        other_line = other.serial_line()
        if line is not None and other_line is not None:
            if line != other_line:
                problems.append(
                    f"devices {other.id!r} and {dev.id!r} share serial port {port} with different line "
                    f"settings ({_line_text(other_line)} vs {_line_text(line)})"
                )
        else:
            problems.append(f"devices {other.id!r} and {dev.id!r} cannot share serial port {port}")
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
            "(like `zapctl fallback force --for MINUTES`)."
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


class ZapdConfig(ZapdBehaviour, _Strict):
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
        problems = serial_port_conflicts(self.devices)
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
