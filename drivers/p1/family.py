"""Registers the P1 (DSMR) kinds; the parser and its crypto load only when a config has a P1 meter."""

from __future__ import annotations

from drivers.p1.config import P1SerialDevice, P1TcpDevice
from drivers.registry import DriverKind, register

_CHECKS = "drivers.p1.checks:check"
register(
    DriverKind("p1_serial", "p1", P1SerialDevice, "drivers.p1.factory:add_p1", order=50, checks=_CHECKS),
    DriverKind("p1_tcp", "p1", P1TcpDevice, "drivers.p1.factory:add_p1", order=51, checks=_CHECKS),
)
