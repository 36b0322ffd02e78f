"""Home Assistant's Energy dashboard against a real mosquitto and a real Daemon: PV, battery and
EV publish kWh totals (`total_increasing`, device class energy) that zapd integrates from
power, that never go down, and that come back after a daemon restart no smaller than before.

The site is the one of test_home_assistant.py: the simulated Modbus hybrid inverter (PV +
battery), a simulated P1 meter on loopback TCP, and an EV whose power the test publishes over
MQTT on the same broker, so the EV's expected energy is plain physics: W × the seconds it was
published for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.conftest import MosquittoBroker
from tests.integration.test_home_assistant import BASE, EV_W, NODE, SimDevices, send, sim_devices, until, watcher
from zapd.clock import SystemClock
from zapd.daemon import Daemon
from zapd.energy import KV_KEY

EV_DER = "mqtt.wallbox"  # the mqtt device `mqtt`, DER `wallbox` (test_home_assistant.sim_devices)

ENERGY = ("pv_energy", "battery_charge_energy", "battery_discharge_energy", "ev_energy")


def _number(text: str | None) -> float | None:
    return None if text in (None, "None") else float(text or "nan")


@pytest.mark.timeout(180)
async def test_energy_totals_for_the_energy_dashboard(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    async with sim_devices(tmp_path, mosquitto) as sim:
        await _energy_dashboard(tmp_path, mosquitto, sim)


async def _energy_dashboard(tmp_path: Path, mosquitto: MosquittoBroker, sim: SimDevices) -> None:
    site, config = sim.site, sim.config

    async def ev_power(seconds: float) -> float:
        """Publish EV_W every 0.2 s for `seconds` and wait until zapd has the last message; returns the span
        between the first and last message."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            sent_at = datetime.now(UTC)
            await send(mosquitto, "wallbox/power", f"{EV_W:g}")
            last = time.monotonic()
            await asyncio.sleep(0.2)  # wall-clock: the power is held for `seconds`, a message each 0.2 s
        await until(lambda: (r := daemon.state.latest().get(EV_DER)) is not None and r.ts >= sent_at, "the last one")
        return last - t0

    daemon = Daemon(config, SystemClock())
    run = asyncio.create_task(daemon.run())
    try:
        async with watcher(mosquitto) as seen:
            topics = {obj: f"homeassistant/sensor/{NODE}/{obj}/config" for obj in ENERGY}
            wanted = set(topics.values())
            health_prefix = f"homeassistant/sensor/{NODE}/device_"
            # The device health configs come in the same discovery burst, after the energy ones: wait for both
            # (checking them at the first energy-complete moment failed when the burst was still arriving).
            await until(
                lambda: wanted <= seen.last.keys() and any(t.startswith(health_prefix) for t in seen.last),
                "the energy and device health sensors' configs",
            )
            for obj, topic in topics.items():
                cfg = json.loads(seen.last[topic][0])
                # What the Energy dashboard's solar, battery and device sections accept.
                assert (cfg["device_class"], cfg["state_class"], cfg["unit_of_measurement"]) == (
                    "energy",
                    "total_increasing",
                    "kWh",
                ), obj
                assert "entity_category" not in cfg and cfg["unique_id"] == f"zapd_{NODE}_{obj}"
                assert cfg["object_id"] == f"zapd_{NODE}_{obj}"  # sensor.zapd_<node>_<object> (docs)
            health = [t for t in seen.last if t.startswith(health_prefix)]
            assert health and all(json.loads(seen.last[t][0])["entity_category"] == "diagnostic" for t in health)
            rung = json.loads(seen.payload(f"homeassistant/sensor/{NODE}/fallback_rung/config") or "{}")
            assert rung["entity_category"] == "diagnostic"

            before = daemon.energy.wh["ev_wh"]
            span = await ev_power(4.0)
            ev_wh = daemon.energy.wh["ev_wh"] - before
            # The power held from the first message to the last; one 0.2 s step of slack either way.
            assert ev_wh == pytest.approx(EV_W * span / 3600, abs=EV_W * 0.25 / 3600)
            await until(lambda: (_number(seen.payload(f"{BASE}/ev_energy/state")) or 0) > 0, "an ev_energy state")
            await until(lambda: (_number(seen.payload(f"{BASE}/pv_energy/state")) or 0) > 0, "a pv_energy state")
            assert site.pv_w > 0
            for obj in ENERGY:
                await until(lambda o=obj: _number(seen.payload(f"{BASE}/{o}/state")) is not None, obj)  # type: ignore[misc]
            last_before_stop = {obj: _number(seen.payload(f"{BASE}/{obj}/state")) for obj in ENERGY}
            daemon.stop()
            async with asyncio.timeout(30):
                assert await run == 0
            assert daemon.store is not None
            stored = json.loads(await _kv(tmp_path))
            assert stored["ev_wh"] == pytest.approx(daemon.energy.wh["ev_wh"])

            # --- a restart: the first totals published are no smaller than the last ones before ---
            seen.log.clear()
            daemon = Daemon(config, SystemClock())
            run = asyncio.create_task(daemon.run())
            for obj in ENERGY:
                await until(
                    lambda o=obj: any(t == f"{BASE}/{o}/state" and p != "None" for t, p, _ in seen.log),  # type: ignore[misc]
                    f"{obj} after the restart",
                )
            states = sum(t == f"{BASE}/ev_energy/state" for t, _, _ in seen.log)
            await ev_power(1.0)
            await until(
                lambda: sum(t == f"{BASE}/ev_energy/state" for t, _, _ in seen.log) > states, "a state after it"
            )
        for obj in ENERGY:
            values = [_number(p) for t, p, _ in seen.log if t == f"{BASE}/{obj}/state"]
            known = [v for v in values if v is not None]
            assert known and known[0] >= (last_before_stop[obj] or 0), obj
            assert known == sorted(known), f"{obj} went down: {known}"
    finally:
        daemon.stop()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(30):
                await run


async def _kv(tmp: Path) -> str:
    """Read the stored totals from the daemon's SQLite file the way a restart would."""
    from zapd.store import Store

    store = await Store.open(tmp / "state" / "zapd.sqlite")
    try:
        return await store.kv_get(KV_KEY) or ""
    finally:
        await store.close()
