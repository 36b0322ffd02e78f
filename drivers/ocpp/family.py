"""Registers the `ocpp` kind; websockets and ocpp load only when a config has an OCPP listener."""

from __future__ import annotations

from drivers.ocpp.config import OcppDevice
from drivers.registry import DriverKind, register

register(DriverKind("ocpp", "ocpp", OcppDevice, "drivers.ocpp.factory:add_ocpp", order=60))
