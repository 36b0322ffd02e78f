"""The small capability interfaces every driver offers (evcc api/api.go style).

A driver implements `Driver` (it owns its connection and pushes readings) and, when the
device accepted control at probe time, `Controllable`. Nothing else is required: no base
class full of NotImplementedError.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import msgspec
import structlog

from drivers.health import DeviceHealth
from zapd.bounds import bad_values
from zapd.model import Command, CommandResult, DerCapabilities, Quality, Reading

log = structlog.get_logger(__name__)

ReadingSink = Callable[[Reading], None]
"""Called by a driver for every new reading. Must not block: the daemon queues the work."""


class DriverError(Exception):
    """A device or link problem a driver reports; the daemon counts and logs it, never crashes."""


class ConfigurationError(DriverError):
    """The device says our configuration is wrong (e.g. Modbus illegal address): do not hammer it."""


class DeviceUnreachable(DriverError):
    """No answer at all (connection refused, timeout, link down), as opposed to an answer that is an error."""


@runtime_checkable
class Driver(Protocol):
    @property
    def name(self) -> str:
        """Device id from the config, used in logs and counters."""
        ...

    def capabilities(self) -> list[DerCapabilities]:
        """The DERs behind this driver and their limits (may grow after the first probe)."""
        ...

    async def run(self, sink: ReadingSink) -> None:
        """Own the connection forever: read, push readings, reconnect with backoff. Never return normally."""
        ...


@runtime_checkable
class Controllable(Protocol):
    async def apply(self, command: Command) -> CommandResult:
        """Write one command to the device, with a timeout; report the outcome, never raise for I/O."""
        ...

    async def safe_mode(self) -> None:
        """Put the device into the state it should hold when zapd stops (battery idle, EV minimum)."""
        ...


class ReadingGuard:
    """The one gate every driver's readings pass on their way to the daemon, so no driver can forget it.

    A value that is not a finite number inside zapd/bounds.py (a SunSpec float32 of +Inf, a scale
    factor gone wrong, "NaN" on MQTT) is never a number for the rest of zapd: the reading goes on
    with only its plausible values and quality BAD, which the snapshot reads as "DER unknown" (so the
    ladder holds on a meter or battery it cannot trust), and the outbox never gets a value the cloud
    refuses. Each refused reading is counted in the driver's own counters (`rejected_nonfinite`,
    `rejected_out_of_range`, exported per device by the metrics) and logged once per streak per DER;
    a DER that flaps between good and bad logs a new streak at most once per `log_every_s`.
    """

    def __init__(
        self, device: str, sink: ReadingSink, counters: dict[str, int] | None = None, *, log_every_s: float = 60.0
    ) -> None:
        self._device = device
        self._sink = sink
        self.counters: dict[str, int] = counters if counters is not None else {}
        for reason in ("nonfinite", "out_of_range"):
            self.counters.setdefault(f"rejected_{reason}", 0)
        self._streaks: dict[str, int] = {}  # der_id -> readings refused in a row
        self._log_every_s = log_every_s
        self._logged_at: dict[str, float] = {}  # der_id -> monotonic time of its last reading.rejected line
        self._quiet_streaks: dict[str, int] = {}  # der_id -> streaks not logged since that line

    def __call__(self, reading: Reading) -> None:
        bad = bad_values(reading.values)
        if not bad and reading.quality is not Quality.BAD:
            streak = self._streaks.pop(reading.der_id, None)
            if streak is not None and reading.der_id not in self._quiet_streaks:
                log.info("reading.valid_again", device=self._device, der_id=reading.der_id, refused=streak)
            self._sink(reading)
            return
        for reason in sorted(set(bad.values())):
            self.counters[f"rejected_{reason}"] += 1
        streak = self._streaks.get(reading.der_id, 0)
        if streak == 0:
            now = time.monotonic()
            last = self._logged_at.get(reading.der_id)
            if last is not None and now - last < self._log_every_s:
                self._quiet_streaks[reading.der_id] = self._quiet_streaks.get(reading.der_id, 0) + 1
            else:
                self._logged_at[reading.der_id] = now
                log.warning(
                    "reading.rejected",
                    device=self._device,
                    der_id=reading.der_id,
                    values={k: repr(reading.values[k]) for k in sorted(bad)},
                    reasons=[str(r) for r in sorted(set(bad.values()))] or ["driver"],
                    streaks_not_logged=self._quiet_streaks.pop(reading.der_id, 0),
                )
        self._streaks[reading.der_id] = streak + 1
        good = {k: v for k, v in reading.values.items() if k not in bad}
        self._sink(msgspec.structs.replace(reading, values=good, quality=Quality.BAD))


@runtime_checkable
class HasHealth(Protocol):
    """Every zapd driver keeps one health record (drivers/health.py); the daemon reads it, never writes it."""

    @property
    def health(self) -> DeviceHealth: ...
