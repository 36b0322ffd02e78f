"""A meter over Modbus (Eastron SDM630 and the like), laid out by a register map file.

The map names `meter_power` (net W at the meter, + = import) or the per-phase
`meter_l1_power`..`meter_l3_power` to be summed, and optionally `import_wh`, `export_wh` and
`current_l1`..`current_l3`. Read-only: a meter is never written, and a profile with a
`[control]` table is refused for it.
"""

from __future__ import annotations

from typing import Literal

import structlog

from drivers.api import ConfigurationError, ReadingSink
from drivers.health import DeviceHealth
from drivers.modbus.bus import ModbusBus
from drivers.modbus.device_loop import poll_forever
from drivers.modbus.field_io import FieldReader
from drivers.modbus.register_map import RegisterMap
from zapd.clock import Clock
from zapd.model import EXPORT_WH, IMPORT_WH, PHASE_CURRENT_A, POWER_W, DerCapabilities, DerKind, Reading

log = structlog.get_logger(__name__)

_PHASE_POWER = ("meter_l1_power", "meter_l2_power", "meter_l3_power")
_CURRENTS = ("current_l1", "current_l2", "current_l3")
MeterRole = Literal["grid", "pv", "ev", "submeter"]


class ModbusMapMeter:
    """Driver for one meter unit id behind a shared `ModbusBus`; its DER is `<device_id>`."""

    def __init__(
        self,
        *,
        device_id: str,
        bus: ModbusBus,
        unit_id: int,
        register_map: RegisterMap,
        poll_s: float,
        clock: Clock,
        role: MeterRole = "grid",
        backoff_max_s: float = 60.0,
    ) -> None:
        if poll_s <= 0:
            raise ValueError("poll_s must be > 0")
        if register_map.control is not None:
            raise ConfigurationError(f"{register_map.path}: a meter profile must not have [control]")
        if register_map.get("meter_power") is None:
            register_map.require(*_PHASE_POWER)
        self._id = device_id
        self._map = register_map
        self._fields = FieldReader(device_id, bus, unit_id, register_map)
        self._poll_s = poll_s
        self._clock = clock
        self._role = role
        self._backoff_max_s = max(backoff_max_s, poll_s)
        self._health = DeviceHealth(device_id, clock, event_prefix="modbus", unit=unit_id)
        self.counters: dict[str, int] = dict.fromkeys(("polls", "poll_errors", "config_errors"), 0)

    @property
    def name(self) -> str:
        return self._id

    @property
    def health(self) -> DeviceHealth:
        return self._health

    @property
    def healthy(self) -> bool:
        return self._health.healthy

    @property
    def last_error(self) -> str:
        return self._health.reason

    def capabilities(self) -> list[DerCapabilities]:
        return [DerCapabilities(der_id=self._id, kind=DerKind.METER, model=self._map.name, role=self._role)]

    async def poll_once(self, sink: ReadingSink) -> None:
        ts = self._clock.now()
        read = self._fields.value
        if self._map.get("meter_power") is not None:
            power = await read("meter_power", measured=True)
        else:
            power = 0.0
            for name in _PHASE_POWER:
                power += await read(name, measured=True)
        values = {POWER_W: power}
        for key, name in ((IMPORT_WH, "import_wh"), (EXPORT_WH, "export_wh")):
            if self._map.get(name) is not None:
                values[key] = await read(name, measured=True)
        for key, name in zip(PHASE_CURRENT_A, _CURRENTS, strict=True):
            if self._map.get(name) is not None:
                values[key] = await read(name, measured=True)
        sink(Reading(der_id=self._id, kind=DerKind.METER, ts=ts, values=values))
        self.counters["polls"] += 1

    async def run(self, sink: ReadingSink) -> None:
        """Poll forever; device trouble means a pause, never an exit."""

        async def step() -> None:
            await self.poll_once(sink)

        await poll_forever(
            step,
            health=self._health,
            counters=self.counters,
            clock=self._clock,
            poll_s=self._poll_s,
            backoff_max_s=self._backoff_max_s,
        )
