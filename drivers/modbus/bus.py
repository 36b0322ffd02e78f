"""One owner per Modbus bus: the only module that imports pymodbus's client.

Several drivers (unit ids) may sit behind one TCP endpoint (a gateway, or an inverter that
also answers for its battery). Modbus TCP devices often accept only one or two connections
and misbehave with interleaved requests, so every request for an endpoint goes through one
`ModbusBus`: one connection, one request at a time, control writes ahead of queued polls,
a timeout on every request, and reconnects with capped jittered backoff that do not hammer a
device that is down. Failures surface as `drivers.api` errors so drivers stay protocol-free.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from enum import IntEnum
from typing import Literal, TypeAlias

import structlog
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from drivers.api import ConfigurationError, DriverError
from drivers.modbus.backoff import Backoff

log = structlog.get_logger(__name__)

RegisterType: TypeAlias = AsyncModbusTcpClient.DATATYPE
"""pymodbus's data types for register conversion, re-exported so register maps need not import the client."""

# Exception codes that mean "your request is wrong for this device": retrying cannot help.
_CONFIG_EXCEPTION_CODES = {1: "illegal function", 2: "illegal data address", 3: "illegal data value"}


def decode_registers(
    registers: Sequence[int], dtype: RegisterType, word_order: Literal["big", "little"]
) -> float:
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


class _PriorityLock:
    """A mutex whose waiters are served by (priority, arrival); ownership passes directly on release."""

    def __init__(self) -> None:
        self._locked = False
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    async def acquire(self, priority: int) -> None:
        if not self._locked:
            self._locked = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # we were handed the lock just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)  # the lock stays held, now by that waiter
                return
        self._locked = False


class ModbusBus:
    """A shared Modbus TCP endpoint. Get one with `get_tcp_bus`, not by constructing it."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float = 3.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "requests",
                "errors",
                "timeouts",
                "exception_responses",
                "config_errors",
                "connects",
                "connect_failures",
                "disconnects",
            ),
            0,
        )
        self._backoff = Backoff(backoff_initial_s, backoff_max_s)
        self._next_connect_at = 0.0
        self._client: AsyncModbusTcpClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = _PriorityLock()
        self._link_up: bool | None = None  # None: never connected yet

    def __repr__(self) -> str:
        return f"ModbusBus({self.host}:{self.port})"

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

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

    async def close(self) -> None:
        """Drop the connection and forget this bus, so the next `get_tcp_bus` builds a fresh one."""
        _BUSES.pop((self.host, self.port), None)
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
        call: Callable[[AsyncModbusTcpClient], Awaitable[ModbusPDU]],
        priority: Priority,
    ) -> ModbusPDU:
        where = f"{self}: {op} unit {unit_id} @{address}"
        self._bind_loop()
        await self._lock.acquire(priority)
        try:
            client = await self._ensure_connected()
            self.counters["requests"] += 1
            try:
                async with asyncio.timeout(self.timeout_s):
                    pdu = await call(client)
            except TimeoutError:
                self.counters["timeouts"] += 1
                self.counters["errors"] += 1
                # A late answer would be taken for the next request's: start over on a fresh connection.
                self._link_lost("timeout")
                raise DriverError(f"{where}: no answer within {self.timeout_s:g} s") from None
            except (ModbusException, OSError) as exc:
                self.counters["errors"] += 1
                self._link_lost(str(exc))
                raise DriverError(f"{where}: {exc}") from exc
            except asyncio.CancelledError:
                # The caller gave up mid-request; its answer may still come and be taken for the next one's.
                self._drop_client()
                raise
        finally:
            self._lock.release()
        self._link_ok()
        if isinstance(pdu, ExceptionResponse) or pdu.isError():
            self._raise_exception_response(where, int(getattr(pdu, "exception_code", 0)))
        return pdu

    def _raise_exception_response(self, where: str, code: int) -> None:
        self.counters["exception_responses"] += 1
        self.counters["errors"] += 1
        if code in _CONFIG_EXCEPTION_CODES:
            self.counters["config_errors"] += 1
            reason = _CONFIG_EXCEPTION_CODES[code]
            raise ConfigurationError(f"{where}: device answered exception {code} ({reason})")
        raise DriverError(f"{where}: device answered exception {code}")

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # The bus outlived its event loop (tests, a restarted daemon loop): socket and waiters are gone.
            self._client, self._loop, self._lock = None, loop, _PriorityLock()

    async def _ensure_connected(self) -> AsyncModbusTcpClient:
        if self._client is not None:
            if self._client.connected:
                return self._client
            self._link_lost("connection closed by peer")
        wait = self._next_connect_at - time.monotonic()
        if wait > 0:
            raise DriverError(f"{self}: link down, next connect attempt in {wait:.1f} s")
        self._drop_client()
        # reconnect_delay=0: reconnecting is ours (backoff, logging); retries=0: so is retrying.
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.timeout_s * 2,
            retries=0,
            reconnect_delay=0,
            name=f"zapd-{self.host}:{self.port}",
        )
        ok = False
        try:
            async with asyncio.timeout(self.timeout_s):
                ok = await client.connect()
        except TimeoutError:
            ok = False
        except asyncio.CancelledError:
            client.close()
            raise
        if not ok:
            client.close()
            self.counters["connect_failures"] += 1
            self._next_connect_at = time.monotonic() + self._backoff.next_delay()
            self._link_lost("connect failed")
            raise DriverError(f"{self}: cannot connect")
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
        if self._link_up is not False:
            log.warning("modbus.link_down", host=self.host, port=self.port, reason=reason)
        self._link_up = False

    def _link_ok(self) -> None:
        if self._link_up is False:
            log.info("modbus.link_up", host=self.host, port=self.port)
        elif self._link_up is None:
            log.info("modbus.connected", host=self.host, port=self.port)
        self._link_up = True


_BUSES: dict[tuple[str, int], ModbusBus] = {}


def get_tcp_bus(
    host: str,
    port: int,
    *,
    timeout_s: float = 3.0,
    backoff_initial_s: float = 0.5,
    backoff_max_s: float = 30.0,
) -> ModbusBus:
    """The one bus for (host, port). Settings apply when the bus is first created."""
    bus = _BUSES.get((host, port))
    if bus is None:
        bus = _BUSES[(host, port)] = ModbusBus(
            host, port, timeout_s=timeout_s, backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s
        )
    return bus


async def close_all_buses() -> None:
    """For shutdown and tests: close every bus and empty the registry."""
    for bus in list(_BUSES.values()):
        await bus.close()
