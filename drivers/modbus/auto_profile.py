"""`map = "auto"`: recognise the device's profile at start, then run the driver for it.

The daemon fixes DER ids before any I/O, so an auto device is declared with the DERs its kind has
(a battery device: `<id>.battery` and `<id>.pv`, as a SunSpec device is; a meter: `<id>`); it
reports no capabilities and refuses commands until the read-only recognition
(drivers/modbus/recognize.py) has named a profile of the right kind (a battery profile for
`modbus_tcp`/`modbus_rtu`, a meter profile for `modbus_meter_tcp`/`modbus_meter_rtu`). A device
that no profile fits is a configuration error on its health record, retried slowly (a device may
answer only once it has booted), never a busy loop.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Generic, TypeVar

import structlog

from drivers.api import DriverError, ReadingSink
from drivers.health import DeviceHealth, HealthState
from drivers.modbus.bus import ModbusBus
from drivers.modbus.hybrid_inverter import ModbusHybridInverter
from drivers.modbus.map_meter import ModbusMapMeter
from drivers.modbus.recognize import Match, recognize
from drivers.modbus.register_map import RegisterMap, load_register_map
from zapd.clock import Clock
from zapd.model import Command, CommandResult, DerCapabilities

log = structlog.get_logger(__name__)

RETRY_S = 60.0  # between recognition attempts when nothing fits

_Inner = TypeVar("_Inner", ModbusHybridInverter, ModbusMapMeter)


class _AutoProfile(ABC, Generic[_Inner]):
    """A Driver that becomes the profile's driver once recognition names a profile it `accepts`."""

    wants = ""  # what kind of profile, for the health record's reason

    def __init__(
        self,
        *,
        device_id: str,
        bus: ModbusBus,
        unit_id: int,
        clock: Clock,
        make: Callable[[RegisterMap], _Inner],
        retry_s: float = RETRY_S,
    ) -> None:
        self._id = device_id
        self._bus = bus
        self._unit = unit_id
        self._clock = clock
        self._make: Callable[[RegisterMap], _Inner] = make
        self._retry_s = retry_s
        self._own_health = DeviceHealth(device_id, clock, event_prefix="modbus", unit=unit_id)
        self.inner: _Inner | None = None
        self.profile: str | None = None

    @property
    def name(self) -> str:
        return self._id

    @property
    def health(self) -> DeviceHealth:
        return self.inner.health if self.inner is not None else self._own_health

    @property
    def healthy(self) -> bool:
        return self.health.healthy

    @property
    def last_error(self) -> str:
        return self.health.reason

    def capabilities(self) -> list[DerCapabilities]:
        return [] if self.inner is None else self.inner.capabilities()

    @abstractmethod
    def accepts(self, match: Match) -> bool:
        """Whether a recognised profile is of the kind this device was configured as (battery or meter)."""

    def hint(self, found: list[Match]) -> str:
        return ""

    async def _recognise(self) -> str | None:
        try:
            found = await recognize(self._bus, self._unit)
        except DriverError as exc:
            self._own_health.failed(str(exc))
            return None
        for match in found:
            if match.profile and self.accepts(match):
                log.info("modbus.profile_recognised", device=self._id, profile=match.profile, evidence=match.evidence)
                return match.profile
        what = ", ".join(m.profile or m.driver for m in found) or "nothing"
        self._own_health.failed(
            f'map = "auto": no {self.wants} profile fits unit {self._unit} (found {what}){self.hint(found)}',
            HealthState.UNUSABLE,
        )
        return None

    async def run(self, sink: ReadingSink) -> None:
        while self.inner is None:
            profile = await self._recognise()
            if profile is None:
                await asyncio.sleep(self._retry_s)
                continue
            self.profile = profile
            self.inner = self._make(load_register_map(profile))
        await self.inner.run(sink)


class AutoProfileInverter(_AutoProfile[ModbusHybridInverter]):
    """Driver + Controllable that becomes a `ModbusHybridInverter` once its battery profile is known."""

    wants = "battery"

    @property
    def battery_id(self) -> str:
        return f"{self._id}.battery"

    @property
    def pv_id(self) -> str:
        return f"{self._id}.pv"

    def accepts(self, match: Match) -> bool:
        return any(c.startswith("battery") for c in match.capabilities)

    def hint(self, found: list[Match]) -> str:
        return ' (a SunSpec device: use driver = "sunspec_tcp")' if any(not m.profile for m in found) else ""

    async def apply(self, command: Command) -> CommandResult:
        if self.inner is None:
            return CommandResult(command=command, ok=False, detail='map = "auto": profile not recognised yet')
        return await self.inner.apply(command)

    async def safe_mode(self) -> None:
        if self.inner is not None:
            await self.inner.safe_mode()


class AutoProfileMeter(_AutoProfile[ModbusMapMeter]):
    """A meter whose profile recognition names at start; its DER is `<id>`, as with a named profile."""

    wants = "meter"

    def accepts(self, match: Match) -> bool:
        return match.driver.startswith("modbus_meter")
