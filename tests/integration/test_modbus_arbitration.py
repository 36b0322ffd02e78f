"""Bus arbitration over real Modbus TCP: write priority under load, frame gap and rate cap, measured."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from drivers.modbus.bus import close_all_buses, get_tcp_bus
from drivers.sim.modbus_server import SimModbusServer, start_modbus_sim
from drivers.sim.physics import SimSite


@pytest.fixture
async def sim() -> AsyncIterator[SimModbusServer]:
    server = await start_modbus_sim(SimSite())
    yield server
    await close_all_buses()
    await server.stop()


async def test_control_write_overtakes_a_queue_of_polls(sim: SimModbusServer) -> None:
    bus = get_tcp_bus(sim.host, sim.port, timeout_s=1.0, min_gap_s=0.01)
    done: list[str] = []

    async def poll(i: int) -> None:
        await bus.read_input(1, 100, 2)
        done.append(f"poll{i}")

    async def write() -> None:
        await bus.write_registers(1, 40220, [300])
        done.append("write")

    await bus.read_input(1, 100, 2)  # connected
    polls = [asyncio.create_task(poll(i)) for i in range(12)]
    # wall-clock: one turn of the loop, no time passes: all 12 polls queued, the first on the wire
    await asyncio.sleep(0)
    await asyncio.gather(*polls, asyncio.create_task(write()))
    assert done.index("write") <= 1, done
    assert sim.client_count == 1


async def test_minimum_gap_between_frames(sim: SimModbusServer) -> None:
    gap_s, n = 0.02, 10
    bus = get_tcp_bus(sim.host, sim.port, timeout_s=1.0, min_gap_s=gap_s)
    await bus.read_input(1, 100, 2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.gather(*(bus.read_input(1, 100, 2) for _ in range(n)))
    elapsed = loop.time() - t0
    assert elapsed >= n * gap_s * 0.95, elapsed


async def test_rate_limit_caps_requests_per_second(sim: SimModbusServer) -> None:
    rate, n = 40.0, 12
    bus = get_tcp_bus(sim.host, sim.port, timeout_s=1.0, max_requests_per_s=rate)
    await bus.read_input(1, 100, 2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.gather(*(bus.read_input(1, 100, 2) for _ in range(n)))
    elapsed = loop.time() - t0
    assert elapsed >= n / rate * 0.95, elapsed
    assert elapsed < n / rate + 0.5


async def test_second_user_of_an_endpoint_can_only_tighten_the_pacing(sim: SimModbusServer) -> None:
    bus = get_tcp_bus(sim.host, sim.port, min_gap_s=0.01, max_requests_per_s=50)
    assert get_tcp_bus(sim.host, sim.port, min_gap_s=0.05, max_requests_per_s=100) is bus
    assert get_tcp_bus(sim.host, sim.port, min_gap_s=0.0, max_requests_per_s=10) is bus
    assert (bus.min_gap_s, bus.max_requests_per_s) == (0.05, 10)
