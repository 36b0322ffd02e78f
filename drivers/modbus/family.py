"""Registers the Modbus kinds: register-map devices and meters (TCP, RTU), SunSpec (TCP, RTU), EV chargers (TCP, RTU).

A new Modbus *device* needs nothing here: it is one profile in drivers/modbus/maps/ (docs/devices.md).
"""

from __future__ import annotations

from drivers.modbus.config import (
    ModbusEvDevice,
    ModbusEvRtuDevice,
    ModbusMeterRtuDevice,
    ModbusMeterTcpDevice,
    ModbusRtuDevice,
    ModbusTcpDevice,
    SunSpecRtuDevice,
    SunSpecTcpDevice,
)
from drivers.registry import DriverKind, register

_FACTORY = "drivers.modbus.factory"

register(
    DriverKind("modbus_tcp", "modbus", ModbusTcpDevice, f"{_FACTORY}:add_register_map_device", order=10),
    DriverKind("modbus_rtu", "modbus", ModbusRtuDevice, f"{_FACTORY}:add_register_map_device", order=11),
    DriverKind("modbus_meter_tcp", "modbus", ModbusMeterTcpDevice, f"{_FACTORY}:add_modbus_meter", order=12),
    DriverKind("modbus_meter_rtu", "modbus", ModbusMeterRtuDevice, f"{_FACTORY}:add_modbus_meter", order=13),
    DriverKind("sunspec_tcp", "sunspec", SunSpecTcpDevice, f"{_FACTORY}:add_sunspec", order=20),
    DriverKind("sunspec_rtu", "sunspec", SunSpecRtuDevice, f"{_FACTORY}:add_sunspec", order=21),
    DriverKind("modbus_ev", "modbus_ev", ModbusEvDevice, f"{_FACTORY}:add_modbus_ev", order=30),
    DriverKind("modbus_ev_rtu", "modbus_ev", ModbusEvRtuDevice, f"{_FACTORY}:add_modbus_ev", order=31),
)
