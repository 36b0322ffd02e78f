"""Home Assistant MQTT discovery against a real mosquitto and a real Daemon.

The daemon runs in-process with a simulated P1 meter on loopback TCP, the simulated Modbus hybrid
inverter (PV + battery) and an EV charger whose power arrives over MQTT on the same broker. The
test plays Home Assistant: it reads the retained discovery configs and the states, drives the mode
select, and restarts the broker (no persistence, so retained configs only come back if zapd
publishes them again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest
from structlog.testing import capture_logs

from drivers.sim.modbus_server import start_modbus_sim
from drivers.sim.p1_pty import SimP1Tcp
from drivers.sim.physics import SimSite
from fallback.policy import Rung
from tests.integration.conftest import MosquittoBroker
from tests.waiting import stays, wait_until
from zapd.clock import SystemClock
from zapd.config import validate_config
from zapd.daemon import Daemon
from zapd.homeassistant import HomeAssistant, next_action
from zapd.model import Intent, IntentMode, Plan, PlanSlot
from zapd.override import KV_KEY

SITE = "ha-test.1"
NODE = "ha-test_1"  # the site id with "." replaced: Home Assistant's node id alphabet
BASE = f"zapd/{NODE}"
WAIT_S = 20.0
EV_W = 3700.0

SENSORS = {
    # object id: (unit, device_class, state_class)
    "grid_power": ("W", "power", "measurement"),
    "grid_import_energy": ("kWh", "energy", "total_increasing"),
    "grid_export_energy": ("kWh", "energy", "total_increasing"),
    "pv_power": ("W", "power", "measurement"),
    "battery_soc": ("%", "battery", "measurement"),
    "battery_power": ("W", "power", "measurement"),
    "ev_power": ("W", "power", "measurement"),
    "fallback_rung": (None, "enum", None),
    "next_action": (None, None, None),
}


@dataclass
class Seen:
    """What a Home Assistant-like subscriber saw: the last payload and retain flag per topic."""

    last: dict[str, tuple[str, bool]] = field(default_factory=dict)
    log: list[tuple[str, str, bool]] = field(default_factory=list)

    def payload(self, topic: str) -> str | None:
        got = self.last.get(topic)
        return got[0] if got else None


@contextlib.asynccontextmanager
async def watcher(broker: MosquittoBroker) -> AsyncIterator[Seen]:
    seen = Seen()
    async with aiomqtt.Client(broker.host, broker.port, identifier="test-ha", timeout=5) as client:
        await client.subscribe("homeassistant/#", qos=1)
        await client.subscribe("zapd/#", qos=1)

        async def collect() -> None:
            async for m in client.messages:
                raw = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                text = raw.decode("utf-8", "replace")
                seen.last[str(m.topic)] = (text, m.retain)
                seen.log.append((str(m.topic), text, m.retain))

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


async def until(cond: Callable[[], bool], what: str, within_s: float = WAIT_S) -> None:
    await wait_until(cond, within_s, what, every_s=0.05)


async def send(broker: MosquittoBroker, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier="test-ha-cmd", timeout=5) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


def _plan(now: datetime) -> Plan:
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    slots = tuple(
        PlanSlot(
            start=start + timedelta(hours=i),
            end=start + timedelta(hours=i + 1),
            intent=Intent(mode=IntentMode.SETPOINT, battery_w=float((i % 3 - 1) * 2500)),
        )
        for i in range(26)
    )
    return Plan(site_id=SITE, version=3, issued_at=start, valid_until=start + timedelta(hours=26), slots=slots)


def _config(tmp: Path, broker: MosquittoBroker, modbus_port: int, p1_port: int, plan_file: Path) -> Any:
    data = {
        "site": {"id": SITE, "fuse_a": 25.0},
        "control": {"tick_s": 0.5},
        "store": {"state_dir": str(tmp / "state")},
        "plan": {"file": str(plan_file)},
        "api": {"socket": str(tmp / "run" / "zapd.sock")},
        "log": {"level": "warning"},
        "home_assistant": {
            "enabled": True,
            "host": broker.host,
            "port": broker.port,
            "state_interval_s": 1,
            "override_minutes": 30,
        },
        "devices": [
            {
                "driver": "modbus_tcp",
                "id": "inverter",
                "host": "127.0.0.1",
                "port": modbus_port,
                "map": "sim_hybrid",
                "poll_s": 0.5,
            },
            {"driver": "p1_tcp", "id": "meter", "host": "127.0.0.1", "port": p1_port, "poll_s": 0.5},
            {
                "driver": "mqtt",
                "id": "mqtt",
                "host": broker.host,
                "port": broker.port,
                "ders": [
                    {
                        "id": "wallbox",
                        "kind": "ev_charger",
                        "readings": [{"topic": "wallbox/power", "key": "power_w", "unit": "W"}],
                    }
                ],
            },
        ],
    }
    return validate_config(data, "test")


@dataclass
class SimDevices:
    """The simulated site behind the daemon: Modbus hybrid inverter, P1 meter fed every 0.5 s, a plan file."""

    site: SimSite
    feeder: asyncio.Task[None]
    config: Any
    plan: Plan


@contextlib.asynccontextmanager
async def sim_devices(tmp: Path, broker: MosquittoBroker) -> AsyncIterator[SimDevices]:
    # A fixed PV power, not the clear-sky bell at the wall clock's hour: the tests check PV states, which must not
    # depend on the time of day CI runs at (the bell is 0 W at night: pv_energy never grew after ~19:45 UTC).
    site = SimSite(pv_override_w=2_500.0)
    site.step(datetime.now(UTC))  # not stepped again: the meter keeps one grid value a test can check
    modbus = await start_modbus_sim(site)
    meter = SimP1Tcp(site)
    p1_port = await meter.start()
    feeder = asyncio.create_task(meter.run(SystemClock(), 0.5))
    plan = _plan(datetime.now(UTC))
    plan_file = tmp / "plan.json"
    plan_file.write_bytes(msgspec.json.encode(plan))
    try:
        yield SimDevices(site, feeder, _config(tmp, broker, modbus.port, p1_port, plan_file), plan)
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await meter.stop()
        await modbus.stop()


def _ha(daemon: Daemon) -> HomeAssistant:
    assert daemon.home_assistant is not None
    return daemon.home_assistant


def _rung(daemon: Daemon) -> Rung | None:
    return daemon.controller.stats.rung if daemon.controller is not None else None


@pytest.mark.timeout(180)
async def test_discovery_states_select_and_broker_restart(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    async with sim_devices(tmp_path, mosquitto) as sim:
        site, plan = sim.site, sim.plan
        await send(mosquitto, "wallbox/power", f"{EV_W:g}", retain=True)
        daemon = Daemon(sim.config, SystemClock())
        run = asyncio.create_task(daemon.run())
        try:
            with capture_logs() as logs:
                await until(
                    lambda: daemon.home_assistant is not None and _ha(daemon).counters["discovery"] >= 1, "discovery"
                )
                ha = _ha(daemon)
                await until(lambda: _rung(daemon) is Rung.PLAN, "the plan rung")

                # --- discovery: retained configs a late subscriber (Home Assistant starting) receives ---
                async with watcher(mosquitto) as seen:
                    config_topics = {f"homeassistant/sensor/{NODE}/{obj}/config" for obj in SENSORS}
                    config_topics.add(f"homeassistant/select/{NODE}/mode/config")
                    await until(lambda: config_topics <= seen.last.keys(), "every discovery config")
                    await until(lambda: seen.payload(f"{BASE}/availability") == "online", "availability")
                    assert seen.last[f"{BASE}/availability"][1] is True  # retained
                    for obj, (unit, device_class, state_class) in SENSORS.items():
                        payload, retained = seen.last[f"homeassistant/sensor/{NODE}/{obj}/config"]
                        assert retained, obj
                        cfg = json.loads(payload)
                        assert cfg["unique_id"] == f"zapd_{NODE}_{obj}"
                        assert cfg["state_topic"] == f"{BASE}/{obj}/state"
                        assert cfg["availability_topic"] == f"{BASE}/availability"
                        assert (cfg["payload_available"], cfg["payload_not_available"]) == ("online", "offline")
                        assert cfg.get("unit_of_measurement") == unit, obj
                        assert cfg.get("device_class") == device_class, obj
                        assert cfg.get("state_class") == state_class, obj
                        device = cfg["device"]
                        assert device["identifiers"] == [f"zapd_{NODE}"]
                        assert device["name"] == f"zapd {SITE}"
                        assert device["manufacturer"] == "zapd" and device["sw_version"]
                    assert json.loads(seen.payload(f"homeassistant/sensor/{NODE}/fallback_rung/config") or "")[
                        "options"
                    ] == ["plan", "cached_plan", "self_consumption", "safe_hold"]
                    select, retained = seen.last[f"homeassistant/select/{NODE}/mode/config"]
                    assert retained
                    sel = json.loads(select)
                    assert sel["options"] == ["auto", "safe_hold", "self_consumption"]
                    assert sel["command_topic"] == f"{BASE}/mode/set" and sel["state_topic"] == f"{BASE}/mode/state"
                    assert sel["qos"] == 1 and sel["unique_id"] == f"zapd_{NODE}_mode"

                    # --- states, from the daemon's snapshot of the simulated devices ---
                    def number(obj: str) -> float | None:
                        text = seen.payload(f"{BASE}/{obj}/state")
                        return None if text in (None, "None") else float(text or "nan")

                    for obj in (
                        "grid_power",
                        "pv_power",
                        "battery_soc",
                        "battery_power",
                        "ev_power",
                        "grid_import_energy",
                    ):
                        await until(lambda o=obj: number(o) is not None, f"a {obj} state")  # type: ignore[misc]
                    assert number("grid_power") == pytest.approx(site.grid_w, abs=1.0)
                    snap = daemon.state.snapshot(daemon.clock.now())
                    assert snap.grid_w is not None and number("grid_power") == pytest.approx(snap.grid_w, abs=0.5)
                    assert number("pv_power") == pytest.approx(site.pv_w, rel=0.01, abs=10)
                    assert number("battery_soc") == pytest.approx(site.battery.soc * 100, abs=1.0)
                    assert number("ev_power") == EV_W
                    assert number("grid_import_energy") == pytest.approx(site.counters.import_wh / 1000, abs=0.01)
                    await until(lambda: seen.payload(f"{BASE}/fallback_rung/state") == "plan", "rung state")
                    await until(lambda: seen.payload(f"{BASE}/mode/state") == "auto", "mode state")
                    action = seen.payload(f"{BASE}/next_action/state") or ""
                    assert re.fullmatch(r"(charge|discharge) 2\.5 kW( tomorrow)? at \d\d:\d\d|battery idle.*", action)
                    assert action in {next_action(plan, datetime.now(UTC) + timedelta(seconds=d))[0] for d in (-5, 0)}
                    attrs = json.loads(seen.payload(f"{BASE}/next_action/attributes") or "{}")
                    assert attrs["plan_version"] == 3

                    # --- the select drives the operator override, and its state follows ---
                    await send(mosquitto, f"{BASE}/mode/set", "self_consumption")
                    await until(lambda: daemon.override.active() is not None, "the override")
                    ov = daemon.override.active()
                    assert ov is not None and ov.rung is Rung.SELF_CONSUMPTION
                    assert ov.until - ov.set_at == timedelta(minutes=30)
                    await until(lambda: _rung(daemon) is Rung.SELF_CONSUMPTION, "the self-consumption rung")
                    await until(lambda: seen.payload(f"{BASE}/mode/state") == "self_consumption", "select state")
                    await until(lambda: seen.payload(f"{BASE}/fallback_rung/state") == "self_consumption", "rung state")
                    assert json.loads(seen.payload(f"{BASE}/mode/attributes") or "{}")["rung"] == "self_consumption"
                    assert daemon.store is not None and (await daemon.store.kv_get(KV_KEY) or "").startswith("{")

                    await send(mosquitto, f"{BASE}/mode/set", "auto")
                    await until(lambda: daemon.override.active() is None, "the release")
                    await until(lambda: _rung(daemon) is Rung.PLAN, "the plan rung again")
                    await until(lambda: seen.payload(f"{BASE}/mode/state") == "auto", "select state auto")
                    await until(lambda: seen.payload(f"{BASE}/fallback_rung/state") == "plan", "rung state plan")
                    assert await daemon.store.kv_get(KV_KEY) == ""

                    # --- garbage is counted and logged once; nothing changes, nothing crashes ---
                    await send(mosquitto, f"{BASE}/mode/set", "turbo")
                    await send(mosquitto, f"{BASE}/mode/set", b"\xff\xfe")
                    await until(lambda: ha.counters["invalid_commands"] == 2, "two invalid commands counted")
                    # A command published with retain is applied when it arrives (the broker delivers it
                    # live without the flag), but must not come back after every reconnect.
                    await send(mosquitto, f"{BASE}/mode/set", "safe_hold", retain=True)
                    await until(lambda: _rung(daemon) is Rung.SAFE_HOLD, "safe hold forced")
                    await send(mosquitto, f"{BASE}/mode/set", "auto")
                    await until(lambda: daemon.override.active() is None, "released again")
                    connects = ha.counters["connects"]
                    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"zapd-ha-{NODE}", timeout=5):
                        pass  # same client id: the broker drops zapd's session, zapd reconnects
                    await until(lambda: ha.counters["connects"] > connects, "the reconnect after the takeover")
                    await until(lambda: ha.counters["ignored_retained"] == 1, "the replayed command refused")
                    await stays(lambda: daemon.override.active() is None, 0.5, "no override from the replay")
                    assert not run.done() and not daemon.supervisor.health["home_assistant"].failing
                    assert sum(e["event"] == "home_assistant.invalid_command" for e in logs) == 1

                # --- broker restart: no persistence, so the configs come back only if zapd re-announces ---
                connects = ha.counters["connects"]
                await asyncio.to_thread(mosquitto.stop)
                await until(lambda: not ha.link_up, "the link loss noticed")
                await asyncio.to_thread(mosquitto.start)
                await until(lambda: ha.counters["connects"] > connects, "the reconnect", within_s=40)
                async with watcher(mosquitto) as seen:
                    await until(lambda: config_topics <= seen.last.keys(), "discovery after the restart")
                    assert all(seen.last[t][1] for t in config_topics)
                    await until(lambda: seen.payload(f"{BASE}/availability") == "online", "online after the restart")
                    await until(lambda: seen.payload(f"{BASE}/grid_power/state") not in (None, "None"), "states again")
                    assert f"{BASE}/mode/set" not in seen.last  # the retained command died with the broker
                    assert daemon.override.active() is None

                    # --- Home Assistant's birth message: announce again (its own restart lost the states) ---
                    announced = ha.counters["discovery"]
                    await send(mosquitto, "homeassistant/status", "online")
                    await until(lambda: ha.counters["discovery"] > announced, "the re-announcement")

                    # --- a clean stop says offline (no will is sent on a clean disconnect) ---
                    daemon.stop()
                    async with asyncio.timeout(30):
                        assert await run == 0
                    await until(lambda: seen.payload(f"{BASE}/availability") == "offline", "offline on stop")
                async with watcher(mosquitto) as late:
                    await until(lambda: f"{BASE}/availability" in late.last, "the retained availability")
                    assert late.last[f"{BASE}/availability"] == ("offline", True)
            downs = [e for e in logs if e["event"] == "home_assistant.link_down"]
            ups = [e for e in logs if e["event"] == "home_assistant.link_up"]
            # Two outages (the takeover, the restart): logged once each, however many retries in between.
            assert len(downs) == 2 and len(ups) == 2
            assert not any("password" in str(e) for e in logs)
        finally:
            daemon.stop()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(30):
                    await run


async def test_stale_meter_is_published_as_unknown(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    """The meter stops: Home Assistant gets `None` (unknown), never the last number."""
    async with sim_devices(tmp_path, mosquitto) as sim:
        daemon = Daemon(sim.config, SystemClock())
        run = asyncio.create_task(daemon.run())
        try:
            async with watcher(mosquitto) as seen:
                topic = f"{BASE}/grid_power/state"
                await until(lambda: seen.payload(topic) not in (None, "None"), "a grid power value")
                sim.feeder.cancel()
                await asyncio.gather(sim.feeder, return_exceptions=True)
                await until(lambda: seen.payload(topic) == "None", "grid power unknown")
                await until(lambda: seen.payload(f"{BASE}/fallback_rung/state") == "safe_hold", "safe hold")
                # The attributes are a message of their own, published after the state: wait for it too.
                await until(
                    lambda: (
                        json.loads(seen.payload(f"{BASE}/fallback_rung/attributes") or "{}")
                        .get("reason", "")
                        .startswith("meter")
                    ),
                    "the safe hold's reason",
                )
        finally:
            daemon.stop()
            async with asyncio.timeout(30):
                await run
