"""The P1 (DSMR) smart-meter driver: the grid meter the safety envelope's fuse limit relies on.

dsmr_parser does the framing (its TelegramBuffer copes with chunks split anywhere), the
per-country telegram specifications and the CRC; this module owns the connection, the
timeouts, the counters and the reconnect loop, which dsmr_parser's own asyncio client leaves
to logging and a keep-alive without a clock or counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import structlog

from drivers.api import ReadingSink
from drivers.health import DeviceHealth, HealthState, describe_os_error
from drivers.p1.convert import meter_values, specification_for
from drivers.p1.lib import (
    DecryptionError,
    EncryptedTelegramBuffer,
    InvalidChecksumError,
    ParseError,
    TelegramBuffer,
    TelegramParser,
    load_crypto,
)
from drivers.p1.transport import P1Transport, SerialP1, TcpP1
from drivers.resilience import Backoff, FailureLatch
from zapd.clock import Clock
from zapd.model import PHASE_CURRENT_A, DerCapabilities, DerKind, Reading

__all__ = ["P1Meter", "P1Transport", "SerialP1", "TcpP1"]

log = structlog.get_logger(__name__)
# dsmr_parser logs every malformed line at ERROR with a traceback; in a flood of line noise that
# would drown the journal. We count and rate-limit those ourselves, so keep only its criticals.
logging.getLogger("dsmr_parser.parsers").setLevel(logging.CRITICAL)

CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
# Longest plausible telegram (Belgian with M-Bus and 13-month peaks) is a few kB; more is noise.
MAX_PENDING_BYTES = 32 * 1024
LOG_EVERY_S = 60.0
MIN_SILENCE_S = 0.5


class _LogLimiter:
    """First occurrence logs at once, then at most one line per interval with the count suppressed."""

    def __init__(self, interval_s: float = LOG_EVERY_S) -> None:
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None to stay quiet, else how many occurrences were suppressed since the last line."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)


class _Framer:
    """Bytes in, whole telegrams out (text for plain meters, hex of the DLMS frame for encrypted)."""

    def __init__(self, encrypted: bool) -> None:
        self._encrypted = encrypted
        self._pending = 0
        self.overflows = 0
        self._buf: TelegramBuffer | EncryptedTelegramBuffer = self._new()

    def _new(self) -> TelegramBuffer | EncryptedTelegramBuffer:
        return EncryptedTelegramBuffer() if self._encrypted else TelegramBuffer()

    def feed(self, data: bytes) -> list[str]:
        # latin-1 maps every byte to one char, so a chunk boundary can never split a character.
        self._buf.append(data if self._encrypted else data.decode("latin1"))
        telegrams: list[str] = list(self._buf.get_all())
        self._pending = 0 if telegrams else self._pending + len(data)
        if self._pending > MAX_PENDING_BYTES:
            # A stream of noise with no end marker would grow the buffer forever.
            self._buf = self._new()
            self._pending = 0
            self.overflows += 1
        return telegrams


class _Silent(Exception):
    """The link is up but the meter said nothing usable for too long: reconnect."""


class P1Meter:
    """A DSMR meter on a serial or TCP P1 port, pushing one METER reading per good telegram."""

    def __init__(
        self,
        *,
        device_id: str,
        transport: P1Transport,
        dsmr_version: str = "5",
        poll_s: float = 1.0,
        clock: Clock,
        decryption_key: str | None = None,
        authentication_key: str | None = None,
    ) -> None:
        if poll_s <= 0:
            raise ValueError("poll_s must be > 0")
        self.device_id = device_id
        self.transport = transport
        self.dsmr_version = dsmr_version
        self.poll_s = poll_s
        self.clock = clock
        spec = specification_for(dsmr_version, encrypted=decryption_key is not None)
        self._encrypted = bool(spec.get("general_global_cipher"))
        if self._encrypted and not decryption_key:
            raise ValueError(f"dsmr_version {dsmr_version!r} is encrypted: decryption_key needed")
        if self._encrypted:
            load_crypto()  # plain meters never load dsmr_parser's DLMS crypto (drivers/p1/lib.py)
        self._decryption_key = decryption_key or ""
        # "" lets dsmr_parser use the key the spec publishes (Luxembourg Smarty's fixed one).
        self._authentication_key = authentication_key or ""
        # v2.2, Q3D and ISKRA_IE have no CRC; the spec's checksum_support decides, not us.
        self._parser = TelegramParser(spec, apply_checksum_validation=True)
        self.counters: dict[str, int] = {
            "telegrams": 0,
            "readings": 0,
            "bad_crc": 0,
            "parse_error": 0,
            "decrypt_error": 0,
            "overflow": 0,
            "connects": 0,
            "link_errors": 0,
            "silent": 0,
        }
        self.last_raw: str | None = None
        """The last framed telegram as received (hex for encrypted meters), for a support bundle."""
        self.last_reading: Reading | None = None
        self.connected = False
        self._phases = 1
        self._limiter = _LogLimiter()
        self._silent = False
        self._got_reading = False
        self._log = log.bind(der_id=device_id, transport=transport.describe())
        self._link = FailureLatch(self._log, "p1.link_down", "p1.link_up", level="warning")
        self._health = DeviceHealth(device_id, clock, event_prefix="p1")

    @property
    def name(self) -> str:
        return self.device_id

    @property
    def health(self) -> DeviceHealth:
        return self._health

    def capabilities(self) -> list[DerCapabilities]:
        return [
            DerCapabilities(
                der_id=self.device_id,
                kind=DerKind.METER,
                model=f"DSMR {self.dsmr_version}",
                phases=self._phases,
            )
        ]

    @property
    def silence_timeout_s(self) -> float:
        """3 telegram periods of clock time, in real seconds (the simulated meter runs on the clock).

        A fast demo clock would make that a few ms, and a busy gateway would then log silence on
        every scheduling hiccup, so it never drops below MIN_SILENCE_S unless 3 × poll_s does.
        """
        periods = 3 * self.poll_s
        return max(periods / self.clock.speed, min(periods, MIN_SILENCE_S))

    @property
    def reconnect_after_silent_s(self) -> float:
        """A half-open TCP link or an unplugged cable may never error: reopen after a long silence."""
        return max(10 * self.poll_s / self.clock.speed, 5.0)

    async def run(self, sink: ReadingSink) -> None:
        backoff = Backoff(BACKOFF_INITIAL_S, BACKOFF_MAX_S)
        while True:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    reader, writer = await self.transport.open()
            except (OSError, TimeoutError) as exc:
                self._link_down("connect failed", exc)
                self._health.failed(f"{describe_os_error(exc)} at {self.transport.describe()}")
            else:
                self.counters["connects"] += 1
                self.connected = True
                self._health.connecting()
                reason: BaseException | None = None
                try:
                    got_any = await self._read(reader, sink)
                except (OSError, _Silent) as exc:
                    got_any, reason = self._got_reading, exc
                finally:
                    self.connected = False
                    await self._close(writer)
                if got_any:
                    backoff.reset()
                self._link_down("link closed", reason)
                if isinstance(reason, _Silent):
                    self._health.failed(f"{reason}; reconnecting", HealthState.STALE)
                else:
                    why = describe_os_error(reason) if reason is not None else "closed by the other end"
                    self._health.failed(f"link lost at {self.transport.describe()}: {why}")
            # Jitter: many gateways restarting together must not hit one ser2net in lockstep.
            await asyncio.sleep(backoff.next_delay())

    def _link_down(self, what: str, exc: BaseException | None) -> None:
        """Count every failure; log only the first one until a good telegram shows recovery."""
        self.counters["link_errors"] += 1
        self._link.failed(reason=what, error=repr(exc) if exc else "eof")

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader, sink: ReadingSink) -> bool:
        """Read until EOF (returns) or a link error/long silence (raises). True if a reading was made."""
        framer = _Framer(self._encrypted)
        last_good = time.monotonic()
        self._got_reading = False
        while True:
            # Silence state outlives the connection, so a dead meter is logged once, not per reconnect.
            limit = self.reconnect_after_silent_s if self._silent else self.silence_timeout_s
            remaining = last_good + limit - time.monotonic()
            try:
                async with asyncio.timeout(max(0.001, remaining)):
                    data = await reader.read(4096)
            except TimeoutError:
                if self._silent:
                    raise _Silent(f"no telegram for {self.reconnect_after_silent_s:.1f}s") from None
                self._silent = True
                self.counters["silent"] += 1
                self._health.failed(f"no valid telegram for {self.silence_timeout_s:.1f} s", HealthState.STALE)
                self._log.warning("p1.meter_silent", seconds=round(self.silence_timeout_s, 3))
                continue
            if not data:
                return self._got_reading
            overflows = framer.overflows
            for raw in framer.feed(data):
                if self._handle(raw, sink):
                    last_good = time.monotonic()
                    self._on_good_telegram()
            self.counters["overflow"] += framer.overflows - overflows

    def _on_good_telegram(self) -> None:
        self._got_reading = True
        self._health.ok()
        self._link.ok(link_errors=self.counters["link_errors"])
        if self._silent:
            self._silent = False
            self._log.info("p1.meter_talking_again")

    def _handle(self, raw: str, sink: ReadingSink) -> bool:
        """Parse one framed telegram and push its reading; False when it was dropped."""
        self.counters["telegrams"] += 1
        self.last_raw = raw
        try:
            text = raw if self._encrypted else raw.encode("latin1").decode("ascii")
            telegram = self._parser.parse(
                text,
                encryption_key=self._decryption_key,
                authentication_key=self._authentication_key,
                throw_ex=True,
            )
            values = meter_values(telegram)
        except InvalidChecksumError as exc:
            self._drop("bad_crc", exc)
            return False
        except DecryptionError as exc:
            self._drop("decrypt_error", exc)
            return False
        except (ParseError, ValueError, ArithmeticError, LookupError, TypeError) as exc:
            # Untrusted bytes through a third-party parser: any of these means "bad telegram".
            self._drop("parse_error", exc)
            return False
        if any(k in values for k in PHASE_CURRENT_A[1:]):
            self._phases = 3
        reading = Reading(der_id=self.device_id, kind=DerKind.METER, ts=self.clock.now(), values=values)
        self.last_reading = reading
        self.counters["readings"] += 1
        sink(reading)
        return True

    def _drop(self, counter: str, exc: Exception) -> None:
        self.counters[counter] += 1
        self._health.note_error(f"telegram dropped ({counter}): {str(exc)[:200]}")
        suppressed = self._limiter.allow(counter)
        if suppressed is not None:
            self._log.warning(
                "p1.telegram_dropped",
                reason=counter,
                error=str(exc)[:200],
                suppressed=suppressed,
                total=self.counters[counter],
            )

    def stats(self) -> dict[str, Any]:
        """Counters and link state for zapctl and the support bundle."""
        return {"connected": self.connected, **self.counters}
