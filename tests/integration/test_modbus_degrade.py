"""Degrade alone: a Modbus device that is down, unplugged or talks garbage stops neither the daemon nor the others."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from drivers.api import ConfigurationError, DriverError
from drivers.modbus.bus import close_all_buses, get_tcp_bus
from drivers.modbus.hybrid_inverter import ModbusHybridInverter
from drivers.modbus.sunspec import SunSpecInverter
from drivers.sim.modbus_rtu import NullModem
from drivers.sim.physics import SimSite
from drivers.sim.sunspec_server import start_sunspec_sim
from tests.waiting import wait_until
from zapd.clock import SystemClock
from zapd.config import ZapdConfig, validate_config
from zapd.daemon import Daemon


async def eventually(pred: Callable[[], bool], within_s: float = 5.0) -> None:
    await wait_until(pred, within_s)


@contextlib.asynccontextmanager
async def garbage_server() -> AsyncIterator[int]:
    """Answers every request with bytes that are not a Modbus frame (a wrong protocol, a broken gateway)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(256):
                writer.write(os.urandom(3) + b"\x00\x00\xff\xff\x7f" + os.urandom(7))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


async def test_garbage_answers_are_io_errors_not_hangs() -> None:
    async with garbage_server() as port:
        bus = get_tcp_bus("127.0.0.1", port, timeout_s=0.3, backoff_initial_s=0.05, backoff_max_s=0.1)
        try:
            for _ in range(3):
                async with asyncio.timeout(2):
                    with pytest.raises(DriverError) as info:
                        await bus.read_holding(1, 40000, 2)
                assert not isinstance(info.value, ConfigurationError)
                # wall-clock: the reconnect backoff (<= 0.1 s) is a timer; past it the next read is on the wire
                await asyncio.sleep(0.12)
            assert bus.counters["errors"] >= 3
        finally:
            await close_all_buses()


async def test_daemon_starts_and_the_good_device_runs_beside_broken_ones(tmp_path: Path) -> None:
    site = SimSite()
    site.pv_w, site.grid_w = 2500.0, 400.0
    good = await start_sunspec_sim(site, models=(1, 103, 120, 124, 203, 713))
    line = NullModem()
    line.open()  # a serial line with nobody on it: an unplugged RS-485 device
    try:
        async with garbage_server() as garbage_port:
            with refused_port() as dead_port:
                daemon = Daemon(_config(tmp_path, good.port, garbage_port, dead_port, line.port_a), SystemClock())
                drivers = {d.name: d for d in daemon.devices.drivers}
                task = asyncio.create_task(daemon.run())
                try:
                    ok = drivers["good"]
                    assert isinstance(ok, SunSpecInverter)
                    await eventually(lambda: ok.healthy and ok.counters["polls"] >= 3)
                    for name in ("dead", "garbage", "unplugged"):
                        bad = drivers[name]
                        assert isinstance(bad, ModbusHybridInverter | SunSpecInverter)
                        await eventually(_reported(bad))
                        assert not bad.healthy
                    polls = ok.counters["polls"]
                    # the good device keeps being polled
                    await eventually(lambda: ok.counters["polls"] >= polls + 3)
                    assert not task.done(), "the daemon keeps running"
                finally:
                    daemon.stop()
                    assert await asyncio.wait_for(task, 10) == 0
    finally:
        await close_all_buses()
        line.close()
        await good.stop()


def _reported(driver: ModbusHybridInverter | SunSpecInverter) -> Callable[[], bool]:
    return lambda: driver.last_error != ""


def _config(tmp: Path, good_port: int, garbage_port: int, dead_port: int, serial_port: str) -> ZapdConfig:
    common = {"poll_s": 0.1, "timeout_s": 0.3}
    data: dict[str, object] = {
        "site": {"id": "degrade", "fuse_a": 25},
        "store": {"state_dir": str(tmp)},
        "api": {"socket": str(tmp / "zapd.sock")},
        "devices": [
            {"driver": "sunspec_tcp", "id": "good", "host": "127.0.0.1", "port": good_port, **common},
            {"driver": "sunspec_tcp", "id": "garbage", "host": "127.0.0.1", "port": garbage_port, **common},
            {"driver": "modbus_tcp", "id": "dead", "host": "127.0.0.1", "port": dead_port, "map": "sim_hybrid"}
            | common,
            {"driver": "modbus_rtu", "id": "unplugged", "port": serial_port, "map": "sim_hybrid", **common},
        ],
    }
    return validate_config(data, "test")
