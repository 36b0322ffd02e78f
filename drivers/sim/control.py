"""A control socket on the simulated site process, so fault tests can misbehave on cue.

The simulator runs as its own process in end-to-end tests; signals can only freeze or kill it.
A newline-delimited JSON request per line on a unix socket lets a test ask for the faults a real
site produces (bad CRCs, line noise, a half telegram, a Modbus device that vanishes and comes
back on the same port) without a second simulator and without touching the daemon under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from drivers.sim.modbus_server import SimModbusServer
from drivers.sim.p1_pty import TelegramSource

log = structlog.get_logger(__name__)

MAX_LINE = 1024 * 1024  # a test may send a noise burst of a few hundred kB as hex


class ModbusSwitch:
    """Stops and restarts the Modbus server on its port: a device unplugged and plugged back in."""

    def __init__(self, start: Callable[[int], Awaitable[SimModbusServer]], server: SimModbusServer) -> None:
        self._start = start
        self.server = server
        self.port = server.port
        self.up = True

    async def down(self) -> None:
        if self.up:
            await self.server.stop()
            self.up = False

    async def restore(self) -> None:
        if not self.up:
            self.server = await self._start(self.port)
            self.up = True


class SimControl:
    """Serves requests such as {"cmd": "p1_bad_crc", "count": 3} on a unix socket."""

    def __init__(self, path: Path, meter: TelegramSource, modbus: ModbusSwitch) -> None:
        self.path = path
        self._meter = meter
        self._modbus = modbus
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._on_client, path=str(self.path), limit=MAX_LINE)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = await self.handle(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the test hung up; nothing to clean beyond closing
        finally:
            writer.close()

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request["cmd"]
        meter = self._meter
        if cmd == "p1_bad_crc":
            meter.inject_bad_crc(int(request.get("count", 1)))
        elif cmd == "p1_garbage":
            meter.inject_garbage(bytes.fromhex(request["hex"]))
        elif cmd == "p1_truncated":
            # The first part of a real telegram with no end: what a meter sends when it reboots mid-write.
            site = meter.site
            whole = meter.builder.build(site, site.last) if site.last is not None else b"/XMX5\r\n\r\n1-0:1.8.1("
            meter.inject_garbage(whole[: max(1, int(len(whole) * float(request.get("fraction", 0.5))))])
        elif cmd == "modbus_down":
            await self._modbus.down()
        elif cmd == "modbus_up":
            await self._modbus.restore()
        elif cmd != "stats":
            raise ValueError(f"unknown cmd {cmd!r}")
        log.info("sim.control", cmd=cmd)
        return {"ok": True, "p1_sent": meter.sent, "modbus_up": self._modbus.up, "modbus_port": self._modbus.port}
