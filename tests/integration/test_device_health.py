"""Devices that do not answer look like it (issue 10 item 5), on every surface of a live daemon.

One in-process `Daemon` with real peers on loopback: a Modbus inverter at a closed port
(connection refused), an inverter that answers every read with exception 2 (the map does not
fit it), a SunSpec device whose chain holds only models zapd cannot use (1, 129), a TCP port
that accepts and never says a word (a P1 meter there goes stale, a Modbus device times out),
an MQTT broker where nobody publishes, an MQTT broker that is not there, an OCPP listener no
charger connects to, and one good P1 meter as the control. `zapctl` asks through the daemon's
unix socket, Prometheus scrapes /metrics, and a subscriber plays Home Assistant on mosquitto.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
from prometheus_client.parser import text_string_to_metric_families

from drivers.sim.modbus_server import start_modbus_sim
from drivers.sim.p1_pty import SimP1Tcp
from drivers.sim.physics import SimSite
from drivers.sim.sunspec_server import start_sunspec_sim
from tests.integration.conftest import MosquittoBroker
from tests.ports import free_port
from tests.waiting import wait_until
from zapd.clock import SystemClock
from zapd.config import validate_config
from zapd.daemon import Daemon

WAIT_S = 30.0
NODE = "health_1"


async def eventually(cond: Callable[[], Awaitable[bool]], what: str, within_s: float = WAIT_S) -> None:
    await wait_until(cond, within_s, what, every_s=0.2)


async def zapctl(sock: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "zapctl"), "--socket", str(sock), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(20):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return proc.returncode, out.decode()


async def test_unreachable_and_unusable_devices_are_shown_as_such(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    start = datetime.now(UTC)
    site = SimSite()
    site.step(start)
    good_meter = SimP1Tcp(site)
    good_port = await good_meter.start()
    feeder = asyncio.create_task(good_meter.run(SystemClock(), 0.5))
    hybrid = await start_modbus_sim(site)  # served with the sim's map; the config asks with Huawei's
    odd = await start_sunspec_sim(site, models=(1, 129))
    held: list[asyncio.StreamWriter] = []

    async def accept_and_say_nothing(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    silent = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    silent_port = silent.sockets[0].getsockname()[1]
    refused, no_broker, metrics_port, csms_port = free_port(), free_port(), free_port(), free_port()
    api_socket = tmp_path / "zapd.sock"
    config = validate_config(
        {
            "site": {"id": "health.1", "fuse_a": 25},
            "control": {"tick_s": 0.5},
            "store": {"state_dir": str(tmp_path / "state")},
            "api": {"socket": str(api_socket)},
            "metrics": {"port": metrics_port},
            "home_assistant": {"enabled": True, "host": mosquitto.host, "port": mosquitto.port, "state_interval_s": 1},
            "devices": [
                {"driver": "p1_tcp", "id": "meter", "host": "127.0.0.1", "port": good_port, "poll_s": 0.5},
                {"driver": "modbus_tcp", "id": "inverter", "host": "127.0.0.1", "port": refused,
                 "map": "sim_hybrid", "poll_s": 1, "timeout_s": 0.5},
                {"driver": "modbus_tcp", "id": "wrongmap", "host": "127.0.0.1", "port": hybrid.port,
                 "map": "huawei_sun2000_luna2000", "poll_s": 1, "timeout_s": 1},
                {"driver": "sunspec_tcp", "id": "odd", "host": "127.0.0.1", "port": odd.port, "poll_s": 1,
                 "has_battery": False},
                {"driver": "p1_tcp", "id": "quiet", "host": "127.0.0.1", "port": silent_port, "poll_s": 0.5,
                 "role": "submeter"},
                {"driver": "modbus_tcp", "id": "mute", "host": "127.0.0.1", "port": silent_port,
                 "map": "sim_hybrid", "poll_s": 1, "timeout_s": 0.5},
                {"driver": "mqtt", "id": "mqttquiet", "host": mosquitto.host, "port": mosquitto.port, "stale_s": 2,
                 "ders": [{"id": "pv", "kind": "pv", "readings": [{"topic": "nobody/pv", "key": "power_w"}]}]},
                {"driver": "ocpp", "id": "csms", "host": "127.0.0.1", "port": csms_port,
                 "charge_points": [{"id": "wb1", "max_current_a": 16}]},
                {"driver": "mqtt", "id": "mqttgone", "host": "127.0.0.1", "port": no_broker, "timeout_s": 1,
                 "ders": [{"id": "pv", "kind": "pv", "readings": [{"topic": "gone/pv", "key": "power_w"}]}]},
            ],
        },
        "test",
    )  # fmt: skip
    expected = {
        "meter": ("ok", ""),
        "inverter": ("unreachable", f"connection refused at 127.0.0.1:{refused}"),
        "wrongmap": ("unusable", "exception 2"),
        "odd": ("unusable", "no usable SunSpec models: found 1, 129"),
        "quiet": ("stale", "no valid telegram"),
        "mute": ("unreachable", "no answer within 0.5 s"),
        "mqttquiet": ("stale", "no data for"),
        "mqttgone": ("unreachable", f"broker 127.0.0.1:{no_broker}"),
        "csms": ("connecting", "not connected: wb1"),  # OCPP: listening, the charger never came
    }
    ha_seen: dict[str, str] = {}

    async def watch_ha() -> None:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="test-health-ha", timeout=5) as c:
            await c.subscribe(f"homeassistant/sensor/{NODE}/#", qos=1)
            await c.subscribe(f"zapd/{NODE}/#", qos=1)
            async for m in c.messages:
                ha_seen[str(m.topic)] = m.payload.decode() if isinstance(m.payload, bytes) else str(m.payload)

    watcher = asyncio.create_task(watch_ha())
    daemon = Daemon(config, SystemClock())
    run = asyncio.create_task(daemon.run())
    health: dict[str, dict[str, Any]] = {}
    try:

        async def all_as_expected() -> bool:
            if not api_socket.exists():
                return False
            _, out = await zapctl(api_socket, "devices", "--json")
            health.clear()
            health.update({h["device"]: h for h in json.loads(out)["device_health"]})
            return all(
                d in health and health[d]["state"] == state and text in health[d]["reason"]
                for d, (state, text) in expected.items()
            )

        try:
            await eventually(all_as_expected, "every device in its expected state")
        except AssertionError:
            raise AssertionError(json.dumps(health, indent=1)) from None
        for name, (state, _) in expected.items():
            h = health[name]
            assert h["since"] is not None and h["task_ok"] is True, h
            if state not in ("ok", "connecting"):
                assert h["errors"] >= 1 or state == "stale", h  # MQTT silence is judged, not counted
        assert health["meter"]["last_ok"] is not None and health["inverter"]["last_ok"] is None

        # The human tables: no "ok" for a device that does not answer, the reason next to it.
        _, text = await zapctl(api_socket, "devices")
        der_table, device_table = text.split("\n\n")
        der_lines = {line.split()[0]: line for line in der_table.splitlines()[1:]}
        assert der_lines["inverter.battery"].split()[5] == "UNREACHABLE"
        assert der_lines["meter"].split()[5] == "ok"
        (inverter_line,) = [line for line in device_table.splitlines() if line.startswith("inverter ")]
        assert "UNREACHABLE" in inverter_line and f"connection refused at 127.0.0.1:{refused}" in inverter_line
        _, status = await zapctl(api_socket, "status")
        assert "DEVICE" in status and "HEALTH" in status
        odd_line = next(line for line in status.splitlines() if line.startswith("odd "))
        assert "UNUSABLE" in odd_line and "no usable SunSpec models: found 1, 129" in odd_line
        _, status_json = await zapctl(api_socket, "status", "--json")
        states = {d["device"]: d["state"] for d in json.loads(status_json)["devices"]}
        assert states == {d: s for d, (s, _) in expected.items()}

        # Metrics: one up gauge and one state series per device.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}", timeout=5) as client:
            resp = await client.get("/metrics")
        assert resp.status_code == 200
        m = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text)
            for s in family.samples
        }
        for name, (state, _) in expected.items():
            assert m[("zapd_device_up", (("device", name),))] == (1.0 if state == "ok" else 0.0), name
            assert m[("zapd_device_state", (("device", name), ("state", state)))] == 1.0, name
            assert m[("zapd_device_state", (("device", name), ("state", "ok")))] == (1.0 if state == "ok" else 0.0)
        assert m[("zapd_device_health_errors_total", (("device", "inverter"),))] >= 1

        # Home Assistant: a health sensor per device, its state and why.
        async def ha_shows_it() -> bool:
            return all(ha_seen.get(f"zapd/{NODE}/device_{d}_health/state") == s for d, (s, _) in expected.items())

        await eventually(ha_shows_it, "the health sensors' states in Home Assistant")
        config_topic = f"homeassistant/sensor/{NODE}/device_inverter_health/config"
        cfg = json.loads(ha_seen[config_topic])
        assert cfg["device_class"] == "enum" and "unreachable" in cfg["options"]
        attrs = json.loads(ha_seen[f"zapd/{NODE}/device_inverter_health/attributes"])
        assert f"connection refused at 127.0.0.1:{refused}" in attrs["reason"] and attrs["since"]
    finally:
        daemon.stop()
        async with asyncio.timeout(30):
            assert await run == 0
        watcher.cancel()
        feeder.cancel()
        await asyncio.gather(watcher, feeder, return_exceptions=True)
        for w in held:
            w.close()
        silent.close()
        await good_meter.stop()
        await hybrid.stop()
        await odd.stop()
