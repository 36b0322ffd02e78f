"""Build drivers from the validated config: the one place that knows which class serves which `driver`."""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.api import Controllable, Driver
from drivers.modbus.bus import get_tcp_bus
from drivers.modbus.ev_charger import ModbusEvCharger
from drivers.modbus.register_map import load_register_map
from drivers.mqtt.driver import CommandTopic, MqttDer, MqttDriver
from drivers.mqtt.mapping import TopicMapping, preset_mappings
from drivers.ocpp.config import OcppDevice
from drivers.p1.dsmr import P1Meter
from drivers.p1.transport import SerialP1, TcpP1
from zapd.clock import Clock
from zapd.config import (
    BatteryLimits,
    EvLimits,
    ModbusEvDevice,
    ModbusMeterRtuDevice,
    ModbusMeterTcpDevice,
    ModbusRtuDevice,
    ModbusTcpDevice,
    MqttDevice,
    P1SerialDevice,
    P1TcpDevice,
    SunSpecRtuDevice,
    SunSpecTcpDevice,
    ZapdConfig,
    telegram_interval_s,
)
from zapd.devices_modbus import add_modbus_meter, add_modbus_rtu, add_modbus_tcp, add_sunspec_tcp
from zapd.ev_envelope import EvEnvelope
from zapd.model import DerKind


@dataclass
class DeviceSet:
    drivers: list[Driver] = field(default_factory=list)
    actuators: dict[str, Controllable] = field(default_factory=dict)  # battery der_id → driver
    battery_limits: dict[str, BatteryLimits] = field(default_factory=dict)  # battery der_id → config
    poll_s: dict[str, float] = field(default_factory=dict)  # der_id → poll period
    kinds: dict[str, DerKind] = field(default_factory=dict)
    ev_envelopes: list[EvEnvelope] = field(default_factory=list)  # controllable EV chargers
    grid_meter: str | None = None  # DER id of the site's one grid meter (the config check refuses two)

    def add_ev(self, der_id: str, limits: EvLimits) -> None:
        self.ev_envelopes.append(
            EvEnvelope(
                der_id=der_id,
                max_current_a=limits.max_current_a,
                phases=limits.phases,
                min_current_a=limits.min_current_a,
                voltage_v=limits.voltage_v,
            )
        )


def build_devices(config: ZapdConfig, clock: Clock) -> DeviceSet:
    out = DeviceSet(grid_meter=config.grid_meter)
    for dev in config.devices:
        if isinstance(dev, ModbusTcpDevice):
            add_modbus_tcp(out, dev, clock)
        elif isinstance(dev, P1SerialDevice | P1TcpDevice):
            transport: SerialP1 | TcpP1
            if isinstance(dev, P1SerialDevice):
                transport = SerialP1.for_version(dev.port, dev.dsmr_version)
                if dev.baudrate is not None:
                    transport.baudrate = dev.baudrate
            else:
                transport = TcpP1(dev.host, dev.port)
            out.drivers.append(
                P1Meter(
                    device_id=dev.id,
                    transport=transport,
                    dsmr_version=dev.dsmr_version,
                    poll_s=telegram_interval_s(dev),
                    clock=clock,
                    decryption_key=dev.decryption_key,
                )
            )
            out.poll_s[dev.id] = telegram_interval_s(dev)
            out.kinds[dev.id] = DerKind.METER
        elif isinstance(dev, ModbusEvDevice):
            charger = ModbusEvCharger(
                device_id=dev.id,
                bus=get_tcp_bus(dev.host, dev.port, timeout_s=dev.timeout_s),
                unit_id=dev.unit_id,
                register_map=load_register_map(dev.map),
                poll_s=dev.poll_s,
                clock=clock,
                max_current_a=dev.ev.max_current_a,
                min_current_a=dev.ev.min_current_a,
                phases=dev.ev.phases,
                voltage_v=dev.ev.voltage_v,
                safe_mode=dev.ev.safe_mode,
                keepalive_s=dev.keepalive_s,
            )
            out.drivers.append(charger)
            out.actuators[charger.ev_id] = charger
            out.poll_s[charger.ev_id] = dev.poll_s
            out.kinds[charger.ev_id] = DerKind.EV_CHARGER
            out.add_ev(charger.ev_id, dev.ev)
        elif isinstance(dev, MqttDevice):
            _add_mqtt(out, dev, clock)
        elif isinstance(dev, ModbusRtuDevice):
            add_modbus_rtu(out, dev, clock)
        elif isinstance(dev, ModbusMeterTcpDevice | ModbusMeterRtuDevice):
            add_modbus_meter(out, dev, clock)
        elif isinstance(dev, SunSpecTcpDevice | SunSpecRtuDevice):
            add_sunspec_tcp(out, dev, clock)
        elif isinstance(dev, OcppDevice):
            # Imported here: websockets and ocpp load only on a site that has OCPP chargers.
            from zapd.devices_ocpp import add_ocpp

            add_ocpp(out, dev, clock)
    return out


def _add_mqtt(out: DeviceSet, dev: MqttDevice, clock: Clock) -> None:
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
        ev = der.ev
        ders.append(
            MqttDer(
                der_id,
                kind,
                max_current_a=ev.max_current_a if ev else 0.0,
                min_current_a=ev.min_current_a if ev else 0.0,
                phases=ev.phases if ev else 1,
                voltage_v=ev.voltage_v if ev else 230.0,
            )
        )
        if ev is not None:
            limits[der_id] = ev
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
