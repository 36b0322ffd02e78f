"""Build drivers from the validated config: the one place that knows which class serves which `driver`."""

from __future__ import annotations

from dataclasses import dataclass, field

from drivers.api import Controllable, Driver
from drivers.modbus.bus import get_tcp_bus
from drivers.modbus.hybrid_inverter import ModbusHybridInverter
from drivers.modbus.register_map import load_register_map
from drivers.p1.dsmr import P1Meter
from drivers.p1.transport import SerialP1, TcpP1
from zapd.clock import Clock
from zapd.config import BatteryLimits, ModbusTcpDevice, P1SerialDevice, P1TcpDevice, ZapdConfig
from zapd.model import DerKind


@dataclass
class DeviceSet:
    drivers: list[Driver] = field(default_factory=list)
    actuators: dict[str, Controllable] = field(default_factory=dict)  # battery der_id → driver
    battery_limits: dict[str, BatteryLimits] = field(default_factory=dict)  # battery der_id → config
    poll_s: dict[str, float] = field(default_factory=dict)  # der_id → poll period
    kinds: dict[str, DerKind] = field(default_factory=dict)


def build_devices(config: ZapdConfig, clock: Clock) -> DeviceSet:
    out = DeviceSet()
    for dev in config.devices:
        if isinstance(dev, ModbusTcpDevice):
            inverter = ModbusHybridInverter(
                device_id=dev.id,
                bus=get_tcp_bus(dev.host, dev.port, timeout_s=dev.timeout_s),
                unit_id=dev.unit_id,
                register_map=load_register_map(dev.map),
                poll_s=dev.poll_s,
                clock=clock,
                max_charge_w=dev.battery.max_charge_w,
                max_discharge_w=dev.battery.max_discharge_w,
                capacity_wh=dev.battery.capacity_wh,
            )
            out.drivers.append(inverter)
            battery_id = f"{dev.id}.battery"
            out.actuators[battery_id] = inverter
            out.battery_limits[battery_id] = dev.battery
            out.poll_s[battery_id] = dev.poll_s
            out.kinds[battery_id] = DerKind.BATTERY
            out.poll_s[f"{dev.id}.pv"] = dev.poll_s
            out.kinds[f"{dev.id}.pv"] = DerKind.PV
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
                    poll_s=dev.poll_s,
                    clock=clock,
                    decryption_key=dev.decryption_key,
                )
            )
            out.poll_s[dev.id] = dev.poll_s
            out.kinds[dev.id] = DerKind.METER
    return out
