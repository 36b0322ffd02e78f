"""`zapd devices scan`: what answers at the configured endpoints, and what it can do.

Each driver runs on its own for a short window, exactly as in the daemon (same probe, same
protocol code), and we report its capabilities plus whether a reading came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from drivers.api import Driver
from zapd.clock import SystemClock
from zapd.config import ZapdConfig
from zapd.devices import build_devices
from zapd.model import Reading

SCAN_WINDOW_S = 6.0


async def _probe(driver: Driver, window_s: float) -> tuple[Driver, list[Reading]]:
    seen: list[Reading] = []
    task = asyncio.create_task(driver.run(seen.append))
    try:
        deadline = asyncio.get_running_loop().time() + window_s
        while asyncio.get_running_loop().time() < deadline:
            kinds = {r.der_id for r in seen}
            if kinds and all(c.der_id in kinds for c in driver.capabilities()):
                break
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    return driver, seen


async def scan(config: ZapdConfig, *, as_json: bool = False, window_s: float = SCAN_WINDOW_S) -> int:
    devices = build_devices(config, SystemClock())
    results = await asyncio.gather(*(_probe(d, window_s) for d in devices.drivers))
    report = []
    for (driver, readings), dev in zip(results, config.devices, strict=True):
        endpoint = f"{dev.host}:{dev.port}" if hasattr(dev, "host") else str(getattr(dev, "port", ""))
        answered = {r.der_id for r in readings}
        for cap in driver.capabilities():
            report.append(
                {
                    "device": driver.name,
                    "protocol": dev.driver,
                    "address": endpoint,
                    "unit_id": getattr(dev, "unit_id", None),
                    "der_id": cap.der_id,
                    "kind": cap.kind.value,
                    "model": cap.model,
                    "controllable": cap.controllable,
                    "max_charge_w": cap.max_charge_w,
                    "max_discharge_w": cap.max_discharge_w,
                    "capacity_wh": cap.capacity_wh,
                    "status": "ok" if cap.der_id in answered else "no answer",
                }
            )
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        header = f"{'DEVICE':<12} {'PROTOCOL':<11} {'ADDRESS':<22} {'UNIT':<4} {'DER':<20} {'KIND':<10} "
        header += f"{'MODEL':<16} {'CTRL':<4} {'LIMITS':<28} STATUS"
        print(header)
        for r in report:
            limits = ""
            if r["kind"] == "battery":
                limits = f"+{r['max_charge_w']:.0f}/-{r['max_discharge_w']:.0f} W {r['capacity_wh']:.0f} Wh"
            print(
                f"{r['device']!s:<12} {r['protocol']!s:<11} {r['address']!s:<22} {r['unit_id'] or '':<4} "
                f"{r['der_id']!s:<20} {r['kind']!s:<10} {r['model']!s:<16} {'yes' if r['controllable'] else 'no':<4} "
                f"{limits:<28} {r['status']}"
            )
    return 0 if all(r["status"] == "ok" for r in report) else 1
