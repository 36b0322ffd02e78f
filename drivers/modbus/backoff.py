"""Capped, jittered exponential backoff shared by the bus (reconnects) and drivers (retries).

Jitter keeps many gateways (or many drivers on one gateway) from retrying in lock-step after
a shared outage such as a switch reboot.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial_s: float, max_s: float, *, rng: random.Random | None = None) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError("need 0 < initial_s <= max_s")
        self.initial_s = initial_s
        self.max_s = max_s
        self._attempt = 0
        self._rng = rng or random.Random()

    @property
    def attempt(self) -> int:
        return self._attempt

    def next_delay(self) -> float:
        """Delay before the next attempt: doubles per failure up to max_s, then scaled by 0.5..1."""
        base = min(self.max_s, self.initial_s * (2.0 ** min(self._attempt, 32)))
        self._attempt += 1
        return base * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._attempt = 0
