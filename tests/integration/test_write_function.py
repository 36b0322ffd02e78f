"""Write Single Register (0x06) and Write Multiple Registers (0x10) over a real Modbus TCP socket.

The peer is the register-image server (drivers/sim/register_image.py), a pymodbus server that
records the function code of every write request it receives; registers limited by `write_functions`
answer any other function with exception 1 (illegal function), as the Fox ESS H3's remote-control
registers do for 0x10
(nathanmarlor/foxess_modbus, remote_control_manager.py: "We can't do multi-register writes to these
registers"). The per-profile check is in test_device_profiles.py (each fixture row names its code).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.api import ConfigurationError, DriverError
from drivers.modbus.bus import ModbusBus, close_all_buses, get_tcp_bus
from drivers.modbus.field_io import FieldReader
from drivers.modbus.register_map import load_register_map
from drivers.sim.register_image import RecordedWrite, RegisterImageServer, start_register_image

_ONLY_06, _ONLY_16 = frozenset({6}), frozenset({16})


@pytest.fixture
async def peer() -> AsyncIterator[tuple[RegisterImageServer, ModbusBus]]:
    server = await start_register_image(
        {3: {"holding": {100: 0, 101: 0, 102: 0, 103: 0}}},
        write_functions={3: {100: _ONLY_06, 101: _ONLY_06, 103: _ONLY_16}},
    )
    yield server, get_tcp_bus(server.host, server.port, timeout_s=1.0, backoff_initial_s=0.05)
    await close_all_buses()
    await server.stop()


async def test_write_register_goes_out_as_function_6_and_write_registers_as_16(
    peer: tuple[RegisterImageServer, ModbusBus],
) -> None:
    server, bus = peer
    await bus.write_register(3, 100, 0xBEEF)
    await bus.write_registers(3, 102, [1, 2])
    assert server.writes == [
        RecordedWrite(3, 100, (0xBEEF,), function=6),
        RecordedWrite(3, 102, (1, 2), function=16),
    ]
    assert await bus.read_holding(3, 100, 4) == [0xBEEF, 0, 1, 2]


async def test_a_register_limited_to_one_function_refuses_the_other_and_keeps_its_value(
    peer: tuple[RegisterImageServer, ModbusBus],
) -> None:
    server, bus = peer
    with pytest.raises(ConfigurationError, match="exception 1 \\(illegal function\\)"):
        await bus.write_registers(3, 101, [7])  # 0x06 only (Fox ESS H3 44000 style)
    with pytest.raises(ConfigurationError, match="illegal function"):  # a run that only touches one of them
        await bus.write_registers(3, 101, [7, 7])
    with pytest.raises(ConfigurationError, match="illegal function"):
        await bus.write_register(3, 103, 7)  # 0x10 only (Deye, AlphaESS style)
    assert server.writes == []
    assert await bus.read_holding(3, 100, 4) == [0, 0, 0, 0]
    assert bus.counters["config_errors"] == 3


async def test_write_register_refuses_a_value_beyond_16_bits_before_the_wire(
    peer: tuple[RegisterImageServer, ModbusBus],
) -> None:
    server, bus = peer
    for bad in (-1, 0x10000):
        with pytest.raises(ValueError, match="16-bit"):
            await bus.write_register(3, 100, bad)
    assert server.writes == [] and bus.counters["requests"] == 0


async def test_a_profile_field_is_written_with_the_function_its_profile_names() -> None:
    """fox_ess_h3 says `write_function = "single"` for the device and "multiple" for its int32 set point."""
    server = await start_register_image(
        {247: {"holding": dict.fromkeys(range(44000, 44004), 0)}},
        write_functions={247: {44000: _ONLY_06, 44001: _ONLY_06}},
    )
    try:
        other = get_tcp_bus(server.host, server.port, timeout_s=1.0, backoff_initial_s=0.05)
        rmap = load_register_map("fox_ess_h3")
        fields = FieldReader("fox", other, 247, rmap)
        for name, value in (("remote_timeout", 60.0), ("remote_enable", 1.0), ("remote_active_power", 200.0)):
            f = rmap.field(name)
            await fields.write(f, f.encode(value))
        assert server.writes == [
            RecordedWrite(247, 44001, (60,), function=6),
            RecordedWrite(247, 44000, (1,), function=6),
            RecordedWrite(247, 44002, (0xFFFF, 0xFF38), function=16),  # 200 W drawn = -200 on the wire
        ]
    finally:
        await close_all_buses()
        await server.stop()


async def test_an_echo_that_is_not_the_request_is_an_error() -> None:
    """A device answers 0x06 by echoing address and value; one that clamps (echoes 100 for 500) has not
    taken what was written, and the write must not count as done."""

    async def clamp(
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        if function_code == 6 and set_values is None:  # the read that builds the echo
            registers[address - start_address] = min(registers[address - start_address], 100)

    holding = [SimData(10, values=[0], datatype=DataType.REGISTERS)]
    no_bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS, readonly=True)]
    device = SimDevice(id=1, simdata=(no_bits, list(no_bits), holding, list(holding)), action=clamp)
    server = ModbusTcpServer([device], address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        port = int(server.transport.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        bus = get_tcp_bus("127.0.0.1", port, timeout_s=1.0, backoff_initial_s=0.05)
        await bus.write_register(1, 10, 50)  # within what it takes: the echo matches
        with pytest.raises(DriverError, match="wrote 500, device echoed \\[100\\]"):
            await bus.write_register(1, 10, 500)
        assert bus.counters["errors"] == 1
    finally:
        await close_all_buses()
        await server.shutdown()  # type: ignore[no-untyped-call]
