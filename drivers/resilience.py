"""The two retry helpers every long-lived loop shares: a capped, jittered `Backoff` and a
`FailureLatch` that logs a failure streak once when it starts and once when it ends.

They live here, in `drivers/`, because `drivers/` imports nothing of the daemon: the drivers,
`zapd/` and `cloud_sync/` can all use them without an import cycle. Before this module the
latch was written out by hand eight times and the backoff three times, each a little different
(issue 15); a reader now finds the rule in one place:

- Backoff: doubles per failure up to a cap; each delay is scaled by a random 0.5..1 so many
  gateways (or many drivers on one gateway) do not retry in lock-step after a shared outage
  such as a switch reboot.
- Latch: a disk that stays full, a broker that stays down or a device that keeps refusing
  writes must give one log line, not one per retry ("log once when a link breaks and once
  when it recovers", ARCHITECTURE.md); the streak's length and duration go into the recovery
  line so nothing is lost by not logging the rest.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol


class Backoff:
    """Capped exponential backoff with jitter; `reset()` after a success."""

    def __init__(
        self, initial_s: float, max_s: float, *, rng: random.Random | None = None, full_jitter: bool = False
    ) -> None:
        """`full_jitter`: draw the delay from 0..base instead of base/2..base, so that many clients that
        failed together (a cloud restart) come back spread over the whole window (cloud_sync/channel.py)."""
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError("need 0 < initial_s <= max_s")
        self.initial_s = initial_s
        self.max_s = max_s
        self._low = 0.0 if full_jitter else 0.5
        self._attempt = 0
        self._rng = rng or random.Random()

    @property
    def attempt(self) -> int:
        return self._attempt

    def next_delay(self) -> float:
        """Delay before the next attempt: doubles per failure up to max_s, then scaled by 0.5..1 (0..1)."""
        base = min(self.max_s, self.initial_s * (2.0 ** min(self._attempt, 32)))
        self._attempt += 1
        return base * self._rng.uniform(self._low, 1.0)

    def reset(self) -> None:
        self._attempt = 0


class _Logger(Protocol):
    """The part of a structlog logger the latch uses (a bound logger works too)."""

    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def error(self, event: str, **kw: Any) -> Any: ...


class FailureLatch:
    """Logs `failed_event` at the first failure of a streak and `recovered_event` when it ends.

    The state starts unknown (`None`): the first `ok()` logs `first_ok_event` if one is given
    (a link's "connected" line), the first `failed()` logs the failure. `context` is bound to
    every line (device, endpoint, ...). The latch only logs; counting stays with the caller's
    counters so the metrics keep their names.
    """

    def __init__(
        self,
        logger: _Logger,
        failed_event: str,
        recovered_event: str,
        *,
        first_ok_event: str | None = None,
        level: Literal["warning", "error"] = "error",
        monotonic: Callable[[], float] = time.monotonic,
        **context: Any,
    ) -> None:
        self._log = logger
        self.failed_event = failed_event
        self.recovered_event = recovered_event
        self.first_ok_event = first_ok_event
        self._level = level
        self._monotonic = monotonic
        self._context = context
        self.up: bool | None = None  # None: nothing known yet
        self.streak = 0  # failures in the current streak
        self._since: float | None = None

    @property
    def failing(self) -> bool:
        return self.up is False

    def failed(self, **fields: Any) -> bool:
        """One more failure; logs (and returns True) only when it starts a streak."""
        self.streak += 1
        if self.up is False:
            return False
        self.up = False
        self._since = self._monotonic()
        log_failure = self._log.error if self._level == "error" else self._log.warning
        log_failure(self.failed_event, **self._context, **fields)
        return True

    def ok(self, **fields: Any) -> bool:
        """A success; logs (and returns True) when it ends a streak, or first_ok_event on the first one."""
        was, self.up = self.up, True
        if was is False:
            assert self._since is not None
            failed_for_s = round(self._monotonic() - self._since, 1)
            self._log.info(
                self.recovered_event, **self._context, failures=self.streak, failed_for_s=failed_for_s, **fields
            )
            self.streak, self._since = 0, None
            return True
        if was is None and self.first_ok_event is not None:
            self._log.info(self.first_ok_event, **self._context, **fields)
            return True
        return False
