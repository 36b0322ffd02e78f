"""`zapd devices scan` against real peers: a pymodbus server (the simulated inverter) and a
P1 meter on a TCP socket, plus an endpoint where nothing answers."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

from drivers.sim.modbus_server import start_modbus_sim
from drivers.sim.p1_pty import SimP1Tcp
from drivers.sim.physics import SimSite
from zapd.clock import ScaledClock


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_scan_lists_devices_and_capabilities(tmp_path: Path) -> None:
    site = SimSite()
    site.step(datetime(2026, 6, 21, 12, tzinfo=UTC))
    modbus = await start_modbus_sim(site)
    meter = SimP1Tcp(site)
    p1_port = await meter.start()
    feeder = asyncio.create_task(meter.run(ScaledClock(datetime(2026, 6, 21, 12, tzinfo=UTC), 1.0), 0.5))
    dead = closed_port()
    config = tmp_path / "zapd.toml"
    config.write_text(
        f"""
[site]
id = "scan"
fuse_a = 25
[[devices]]
driver = "modbus_tcp"
id = "inverter"
host = "127.0.0.1"
port = {modbus.port}
map = "sim_hybrid"
poll_s = 1
[[devices]]
driver = "p1_tcp"
id = "meter"
host = "127.0.0.1"
port = {p1_port}
poll_s = 1
[[devices]]
driver = "modbus_tcp"
id = "ghost"
host = "127.0.0.1"
port = {dead}
map = "sim_hybrid"
poll_s = 1
timeout_s = 0.5
"""
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "zapd"), "devices", "scan", "--config", str(config), "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await meter.stop()
        await modbus.stop()
    assert proc.returncode == 1, err.decode()  # one device did not answer
    rows = {r["der_id"]: r for r in json.loads(out)}
    battery = rows["inverter.battery"]
    assert battery["status"] == "ok" and battery["controllable"] is True
    assert battery["max_charge_w"] == site.battery.max_charge_w
    assert battery["capacity_wh"] == site.battery.capacity_wh
    assert battery["address"] == f"127.0.0.1:{modbus.port}" and battery["protocol"] == "modbus_tcp"
    assert rows["inverter.pv"]["status"] == "ok"
    assert rows["meter"]["status"] == "ok" and rows["meter"]["kind"] == "meter"
    ghosts = [r for r in rows.values() if r["device"] == "ghost"]
    assert ghosts and all(r["status"] == "no answer" for r in ghosts)
