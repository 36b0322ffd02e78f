"""Config -> driver for an `ocpp` device: one listener (Driver), one Controllable per connector DER.

Imported by the registry only when a config has an `ocpp` device: websockets and ocpp load with it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.ocpp.server import OcppServer
from zapd.clock import Clock
from zapd.model import DerKind

if TYPE_CHECKING:
    from drivers.config_structs import OcppDevice
    from zapd.devices import DeviceSet


def add_ocpp(out: DeviceSet, dev: OcppDevice, clock: Clock) -> None:
    server = OcppServer(dev, clock)
    out.drivers.append(server)
    for session in server.sessions.values():
        cp = session.config
        for conn in session.connectors.values():
            out.poll_s[conn.der_id] = dev.meter_interval_s
            out.kinds[conn.der_id] = DerKind.EV_CHARGER
            out.add_ev(conn.der_id, cp.limits)
    out.actuators.update(server.actuators())
