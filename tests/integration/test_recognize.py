"""Recognition: the identification probes find each profile in its vendor-document image, over TCP,
never write, and do not claim a profile whose registers are not there."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.bus import close_all_buses, get_tcp_bus
from drivers.modbus.recognize import identification_probes, recognize
from drivers.sim.register_image import start_register_image
from tests.integration.profile_peers import expected_writes
from tests.waiting import wait_until

FIXTURES = Path(__file__).parent.parent / "fixtures" / "devices"
RECOGNIZABLE = [
    (p.stem, doc) for p in sorted(FIXTURES.glob("*.toml")) if "recognized_as" in (doc := tomllib.loads(p.read_text()))
]


def _image(fixture: dict[str, Any]) -> dict[int, dict[str, dict[int, int]]]:
    units: dict[int, dict[str, dict[int, int]]] = {}
    for block in fixture["image"]:
        table = units.setdefault(block["unit"], {}).setdefault(block["table"], {})
        for i, value in enumerate(block["values"]):
            table[block["address"] + i] = value
    return units


@pytest.mark.parametrize(("name", "fixture"), RECOGNIZABLE, ids=[n for n, _ in RECOGNIZABLE])
async def test_recognize_finds_the_profile_and_only_it(name: str, fixture: dict[str, Any]) -> None:
    server = await start_register_image(_image(fixture))
    try:
        bus = get_tcp_bus(server.host, server.port, timeout_s=0.5, backoff_initial_s=0.05, max_requests_per_s=200)
        found = await recognize(bus, fixture["unit_id"])
        assert [m.profile for m in found if m.profile] == [fixture["recognized_as"]], name
        match = next(m for m in found if m.profile)
        assert match.capabilities and match.evidence
        assert f'map = "{fixture["recognized_as"]}"' in match.snippet(server.host, server.port)
        assert server.writes == []  # probes are read-only
    finally:
        await close_all_buses()
        await server.stop()


def test_every_shipped_identify_table_is_valid() -> None:
    names = {p.profile for p in identification_probes()}
    assert {"sungrow_sh", "huawei_sun2000_luna2000", "solaredge_storedge", "eastron_sdm630", "victron_gx_ess"} <= names


async def test_cli_scan_host_prints_profile_and_snippet(capsys: pytest.CaptureFixture[str]) -> None:
    from zapd.recognize_cli import scan_host

    fixture = dict(RECOGNIZABLE)["sungrow_sh"]
    server = await start_register_image(_image(fixture))
    try:
        rc = await scan_host(f"{server.host}:{server.port}", unit_ids=[1], as_json=True)
    finally:
        await close_all_buses()
        await server.stop()
    text = capsys.readouterr().out  # structlog lines come first; the JSON array is printed whole
    out, _ = json.JSONDecoder().raw_decode(text[text.index("[\n") :])
    assert rc == 0 and out[0]["profile"] == "sungrow_sh" and 'map = "sungrow_sh"' in out[0]["config"]


async def test_map_auto_recognises_the_profile_at_start_and_controls_it(tmp_path: Path) -> None:
    """`map = "auto"` in the config: the daemon's device builder makes a driver that recognises the
    Sungrow SH in its vendor-document image, then reads it and commands it as the profile says."""
    import asyncio

    from drivers.modbus.auto_profile import AutoProfileInverter
    from zapd.clock import SystemClock
    from zapd.config import load_config
    from zapd.devices import build_devices
    from zapd.model import SOC, BatterySetpoint, DerKind, Reading

    fixture = dict(RECOGNIZABLE)["sungrow_sh"]
    server = await start_register_image(_image(fixture))
    task = None
    try:
        path = tmp_path / "zapd.toml"
        path.write_text(
            '[site]\nid = "home"\nfuse_a = 25\n\n[[devices]]\ndriver = "modbus_tcp"\nid = "sg"\n'
            f'host = "{server.host}"\nport = {server.port}\nunit_id = 1\nmap = "auto"\npoll_s = 0.2\n\n'
            "[devices.battery]\nmax_charge_w = 5000\nmax_discharge_w = 5000\ncapacity_wh = 9600\n"
        )
        devices = build_devices(load_config(path), SystemClock())
        assert devices.kinds == {"sg.battery": DerKind.BATTERY, "sg.pv": DerKind.PV}
        (driver,) = devices.drivers
        assert isinstance(driver, AutoProfileInverter) and driver.capabilities() == []
        refused = await driver.apply(BatterySetpoint(der_id="sg.battery", power_w=100.0))
        assert not refused.ok and "not recognised yet" in refused.detail
        seen: list[Reading] = []
        first_battery = asyncio.Event()

        def sink(reading: Reading) -> None:
            seen.append(reading)
            if reading.der_id == "sg.battery":
                first_battery.set()

        task = asyncio.create_task(driver.run(sink))
        async with asyncio.timeout(5):
            await first_battery.wait()
        assert driver.profile == "sungrow_sh"
        battery = next(r for r in seen if r.der_id == "sg.battery")
        assert battery.values[SOC] == pytest.approx(0.523)
        assert server.writes == []  # recognition and polling only read
        result = await driver.apply(BatterySetpoint(der_id="sg.battery", power_w=2500.0))
        assert result.ok, result.detail
        assert server.writes == expected_writes(fixture["commands"][0]["writes"])
    finally:
        if task is not None:
            task.cancel()
        await close_all_buses()
        await server.stop()


async def test_map_auto_with_no_battery_profile_is_a_configuration_error() -> None:
    """A meter's image under `map = "auto"`: no battery profile fits, the health record says so (with what
    was found) and the driver keeps to its slow retry instead of hammering the device."""
    import asyncio
    import contextlib

    from drivers.health import HealthState
    from drivers.modbus.auto_profile import AutoProfileInverter
    from zapd.clock import SystemClock

    fixture = dict(RECOGNIZABLE)["eastron_sdm630"]
    server = await start_register_image(_image(fixture))
    try:
        bus = get_tcp_bus(server.host, server.port, timeout_s=0.5, backoff_initial_s=0.05)
        driver = AutoProfileInverter(
            device_id="x",
            bus=bus,
            unit_id=1,
            clock=SystemClock(),
            make=lambda rmap: None,
            retry_s=30.0,  # type: ignore[arg-type,return-value]
        )
        task = asyncio.create_task(driver.run(lambda r: None))
        await wait_until(lambda: driver.health.view().state is HealthState.UNUSABLE, 10, "the recognition verdict")
        view = driver.health.view()
        assert view.state is HealthState.UNUSABLE and "eastron_sdm630" in view.reason and driver.inner is None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert server.writes == []
    finally:
        await close_all_buses()
        await server.stop()
