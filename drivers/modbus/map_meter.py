"""A meter over Modbus (Eastron SDM630 and the like), laid out by a register map file.

The map names `meter_power` (net W at the meter, + = import) or the per-phase
`meter_l1_power`..`meter_l3_power` to be summed, and optionally `import_wh`, `export_wh` and
`current_l1`..`current_l3`. Per-phase powers, when the map has them, are reported too (`l1_w`..)
and give each phase current its sign. Read-only: a meter is never written, and a profile with a
`[control]` table is refused for it.
"""

from __future__ import annotations

from typing import Literal

import structlog

from drivers.api import ConfigurationError, ReadingSink
from drivers.health import DeviceHealth, ReportsHealth
from drivers.modbus.bus import ModbusBus
from drivers.modbus.device_loop import poll_forever
from drivers.modbus.field_io import FieldReader
from drivers.modbus.register_map import RegisterMap
from zapd.clock import Clock
from zapd.model import EXPORT_WH, IMPORT_WH, PHASE_CURRENT_A, POWER_W, DerCapabilities, DerKind, Reading

log = structlog.get_logger(__name__)

_PHASE_POWER = ("meter_l1_power", "meter_l2_power", "meter_l3_power")
_CURRENTS = ("current_l1", "current_l2", "current_l3")
PHASE_POWER_KEYS = ("l1_w", "l2_w", "l3_w")  # Reading keys of the per-phase powers, when the profile has them
MeterRole = Literal["grid", "pv", "ev", "submeter"]


class ModbusMapMeter(ReportsHealth):
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

    def capabilities(self) -> list[DerCapabilities]:
        return [DerCapabilities(der_id=self._id, kind=DerKind.METER, model=self._map.name, role=self._role)]

    async def poll_once(self, sink: ReadingSink) -> None:
        ts = self._clock.now()
        read = self._fields.value
        phase_w = {
            key: await read(name, measured=True)
            for key, name in zip(PHASE_POWER_KEYS, _PHASE_POWER, strict=True)
            if self._map.get(name) is not None
        }
        if self._map.get("meter_power") is not None:
            power = await read("meter_power", measured=True)
        else:
            power = sum(phase_w.values())
        values = {POWER_W: power, **phase_w}
        for key, name in ((IMPORT_WH, "import_wh"), (EXPORT_WH, "export_wh")):
            if self._map.get(name) is not None:
                values[key] = await read(name, measured=True)
        # Meters print current unsigned; a phase's direction is its power's (a single-phase meter's
        # phase is the total), as the P1 driver does. Without per-phase power it stays as printed.
        single_phase = not phase_w and all(self._map.get(n) is None for n in _CURRENTS[1:])
        for key, name, power_key in zip(PHASE_CURRENT_A, _CURRENTS, PHASE_POWER_KEYS, strict=True):
            if self._map.get(name) is None:
                continue
            current = await read(name, measured=True)
            direction = power if single_phase else phase_w.get(power_key)
            values[key] = -abs(current) if direction is not None and direction < 0 else current
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
