"""A simulated DSMR v5 smart meter that speaks on a real pty and on a loopback TCP port.

The P1 driver is tested against the same bytes a meter writes: framed telegrams with a real
CRC, optionally split into odd chunks, corrupted or interleaved with garbage, so the driver's
framing, CRC and reconnect paths run for real instead of being mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import termios
import tty
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import structlog
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from drivers.sim.physics import SimSite
from zapd.clock import Clock

log = structlog.get_logger(__name__)

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
NOMINAL_V = 230.0
_CHUNK_PAUSE_S = 0.003  # real seconds between chunks, so the reader sees them as separate reads


def crc16_dsmr(data: bytes) -> int:
    """CRC-16/ARC (poly 0xA001 reflected, init 0): what DSMR 4+ puts after the '!'."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def frame_telegram(header: str, lines: list[str], *, bad_crc: bool = False) -> bytes:
    """Wrap OBIS lines into '/header' .. '!CRC'; bad_crc flips the checksum for fault tests."""
    body = f"/{header}\r\n\r\n" + "".join(f"{line}\r\n" for line in lines) + "!"
    raw = body.encode("ascii")
    crc = crc16_dsmr(raw)
    if bad_crc:
        crc ^= 0x5A5A
    return raw + f"{crc:04X}\r\n".encode("ascii")


# The fixed, published DLMS authentication key of every Luxembourg Smarty meter (Luxmetering P1 spec 3.2.5).
SMARTY_AUTHENTICATION_KEY = "00112233445566778899AABBCCDDEEFF"
_GGC_TAG = 0xDB
_SECURITY_CONTROL = 0x30  # suite 0, authenticated and encrypted


def encrypt_telegram(
    plain: bytes,
    encryption_key: str,
    *,
    authentication_key: str = SMARTY_AUTHENTICATION_KEY,
    system_title: bytes = b"SAGSIM01",
    invocation_counter: int = 1,
) -> bytes:
    """Wrap a telegram in a DLMS general-global-cipher frame (AES-GCM, 12-byte tag) as Smarty meters do."""
    if len(system_title) != 8:
        raise ValueError("system_title must be 8 bytes")
    iv = system_title + invocation_counter.to_bytes(4, "big")
    enc = Cipher(algorithms.AES(bytes.fromhex(encryption_key)), modes.GCM(iv)).encryptor()
    enc.authenticate_additional_data(bytes([_SECURITY_CONTROL]) + bytes.fromhex(authentication_key))
    ciphertext = enc.update(plain) + enc.finalize()
    payload = bytes([_SECURITY_CONTROL]) + invocation_counter.to_bytes(4, "big") + ciphertext + enc.tag[:12]
    head = bytes([_GGC_TAG, len(system_title)]) + system_title + b"\x82" + len(payload).to_bytes(2, "big")
    return head + payload


def dsmr_timestamp(ts: datetime, tz: ZoneInfo = AMSTERDAM) -> str:
    """Meters print local wall time plus S (summer/DST) or W (winter), not UTC."""
    local = ts.astimezone(tz)
    flag = "S" if local.dst() else "W"
    return local.strftime("%y%m%d%H%M%S") + flag


def _is_low_tariff(ts: datetime, tz: ZoneInfo) -> bool:
    """Dutch double tariff: low (tariff 1) at night 23-07 and on weekends."""
    local = ts.astimezone(tz)
    return local.weekday() >= 5 or local.hour >= 23 or local.hour < 7


@dataclass
class TelegramBuilder:
    """Turns the site's instant power and energy counters into DSMR v5 telegrams.

    The meter has two import and two export registers (tariff 1 and 2); the site keeps one
    total each, so this object remembers which tariff was active as energy accrued.
    """

    header: str = "XMX5LGBBLB2410065887"
    equipment_id: str = "4530303336303000000000000000000040"
    tz: ZoneInfo = AMSTERDAM
    phases: int = 3
    # Meter registers at the moment the site's counters were zero (real meters never start at 0).
    import_offset_wh: tuple[float, float] = (0.0, 0.0)
    export_offset_wh: tuple[float, float] = (0.0, 0.0)
    gas_m3: float | None = None
    _import_wh: list[float] = field(default_factory=lambda: [0.0, 0.0])
    _export_wh: list[float] = field(default_factory=lambda: [0.0, 0.0])
    _seen_import_wh: float = 0.0
    _seen_export_wh: float = 0.0

    def registers(self, site: SimSite, now: datetime) -> tuple[list[float], list[float]]:
        """Book the energy since the last call on the tariff active now; returns (import, export) Wh."""
        idx = 0 if _is_low_tariff(now, self.tz) else 1
        c = site.counters
        self._import_wh[idx] += max(0.0, c.import_wh - self._seen_import_wh)
        self._export_wh[idx] += max(0.0, c.export_wh - self._seen_export_wh)
        self._seen_import_wh, self._seen_export_wh = c.import_wh, c.export_wh
        imp = [self.import_offset_wh[i] + self._import_wh[i] for i in (0, 1)]
        exp = [self.export_offset_wh[i] + self._export_wh[i] for i in (0, 1)]
        return imp, exp

    def lines(self, site: SimSite, now: datetime) -> list[str]:
        imp, exp = self.registers(site, now)
        grid = site.metered_grid_w(now)  # the meter's own (averaged, late) measurement
        tariff = 1 if _is_low_tariff(now, self.tz) else 2
        out = [
            "1-3:0.2.8(50)",
            f"0-0:1.0.0({dsmr_timestamp(now, self.tz)})",
            f"0-0:96.1.1({self.equipment_id})",
            f"1-0:1.8.1({imp[0] / 1000:010.3f}*kWh)",
            f"1-0:1.8.2({imp[1] / 1000:010.3f}*kWh)",
            f"1-0:2.8.1({exp[0] / 1000:010.3f}*kWh)",
            f"1-0:2.8.2({exp[1] / 1000:010.3f}*kWh)",
            f"0-0:96.14.0({tariff:04d})",
            f"1-0:1.7.0({max(0.0, grid) / 1000:06.3f}*kW)",
            f"1-0:2.7.0({max(0.0, -grid) / 1000:06.3f}*kW)",
            "0-0:96.7.21(00004)",
            "0-0:96.7.9(00002)",
            "1-0:32.32.0(00000)",
            "1-0:32.36.0(00000)",
            "0-0:96.13.0()",
        ]
        per_phase = grid / self.phases
        volts = [NOMINAL_V + (1.0 - i) * 0.7 for i in range(self.phases)]
        # Real meters list all voltages, then all currents, then all powers; currents are unsigned.
        out += [f"1-0:{code}.7.0({v:05.1f}*V)" for code, v in zip(("32", "52", "72"), volts, strict=False)]
        out += [
            f"1-0:{code}.7.0({round(abs(per_phase) / v):03d}*A)"
            for code, v in zip(("31", "51", "71"), volts, strict=False)
        ]
        out += [f"1-0:{code}.7.0({max(0.0, per_phase) / 1000:06.3f}*kW)" for code in ("21", "41", "61")[: self.phases]]
        out += [f"1-0:{code}.7.0({max(0.0, -per_phase) / 1000:06.3f}*kW)" for code in ("22", "42", "62")[: self.phases]]
        if self.gas_m3 is not None:
            out.append("0-1:24.1.0(003)")
            out.append("0-1:96.1.0(4730303339303031363532303530323136)")
            out.append(f"0-1:24.2.1({dsmr_timestamp(now, self.tz)})({self.gas_m3:09.3f}*m3)")
        return out

    def build(self, site: SimSite, now: datetime, *, bad_crc: bool = False) -> bytes:
        return frame_telegram(self.header, self.lines(site, now), bad_crc=bad_crc)


class TelegramSource:
    """What to send next: good telegrams, plus the faults a test asked for."""

    def __init__(
        self,
        site: SimSite,
        builder: TelegramBuilder | None = None,
        *,
        split_chunks: bool = False,
        step_site: bool = False,
        seed: int | None = None,
        encryption_key: str | None = None,
    ) -> None:
        self.site = site
        # Set: send every telegram encrypted like a Luxembourg Smarty meter (dsmr_version "5L" + key).
        self.encryption_key = encryption_key
        self.builder = builder or TelegramBuilder()
        self.split_chunks = split_chunks
        self.step_site = step_site
        self.sent = 0
        self._rng = random.Random(seed)
        self._bad_crc_pending = 0
        self._garbage: list[bytes] = []

    def inject_bad_crc(self, count: int = 1) -> None:
        self._bad_crc_pending += count

    def inject_garbage(self, data: bytes) -> None:
        """Bytes written before the next telegram (line noise, a half telegram after a reboot)."""
        self._garbage.append(data)

    def next_chunks(self, now: datetime) -> list[bytes]:
        if self.step_site:
            self.site.step(now)
        bad = self._bad_crc_pending > 0
        if bad:
            self._bad_crc_pending -= 1
        telegram = self.builder.build(self.site, now, bad_crc=bad)
        if self.encryption_key is not None:
            telegram = encrypt_telegram(telegram, self.encryption_key, invocation_counter=self.sent + 1)
        data = b"".join(self._garbage) + telegram
        self._garbage.clear()
        self.sent += 1
        if not self.split_chunks:
            return [data]
        chunks: list[bytes] = []
        i = 0
        while i < len(data):
            n = self._rng.randint(1, 97)
            chunks.append(data[i : i + n])
            i += n
        return chunks


class SimP1Pty(TelegramSource):
    """A meter on a real pseudo-terminal; the driver opens `.port` like /dev/ttyUSB0."""

    def __init__(
        self,
        site: SimSite,
        builder: TelegramBuilder | None = None,
        *,
        split_chunks: bool = False,
        step_site: bool = False,
        seed: int | None = None,
        encryption_key: str | None = None,
    ) -> None:
        super().__init__(
            site,
            builder,
            split_chunks=split_chunks,
            step_site=step_site,
            seed=seed,
            encryption_key=encryption_key,
        )
        self._master, self._slave = os.openpty()
        # Raw: no echo, no CR/LF translation, so the driver reads exactly the bytes written.
        tty.setraw(self._master)
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self.dropped = 0

    def close(self) -> None:
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> SimP1Pty:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_raw(self, data: bytes) -> None:
        """Write now; a real meter never waits for a reader, so a full pty drops the backlog."""
        view = memoryview(data)
        flushed = False
        while view:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                if flushed:
                    self.dropped += 1
                    return
                termios.tcflush(self._slave, termios.TCIFLUSH)
                flushed = True
                continue
            view = view[n:]

    async def send_once(self, now: datetime) -> None:
        chunks = self.next_chunks(now)
        for i, chunk in enumerate(chunks):
            if i:
                await asyncio.sleep(_CHUNK_PAUSE_S)
            self.write_raw(chunk)

    async def run(self, clock: Clock, interval_s: float = 1.0) -> None:
        """Write a telegram every interval_s of clock time until cancelled."""
        while True:
            await self.send_once(clock.now())
            await clock.sleep(interval_s)


class SimP1Tcp(TelegramSource):
    """The same meter behind a network P1 reader (ser2net style) on 127.0.0.1."""

    def __init__(
        self,
        site: SimSite,
        builder: TelegramBuilder | None = None,
        *,
        split_chunks: bool = False,
        step_site: bool = False,
        seed: int | None = None,
        encryption_key: str | None = None,
    ) -> None:
        super().__init__(
            site,
            builder,
            split_chunks=split_chunks,
            step_site=step_site,
            seed=seed,
            encryption_key=encryption_key,
        )
        self.host = "127.0.0.1"
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        """Listen (on the same port as before after a stop); returns the port."""
        self._server = await asyncio.start_server(self._on_client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Close the listener and every client: what a rebooting P1 dongle does."""
        if self._server is not None:
            self._server.close()
        await self.drop_clients()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None

    async def drop_clients(self) -> None:
        writers, self._writers = self._writers, set()
        for w in writers:
            w.close()
        for w in writers:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await w.wait_closed()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)

    async def send_once(self, now: datetime) -> None:
        chunks = self.next_chunks(now)
        for i, chunk in enumerate(chunks):
            if i:
                await asyncio.sleep(_CHUNK_PAUSE_S)
            await self._broadcast(chunk)

    async def _broadcast(self, data: bytes) -> None:
        for w in list(self._writers):
            if w.is_closing():
                self._writers.discard(w)
                continue
            w.write(data)
            try:
                async with asyncio.timeout(2.0):
                    await w.drain()
            except (OSError, TimeoutError):
                self._writers.discard(w)
                w.close()

    async def run(self, clock: Clock, interval_s: float = 1.0) -> None:
        """Send a telegram to every connected client every interval_s of clock time until cancelled."""
        while True:
            await self.send_once(clock.now())
            await clock.sleep(interval_s)
