"""One owner per Modbus bus: the only module that imports pymodbus's client.

Several drivers (unit ids) may sit behind one TCP endpoint (a gateway, or an inverter that
also answers for its battery) or on one RS-485 line. Modbus TCP devices often accept only
one or two connections and misbehave with interleaved requests, and two masters on one
RS-485 line corrupt each other's frames, so every request for an endpoint goes through one
`ModbusBus`: one connection, one request at a time, control writes ahead of queued polls, a
minimum quiet gap between frames and a request-rate cap, a timeout on every request, and
reconnects with capped jittered backoff that do not hammer a device that is down. Failures
surface as `drivers.api` errors so drivers stay protocol-free.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal, TypeAlias

import structlog
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from drivers.api import ConfigurationError, DeviceUnreachable, DriverError
from drivers.health import describe_os_error
from drivers.resilience import Backoff, FailureLatch
from zapd.cancellation import honour_cancel

log = structlog.get_logger(__name__)

RegisterType: TypeAlias = AsyncModbusTcpClient.DATATYPE
"""pymodbus's data types for register conversion, re-exported so register maps need not import the client."""

Parity: TypeAlias = Literal["N", "E", "O"]

# Exception codes that mean "your request is wrong for this device": retrying cannot help.
_CONFIG_EXCEPTION_CODES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value"}
# Exception codes that mean "not now": the same request may well work a moment later.
_TRANSIENT_EXCEPTION_CODES = {6: "server device busy", 10: "gateway path unavailable", 11: "gateway target failed"}


def decode_registers(registers: Sequence[int], dtype: RegisterType, word_order: Literal["big", "little"]) -> float:
    """Registers -> one number, with pymodbus's converter (one implementation of the byte rules)."""
    value = AsyncModbusTcpClient.convert_from_registers(list(registers), dtype, word_order=word_order)
    if not isinstance(value, int | float):
        raise ValueError(f"expected one {dtype.name} value, got {value!r}")
    return value


def encode_registers(value: float, dtype: RegisterType, word_order: Literal["big", "little"]) -> list[int]:
    return AsyncModbusTcpClient.convert_to_registers(value, dtype, word_order=word_order)


class Priority(IntEnum):
    """Lower goes first: a setpoint must not wait behind a burst of polls."""

    CONTROL = 0
    POLL = 1


class BusConflictError(ValueError):
    """Two users asked for one serial port with different line settings: one of them is misconfigured."""


class _PriorityLock:
    """A mutex served by (priority, arrival) that also paces the bus.

    `release(not_before=t)` keeps the bus quiet until loop time t (frame gap, rate limit). The
    choice of the next owner is made when the quiet time is over, not at release, so a control
    write that arrives during the gap still overtakes polls that were queued before it.
    """

    def __init__(self) -> None:
        self._locked = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._not_before = 0.0
        self._handover: asyncio.TimerHandle | None = None

    async def acquire(self, priority: int) -> None:
        loop = asyncio.get_running_loop()
        if not self._locked and not self._waiters and loop.time() >= self._not_before:
            self._locked = True
            return
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        self._schedule()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # we were handed the lock just as we were cancelled: pass it on
            raise

    def release(self, not_before: float | None = None) -> None:
        if not_before is not None:
            self._not_before = not_before
        self._locked = False
        self._schedule()

    def _schedule(self) -> None:
        if self._locked or not self._waiters or self._handover is not None:
            return
        loop = asyncio.get_running_loop()
        delay = self._not_before - loop.time()
        if delay <= 0:
            self._hand_over()
        else:
            self._handover = loop.call_later(delay, self._hand_over)

    def _hand_over(self) -> None:
        self._handover = None
        if self._locked:
            return
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                self._locked = True
                fut.set_result(None)  # the lock stays held, now by that waiter
                return


@dataclass(frozen=True)
class TcpEndpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def key(self) -> tuple[str, ...]:
        return ("tcp", self.host, str(self.port))

    async def why_not_connected(self, timeout_s: float) -> str:
        """One plain TCP connect, to name the reason pymodbus keeps to itself ("connection refused at ...")."""
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            return f"no answer to connect at {self} within {timeout_s:g} s"
        except socket.gaierror as exc:
            return f"cannot resolve {self.host}: {exc.strerror}"
        except OSError as exc:
            return f"{describe_os_error(exc)} at {self}"
        writer.close()  # it answers now: the device came up between the two attempts
        return f"connect failed at {self} (it accepts a plain TCP connection now)"

    def make_client(self, timeout_s: float) -> ModbusBaseClient:
        # reconnect_delay=0: reconnecting is ours (backoff, logging); retries=0: so is retrying.
        return AsyncModbusTcpClient(
            self.host, port=self.port, timeout=timeout_s, retries=0, reconnect_delay=0, name=f"zapd-{self}"
        )


@dataclass(frozen=True)
class SerialLine:
    """An RS-485/RS-232 port and its line settings; every device on the line must share them."""

    port: str
    baudrate: int = 9600
    parity: Parity = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    def __str__(self) -> str:
        return f"{self.port}@{self.baudrate}{self.bytesize}{self.parity}{self.stopbits}"

    @property
    def key(self) -> tuple[str, ...]:
        return ("serial", self.port)

    def char_time_s(self) -> float:
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate

    def min_frame_gap_s(self) -> float:
        """Modbus over serial line v1.02 §2.5.1.1: 3.5 character times, fixed at 1.75 ms above 19200 baud."""
        return 0.00175 if self.baudrate > 19200 else 3.5 * self.char_time_s()

    async def why_not_connected(self, timeout_s: float) -> str:
        if not await asyncio.to_thread(os.path.exists, self.port):
            return f"cannot open {self.port}: no such device"
        return f"cannot open {self.port}"

    def make_client(self, timeout_s: float) -> ModbusBaseClient:
        return AsyncModbusSerialClient(
            self.port,
            framer=FramerType.RTU,
            baudrate=self.baudrate,
            bytesize=self.bytesize,
            parity=self.parity,
            stopbits=self.stopbits,
            timeout=timeout_s,
            retries=0,
            reconnect_delay=0,
            name=f"zapd-{self.port}",
        )


Endpoint: TypeAlias = TcpEndpoint | SerialLine


class ModbusBus:
    """A shared Modbus endpoint. Get one with `get_tcp_bus`/`get_serial_bus`, not by constructing it."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        timeout_s: float = 3.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        min_gap_s: float = 0.0,
        max_requests_per_s: float | None = None,
        transient_retries: int = 2,
        transient_retry_delay_s: float = 0.2,
    ) -> None:
        if timeout_s <= 0 or min_gap_s < 0 or (max_requests_per_s is not None and max_requests_per_s <= 0):
            raise ValueError("need timeout_s > 0, min_gap_s >= 0, max_requests_per_s > 0")
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.min_gap_s = min_gap_s
        self.max_requests_per_s = max_requests_per_s
        self.transient_retries = transient_retries
        self.transient_retry_delay_s = transient_retry_delay_s
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "requests",
                "errors",
                "timeouts",
                "exception_responses",
                "config_errors",
                "transient_retries",
                "connects",
                "connect_failures",
                "disconnects",
                "reopens",
            ),
            0,
        )
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._next_connect_at = 0.0
        self._connect_failure = "not connected yet"  # why the last connect failed, for the health record
        self._client: ModbusBaseClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = _PriorityLock()
        self._link = FailureLatch(
            log,
            "modbus.link_down",
            "modbus.link_up",
            first_ok_event="modbus.connected",
            level="warning",
            endpoint=str(self.endpoint),
        )

    def __repr__(self) -> str:
        return f"ModbusBus({self.endpoint})"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    @property
    def is_serial(self) -> bool:
        return isinstance(self.endpoint, SerialLine)

    def tighten(self, *, min_gap_s: float = 0.0, max_requests_per_s: float | None = None) -> None:
        """Several devices share this bus: the strictest pacing any of them asked for applies to all."""
        self.min_gap_s = max(self.min_gap_s, min_gap_s)
        if max_requests_per_s is not None:
            current = self.max_requests_per_s
            self.max_requests_per_s = max_requests_per_s if current is None else min(current, max_requests_per_s)

    async def read_holding(
        self, unit_id: int, address: int, count: int, *, priority: Priority = Priority.POLL
    ) -> list[int]:
        pdu = await self._request(
            "read_holding",
            unit_id,
            address,
            lambda c: c.read_holding_registers(address, count=count, device_id=unit_id),
            priority,
        )
        return self._registers(pdu, count, unit_id, address)

    async def read_input(
        self, unit_id: int, address: int, count: int, *, priority: Priority = Priority.POLL
    ) -> list[int]:
        pdu = await self._request(
            "read_input",
            unit_id,
            address,
            lambda c: c.read_input_registers(address, count=count, device_id=unit_id),
            priority,
        )
        return self._registers(pdu, count, unit_id, address)

    async def write_registers(
        self, unit_id: int, address: int, values: Sequence[int], *, priority: Priority = Priority.CONTROL
    ) -> None:
        regs = list(values)
        await self._request(
            "write_registers",
            unit_id,
            address,
            lambda c: c.write_registers(address, regs, device_id=unit_id),
            priority,
        )

    async def write_register(
        self, unit_id: int, address: int, value: int, *, priority: Priority = Priority.CONTROL
    ) -> None:
        """One holding register with function 0x06 (Write Single Register), for devices that refuse 0x10.

        The device answers by echoing address and value; an echo of anything else means the request
        was not what it took (a gateway that garbled it, a device that clamped it), so it is an error.
        """
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"{self}: unit {unit_id} @{address}: {value} is not a 16-bit register value")
        pdu = await self._request(
            "write_register",
            unit_id,
            address,
            lambda c: c.write_register(address, value, device_id=unit_id),
            priority,
        )
        echoed = list(getattr(pdu, "registers", []))
        if echoed != [value] or getattr(pdu, "address", address) != address:
            self.counters["errors"] += 1
            raise DriverError(f"{self}: unit {unit_id} @{address}: wrote {value}, device echoed {echoed}")

    async def read_coils(
        self, unit_id: int, address: int, count: int, *, priority: Priority = Priority.POLL
    ) -> list[int]:
        """Coils (function 0x01) as 0 / 1, e.g. a charger's enable bit."""
        pdu = await self._request(
            "read_coils",
            unit_id,
            address,
            lambda c: c.read_coils(address, count=count, device_id=unit_id),
            priority,
        )
        bits = [int(bool(b)) for b in pdu.bits[:count]]
        if len(bits) != count:
            self.counters["errors"] += 1
            raise DriverError(f"{self}: unit {unit_id} @{address}: asked {count} coils, got {len(bits)}")
        return bits

    async def write_coil(
        self, unit_id: int, address: int, value: bool, *, priority: Priority = Priority.CONTROL
    ) -> None:
        """One coil (function 0x05)."""
        await self._request(
            "write_coil",
            unit_id,
            address,
            lambda c: c.write_coil(address, value, device_id=unit_id),
            priority,
        )

    async def close(self) -> None:
        """Drop the connection and forget this bus, so the next `get_*_bus` builds a fresh one."""
        if _BUSES.get(self.endpoint.key) is self:
            del _BUSES[self.endpoint.key]
        self._drop_client()

    def _registers(self, pdu: ModbusPDU, count: int, unit_id: int, address: int) -> list[int]:
        regs = list(pdu.registers)
        if len(regs) != count:
            self.counters["errors"] += 1
            raise DriverError(f"{self}: unit {unit_id} @{address}: asked {count} registers, got {len(regs)}")
        return regs

    async def _request(
        self,
        op: str,
        unit_id: int,
        address: int,
        call: Callable[[ModbusBaseClient], Awaitable[ModbusPDU]],
        priority: Priority,
    ) -> ModbusPDU:
        where = f"{self}: {op} unit {unit_id} @{address}"
        attempt = 0
        while True:
            pdu = await self._exchange(where, call, priority)
            if not (isinstance(pdu, ExceptionResponse) or pdu.isError()):
                return pdu
            code = int(getattr(pdu, "exception_code", 0))
            if code in _TRANSIENT_EXCEPTION_CODES and attempt < self.transient_retries:
                # Busy or a gateway hiccup: a short pause (with the bus free for others) usually cures it.
                attempt += 1
                self.counters["transient_retries"] += 1
                await asyncio.sleep(self.transient_retry_delay_s * attempt)
                continue
            self._raise_exception_response(where, code)

    async def _exchange(
        self, where: str, call: Callable[[ModbusBaseClient], Awaitable[ModbusPDU]], priority: Priority
    ) -> ModbusPDU:
        """One frame out, one frame in, holding the bus; the next frame waits for the gap and the rate cap."""
        self._bind_loop()
        loop = asyncio.get_running_loop()
        await self._lock.acquire(priority)
        started = loop.time()
        try:
            client = await self._ensure_connected()
            started = loop.time()
            self.counters["requests"] += 1
            try:
                async with asyncio.timeout(self.timeout_s):
                    # pymodbus waits with asyncio.wait_for, which can swallow a cancellation on 3.11.
                    pdu = await honour_cancel(call(client))
            except TimeoutError:
                self.counters["timeouts"] += 1
                self.counters["errors"] += 1
                self._after_timeout()
                raise DeviceUnreachable(f"{where}: no answer within {self.timeout_s:g} s") from None
            except (ModbusException, OSError) as exc:
                self.counters["errors"] += 1
                self._link_lost(str(exc))
                raise DeviceUnreachable(f"{where}: {exc}") from exc
            except asyncio.CancelledError:
                # The caller gave up mid-request; its answer may still come and be taken for the next one's.
                self._drop_client()
                raise
        finally:
            self._lock.release(self._quiet_until(started, loop.time()))
        self._link_ok()
        return pdu

    def _quiet_until(self, started: float, ended: float) -> float:
        not_before = ended + self.min_gap_s
        if self.max_requests_per_s is not None:
            not_before = max(not_before, started + 1.0 / self.max_requests_per_s)
        return not_before

    def _after_timeout(self) -> None:
        if self.is_serial:
            # One silent unit on a multi-drop line is not a dead line; reopening the port drops a late
            # answer that would otherwise be taken for the next request's.
            self.counters["reopens"] += 1
            self._drop_client()
        else:
            # A late answer would be taken for the next request's: start over on a fresh connection.
            self._link_lost("timeout")

    def _raise_exception_response(self, where: str, code: int) -> None:
        self.counters["exception_responses"] += 1
        self.counters["errors"] += 1
        if code in _CONFIG_EXCEPTION_CODES:
            self.counters["config_errors"] += 1
            raise ConfigurationError(f"{where}: device answered exception {code} ({_CONFIG_EXCEPTION_CODES[code]})")
        transient = _TRANSIENT_EXCEPTION_CODES.get(code)
        suffix = f" ({transient}), still after {self.transient_retries} retries" if transient else ""
        raise DriverError(f"{where}: device answered exception {code}{suffix}")

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # The bus outlived its event loop (tests, a restarted daemon loop): socket and waiters are gone.
            self._client, self._loop, self._lock = None, loop, _PriorityLock()

    async def _ensure_connected(self) -> ModbusBaseClient:
        if self._client is not None:
            if self._client.connected:
                return self._client
            self._link_lost("connection closed by peer")
        wait = self._next_connect_at - time.monotonic()
        if wait > 0:
            raise DeviceUnreachable(f"{self._connect_failure}; next connect attempt in {wait:.1f} s")
        self._drop_client()
        client = self.endpoint.make_client(self.timeout_s * 2)
        ok, why = False, ""
        try:
            async with asyncio.timeout(self.timeout_s):
                ok = await honour_cancel(client.connect())
        except TimeoutError:
            ok, why = False, f"no answer to connect at {self.endpoint} within {self.timeout_s:g} s"
        except asyncio.CancelledError:
            client.close()
            raise
        if not ok:
            client.close()
            # pymodbus says only False; ask the OS why (refused, no route, no such port), once per attempt.
            self._connect_failure = why or await self.endpoint.why_not_connected(self.timeout_s)
            self.counters["connect_failures"] += 1
            self._next_connect_at = time.monotonic() + self._backoff.next_delay()
            self._link_lost(self._connect_failure)
            raise DeviceUnreachable(self._connect_failure)
        self.counters["connects"] += 1
        self._backoff.reset()
        self._client = client
        return client

    def _drop_client(self) -> None:
        if self._client is not None:
            # RuntimeError: its event loop is already closed, so there is nothing left to close.
            with contextlib.suppress(RuntimeError):
                self._client.close()
            self._client = None

    def _link_lost(self, reason: str) -> None:
        if self._client is not None:
            self.counters["disconnects"] += 1
            self._drop_client()
        self._link.failed(reason=reason)

    def _link_ok(self) -> None:
        self._link.ok()


_BUSES: dict[tuple[str, ...], ModbusBus] = {}


def get_tcp_bus(
    host: str,
    port: int,
    *,
    timeout_s: float = 3.0,
    backoff_initial_s: float = 0.5,
    backoff_max_s: float = 30.0,
    min_gap_s: float = 0.0,
    max_requests_per_s: float | None = None,
) -> ModbusBus:
    """The one bus for (host, port). Timeouts and backoff apply when the bus is first created."""
    endpoint = TcpEndpoint(host, port)
    bus = _BUSES.get(endpoint.key)
    if bus is None:
        bus = _BUSES[endpoint.key] = ModbusBus(
            endpoint,
            timeout_s=timeout_s,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            min_gap_s=min_gap_s,
            max_requests_per_s=max_requests_per_s,
        )
    else:
        bus.tighten(min_gap_s=min_gap_s, max_requests_per_s=max_requests_per_s)
    return bus


def get_serial_bus(
    port: str,
    *,
    baudrate: int = 9600,
    parity: Parity = "N",
    stopbits: Literal[1, 2] = 1,
    bytesize: Literal[7, 8] = 8,
    timeout_s: float = 1.0,
    backoff_initial_s: float = 0.5,
    backoff_max_s: float = 30.0,
    min_gap_s: float | None = None,
    max_requests_per_s: float | None = None,
) -> ModbusBus:
    """The one bus for a serial port, Modbus RTU framing.

    `min_gap_s` None means the 3.5 character times the line needs; a larger value (slow
    converters, devices that need a pause) is honoured, a smaller one is raised to that floor.
    Asking for the same port with other line settings raises `BusConflictError`: two drivers
    disagreeing about the line would garble each other's frames.
    """
    line = SerialLine(port, baudrate=baudrate, parity=parity, stopbits=stopbits, bytesize=bytesize)
    gap = max(line.min_frame_gap_s(), min_gap_s or 0.0)
    bus = _BUSES.get(line.key)
    if bus is None:
        bus = _BUSES[line.key] = ModbusBus(
            line,
            timeout_s=timeout_s,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            min_gap_s=gap,
            max_requests_per_s=max_requests_per_s,
        )
        return bus
    if bus.endpoint != line:
        raise BusConflictError(f"serial port {port}: already opened as {bus.endpoint}, asked for {line}")
    bus.tighten(min_gap_s=gap, max_requests_per_s=max_requests_per_s)
    return bus


async def close_all_buses() -> None:
    """For shutdown and tests: close every bus and empty the registry."""
    for bus in list(_BUSES.values()):
        await bus.close()


@contextlib.contextmanager
def private_bus_registry() -> Iterator[None]:
    """Buses got inside are fresh and forgotten after: `zapd config check` builds drivers it never starts.

    Without it a check would register (and tighten) the buses the daemon then shares.
    """
    saved = dict(_BUSES)
    _BUSES.clear()
    try:
        yield
    finally:
        _BUSES.clear()
        _BUSES.update(saved)
