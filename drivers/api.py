"""The small capability interfaces every driver offers (evcc api/api.go style).

A driver implements `Driver` (it owns its connection and pushes readings) and, when the
device accepted control at probe time, `Controllable`. Nothing else is required: no base
class full of NotImplementedError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from zapd.model import Command, CommandResult, DerCapabilities, Reading

ReadingSink = Callable[[Reading], None]
"""Called by a driver for every new reading. Must not block: the daemon queues the work."""


class DriverError(Exception):
    """A device or link problem a driver reports; the daemon counts and logs it, never crashes."""


class ConfigurationError(DriverError):
    """The device says our configuration is wrong (e.g. Modbus illegal address): do not hammer it."""


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
