"""Reading a register map's fields off a bus, in zapd units: shared by every map-driven driver.

A field's registers may sit on another unit id than the device's own (`unit_id`), carry a
SunSpec-style scale-factor register, or be an unsigned magnitude whose sign is a status bit
(`sign_field`): all of that is resolved here, once, for the hybrid inverter and the meter alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from drivers.api import DriverError
from drivers.modbus.bus import ModbusBus, Priority
from drivers.modbus.register_map import SCALE_FACTOR_LIMIT, Field, RegisterMap, Table


@dataclass(frozen=True)
class FieldReader:
    device_id: str
    bus: ModbusBus
    unit: int
    rmap: RegisterMap

    def unit_of(self, f: Field) -> int:
        return self.unit if f.unit_id is None else f.unit_id

    async def regs(self, f: Field, priority: Priority) -> list[int]:
        if f.table is Table.COIL:
            return await self.bus.read_coils(self.unit_of(f), f.address, f.count, priority=priority)
        if f.table is Table.INPUT:
            return await self.bus.read_input(self.unit_of(f), f.address, f.count, priority=priority)
        return await self.bus.read_holding(self.unit_of(f), f.address, f.count, priority=priority)

    async def write(self, f: Field, regs: list[int], priority: Priority = Priority.CONTROL) -> None:
        """Raw words (or a coil's 0 / 1) to the field's place on the bus, with the function its profile names."""
        if f.table is Table.COIL:
            await self.bus.write_coil(self.unit_of(f), f.address, bool(regs[0]), priority=priority)
        elif f.write_function == "single":  # 0x06; the map allows it only on one-register fields
            (value,) = regs
            await self.bus.write_register(self.unit_of(f), f.address, value, priority=priority)
        else:
            await self.bus.write_registers(self.unit_of(f), f.address, regs, priority=priority)

    async def scale_factor(self, f: Field, priority: Priority) -> int | None:
        if f.scale_factor is None:
            return None
        sf_field = self.rmap.field(f.scale_factor)
        sf = sf_field.decode_raw_int(await self.regs(sf_field, priority))
        if not -SCALE_FACTOR_LIMIT <= sf <= SCALE_FACTOR_LIMIT:  # SunSpec "not implemented" is 0x8000
            raise DriverError(f"{self.device_id}: scale factor {sf_field.name} read as {sf}")
        return sf

    async def value(self, name: str, priority: Priority = Priority.POLL, *, measured: bool = False) -> float:
        """A field in zapd units. A measurement (`measured`) that is not a number is returned as it is: the
        reading carries it to the drivers' guard (drivers/api.py), which makes the DER unknown at once and
        counts it; anything else (nameplate) that is not a number is a device error."""
        f = self.rmap.field(name)
        sf = await self.scale_factor(f, priority)
        regs = await self.regs(f, priority)
        try:
            value = f.decode(regs, sf)
        except ValueError as exc:
            raise DriverError(f"{self.device_id}: {name}: {exc}") from exc
        if not measured and not math.isfinite(value):
            raise DriverError(f"{self.device_id}: {name} read as {value}")
        if f.sign_field is not None:
            sign = self.rmap.field(f.sign_field)
            if sign.decode_raw_int(await self.regs(sign, priority)) & f.sign_mask:
                value = -value
        return value
