"""One health record per device, the same for every driver: is it answering, since when, and why not.

A supervised driver task that is running is not a device that answers: a Modbus driver whose
every connect is refused keeps its task alive (by design, it backs off and retries), so "task
ok" said nothing about the device. Each driver now keeps a `DeviceHealth` and moves it between
the states below; `zapctl devices`/`status`, the metrics, Home Assistant and `zapd devices scan`
all read the same record.

Staleness is judged when the record is read (`view(now)`), so a device that simply goes quiet
(an MQTT publisher that stops, a P1 port that is open but silent) turns `stale` without a timer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import structlog

from zapd.clock import Clock

log = structlog.get_logger(__name__)


class HealthState(StrEnum):
    CONNECTING = "connecting"  # no answer yet since zapd started (or since the link came up)
    OK = "ok"  # answered the last time we asked
    STALE = "stale"  # link up, but no data for longer than the device's own period allows
    DEGRADED = "degraded"  # answers, with errors (Modbus exceptions, values out of range)
    UNUSABLE = "unusable"  # answers, but says our configuration is wrong or offers nothing zapd can use
    UNREACHABLE = "unreachable"  # no answer at all: connection refused, timeouts, link down


NOT_ANSWERING = frozenset({HealthState.CONNECTING, HealthState.STALE, HealthState.UNREACHABLE})


def describe_os_error(exc: BaseException) -> str:
    """ "connection refused", "no route to host": the errno's own text, not asyncio's "Connect call failed (...)"."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno).lower()
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True, slots=True)
class HealthView:
    """What the record says at one moment. `since` is when the current state began; `reason` says
    why the device is not `ok` (empty when it is); `last_error` stays after a recovery."""

    device: str
    state: HealthState
    since: datetime | None
    reason: str
    last_error: str
    last_error_at: datetime | None
    errors: int
    last_ok: datetime | None

    @property
    def ok(self) -> bool:
        return self.state is HealthState.OK

    def to_json(self) -> dict[str, object]:
        return {
            "state": str(self.state),
            "since": self.since.isoformat() if self.since else None,
            "reason": self.reason,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
            "errors": self.errors,
            "last_ok": self.last_ok.isoformat() if self.last_ok else None,
        }


class DeviceHealth:
    """Moves between the states; logs `<prefix>.device_error` once per outage (and when its kind
    changes) and `<prefix>.device_recovered` when it ends.

    `stale_after_s` (clock seconds) turns an `ok` or `connecting` record `stale` when nothing
    good has been seen for that long.
    """

    def __init__(
        self,
        device_id: str,
        clock: Clock,
        *,
        event_prefix: str = "device",
        unit: int | None = None,
        stale_after_s: float | None = None,
        no_data_hint: Callable[[], str] | None = None,
    ) -> None:
        self.device_id = device_id
        # What to check when data does not come (a device setting); appended to the stale reason.
        self._no_data_hint = no_data_hint
        self._clock = clock
        self._prefix = event_prefix
        self._unit = unit
        self.stale_after_s = stale_after_s
        self.state = HealthState.CONNECTING
        self.since: datetime | None = clock.now()
        self.reason = ""
        self.last_error = ""
        self.last_error_at: datetime | None = None
        self.errors = 0
        self.last_ok: datetime | None = None
        self._outage: HealthState | None = None  # the failure state last logged, None when not in an outage

    @property
    def healthy(self) -> bool:
        return self.state is HealthState.OK

    def _enter(self, state: HealthState, now: datetime) -> None:
        if state is not self.state:
            self.state, self.since = state, now

    def ok(self) -> None:
        """The device answered as it should."""
        now = self._clock.now()
        if self._outage is not None:
            log.info(f"{self._prefix}.device_recovered", device=self.device_id, unit=self._unit, errors=self.errors)
            self._outage = None
        self._enter(HealthState.OK, now)
        self.last_ok, self.reason = now, ""

    def connecting(self, reason: str = "") -> None:
        """A link came up; nothing useful has come over it yet (an outage, if any, goes on)."""
        if self.state is not HealthState.OK:
            self._enter(HealthState.CONNECTING, self._clock.now())
            self.reason = reason

    def failed(self, error: str, state: HealthState = HealthState.UNREACHABLE) -> None:
        """Count one failure and enter `state`; logged once per outage, again when its kind or a
        configuration error's text changes."""
        now = self._clock.now()
        if self._outage is not state or (state is HealthState.UNUSABLE and error != self.last_error):
            log.error(
                f"{self._prefix}.device_error", device=self.device_id, unit=self._unit, error=error, state=str(state)
            )
            self._outage = state
        self.note_error(error)
        self._enter(state, now)
        self.reason = error

    def note_error(self, error: str) -> None:
        """Count an error that does not change the state (one bad telegram among good ones)."""
        self.errors += 1
        self.last_error, self.last_error_at = error, self._clock.now()

    def view(self, now: datetime | None = None) -> HealthView:
        now = now or self._clock.now()
        state, since, reason = self.state, self.since, self.reason
        if self.stale_after_s is not None and state in (HealthState.OK, HealthState.CONNECTING):
            seen = self.last_ok if state is HealthState.OK else self.since
            if seen is not None and (now - seen).total_seconds() > self.stale_after_s:
                state, since = HealthState.STALE, seen + timedelta(seconds=self.stale_after_s)
                what = "no data" if self.last_ok is None or self.state is HealthState.CONNECTING else "no new data"
                reason = f"{what} for {(now - seen).total_seconds():.0f} s (expected within {self.stale_after_s:g} s)"
                hint = self._no_data_hint() if self._no_data_hint is not None else ""
                reason += f"; {hint}" if hint else ""
        return HealthView(
            self.device_id, state, since, reason, self.last_error, self.last_error_at, self.errors, self.last_ok
        )


class ReportsHealth:
    """The `health`, `healthy` and `last_error` a device driver offers, read from its one record.

    A driver mixes this in and keeps its record in `self._health`, so the three views cannot drift apart.
    """

    _health: DeviceHealth

    @property
    def health(self) -> DeviceHealth:
        return self._health

    @property
    def healthy(self) -> bool:
        return self._health.healthy

    @property
    def last_error(self) -> str:
        """Why the device is not healthy now; empty while it is."""
        return self._health.reason
