"""The simulated hybrid inverter on a real serial line: pymodbus's RTU server behind a pty null modem.

A pty pair has only one end with a path, and both the RTU server and zapd's serial bus open
their port by path, so `NullModem` joins two pty pairs back to back (what `socat` would do)
and relays the bytes. Relaying in-process also lets tests see every frame with its time,
which is how the minimum gap between frames is measured rather than assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer

from drivers.modbus.register_map import load_register_map
from drivers.sim.modbus_server import _device, _Unit
from drivers.sim.physics import SimSite

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Chunk:
    """Bytes seen crossing the null modem: `a_to_b` is zapd -> device when zapd opened `port_a`."""

    at: float  # loop time
    a_to_b: bool
    data: bytes


@dataclass
class NullModem:
    """Two pty pairs relayed master to master. Open `port_a` at one end and `port_b` at the other."""

    port_a: str = ""
    port_b: str = ""
    chunks: list[Chunk] = field(default_factory=list)
    _fds: list[int] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    # Set to drop everything crossing the line (an unplugged cable).
    cut: bool = False
    # Requests to these unit ids are dropped (a device unplugged from a multi-drop line).
    muted_units: set[int] = field(default_factory=set)

    def open(self) -> None:
        master_a, slave_a = os.openpty()
        master_b, slave_b = os.openpty()
        for fd in (slave_a, slave_b):
            tty.setraw(fd)  # no echo, no line discipline: RTU frames are binary
        # Keep the slaves open too: a master whose slave has no opener reads EIO between port reopens.
        self._fds = [master_a, master_b, slave_a, slave_b]
        self.port_a, self.port_b = os.ttyname(slave_a), os.ttyname(slave_b)
        for fd in (master_a, master_b):
            os.set_blocking(fd, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(master_a, self._relay, master_a, master_b, True)
        self._loop.add_reader(master_b, self._relay, master_b, master_a, False)

    def _relay(self, src: int, dst: int, a_to_b: bool) -> None:
        try:
            data = os.read(src, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: the other side is between close and reopen
            return
        if not data or self.cut or (a_to_b and data[0] in self.muted_units):
            return
        assert self._loop is not None
        self.chunks.append(Chunk(self._loop.time(), a_to_b, data))
        with contextlib.suppress(BlockingIOError):
            os.write(dst, data)

    def close(self) -> None:
        if self._loop is not None and self._fds:
            for fd in self._fds[:2]:
                self._loop.remove_reader(fd)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []


class SimModbusRtuServer:
    def __init__(self, server: ModbusSerialServer, port: str, units: dict[int, _Unit]) -> None:
        self._server = server
        self.port = port
        self._units = units

    def remote_control(self, unit_id: int = 1) -> bool:
        return self._units[unit_id].remote_control

    def counters(self, unit_id: int = 1) -> dict[str, int]:
        return dict(self._units[unit_id].counters)

    async def stop(self) -> None:
        await self._server.shutdown()  # type: ignore[no-untyped-call]
        log.info("sim.modbus_rtu.stopped", port=self.port)


async def start_modbus_rtu_sim(
    site: SimSite,
    port: str,
    *,
    unit_id: int = 1,
    map_name: str = "sim_hybrid",
    extra_units: Mapping[int, SimSite] | None = None,
    baudrate: int = 19200,
    parity: str = "N",
    stopbits: int = 1,
) -> SimModbusRtuServer:
    """Serve `site` (and `extra_units`) as RTU slaves on a serial port, with the TCP simulator's registers."""
    rmap = load_register_map(map_name)
    units = {unit_id: _Unit(site=site, rmap=rmap)}
    for uid, other in (extra_units or {}).items():
        if uid in units:
            raise ValueError(f"unit id {uid} given twice")
        units[uid] = _Unit(site=other, rmap=rmap)
    server = ModbusSerialServer(
        [_device(uid, u) for uid, u in units.items()],
        framer=FramerType.RTU,
        port=port,
        baudrate=baudrate,
        parity=parity,
        stopbits=stopbits,
    )
    await server.serve_forever(background=True)
    log.info("sim.modbus_rtu.started", port=port, units=sorted(units), map=rmap.name)
    return SimModbusRtuServer(server, port, units)
