"""A real Modbus TCP server that serves a fixed register image and records every write.

Device profiles (drivers/modbus/maps/*.toml) are tested against fixtures written from the vendor's
document: raw registers as the device would hold them, and the writes a command must produce. This
server is the peer for those tests: it serves exactly the fixture's registers (any other address is
an illegal-address exception, as on a real device), keeps what is written (so a read-back sees it)
and records each write request in order, so a test checks the wire, not the profile.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

log = structlog.get_logger(__name__)

_WRITE_FUNCTION_CODES = frozenset({6, 16})
_COIL_WRITE_FUNCTION_CODES = {5, 15}
_INPUT_FUNCTION_CODES = {4}

# One unit's image: table ("holding" | "input" | "coil") -> address -> raw 16-bit value (a coil: 0 / 1).
UnitImage = Mapping[str, Mapping[int, int]]


# The function a write uses when a test does not name one: what zapd's bus sends for that table.
DEFAULT_FUNCTION = {"holding": 16, "coil": 5}


@dataclass(frozen=True)
class RecordedWrite:
    """One write request as the server received it, with its Modbus function code.

    `function` left out means the default for the table (0x10 for registers, 0x05 for a coil), so a
    test that expects 0x06 (Write Single Register) must say so.
    """

    unit: int
    address: int
    values: tuple[int, ...]
    table: str = "holding"  # "coil" for a coil write (function 0x05 / 0x0F)
    function: int = 0  # 0x06 / 0x10 for registers, 0x05 / 0x0F for coils; 0 = the table's default

    def __post_init__(self) -> None:
        if self.function == 0:
            object.__setattr__(self, "function", DEFAULT_FUNCTION[self.table])


@dataclass
class _UnitLog:
    unit: int
    writes: list[RecordedWrite]
    reads: int = 0
    # Holding register -> the write functions it takes, where a device document limits them (Fox ESS
    # H3 44000: 0x06 only; Deye, AlphaESS: 0x10 only). A write with another function touching one of
    # them is answered with exception 1 (illegal function) and changes nothing, as on such a device.
    write_functions: Mapping[int, frozenset[int]] = field(default_factory=dict)

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        del start_address, registers
        if set_values is None or function_code not in _WRITE_FUNCTION_CODES | _COIL_WRITE_FUNCTION_CODES:
            if function_code not in _WRITE_FUNCTION_CODES:  # (0x06 reads its register back to answer)
                self.reads += 1
            return None
        if function_code in _WRITE_FUNCTION_CODES and any(
            function_code not in self.write_functions.get(a, _WRITE_FUNCTION_CODES)
            for a in range(address, address + count)
        ):
            return ExcCodes.ILLEGAL_FUNCTION
        table = "coil" if function_code in _COIL_WRITE_FUNCTION_CODES else "holding"
        values = tuple(int(v) for v in set_values)
        self.writes.append(RecordedWrite(self.unit, address, values, table, function_code))
        return None


def fixture_units(blocks: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, dict[int, int]]]:
    """A fixture's `[[image]]` blocks (unit, table, address, values) as the per-unit images served here."""
    units: dict[int, dict[str, dict[int, int]]] = {}
    for block in blocks:
        table = units.setdefault(block["unit"], {}).setdefault(block["table"], {})
        for i, value in enumerate(block["values"]):
            table[block["address"] + i] = value
    return units


WriteFunctions = Mapping[int, Mapping[int, frozenset[int]]]  # unit -> register -> accepted write functions


def fixture_write_functions(blocks: Sequence[Mapping[str, Any]]) -> dict[int, dict[int, frozenset[int]]]:
    """Per unit, the registers of the `[[image]]` blocks with `write_functions = [6]` (or `[16]`): the
    write functions the device document says those registers take (any other is refused)."""
    out: dict[int, dict[int, frozenset[int]]] = {}
    for block in blocks:
        if "write_functions" not in block:
            continue
        codes = frozenset(block["write_functions"])
        if block["table"] != "holding" or not codes or not codes <= _WRITE_FUNCTION_CODES:
            raise ValueError(f"unit {block['unit']} @{block['address']}: write_functions is [6], [16] or [6, 16]")
        start = block["address"]
        out.setdefault(block["unit"], {}).update(dict.fromkeys(range(start, start + len(block["values"])), codes))
    return out


def _runs(cells: Mapping[int, int]) -> list[SimData]:
    """Contiguous address runs as SimData blocks: gaps between them stay illegal addresses.

    (A list of `values` is one run; SimData's `count` would repeat it, so it is left at 1.)"""
    blocks: list[SimData] = []
    run: list[int] = []
    start = -1
    for addr in sorted(cells):
        if not 0 <= cells[addr] <= 0xFFFF:
            raise ValueError(f"register {addr}: {cells[addr]} is not a 16-bit value")
        if run and addr == start + len(run):
            run.append(cells[addr])
            continue
        if run:
            blocks.append(SimData(start, values=run, datatype=DataType.REGISTERS))
        start, run = addr, [cells[addr]]
    if run:
        blocks.append(SimData(start, values=run, datatype=DataType.REGISTERS))
    return blocks or [SimData(0, datatype=DataType.INVALID)]


def _coil_runs(cells: Mapping[int, int]) -> list[SimData]:
    """Coils by bit address. The simulator stores bits sixteen to a register, so each run is padded
    to a multiple of 16 with coils that are off (they read as 0 and can be written, unlike on a device
    with a single coil there)."""
    if not cells:
        return [SimData(0, values=[False] * 16, datatype=DataType.BITS, readonly=True)]
    blocks: list[SimData] = []
    addrs = sorted(cells)
    start = addrs[0]
    while addrs:
        bits = [bool(cells.get(start + i, 0)) for i in range(16)]
        blocks.append(SimData(start, values=bits, datatype=DataType.BITS))
        addrs = [a for a in addrs if a >= start + 16]
        start = addrs[0] if addrs else start
    return blocks


@dataclass
class RegisterImageServer:
    """A running image server; `writes` lists every write request across units, in arrival order."""

    server: ModbusTcpServer | ModbusSerialServer
    host: str
    port: int
    writes: list[RecordedWrite] = field(default_factory=list)
    logs: list[_UnitLog] = field(default_factory=list)

    @property
    def reads(self) -> int:
        """Read requests answered so far, across units (a scan's probes, a driver's polls)."""
        return sum(log.reads for log in self.logs)

    def clear(self) -> None:
        self.writes.clear()

    async def stop(self) -> None:
        await self.server.shutdown()  # type: ignore[no-untyped-call]


def _devices(
    units: Mapping[int, UnitImage],
    writes: list[RecordedWrite],
    logs: list[_UnitLog] | None = None,
    write_functions: WriteFunctions | None = None,
) -> list[SimDevice]:
    devices = []
    for unit_id, image in units.items():
        unknown = set(image) - {"holding", "input", "coil"}
        if unknown:
            raise ValueError(f"unit {unit_id}: unknown table(s) {sorted(unknown)}")
        unit_log = _UnitLog(unit_id, writes, write_functions=(write_functions or {}).get(unit_id, {}))
        if logs is not None:
            logs.append(unit_log)
        no_bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS, readonly=True)]
        coils = _coil_runs(image.get("coil", {}))
        devices.append(
            SimDevice(
                id=unit_id,
                simdata=(coils, no_bits, _runs(image.get("holding", {})), _runs(image.get("input", {}))),
                action=unit_log.action,
            )
        )
    return devices


async def start_register_image(
    units: Mapping[int, UnitImage],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    write_functions: WriteFunctions | None = None,
) -> RegisterImageServer:
    """Serve each unit's image on host:port (0 = any free port; the real one is in `.port`).

    `write_functions`: per unit, registers that take only some write functions (`fixture_write_functions`)."""
    writes: list[RecordedWrite] = []
    logs: list[_UnitLog] = []
    server = ModbusTcpServer(_devices(units, writes, logs, write_functions), address=(host, port))
    await server.serve_forever(background=True)
    sockets = getattr(server.transport, "sockets", None) or ()
    real_port = int(sockets[0].getsockname()[1]) if sockets else port
    log.info("sim.register_image.started", host=host, port=real_port, units=sorted(units))
    return RegisterImageServer(server, host, real_port, writes, logs)


async def start_register_image_rtu(
    units: Mapping[int, UnitImage],
    serial_port: str,
    *,
    baudrate: int = 9600,
    parity: str = "N",
    stopbits: int = 1,
    write_functions: WriteFunctions | None = None,
) -> RegisterImageServer:
    """The same image as an RTU slave on a serial port (an RS-485 meter on a pty, drivers/sim/modbus_rtu.py)."""
    writes: list[RecordedWrite] = []
    logs: list[_UnitLog] = []
    server = ModbusSerialServer(
        _devices(units, writes, logs, write_functions),
        framer=FramerType.RTU,
        port=serial_port,
        baudrate=baudrate,
        parity=parity,
        stopbits=stopbits,
    )
    await server.serve_forever(background=True)
    log.info("sim.register_image.started", port=serial_port, units=sorted(units))
    return RegisterImageServer(server, serial_port, 0, writes, logs)
