"""Site energy totals for Home Assistant's Energy dashboard: PV produced, battery charged and
discharged, EV charged, in Wh, each only ever growing.

Home Assistant's solar, battery and device sections want `total_increasing` energy sensors
(kWh); most DERs report only power. So zapd integrates the power readings itself (the power
a reading shows is taken to hold until the next one, the way a sampled meter is read), and
where a DER carries a lifetime register (`energy_wh`: an OCPP charger's meter, an MQTT PV
preset's yield) it adds that register's increase instead, which is more exact.

Rules that keep the totals honest:
- Only good readings count; a gap longer than MAX_GAP_S (stale device, daemon stopped) is
  not filled in: the energy in it is unknown, and guessing it would invent production.
- A register that goes backwards (device replaced, counter reset) starts a new baseline, it is
  never subtracted; an increase larger than MAX_POWER_W could deliver in the interval is
  refused the same way (a scale error, not energy).
- The totals are saved in the store (kv `energy.totals`) every SAVE_EVERY_S and at stop, and
  loaded before the first reading counts, so a restart never shows a smaller number (Home
  Assistant would read a decrease as a meter reset and count the whole total again).
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from dataclasses import dataclass
from datetime import datetime

import msgspec
import structlog

from drivers.resilience import FailureLatch
from zapd.bounds import MAX_ENERGY_WH, MAX_POWER_W
from zapd.model import POWER_W, DerKind, Quality, Reading
from zapd.store import Store

log = structlog.get_logger(__name__)

KV_KEY = "energy.totals"
ENERGY_WH = "energy_wh"  # a DER's lifetime energy register (drivers/ocpp, drivers/mqtt use this key)
MAX_GAP_S = 300.0
SAVE_EVERY_S = 60.0
STORE_TIMEOUT_S = 5.0
TOTALS = ("pv_wh", "battery_charge_wh", "battery_discharge_wh", "ev_wh")


@dataclass
class _Last:
    ts: datetime
    power_w: float | None
    register_wh: float | None


class EnergyTotals:
    """Integrates PV, battery and EV power into growing Wh totals; fed from the daemon's sink."""

    def __init__(self) -> None:
        self.wh: dict[str, float] = dict.fromkeys(TOTALS, 0.0)
        self.loaded = False  # totals are not shown before the stored ones are back
        self.refused = 0  # register jumps and readings not counted
        self._last: dict[str, _Last] = {}
        self._has_register: set[str] = set()
        self._latch = FailureLatch(log, "energy.store_failed", "energy.store_recovered")

    def kwh(self, total: str) -> float | None:
        return self.wh[total] / 1000.0 if self.loaded else None

    def add(self, reading: Reading) -> None:
        """Count the energy since this DER's previous reading. Never raises on what a driver sent."""
        if reading.kind not in (DerKind.PV, DerKind.BATTERY, DerKind.EV_CHARGER):
            return
        bad = reading.quality is Quality.BAD  # unknown: the interval up to it and after it count nothing
        power = None if bad else _finite(reading.values.get(POWER_W), MAX_POWER_W)
        register = None if bad else _finite(reading.values.get(ENERGY_WH), MAX_ENERGY_WH)
        last = self._last.get(reading.der_id)
        self._last[reading.der_id] = _Last(reading.ts, power, register)
        if last is None:
            return
        dt_s = (reading.ts - last.ts).total_seconds()
        if not 0.0 < dt_s <= MAX_GAP_S:
            return
        if register is not None and reading.kind is not DerKind.BATTERY:
            self._has_register.add(reading.der_id)
            if last.register_wh is not None:
                delta = register - last.register_wh
                if 0.0 <= delta <= MAX_POWER_W * dt_s / 3600.0:
                    self._count(reading.kind, delta)
                else:
                    self.refused += 1
            return
        if bad or reading.der_id in self._has_register or last.power_w is None:
            return  # a register DER whose reading lacked it this time: its next delta covers the gap
        self._count_power(reading.kind, last.power_w, dt_s)

    def _count_power(self, kind: DerKind, power_w: float, dt_s: float) -> None:
        wh = power_w * dt_s / 3600.0
        if kind is DerKind.BATTERY:
            self._add("battery_charge_wh" if wh > 0 else "battery_discharge_wh", abs(wh))
        elif wh > 0:  # PV and EV only produce / consume; a small negative is sensor noise
            self._count(kind, wh)

    def _count(self, kind: DerKind, wh: float) -> None:
        self._add("pv_wh" if kind is DerKind.PV else "ev_wh", wh)

    def _add(self, total: str, wh: float) -> None:
        self.wh[total] = min(MAX_ENERGY_WH, self.wh[total] + wh)

    # ---- persistence ----

    async def load(self, store: Store) -> None:
        """Take the stored totals (never lowering one already counted); a damaged value starts at 0."""
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                raw = await store.kv_get(KV_KEY)
        except (sqlite3.Error, OSError, TimeoutError) as exc:
            log.error("energy.load_failed", error=str(exc) or type(exc).__name__)
            raw = None
        stored = _decode(raw) if raw else {}
        for key, value in stored.items():
            self.wh[key] = max(self.wh[key], value)
        self.loaded = True

    async def save(self, store: Store) -> bool:
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                await store.kv_set(KV_KEY, msgspec.json.encode(self.wh).decode())
        except (sqlite3.Error, OSError, TimeoutError) as exc:
            self._latch.failed(error=str(exc) or type(exc).__name__)
            return False
        self._latch.ok()
        return True

    async def run(self, store: Store) -> None:
        """Supervised task: save the totals now and then (the daemon saves once more at stop)."""
        while True:
            await asyncio.sleep(SAVE_EVERY_S)
            await self.save(store)


def _finite(value: float | None, bound: float) -> float | None:
    if value is None or not math.isfinite(value) or abs(value) > bound:
        return None
    return value


def _decode(raw: str) -> dict[str, float]:
    try:
        data = msgspec.json.decode(raw, type=dict[str, float])
    except (msgspec.ValidationError, msgspec.DecodeError):
        log.error("energy.stored_totals_damaged", raw=raw[:200])
        return {}
    return {k: v for k, v in data.items() if k in TOTALS and _finite(v, MAX_ENERGY_WH) is not None and v >= 0}
