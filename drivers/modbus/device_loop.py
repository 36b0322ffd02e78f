"""The poll loop every Modbus device driver runs, and what it tells the device's health record.

Device trouble means a pause, never an exit: a configuration error (the device says our map
is wrong) waits the longest backoff, because asking again soon will not change its mind; an
I/O error backs off with jitter. The health record (drivers/health.py) says which it was: no
answer at all is `unreachable`, a configuration error `unusable`, any other error `degraded`;
each outage is logged once, and once again when it ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn

from drivers.api import ConfigurationError, DeviceUnreachable, DriverError
from drivers.health import DeviceHealth, HealthState
from drivers.resilience import Backoff
from zapd.clock import Clock


async def poll_forever(
    step: Callable[[], Awaitable[None]],
    *,
    health: DeviceHealth,
    counters: dict[str, int],
    clock: Clock,
    poll_s: float,
    backoff_max_s: float,
    io_errors: tuple[type[Exception], ...] = (DriverError,),
) -> NoReturn:
    """Run `step` every poll_s of clock time, forever."""
    backoff = Backoff(min(poll_s, 1.0), backoff_max_s)
    while True:
        try:
            await step()
        except ConfigurationError as exc:
            counters["config_errors"] = counters.get("config_errors", 0) + 1
            health.failed(str(exc), HealthState.UNUSABLE)
            await clock.sleep(backoff_max_s)
            continue
        except io_errors as exc:
            counters["poll_errors"] = counters.get("poll_errors", 0) + 1
            state = HealthState.UNREACHABLE if isinstance(exc, DeviceUnreachable) else HealthState.DEGRADED
            health.failed(str(exc) or type(exc).__name__, state)
            await clock.sleep(max(poll_s, backoff.next_delay()))
            continue
        backoff.reset()
        health.ok()
        await clock.sleep(poll_s)
