"""Config -> drivers for the Modbus kinds (drivers/modbus/family.py): register maps, meters, SunSpec, EV.

Buses come from the bus registry, so every device on one serial port or TCP endpoint shares
one owner; the config check has already refused one port with two sets of line settings.

Each kind's driver module is imported by its factory, and recognition (`map = "auto"`: SunSpec
models, the profile catalogue, importlib.resources) only for a device that asks for it: a site of
fixed-map inverters does not carry the SunSpec, EV or meter code (~1.9 MB; docs/decisions.md, footprint).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, cast

from drivers.modbus.bus import ModbusBus, get_serial_bus, get_tcp_bus
from drivers.modbus.register_map import AUTO_MAP, RegisterMap, load_register_map
from zapd.model import DerKind

if TYPE_CHECKING:
    # The daemon's config structs (drivers/config_structs.py); the pydantic models have the same fields.
    from drivers.config_structs import (
        ModbusEvDevice,
        ModbusEvRtuDevice,
        ModbusMeterRtuDevice,
        ModbusMeterTcpDevice,
        ModbusRtuDevice,
        ModbusTcpDevice,
        SunSpecRtuDevice,
        SunSpecTcpDevice,
    )
    from drivers.modbus.auto_profile import AutoProfileInverter, AutoProfileMeter
    from drivers.modbus.hybrid_inverter import ModbusHybridInverter
    from drivers.modbus.map_meter import ModbusMapMeter
    from zapd.clock import Clock
    from zapd.devices import DeviceSet


def _ms(value: float | None) -> float | None:
    return None if value is None else value / 1000.0


def _tcp_bus(dev: ModbusTcpDevice | ModbusMeterTcpDevice) -> ModbusBus:
    return get_tcp_bus(
        dev.host,
        dev.port,
        timeout_s=dev.timeout_s,
        min_gap_s=dev.min_gap_ms / 1000.0,
        max_requests_per_s=dev.max_requests_per_s,
    )


def _serial_bus(dev: ModbusRtuDevice | ModbusMeterRtuDevice | SunSpecRtuDevice | ModbusEvRtuDevice) -> ModbusBus:
    return get_serial_bus(
        dev.port,
        baudrate=dev.baudrate,
        parity=dev.parity,
        stopbits=dev.stopbits,
        bytesize=dev.bytesize,
        timeout_s=dev.timeout_s,
        min_gap_s=_ms(dev.min_gap_ms),
        max_requests_per_s=dev.max_requests_per_s,
    )


def add_modbus_meter(out: DeviceSet, dev: ModbusMeterTcpDevice | ModbusMeterRtuDevice, clock: Clock) -> None:
    """A read-only meter: one METER DER named like the device, on a TCP or a serial bus; with
    `map = "auto"` its profile is recognised at start (drivers/modbus/auto_profile.py)."""
    from drivers.modbus.map_meter import ModbusMapMeter

    # By what the device is (an RTU model owns a serial port), not its class: pydantic model or struct alike.
    on_serial = dev.serial_port() is not None
    bus = _serial_bus(cast("ModbusMeterRtuDevice", dev)) if on_serial else _tcp_bus(cast("ModbusMeterTcpDevice", dev))

    def make(rmap: RegisterMap) -> ModbusMapMeter:
        return ModbusMapMeter(
            device_id=dev.id,
            bus=bus,
            unit_id=dev.unit_id,
            register_map=rmap,
            poll_s=dev.poll_s,
            clock=clock,
            role=dev.role,
        )

    meter: ModbusMapMeter | AutoProfileMeter
    if dev.map == AUTO_MAP:
        from drivers.modbus.auto_profile import AutoProfileMeter

        meter = AutoProfileMeter(device_id=dev.id, bus=bus, unit_id=dev.unit_id, clock=clock, make=make)
    else:
        meter = make(load_register_map(dev.map))
    out.drivers.append(meter)
    out.poll_s[dev.id] = dev.poll_s  # the meter's DER id is the device id, as for a P1 meter
    out.kinds[dev.id] = DerKind.METER


def add_register_map_device(out: DeviceSet, dev: ModbusTcpDevice | ModbusRtuDevice, clock: Clock) -> None:
    """The same register-map driver serves a device on TCP or on an RS-485 line; `map = "auto"` finds
    the profile at start (drivers/modbus/auto_profile.py)."""
    from drivers.modbus.hybrid_inverter import ModbusHybridInverter

    on_serial = dev.serial_port() is not None
    bus = _serial_bus(cast("ModbusRtuDevice", dev)) if on_serial else _tcp_bus(cast("ModbusTcpDevice", dev))

    def make(rmap: RegisterMap) -> ModbusHybridInverter:
        return ModbusHybridInverter(
            device_id=dev.id,
            bus=bus,
            unit_id=dev.unit_id,
            register_map=rmap,
            poll_s=dev.poll_s,
            clock=clock,
            max_charge_w=dev.battery.max_charge_w,
            max_discharge_w=dev.battery.max_discharge_w,
            capacity_wh=dev.battery.capacity_wh,
            max_writes_per_hour=dev.max_writes_per_hour,
            device_command_timeout_s=dev.command_timeout_s,
            reserve_soc=dev.battery.reserve_soc,  # bounds a time-of-use slot's SoC target (tou_slot)
            max_soc=dev.battery.max_soc,
        )

    inverter: ModbusHybridInverter | AutoProfileInverter
    if dev.map == AUTO_MAP:
        from drivers.modbus.auto_profile import AutoProfileInverter

        inverter = AutoProfileInverter(device_id=dev.id, bus=bus, unit_id=dev.unit_id, clock=clock, make=make)
        has_pv = True  # not known before recognition: declared, as a SunSpec device's PV is
    else:
        inverter = make(load_register_map(dev.map))
        has_pv = any(c.kind is DerKind.PV for c in inverter.capabilities())
    out.drivers.append(inverter)
    battery_id = inverter.battery_id
    out.actuators[battery_id] = inverter
    out.battery_limits[battery_id] = dev.battery
    out.poll_s[battery_id] = dev.poll_s
    out.kinds[battery_id] = DerKind.BATTERY
    if has_pv:
        out.poll_s[inverter.pv_id] = dev.poll_s
        out.kinds[inverter.pv_id] = DerKind.PV


def add_sunspec(out: DeviceSet, dev: SunSpecTcpDevice | SunSpecRtuDevice, clock: Clock) -> None:
    """What a SunSpec device is becomes known at its first scan; the DER ids are fixed in advance.

    The daemon learns kinds from here before any I/O, so a SunSpec device is declared with
    the DERs the config says it has (`battery`, `meter` flags); the driver reports none of
    them until the scan shows them, and refuses commands until then.
    """
    from drivers.modbus.sunspec import SunSpecInverter

    if dev.serial_port() is not None:
        bus = _serial_bus(cast("SunSpecRtuDevice", dev))
    else:
        tcp = cast("SunSpecTcpDevice", dev)
        bus = get_tcp_bus(
            tcp.host,
            tcp.port,
            timeout_s=tcp.timeout_s,
            min_gap_s=_ms(tcp.min_gap_ms) or 0.0,
            max_requests_per_s=tcp.max_requests_per_s,
        )
    inverter = SunSpecInverter(
        device_id=dev.id,
        bus=bus,
        unit_id=dev.unit_id,
        poll_s=dev.poll_s,
        clock=clock,
        max_charge_w=dev.battery.max_charge_w,
        max_discharge_w=dev.battery.max_discharge_w,
        capacity_wh=dev.battery.capacity_wh,
        max_writes_per_hour=dev.max_writes_per_hour,
        revert_timeout_s=dev.revert_timeout_s,
        expect_battery=dev.has_battery,
    )
    out.drivers.append(inverter)
    pv_id = f"{dev.id}.pv"
    out.poll_s[pv_id] = dev.poll_s
    out.kinds[pv_id] = DerKind.PV
    if dev.has_battery:
        battery_id = inverter.battery_id
        out.actuators[battery_id] = inverter
        out.battery_limits[battery_id] = dev.battery
        out.poll_s[battery_id] = dev.poll_s
        out.kinds[battery_id] = DerKind.BATTERY
    if dev.has_meter:
        meter_id = f"{dev.id}.meter"
        out.poll_s[meter_id] = dev.poll_s
        out.kinds[meter_id] = DerKind.METER


def add_modbus_ev(out: DeviceSet, dev: ModbusEvDevice | ModbusEvRtuDevice, clock: Clock) -> None:
    """An EV charger through its register map: one `<id>.ev` DER, controllable by current, on TCP or on an
    RS-485 line (where the profile's vendor document offers RTU: the charger refuses a TCP-only profile)."""
    from drivers.modbus.ev_charger import ModbusEvCharger

    transport: Literal["tcp", "rtu"] = "tcp" if dev.serial_port() is None else "rtu"  # model or struct alike
    if transport == "rtu":
        bus = _serial_bus(cast("ModbusEvRtuDevice", dev))
    else:
        tcp = cast("ModbusEvDevice", dev)
        bus = get_tcp_bus(tcp.host, tcp.port, timeout_s=tcp.timeout_s)
    charger = ModbusEvCharger(
        device_id=dev.id,
        bus=bus,
        transport=transport,
        unit_id=dev.unit_id,
        register_map=load_register_map(dev.map),
        poll_s=dev.poll_s,
        clock=clock,
        limits=dev.ev,
        safe_mode=dev.ev.safe_mode,
        keepalive_s=dev.keepalive_s,
    )
    out.drivers.append(charger)
    out.actuators[charger.ev_id] = charger
    out.poll_s[charger.ev_id] = dev.poll_s
    out.kinds[charger.ev_id] = DerKind.EV_CHARGER
    out.add_ev(charger.ev_id, dev.ev)
