"""Config -> driver for a P1 meter (`p1_serial`, `p1_tcp`): one METER DER named like the device.

Imported by the registry only when a config has a P1 meter: the DSMR parser and its crypto load with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from drivers.p1.config_mixins import telegram_interval_s
from drivers.p1.dsmr import P1Meter
from drivers.p1.transport import SerialP1, TcpP1
from zapd.clock import Clock
from zapd.model import DerKind

if TYPE_CHECKING:
    from drivers.config_structs import P1SerialDevice, P1TcpDevice
    from zapd.devices import DeviceSet


def add_p1(out: DeviceSet, dev: P1SerialDevice | P1TcpDevice, clock: Clock) -> None:
    transport: SerialP1 | TcpP1
    if dev.serial_port() is not None:  # what it is, not its class: the check's pydantic model or the daemon's struct
        serial = cast("P1SerialDevice", dev)
        transport = SerialP1.for_version(serial.port, serial.dsmr_version)
        if serial.baudrate is not None:
            transport.baudrate = serial.baudrate
    else:
        tcp = cast("P1TcpDevice", dev)
        transport = TcpP1(tcp.host, tcp.port)
    out.drivers.append(
        P1Meter(
            device_id=dev.id,
            transport=transport,
            dsmr_version=dev.dsmr_version,
            poll_s=telegram_interval_s(dev),
            clock=clock,
            decryption_key=dev.decryption_key,
        )
    )
    out.poll_s[dev.id] = telegram_interval_s(dev)
    out.kinds[dev.id] = DerKind.METER
