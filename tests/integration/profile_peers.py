"""The real peers a profile fixture is served by: a pymodbus server over TCP, or over RTU on a pty.

A fixture's `[[image]]` blocks are the registers; a fixture with an `rtu` table (the line settings
of an RS-485 device) can also be served as an RTU slave on one end of a pty null modem, with the
bus on the other end. Shared by the inverter, meter and charger profile tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from drivers.modbus.bus import ModbusBus, close_all_buses, get_serial_bus, get_tcp_bus
from drivers.sim.modbus_rtu import NullModem
from drivers.sim.register_image import (
    RecordedWrite,
    RegisterImageServer,
    fixture_units,
    fixture_write_functions,
    start_register_image,
    start_register_image_rtu,
)


@contextlib.asynccontextmanager
async def over_tcp(fixture: dict[str, Any]) -> AsyncIterator[tuple[RegisterImageServer, ModbusBus]]:
    server = await start_register_image(
        fixture_units(fixture["image"]), write_functions=fixture_write_functions(fixture["image"])
    )
    try:
        bus = get_tcp_bus(server.host, server.port, timeout_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.2)
        yield server, bus
    finally:
        await close_all_buses()
        await server.stop()


@contextlib.asynccontextmanager
async def rtu_peer(fixture: dict[str, Any]) -> AsyncIterator[tuple[RegisterImageServer, str]]:
    """The fixture as an RTU slave on one end of a pty null modem; yields the other end's port."""
    line = fixture["rtu"]
    modem = NullModem()
    modem.open()
    server = await start_register_image_rtu(
        fixture_units(fixture["image"]),
        modem.port_b,
        baudrate=line["baudrate"],
        parity=line["parity"],
        stopbits=line["stopbits"],
        write_functions=fixture_write_functions(fixture["image"]),
    )
    try:
        yield server, modem.port_a
    finally:
        await close_all_buses()
        await server.stop()
        modem.close()


@contextlib.asynccontextmanager
async def over_rtu(fixture: dict[str, Any]) -> AsyncIterator[tuple[RegisterImageServer, ModbusBus]]:
    line = fixture["rtu"]
    async with rtu_peer(fixture) as (server, port):
        bus = get_serial_bus(
            port,
            baudrate=line["baudrate"],
            parity=line["parity"],
            stopbits=line["stopbits"],
            timeout_s=1.0,
            backoff_initial_s=0.05,
        )
        yield server, bus


Peer = tuple[RegisterImageServer, ModbusBus]


def served(fixture: dict[str, Any], transport: str) -> contextlib.AbstractAsyncContextManager[Peer]:
    """`transport` is "tcp" or "rtu"."""
    return over_rtu(fixture) if transport == "rtu" else over_tcp(fixture)


def transports(fixtures: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any], str]]:
    """Every fixture over TCP, and those with an `rtu` table over RTU too."""
    out = [(name, doc, "tcp") for name, doc in fixtures]
    out += [(name, doc, "rtu") for name, doc in fixtures if "rtu" in doc]
    return out


def expected_writes(rows: list[list[Any]]) -> list[RecordedWrite]:
    """A fixture's expected writes, in order, as the peer records them:

    - `[unit, address, [words]]`: a register write with 0x10 (Write Multiple Registers);
    - `[unit, address, [word], 6]`: with the function code the vendor document gives (0x06 here);
    - `[unit, "coil", address, [0 | 1]]`: a coil write (0x05).
    """
    out = []
    for row in rows:
        if isinstance(row[1], str):
            unit, table, address, values = row
            out.append(RecordedWrite(unit, address, tuple(values), table))
        elif len(row) == 4:
            unit, address, values, function = row
            out.append(RecordedWrite(unit, address, tuple(values), function=function))
        else:
            unit, address, values = row
            out.append(RecordedWrite(unit, address, tuple(values)))
    return out
