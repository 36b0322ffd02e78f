"""Config -> driver for an `mqtt` device: one broker connection carrying its DERs and command topics.

Imported by the registry only when a config has an MQTT device: aiomqtt loads with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.mqtt.driver import CommandTopic, MqttDer, MqttDriver
from drivers.mqtt.mapping import TopicMapping, preset_mappings
from zapd.clock import Clock
from zapd.model import DerKind

if TYPE_CHECKING:
    from drivers.config_structs import EvLimits, MqttDevice
    from zapd.devices import DeviceSet


def add_mqtt(out: DeviceSet, dev: MqttDevice, clock: Clock) -> None:
    mappings: list[TopicMapping] = []
    ders: list[MqttDer] = []
    limits: dict[str, EvLimits] = {}
    for der in dev.ders:
        der_id, kind = f"{dev.id}.{der.id}", DerKind(der.kind)
        if der.preset is not None and der.source is not None:
            mappings += preset_mappings(der.preset, der.source, der_id, kind)
        mappings += [
            TopicMapping(topic=r.topic, der_id=der_id, kind=kind, key=r.key, path=r.path, unit=r.unit, scale=r.scale)
            for r in der.readings
        ]
        ders.append(MqttDer(der_id, kind, ev=der.ev))
        if der.ev is not None:
            limits[der_id] = der.ev
        # No poll period on MQTT: pick one so that "three periods" is the configured stale_s.
        out.poll_s[der_id] = dev.stale_s / 3
        out.kinds[der_id] = kind
    commands = [
        CommandTopic(
            der_id=f"{dev.id}.{c.der}",
            topic=c.topic,
            payload=c.payload,
            on_payload=c.on_payload,
            off_payload=c.off_payload,
            qos=c.qos,
            retain=c.retain,
            safe_value=c.safe_value,
        )
        for c in dev.commands
    ]
    driver = MqttDriver(
        device_id=dev.id,
        host=dev.host,
        port=dev.port,
        mappings=mappings,
        clock=clock,
        ders=ders,
        commands=commands,
        username=dev.username,
        password=dev.password,
        client_id=dev.client_id,
        stale_s=dev.stale_s,
        timeout_s=dev.timeout_s,
        keepalive_s=dev.keepalive_s,
    )
    out.drivers.append(driver)
    for c in commands:
        out.actuators[c.der_id] = driver
        out.add_ev(c.der_id, limits[c.der_id])
