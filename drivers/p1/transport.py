"""How the P1 driver reaches the meter: a serial port (USB P1 cable) or TCP (network P1 reader, ser2net).

Both end up as an asyncio byte stream, so the driver's framing, timeouts and reconnect loop
are the same for either and the transport stays a few lines of connection setup.
"""

from __future__ import annotations

import asyncio
import termios
from typing import Protocol

import serial

# DSMR 2.2 meters talk 9600 7E1, DSMR 4 115200 7E1, DSMR 5 and its national variants 115200 8N1.
_SERIAL_DEFAULTS: dict[str, tuple[int, int, str]] = {
    "2.2": (9600, serial.SEVENBITS, serial.PARITY_EVEN),
    "4": (115200, serial.SEVENBITS, serial.PARITY_EVEN),
}


class P1Transport(Protocol):
    def describe(self) -> str:
        """Where the meter is, for logs (no secrets)."""
        ...

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open one connection; the caller bounds it with a timeout and closes the writer."""
        ...


class SerialP1:
    """A local serial port: a USB P1 cable or a UART on the gateway."""

    def __init__(
        self,
        port: str,
        baudrate: int = 115200,
        *,
        bytesize: int = serial.EIGHTBITS,
        parity: str = serial.PARITY_NONE,
        stopbits: float = serial.STOPBITS_ONE,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.bytesize = bytesize
        self.parity = parity
        self.stopbits = stopbits

    @classmethod
    def for_version(cls, port: str, dsmr_version: str) -> SerialP1:
        """The line settings the DSMR version prescribes, so a config only needs the port."""
        v5 = (115200, serial.EIGHTBITS, serial.PARITY_NONE)
        baud, bits, parity = _SERIAL_DEFAULTS.get(dsmr_version, v5)
        return cls(port, baud, bytesize=bits, parity=parity)

    def describe(self) -> str:
        return f"serial:{self.port}@{self.baudrate}"

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        import serial_asyncio  # a serial meter's only: a TCP meter never loads it

        try:
            reader, writer = await serial_asyncio.open_serial_connection(
                url=self.port,
                baudrate=self.baudrate,
                bytesize=self.bytesize,
                parity=self.parity,
                stopbits=self.stopbits,
                xonxoff=False,
                rtscts=False,
            )
        except termios.error as exc:
            # Line settings the device refuses (e.g. 7E1 on an adapter without parity) raise
            # termios.error, which is no OSError; make it a link error the reconnect loop handles.
            raise serial.SerialException(f"{self.port}: line settings refused: {exc}") from exc
        return reader, writer


class TcpP1:
    """A network P1 reader that forwards the meter's bytes over a TCP socket."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def describe(self) -> str:
        return f"tcp:{self.host}:{self.port}"

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port)
