"""The `driver = "mqtt"` config model: one broker connection, the DERs it carries, their command topics.

drivers/mqtt/family.py registers it; aiomqtt is imported only when a config has an MQTT device.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from drivers.config_base import MAX_EV_CURRENT_A, DeviceModel, EvLimits, MeterRole, _Strict
from drivers.mqtt.config_mixins import MqttDeviceMixin
from zapd.bounds import MAX_SCALE

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
    scale: float = Field(
        default=1.0,
        ge=-MAX_SCALE,
        le=MAX_SCALE,
        description="Extra multiplier on top of the unit conversion; must not be 0.",
    )

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
        default=None,
        ge=0,
        le=MAX_EV_CURRENT_A,
        description="Current in A published when zapd stops. Not set: the device is left as it is.",
    )

    @model_validator(mode="after")
    def _on_off_pair(self) -> MqttCommandConfig:
        if (self.on_payload is None) != (self.off_payload is None):
            raise ValueError("on_payload and off_payload go together")
        return self


class MqttDevice(MqttDeviceMixin, DeviceModel):
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
