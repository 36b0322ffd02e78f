"""The real daemon with Modbus meters: a grid meter over TCP and a sub-meter on RS-485 (a pty).

Both meters are pymodbus servers holding the registers of their vendor-document fixtures
(tests/fixtures/devices/carlo_gavazzi_em24.toml, eastron_sdm72.toml). The grid meter alone gives
the site's grid power and phase currents (what the fuse and export checks act on); when it goes
silent the site drops to SAFE_HOLD although the sub-meter still speaks.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from drivers.modbus.bus import close_all_buses
from drivers.sim.modbus_rtu import NullModem
from drivers.sim.register_image import fixture_units, start_register_image, start_register_image_rtu
from fallback.policy import Rung
from tests.waiting import wait_until
from zapd.clock import ScaledClock
from zapd.config import validate_config
from zapd.daemon import Daemon

FIXTURES = Path(__file__).parent.parent / "fixtures" / "devices"


async def _until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    await wait_until(condition, timeout_s)


async def test_modbus_grid_meter_feeds_the_site_and_its_silence_holds_it(tmp_path: Path) -> None:
    em24 = tomllib.loads((FIXTURES / "carlo_gavazzi_em24.toml").read_text())
    sdm72 = tomllib.loads((FIXTURES / "eastron_sdm72.toml").read_text())
    grid_server = await start_register_image(fixture_units(em24["image"]))
    modem = NullModem()
    modem.open()
    sub_server = await start_register_image_rtu(fixture_units(sdm72["image"]), modem.port_b, baudrate=9600)
    clock = ScaledClock(datetime(2026, 6, 21, 12, tzinfo=UTC), 1.0)
    config = validate_config(
        {
            "site": {"id": "modbus-meters", "fuse_a": 25},
            "control": {"tick_s": 0.2},
            "store": {"state_dir": str(tmp_path / "state")},
            "api": {"socket": str(tmp_path / "zapd.sock")},
            "metrics": {"enabled": False},
            "devices": [
                {
                    "driver": "modbus_meter_tcp",
                    "id": "grid",
                    "host": grid_server.host,
                    "port": grid_server.port,
                    "map": "carlo_gavazzi_em24",
                    "poll_s": 0.2,
                    "timeout_s": 0.5,
                },
                {
                    "driver": "modbus_meter_rtu",
                    "id": "heat_pump",
                    "port": modem.port_a,
                    "baudrate": 9600,
                    "map": "eastron_sdm72",
                    "poll_s": 0.2,
                    "role": "submeter",
                },
            ],
        },
        "test",
    )
    daemon = Daemon(config, clock)
    run = asyncio.create_task(daemon.run())
    grid_running = True
    try:
        state = daemon.state
        assert state.grid_meter == "grid"
        await _until(lambda: state.is_fresh("grid", clock.now()) and state.is_fresh("heat_pump", clock.now()))
        await _until(lambda: daemon.controller is not None and daemon.controller.stats.rung is Rung.SELF_CONSUMPTION)
        snap = state.snapshot(clock.now())
        assert snap.grid_w == pytest.approx(em24["meter"]["power_w"])  # the EM24 alone, not the SDM72 added in
        assert snap.phase_currents_a == pytest.approx(tuple(em24["meter"]["currents_a"]))
        assert state.latest()["heat_pump"].values["power_w"] == pytest.approx(sdm72["meter"]["power_w"])
        await grid_server.stop()
        grid_running = False
        await _until(lambda: daemon.controller is not None and daemon.controller.stats.rung is Rung.SAFE_HOLD)
        assert state.is_fresh("heat_pump", clock.now()), "the sub-meter still speaks"
        assert state.snapshot(clock.now()).grid_w is None
        assert daemon.controller is not None and "meter" in daemon.controller.stats.rung_reason, (
            daemon.controller.stats.rung_reason
        )
    finally:
        daemon.stop()
        await asyncio.wait_for(run, 20)
        await close_all_buses()  # the bus registry outlives the daemon: the next test reuses this pty path
        if grid_running:
            await grid_server.stop()
        await sub_server.stop()
        modem.close()
