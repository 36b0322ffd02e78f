"""Adding a Modbus device is one data file and one fixture, nothing else (docs/devices.md worked example).

The ABB B21 profile (tests/fixtures/new_profile/abb_b21.toml) is not shipped: the test drops it into
a fresh maps folder ($ZAPD_MAPS_DIR, a site's own profiles) and, with no code touched, the device is
recognised at its address, the snippet recognition prints passes `zapd config check`, the daemon's
device builder reads it through the profile with the values the vendor-document fixture gives, and
`zapd devices scan --config` reports it answering. The same profile file in drivers/modbus/maps/ is
picked up the same way by tests/integration/test_recognize_profiles.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tomllib
from pathlib import Path

import pytest

from drivers.modbus.recognize import recognize
from drivers.modbus.register_map import MAPS_DIR_ENV, profile_paths
from tests.integration.profile_peers import over_tcp
from zapd.clock import SystemClock
from zapd.config_check import check_data
from zapd.devices import build_devices
from zapd.model import EXPORT_WH, IMPORT_WH, POWER_W, Reading
from zapd.scan import scan

NEW = Path(__file__).parent.parent / "fixtures" / "new_profile"
SHIPPED_FIXTURES = Path(__file__).parent.parent / "fixtures" / "devices"
SITE = '[site]\nid = "home"\nfuse_a = 25\n\n'


async def test_a_new_modbus_device_is_one_data_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fixture = tomllib.loads((NEW / "abb_b21.fixture.toml").read_text())
    assert "abb_b21" not in profile_paths()  # not shipped: without the file zapd does not know it
    maps = tmp_path / "maps"
    maps.mkdir()
    shutil.copy(NEW / "abb_b21.toml", maps / "abb_b21.toml")
    monkeypatch.setenv(MAPS_DIR_ENV, str(maps))

    async with over_tcp(fixture) as (server, bus):
        # recognised: its [identify] probe names it, and only it
        found = await recognize(bus, fixture["unit_id"])
        assert [(m.profile, m.driver) for m in found] == [("abb_b21", "modbus_meter_tcp")]

        # configured: the snippet the scan prints, pasted under [site], is a valid config
        snippet = found[0].snippet({"host": server.host, "port": server.port}, device_id="grid")
        result = check_data(tomllib.loads(SITE + snippet), "zapd.toml")
        assert result.errors == [] and result.config is not None, result.errors

        # read through the profile by the daemon's own builder: the values the document gives
        (meter,) = build_devices(result.config, SystemClock()).drivers
        got: asyncio.Future[Reading] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(meter.run(lambda r: got.done() or got.set_result(r)))
        try:
            async with asyncio.timeout(5):
                reading = await got
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        expect = fixture["meter"]
        assert reading.der_id == "grid"
        assert reading.values[POWER_W] == pytest.approx(expect["power_w"])
        assert reading.values[IMPORT_WH] == pytest.approx(expect["import_wh"])
        assert reading.values[EXPORT_WH] == pytest.approx(expect["export_wh"])

        # scanned: `zapd devices scan --config` finds it answering
        capsys.readouterr()
        rc = await scan(result.config, as_json=True, window_s=3.0)
        text = capsys.readouterr().out
        rows, _ = json.JSONDecoder().raw_decode(text[text.index("[\n") :])
        assert rc == 0 and [(r["der_id"], r["status"]) for r in rows] == [("grid", "ok")]
        assert server.writes == []


async def test_the_new_profile_does_not_claim_its_siblings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the B21 file present, a B23 still recognises as the shipped B23/B24 profile only."""
    maps = tmp_path / "maps"
    maps.mkdir()
    shutil.copy(NEW / "abb_b21.toml", maps / "abb_b21.toml")
    monkeypatch.setenv(MAPS_DIR_ENV, str(maps))
    b23 = tomllib.loads((SHIPPED_FIXTURES / "abb_b23_b24.toml").read_text())
    async with over_tcp(b23) as (_server, bus):
        found = await recognize(bus, b23["unit_id"])
    assert [m.profile for m in found] == ["abb_b23_b24"]
