"""What the P1 config models do beyond their keys, pydantic-free (see drivers/config_types.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

# Seconds between P1 telegrams, by DSMR version (see docs/decisions.md "P1 telegram intervals" for sources):
# DSMR 2.2 and 4.x every 10 s, DSMR 5.0 (and Belgium's e-MUCS) every second, Luxembourg's Smarty and
# the Swedish P1 recommendation every 10 s; Q3D has no published interval, 10 s is the safe guess
# (a slower meter would otherwise look dead and hold the site).
DSMR_TELEGRAM_INTERVAL_S: dict[str, float] = {
    "2.2": 10.0,
    "4": 10.0,
    "5": 1.0,
    "5B": 1.0,
    "5L": 10.0,
    "5S": 10.0,
    "Q3D": 10.0,
}


class P1Meter(Protocol):
    @property
    def poll_s(self) -> float | None: ...
    @property
    def dsmr_version(self) -> str: ...


def telegram_interval_s(dev: P1Meter) -> float:
    """The P1 meter's telegram interval: `poll_s` when given, else what its DSMR version sends."""
    return dev.poll_s if dev.poll_s is not None else DSMR_TELEGRAM_INTERVAL_S[dev.dsmr_version]


class SerialPortMixin:
    """A meter on a serial port of its own (`port`)."""

    __slots__ = ()

    if TYPE_CHECKING:
        port: str

    def serial_port(self) -> str | None:
        return self.port
