"""`zapd devices scan` against real peers: a pymodbus server (the simulated inverter) and a
P1 meter on a TCP socket, plus an endpoint where nothing answers."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from drivers.sim.modbus_server import start_modbus_sim
from drivers.sim.p1_pty import SimP1Tcp
from drivers.sim.physics import SimSite
from drivers.sim.sunspec_server import start_sunspec_sim
from tests.ports import free_port
from zapd.clock import ScaledClock

SITE = """
[site]
id = "scan"
fuse_a = 25
"""


def inverter_toml(port: int, device_id: str = "inverter", extra: str = "") -> str:
    """A simulated hybrid inverter (or whatever listens at `port`) as a config entry."""
    return f"""
[[devices]]
driver = "modbus_tcp"
id = "{device_id}"
host = "127.0.0.1"
port = {port}
map = "sim_hybrid"
poll_s = 1
{extra}"""


async def test_scan_lists_devices_and_capabilities(tmp_path: Path) -> None:
    site = SimSite()
    site.step(datetime(2026, 6, 21, 12, tzinfo=UTC))
    modbus = await start_modbus_sim(site)
    meter = SimP1Tcp(site)
    p1_port = await meter.start()
    feeder = asyncio.create_task(meter.run(ScaledClock(datetime(2026, 6, 21, 12, tzinfo=UTC), 1.0), 0.5))
    dead = free_port()
    config = tmp_path / "zapd.toml"
    meter_toml = f"""
[[devices]]
driver = "p1_tcp"
id = "meter"
host = "127.0.0.1"
port = {p1_port}
poll_s = 1
"""
    config.write_text(SITE + inverter_toml(modbus.port) + meter_toml + inverter_toml(dead, "ghost", "timeout_s = 0.5"))
    try:
        code, out, err = await _scan(config, "--json")
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await meter.stop()
        await modbus.stop()
    assert code == 1, err  # one device did not answer
    rows = {r["der_id"]: r for r in json.loads(out)}
    battery = rows["inverter.battery"]
    assert battery["status"] == "ok" and battery["controllable"] is True
    assert battery["max_charge_w"] == site.battery.max_charge_w
    assert battery["capacity_wh"] == site.battery.capacity_wh
    assert battery["address"] == f"127.0.0.1:{modbus.port}" and battery["protocol"] == "modbus_tcp"
    assert rows["inverter.pv"]["status"] == "ok"
    assert rows["meter"]["status"] == "ok" and rows["meter"]["kind"] == "meter"
    ghosts = [r for r in json.loads(out) if r["device"] == "ghost"]
    assert [r["der_id"] for r in ghosts] == ["ghost.battery", "ghost.pv"]  # the DERs its config declares
    for r in ghosts:
        assert r["status"] == "unreachable" and r["health"] == "unreachable"
        assert r["reason"].startswith(f"connection refused at 127.0.0.1:{dead}"), r["reason"]
        # Nothing the register map claims is shown as if the device had said it.
        assert r["model"] is None and r["controllable"] is False and r["max_charge_w"] is None
    assert all(r["reason"] == "" for r in rows.values() if r["device"] != "ghost")


async def _scan(config: Path, *extra: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "zapd"), "devices", "scan", "--config", str(config), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_scan_rows_for_unusable_and_unreachable_sunspec_and_charger(tmp_path: Path) -> None:
    """A SunSpec device with only models zapd cannot use, one that does not answer, and an Alfen
    (register-map EV charger) that does not answer: one row each, with the reason, exit 1."""
    site = SimSite()
    site.step(datetime(2026, 6, 21, 12, tzinfo=UTC))
    # Common (1) and LVRTD (129): a real chain, but no inverter, storage or meter model.
    odd = await start_sunspec_sim(site, models=(1, 129))
    dead_sunspec, dead_alfen = free_port(), free_port()
    config = tmp_path / "zapd.toml"
    config.write_text(
        SITE
        + f"""
[[devices]]
driver = "sunspec_tcp"
id = "odd"
host = "127.0.0.1"
port = {odd.port}
poll_s = 1
[[devices]]
driver = "sunspec_tcp"
id = "gone"
host = "127.0.0.1"
port = {dead_sunspec}
poll_s = 1
timeout_s = 0.5
[[devices]]
driver = "modbus_ev"
id = "wallbox"
host = "127.0.0.1"
port = {dead_alfen}
map = "alfen_eve"
poll_s = 1
timeout_s = 0.5
[devices.ev]
max_current_a = 16
"""
    )
    try:
        code, out, err = await _scan(config, "--json")
        text_code, text, _ = await _scan(config)
    finally:
        await odd.stop()
    assert code == 1 and text_code == 1, err
    rows = json.loads(out)
    by_device: dict[str, list[dict[str, object]]] = {}
    for r in rows:
        by_device.setdefault(str(r["device"]), []).append(r)
    assert sorted(by_device) == ["gone", "odd", "wallbox"]  # one row (at least) per configured device
    assert {r["der_id"] for r in by_device["odd"]} >= {"odd.pv"}  # the DERs the config declares
    for r in by_device["odd"]:
        assert r["status"] == "unusable" and r["model"] is None
        assert "no usable SunSpec models: found 1, 129" in str(r["reason"])
    assert all(r["status"] == "unreachable" for r in by_device["gone"])
    assert f"connection refused at 127.0.0.1:{dead_sunspec}" in str(by_device["gone"][0]["reason"])
    (charger,) = by_device["wallbox"]
    assert charger["der_id"] == "wallbox.ev" and charger["kind"] == "ev_charger"
    assert charger["status"] == "unreachable" and charger["model"] is None and charger["controllable"] is False
    # The table says the same: no Alfen model, no "yes" under CTRL, the reason at the end.
    line = next(line for line in text.splitlines() if line.startswith("wallbox"))
    assert "Alfen" not in line and " yes " not in line and "unreachable" in line
    assert f"connection refused at 127.0.0.1:{dead_alfen}" in line


async def test_scan_exits_0_when_every_device_answers(tmp_path: Path) -> None:
    site = SimSite()
    site.step(datetime(2026, 6, 21, 12, tzinfo=UTC))
    modbus = await start_modbus_sim(site)
    config = tmp_path / "zapd.toml"
    config.write_text(SITE + inverter_toml(modbus.port))
    try:
        code, out, err = await _scan(config, "--json")
    finally:
        await modbus.stop()
    assert code == 0, err
    assert {r["status"] for r in json.loads(out)} == {"ok"}
