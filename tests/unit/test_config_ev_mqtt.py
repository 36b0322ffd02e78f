"""Config for EV chargers over Modbus and MQTT devices: validated, errors name file/key/reason, built into drivers."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.modbus.ev_charger import ModbusEvCharger
from drivers.mqtt.driver import MqttDriver
from zapd.clock import SystemClock
from zapd.config import ConfigError, validate_config
from zapd.devices import build_devices
from zapd.model import DerKind

SITE = {"id": "home", "fuse_a": 25}
EVE = {"driver": "modbus_ev", "id": "eve", "host": "10.0.0.5", "unit_id": 1, "ev": {"max_current_a": 16}}
MQTT = {
    "driver": "mqtt",
    "id": "mq",
    "host": "10.0.0.2",
    "ders": [
        {"id": "grid", "kind": "meter", "preset": "shelly_em", "source": "shellypro3em-1"},
        {"id": "pv", "kind": "pv", "preset": "opendtu", "source": "solar/1161"},
        {
            "id": "wallbox",
            "kind": "ev_charger",
            "readings": [{"topic": "wb/status", "path": "power", "key": "power_w", "unit": "kW"}],
            "ev": {"max_current_a": 16, "phases": 1},
        },
    ],
    "commands": [{"der": "wallbox", "topic": "wb/set/current"}],
}


def config(*devices: dict[str, Any]) -> dict[str, Any]:
    return {"site": SITE, "devices": list(devices)}


def test_ev_and_mqtt_devices_build() -> None:
    devices = build_devices(validate_config(config(EVE, MQTT), "z.toml"), SystemClock())
    eve, mq = devices.drivers
    assert isinstance(eve, ModbusEvCharger) and isinstance(mq, MqttDriver)
    assert set(devices.actuators) == {"eve.ev", "mq.wallbox"}
    assert [(k, e.max_current_a, e.phases) for k, e in devices.ev_limits.items()] == [
        ("eve.ev", 16, 3),
        ("mq.wallbox", 16, 1),
    ]
    assert devices.kinds["mq.grid"] is DerKind.METER and devices.kinds["mq.pv"] is DerKind.PV
    assert devices.poll_s["mq.grid"] == pytest.approx(20.0)  # stale_s 60 = three "polls"


@pytest.mark.parametrize(
    ("device", "line"),
    [
        ({**EVE, "ev": {"max_current_a": 16, "min_current_a": 4}}, "devices.eve.ev.min_current_a: input should be"),
        ({**EVE, "ev": {"max_current_a": 10, "min_current_a": 12}}, "devices.eve.ev: min_current_a must not exceed"),
        ({**EVE, "ev": {"max_current_a": 16, "phases": 2}}, "devices.eve.ev.phases: input should be 1 or 3"),
        ({k: v for k, v in EVE.items() if k != "ev"}, "devices.eve.ev: missing required key"),
        ({**MQTT, "ders": [{"id": "x", "kind": "meter"}]}, "devices.mq.ders.x: give a preset or at least one"),
        ({**MQTT, "ders": [{"id": "x", "kind": "meter", "preset": "opendtu"}]}, "needs source"),
        ({**MQTT, "commands": [{"der": "grid", "topic": "x"}]}, "commands need kind = 'ev_charger'"),
        ({**MQTT, "commands": [{"der": "wallbox", "topic": "x/#"}]}, "devices.mq.commands[0].topic"),
        ({**MQTT, "port": 0}, "devices.mq.port: input should be greater than or equal to 1"),
        ({"driver": "mqtt2", "id": "x"}, "devices.x.driver: unknown driver 'mqtt2' (expected one of: modbus_tcp"),
    ],
)
def test_errors_name_file_key_and_reason(device: dict[str, Any], line: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(config(device), "z.toml")
    assert any(e.startswith("z.toml: ") and line in e for e in err.value.lines), err.value.lines


def test_one_mqtt_device_per_broker() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(config(MQTT, {**MQTT, "id": "mq2"}), "z.toml")
    assert any("two mqtt devices for broker 10.0.0.2:1883" in e for e in err.value.lines)
