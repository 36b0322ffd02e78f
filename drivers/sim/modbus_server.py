"""A real Modbus TCP server in front of a SimSite, laid out by the same register map the driver reads.

Serving the map file (not a hand-written copy of it) means the driver and the simulator
cannot drift apart silently, and the driver is tested over a real socket against real
exception responses. The server only mirrors the site: it never steps the physics (the demo's
clock task does), it refreshes the registers from the site before every read and turns
setpoint writes into `site.battery.setpoint_w`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.register_map import Field, RegisterMap, Table, load_register_map
from drivers.sim.physics import EvModel, SimSite

log = structlog.get_logger(__name__)

_SCALE_FACTOR_EXPONENT = -1  # what every scale-factor register of the simulated device reports
_INPUT_FUNCTION_CODES = {4}

_SOURCES: dict[str, Callable[[SimSite], float]] = {
    "pv_power": lambda s: s.pv_w,
    "battery_power": lambda s: s.battery.measured_power_w(),
    "battery_soc": lambda s: s.battery.soc,
    "max_charge_w": lambda s: s.battery.max_charge_w,
    "max_discharge_w": lambda s: s.battery.max_discharge_w,
    "capacity_wh": lambda s: s.battery.capacity_wh,
    "battery_setpoint": lambda s: s.battery.setpoint_w,
}


def _ev(site: SimSite) -> EvModel:
    if site.ev is None:
        raise KeyError("ev")  # a site without a charger: its EV registers keep what was written
    return site.ev


# An EV charger's registers (drivers/modbus/maps/alfen_eve.toml), mirrored from site.ev.
_EV_SOURCES: dict[str, Callable[[EvModel], float]] = {
    "ev_power": lambda ev: ev.power_w,
    "ev_energy_total": lambda ev: ev.energy_wh,
    "ev_voltage_l1": lambda ev: ev.voltage_v,
    "ev_current_l1": lambda ev: ev.current_a,
    "ev_current_l2": lambda ev: ev.current_a if ev.phases == 3 else 0.0,
    "ev_current_l3": lambda ev: ev.current_a if ev.phases == 3 else 0.0,
    "ev_availability": lambda ev: 1.0,
    "ev_applied_current": lambda ev: ev.setpoint_a,
    "ev_current_setpoint": lambda ev: ev.setpoint_a,
    "ev_safe_current": lambda ev: ev.safe_current_a,
    "ev_setpoint_accounted": lambda ev: 1.0,
    "ev_phases": lambda ev: float(ev.phases),
    "ev_valid_time": lambda ev: 60.0,
}
_EV_MAX_CURRENT_A = 80.0  # what the simulated charger accepts at all (a real one: its rating)


def _ascii_word(text: str) -> int:
    """First two characters of a Modbus string register block, high byte first."""
    raw = (text + "\0\0")[:2].encode("ascii")
    return (raw[0] << 8) | raw[1]


@dataclass
class _Unit:
    """The registers of one unit id and the device state that is not part of the physics."""

    site: SimSite
    rmap: RegisterMap
    remote_control: bool = False
    command_timeout_s: float = 0.0
    # Site time (SimSite.last) of the last accepted command, for the command-timeout deadman.
    last_command_at: datetime | None = None
    counters: dict[str, int] = field(default_factory=lambda: {"reads": 0, "writes": 0, "rejected_writes": 0})

    def _fields(self, table: Table) -> list[Field]:
        return [f for f in self.rmap.fields.values() if f.table is table]

    def _sf_for(self, f: Field) -> int | None:
        return None if f.scale_factor is None else _SCALE_FACTOR_EXPONENT

    def _current(self, f: Field) -> list[int]:
        if any(other.scale_factor == f.name for other in self.rmap.fields.values()):
            return f.encode_raw_int(_SCALE_FACTOR_EXPONENT)
        if f.name == "remote_control":
            on, off = self.rmap.remote_control_on, self.rmap.remote_control_off
            return f.encode_raw_int(on if self.remote_control else off)
        if f.name == "command_timeout":
            return f.encode(self.command_timeout_s)
        if f.name == "ev_state":
            return f.encode_raw_int(_ascii_word(_ev(self.site).state))
        ev_source = _EV_SOURCES.get(f.name)
        if ev_source is not None:
            return f.encode(ev_source(_ev(self.site)), self._sf_for(f))
        source = _SOURCES.get(f.name)
        if source is None:
            raise KeyError(f.name)
        return f.encode(source(self.site), self._sf_for(f))

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        table = Table.INPUT if function_code in _INPUT_FUNCTION_CODES else Table.HOLDING
        self._expire_remote_control()
        if set_values is None:
            self.counters["reads"] += 1
            return self._refresh(table, start_address, registers)
        self.counters["writes"] += 1
        result = self._write(start_address, address, registers, [int(v) for v in set_values])
        if result is not None:
            self.counters["rejected_writes"] += 1
        return result

    def _expire_remote_control(self) -> None:
        """Like a real inverter, fall back on its own when the EMS stops talking (in simulated time)."""
        now, last = self.site.last, self.last_command_at
        if not self.remote_control or self.command_timeout_s <= 0 or now is None or last is None:
            return
        if (now - last).total_seconds() > self.command_timeout_s:
            self.remote_control = False
            self.site.battery.setpoint_w = 0.0
            log.warning("sim.modbus.command_timeout", timeout_s=self.command_timeout_s)

    def _refresh(self, table: Table, start: int, registers: list[int]) -> ExcCodes | None:
        for f in self._fields(table):
            try:
                regs = self._current(f)
            except KeyError:
                continue  # a field the simulator has no source for keeps what was written
            except ValueError:  # the value does not fit the register: a real device would fault
                return ExcCodes.DEVICE_FAILURE
            registers[f.address - start : f.address - start + f.count] = regs
        return None

    def _write(self, start: int, address: int, registers: list[int], values: list[int]) -> ExcCodes | None:
        end = address + len(values)
        merged = list(registers)
        merged[address - start : end - start] = values
        touched = sorted(
            (f for f in self._fields(Table.HOLDING) if f.address < end and address < f.address + f.count),
            key=lambda f: f.address,
        )
        for f in touched:
            if not (address <= f.address and f.address + f.count <= end):
                return ExcCodes.ILLEGAL_ADDRESS  # half of a 32-bit value: refuse rather than guess
            result = self._apply(f, merged[f.address - start : f.address - start + f.count])
            if result is not None:
                return result
        return None

    def _apply(self, f: Field, regs: list[int]) -> ExcCodes | None:
        battery = self.site.battery
        if f.name == "remote_control":
            raw = f.decode_raw_int(regs)
            if raw not in (self.rmap.remote_control_on, self.rmap.remote_control_off):
                return ExcCodes.ILLEGAL_VALUE
            self.remote_control = raw == self.rmap.remote_control_on
            self.last_command_at = self.site.last
        elif f.name == "battery_setpoint":
            value = f.decode(regs, self._sf_for(f))
            if not -battery.max_discharge_w <= value <= battery.max_charge_w:
                return ExcCodes.ILLEGAL_VALUE
            if self.remote_control:  # like real inverters: accepted, but obeyed only in remote control
                battery.command(value)  # in the device's resolution; acts after its dead time
                self.last_command_at = self.site.last
        elif f.name == "command_timeout":
            self.command_timeout_s = f.decode(regs)
        elif f.name in ("ev_current_setpoint", "ev_phases") and self.site.ev is not None:
            return self._apply_ev(f, regs, self.site.ev)
        return None

    def _apply_ev(self, f: Field, regs: list[int], ev: EvModel) -> ExcCodes | None:
        value = f.decode(regs)
        if f.name == "ev_current_setpoint":
            if not 0.0 <= value <= _EV_MAX_CURRENT_A:  # also refuses NaN
                return ExcCodes.ILLEGAL_VALUE
            ev.setpoint_a = value
        elif value not in (1.0, 3.0):
            return ExcCodes.ILLEGAL_VALUE
        else:
            ev.phases = int(value)
        self.last_command_at = self.site.last
        return None


def _device(unit_id: int, unit: _Unit) -> SimDevice:
    def block(table: Table) -> list[SimData]:
        data = [
            SimData(f.address, count=f.count, datatype=DataType.REGISTERS, readonly=not f.writable)
            for f in unit.rmap.fields.values()
            if f.table is table
        ]
        return data or [SimData(0, datatype=DataType.INVALID)]

    no_bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS, readonly=True)]
    return SimDevice(
        id=unit_id,
        simdata=(no_bits, list(no_bits), block(Table.HOLDING), block(Table.INPUT)),
        action=unit.action,
    )


class SimModbusServer:
    """A running simulator endpoint; `port` is the real port even when 0 was asked for."""

    def __init__(self, server: ModbusTcpServer, host: str, port: int, units: dict[int, _Unit]) -> None:
        self._server = server
        self.host = host
        self.port = port
        self._units = units

    @property
    def client_count(self) -> int:
        """Open client connections, to show that drivers share one bus."""
        return len(self._server.active_connections)

    def remote_control(self, unit_id: int = 1) -> bool:
        return self._units[unit_id].remote_control

    def counters(self, unit_id: int = 1) -> dict[str, int]:
        return dict(self._units[unit_id].counters)

    async def stop(self) -> None:
        await self._server.shutdown()  # type: ignore[no-untyped-call]
        log.info("sim.modbus.stopped", host=self.host, port=self.port)


async def start_modbus_sim(
    site: SimSite,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    unit_id: int = 1,
    map_name: str = "sim_hybrid",
    extra_units: Mapping[int, SimSite] | None = None,
) -> SimModbusServer:
    """Serve `site` at unit_id (and `extra_units`, one site per further unit id) on host:port."""
    rmap = load_register_map(map_name)
    units = {unit_id: _Unit(site=site, rmap=rmap)}
    for uid, other in (extra_units or {}).items():
        if uid in units:
            raise ValueError(f"unit id {uid} given twice")
        units[uid] = _Unit(site=other, rmap=rmap)
    server = ModbusTcpServer([_device(uid, u) for uid, u in units.items()], address=(host, port))
    await server.serve_forever(background=True)
    sockets = getattr(server.transport, "sockets", None) or ()
    real_port = int(sockets[0].getsockname()[1]) if sockets else port
    log.info("sim.modbus.started", host=host, port=real_port, units=sorted(units), map=rmap.name)
    return SimModbusServer(server, host, real_port, units)
