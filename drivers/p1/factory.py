"""Config -> driver for a P1 meter (`p1_serial`, `p1_tcp`): one METER DER named like the device.

Imported by the registry only when a config has a P1 meter: the DSMR parser and its crypto load with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.p1.config import P1SerialDevice, P1TcpDevice, telegram_interval_s
from drivers.p1.dsmr import P1Meter
from drivers.p1.transport import SerialP1, TcpP1
from zapd.clock import Clock
from zapd.model import DerKind

if TYPE_CHECKING:
    from zapd.devices import DeviceSet


def add_p1(out: DeviceSet, dev: P1SerialDevice | P1TcpDevice, clock: Clock) -> None:
    transport: SerialP1 | TcpP1
    if isinstance(dev, P1SerialDevice):
        transport = SerialP1.for_version(dev.port, dev.dsmr_version)
        if dev.baudrate is not None:
            transport.baudrate = dev.baudrate
    else:
        transport = TcpP1(dev.host, dev.port)
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
