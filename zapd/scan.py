"""`zapd devices scan`: what answers at the configured endpoints, and what it can do.

Each driver runs on its own for a short window, exactly as in the daemon (same probe, same
protocol code), and we report its capabilities plus whether a reading came back. Every
configured device gets at least one row, also one that does not answer or answers with
nothing zapd can use: then the row says why (the device's health record, drivers/health.py),
and shows no model, control or limits, because those would come from a register map or the
config, not from the device.

Exit status: 0 when every configured DER answered; 1 when any device is unreachable,
unusable, degraded or gave no reading in the window (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from drivers.api import Driver, HasHealth
from drivers.health import HealthState, HealthView
from zapd.clock import SystemClock
from zapd.config import ZapdConfig
from zapd.config_load import to_structs
from zapd.devices import DeviceSet, build_devices
from zapd.model import Reading

SCAN_WINDOW_S = 6.0
EXIT_ALL_ANSWERED = 0
EXIT_SOME_NOT_ANSWERING = 1

# Health state of a device that gave no reading -> the row's status.
_STATUS = {
    HealthState.UNREACHABLE: "unreachable",
    HealthState.UNUSABLE: "unusable",
    HealthState.DEGRADED: "degraded",
}


def _health(driver: Driver) -> HealthView | None:
    return driver.health.view() if isinstance(driver, HasHealth) else None


async def _probe(driver: Driver, window_s: float) -> tuple[Driver, list[Reading]]:
    seen: list[Reading] = []
    task = asyncio.create_task(driver.run(seen.append))
    try:
        deadline = asyncio.get_running_loop().time() + window_s
        while asyncio.get_running_loop().time() < deadline:
            kinds = {r.der_id for r in seen}
            if kinds and all(c.der_id in kinds for c in driver.capabilities()):
                break
            health = _health(driver)
            if not seen and health is not None and health.state is HealthState.UNUSABLE:
                break  # the device said our configuration is wrong: asking again will not change that
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    return driver, seen


def _configured_ders(devices: DeviceSet, name: str) -> list[str]:
    """The DER ids the config declares for a device (`<id>` or `<id>.<der>`), in a stable order."""
    return sorted(der for der in devices.kinds if der.split(".", 1)[0] == name)


async def scan(config: ZapdConfig, *, as_json: bool = False, window_s: float = SCAN_WINDOW_S) -> int:
    devices = build_devices(to_structs(config), SystemClock())
    results = await asyncio.gather(*(_probe(d, window_s) for d in devices.drivers))
    report: list[dict[str, object]] = []
    for (driver, readings), dev in zip(results, config.devices, strict=True):
        host, port = getattr(dev, "host", None), getattr(dev, "port", "")
        endpoint = f"{host}:{port}" if host is not None else str(port)
        base: dict[str, object] = {
            "device": driver.name,
            "protocol": dev.driver,
            "address": endpoint,
            "unit_id": getattr(dev, "unit_id", None),
        }
        answered = {r.der_id for r in readings}
        health = _health(driver)
        if answered:
            for cap in driver.capabilities():
                ok = cap.der_id in answered
                report.append(
                    {
                        **base,
                        "der_id": cap.der_id,
                        "kind": cap.kind.value,
                        "model": cap.model,
                        "controllable": cap.controllable,
                        "max_charge_w": cap.max_charge_w,
                        "max_discharge_w": cap.max_discharge_w,
                        "capacity_wh": cap.capacity_wh,
                        "status": "ok" if ok else "no answer",
                        "reason": "" if ok else f"the device answered, this DER gave no reading within {window_s:g} s",
                        "health": str(health.state) if health else None,
                    }
                )
            continue
        # Nothing came back: one row per DER the config declares, with the reason and nothing that
        # only the register map or the config claims (model, control, limits).
        status = _STATUS.get(health.state, "no answer") if health else "no answer"
        reason = (health.reason or health.last_error) if health else ""
        reason = reason or f"no reading within {window_s:g} s"
        ders: list[str | None] = [*_configured_ders(devices, driver.name)] or [None]
        for der in ders:
            report.append(
                {
                    **base,
                    "der_id": der,
                    "kind": str(devices.kinds[der]) if der is not None else None,
                    "model": None,
                    "controllable": False,
                    "max_charge_w": None,
                    "max_discharge_w": None,
                    "capacity_wh": None,
                    "status": status,
                    "reason": reason,
                    "health": str(health.state) if health else None,
                }
            )
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_table(report)
    if all(r["status"] == "ok" for r in report):
        return EXIT_ALL_ANSWERED
    return EXIT_SOME_NOT_ANSWERING


def _print_table(report: list[dict[str, object]]) -> None:
    header = f"{'DEVICE':<12} {'PROTOCOL':<11} {'ADDRESS':<22} {'UNIT':<4} {'DER':<20} {'KIND':<10} "
    header += f"{'MODEL':<16} {'CTRL':<4} {'LIMITS':<28} {'STATUS':<11} REASON"
    print(header)
    for r in report:
        limits = ""
        if r["kind"] == "battery" and r["max_charge_w"] is not None:
            limits = f"+{r['max_charge_w']:.0f}/-{r['max_discharge_w']:.0f} W {r['capacity_wh']:.0f} Wh"
        answered = r["model"] is not None
        ctrl = ("yes" if r["controllable"] else "no") if answered else "-"
        print(
            f"{r['device']!s:<12} {r['protocol']!s:<11} {r['address']!s:<22} {r['unit_id'] or '':<4} "
            f"{r['der_id'] or '-'!s:<20} {r['kind'] or '-'!s:<10} {r['model'] or '-'!s:<16} {ctrl:<4} "
            f"{limits:<28} {r['status']!s:<11} {r['reason']}"
        )
