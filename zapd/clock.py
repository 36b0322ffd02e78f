"""Injected clocks: the controller, the rules and the simulator take time from one of these.

Tests leap a ManualClock instead of sleeping; the demo runs the daemon and the simulated
site on one ScaledClock that runs faster than real time (OpenEMS TimeLeapClock idea).
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Current UTC wall time of this clock."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for `seconds` of this clock's time."""
        ...

    @property
    def speed(self) -> float:
        """How many clock seconds pass per real second (1 for the system clock)."""
        ...


class SystemClock:
    speed = 1.0

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Runs `speed` times faster than real time from `start`.

    `wall_ref` (a time.time() value) anchors `start` to a wall instant, so several processes
    (simulator, daemon, cloud) started at different moments share one simulated time line.
    """

    def __init__(self, start: datetime, speed: float, *, wall_ref: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self._start = start
        # Monotonic time for the running clock; the wall reference only sets where it starts.
        offset = 0.0 if wall_ref is None else time.time() - wall_ref
        self._t0 = time.monotonic() - offset
        self._speed = speed

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=(time.monotonic() - self._t0) * self._speed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self._speed)


class ManualClock:
    """Time moves only when a test calls advance(); sleep() yields once and returns."""

    speed = 1.0

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    def set(self, when: datetime) -> None:
        self._now = when

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


SIM_CLOCK_ENV = "ZAPD_SIM_CLOCK"


def clock_from_env(env: dict[str, str] | None = None) -> Clock:
    """The system clock, unless ZAPD_SIM_CLOCK="START_ISO@SPEED@WALL_REF" asks for a shared fast one.

    For the simulator, end-to-end tests and the demo only: a real site never sets it.
    """
    value = (env if env is not None else dict(os.environ)).get(SIM_CLOCK_ENV, "")
    if not value:
        return SystemClock()
    try:
        start_s, speed_s, wall_s = value.split("@")
        start = datetime.fromisoformat(start_s)
        if start.tzinfo is None:
            raise ValueError("start needs a UTC offset")
        return ScaledClock(start, float(speed_s), wall_ref=float(wall_s))
    except ValueError as exc:
        raise ValueError(f"{SIM_CLOCK_ENV}={value!r}: expected START_ISO@SPEED@WALL_REF ({exc})") from None


def sim_clock_env(start: datetime, speed: float, wall_ref: float | None = None) -> str:
    return f"{start.isoformat()}@{speed}@{time.time() if wall_ref is None else wall_ref}"
