"""The poll loop every Modbus device driver runs, and its health bookkeeping.

Device trouble means a pause, never an exit: a configuration error (the device says our map
is wrong) waits the longest backoff, because asking again soon will not change its mind; an
I/O error backs off with jitter. Each outage is logged once, and once again when it ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NoReturn

import structlog

from drivers.api import ConfigurationError, DriverError
from drivers.modbus.backoff import Backoff
from zapd.clock import Clock

log = structlog.get_logger(__name__)


class DeviceHealth:
    """Healthy, failing or not yet known; logs `<prefix>.device_error` / `<prefix>.device_recovered`."""

    def __init__(self, device_id: str, unit: int | None, event_prefix: str) -> None:
        self._id = device_id
        self._unit = unit
        self._prefix = event_prefix
        self.state: bool | None = None  # None until the first poll
        self.last_error = ""

    @property
    def healthy(self) -> bool:
        return bool(self.state)

    def trouble(self, exc: Exception, *, config: bool) -> None:
        msg = str(exc)
        # Once per outage; a configuration error again when it changes (it names the register at fault).
        if self.state is not False or (config and msg != self.last_error):
            log.error(
                f"{self._prefix}.device_error",
                device=self._id,
                unit=self._unit,
                error=msg,
                kind="configuration" if config else "io",
            )
        self.state = False
        self.last_error = msg

    def recovered(self) -> None:
        if self.state is False:
            log.info(f"{self._prefix}.device_recovered", device=self._id, unit=self._unit)
        self.state = True
        self.last_error = ""


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
            health.trouble(exc, config=True)
            await clock.sleep(backoff_max_s)
            continue
        except io_errors as exc:
            counters["poll_errors"] = counters.get("poll_errors", 0) + 1
            health.trouble(exc, config=False)
            await clock.sleep(max(poll_s, backoff.next_delay()))
            continue
        backoff.reset()
        health.recovered()
        await clock.sleep(poll_s)
