"""Registers the `mqtt` kind; aiomqtt loads only when a config has an MQTT broker."""

from __future__ import annotations

from drivers.mqtt.config import MqttDevice
from drivers.registry import DriverKind, register

register(DriverKind("mqtt", "mqtt", MqttDevice, "drivers.mqtt.factory:add_mqtt", order=40))
