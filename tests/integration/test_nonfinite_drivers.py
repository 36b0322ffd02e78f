"""Non-finite and absurd device values are bad input in every driver (issue 10 item 2), over real transports.

The attack of issue 10, end to end: on a site importing 200 W, a SunSpec float32 grid meter W of +Inf
commanded a full discharge (-5000 W, "fuse limit"), -Inf a full charge, a phase current of +Inf a full
discharge, and the reading showed as quality good. Here a real pymodbus SunSpec server serves those
values to the real daemon; MQTT values ("NaN", Infinity, 1e400, 1e12) go through a real mosquitto;
an absurd DSMR telegram (a recorded one, values changed, CRC recomputed) through a real pty. Each time:
no command beyond what the site asked before, the reading's quality is "bad", the DER is unknown
(the ladder holds), the rejection is counted per device and reason, and a good value brings it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import aiomqtt
import pytest

from drivers.api import ReadingGuard
from drivers.modbus.bus import close_all_buses, get_tcp_bus
from drivers.modbus.sunspec import SunSpecInverter
from drivers.mqtt.driver import MqttDriver
from drivers.mqtt.mapping import preset_mappings
from drivers.p1.dsmr import P1Meter, SerialP1
from drivers.sim.modbus_server import start_modbus_sim
from drivers.sim.p1_pty import SimP1Pty, frame_telegram
from drivers.sim.physics import BatteryModel, SimSite
from drivers.sim.sunspec_server import start_sunspec_sim
from fallback.policy import Rung, choose
from tests.waiting import wait_until
from zapd.clock import ManualClock, SystemClock
from zapd.config import validate_config
from zapd.daemon import Daemon
from zapd.model import DerKind, Quality, Reading
from zapd.state import SiteState

if TYPE_CHECKING:
    from conftest import MosquittoBroker  # the fixture's type (tests/integration/conftest.py)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "dsmr"


async def eventually(pred: Callable[[], bool], within_s: float = 10.0, what: str = "") -> None:
    await wait_until(pred, within_s, what)


# --- SunSpec float32 meter (model 213) through the real daemon ------------------------------------


async def test_sunspec_inf_and_nan_meter_values_hold_the_site(tmp_path: Path) -> None:
    site = SimSite(battery=BatteryModel(capacity_wh=10_000.0, soc=0.5, max_charge_w=5000.0, max_discharge_w=5000.0))
    site.pv_w, site.grid_w = 0.0, 200.0  # importing 200 W
    # The grid meter: a SunSpec float32 meter (model 213); the battery: the hybrid inverter on the same site.
    sim = await start_sunspec_sim(site, models=(1, 213))
    inverter = await start_modbus_sim(site)
    config = validate_config(
        {
            "site": {"id": "nonfinite", "fuse_a": 25, "max_export_w": 3000},
            "store": {"state_dir": str(tmp_path)},
            "api": {"socket": str(tmp_path / "zapd.sock")},
            "metrics": {"enabled": False},
            "control": {"tick_s": 0.5, "deadband_w": 0},
            "devices": [
                {"driver": "sunspec_tcp", "id": "gm", "host": "127.0.0.1", "port": sim.port, "poll_s": 0.1,
                 "timeout_s": 0.5, "has_meter": True, "has_battery": False},
                {"driver": "modbus_tcp", "id": "inv", "host": "127.0.0.1", "port": inverter.port, "map": "sim_hybrid",
                 "poll_s": 0.1, "timeout_s": 0.5, "max_writes_per_hour": 100_000},
            ],
        },
        "test",
    )  # fmt: skip
    daemon = Daemon(config, SystemClock())
    driver = next(d for d in daemon.devices.drivers if d.name == "gm")
    assert isinstance(driver, SunSpecInverter)
    commanded: list[float] = []

    async def watch() -> None:  # every setpoint the controller decided and the device was given
        while True:
            if daemon.controller is not None:
                commanded.extend(sp.power_w for sp in daemon.controller.stats.last_setpoints.values())
            commanded.append(site.battery.setpoint_w)
            await asyncio.sleep(0.01)  # wall-clock: a sampler, not a wait: it records every setpoint as it goes

    def meter() -> Reading | None:
        return daemon.state.latest().get("gm.meter")

    def rung() -> Rung | None:
        return daemon.controller.stats.rung if daemon.controller is not None else None

    task = asyncio.create_task(daemon.run())
    watcher = asyncio.create_task(watch())
    try:
        await eventually(lambda: rung() is Rung.SELF_CONSUMPTION, what="self-consumption on good readings")
        # The battery covers (most of) the 200 W import: the controller keeps a margin for its estimate.
        await eventually(lambda: any(-200.0 - 1.0 <= p <= -100.0 for p in commanded), what="discharge covers import")
        for point, bad in (("W", math.inf), ("W", -math.inf), ("W", math.nan), ("AphA", math.inf)):
            sim.device.overrides = {(213, point): bad}
            await eventually(lambda: (m := meter()) is not None and m.quality is Quality.BAD, what=f"{point}={bad}")
            await eventually(lambda: rung() is Rung.SAFE_HOLD, what=f"safe hold on {point}={bad}")
            await eventually(lambda: site.battery.setpoint_w == 0.0, what="battery idle")
            m = meter()
            assert m is not None and all(math.isfinite(v) for v in m.values.values())
            assert "power_w" not in m.values or point != "W"
            sim.device.overrides = {}
            await eventually(lambda: rung() is Rung.SELF_CONSUMPTION, what=f"back after {point}={bad}")
            assert (m := meter()) is not None and m.quality is Quality.GOOD
        # Never a full charge or discharge: at most the 200 W the site really imports.
        assert max(abs(p) for p in commanded) <= 200.0 + 1.0, sorted(commanded)[:3] + sorted(commanded)[-3:]
        assert driver.counters["rejected_nonfinite"] >= 4
    finally:
        watcher.cancel()
        daemon.stop()
        assert await asyncio.wait_for(task, 15) == 0
        await close_all_buses()
        await sim.stop()
        await inverter.stop()


async def test_sunspec_int_meter_with_a_scale_factor_gone_wrong_is_out_of_range() -> None:
    """Model 203 (int16 + scale factor): a W_SF of 10 makes the site's 200 W read as 2 TW."""
    site = SimSite()
    site.grid_w = 200.0
    sim = await start_sunspec_sim(site, models=(1, 203))
    bus = get_tcp_bus(sim.host, sim.port, timeout_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.2)
    driver = SunSpecInverter(device_id="gm", bus=bus, unit_id=1, poll_s=0.1, clock=SystemClock())
    seen: list[Reading] = []
    guard = ReadingGuard(driver.name, seen.append, driver.counters)
    try:
        await driver.scan()
        await driver.poll_once(guard)
        sim.device.overrides = {(203, "W_SF"): 10}
        await driver.poll_once(guard)
    finally:
        await close_all_buses()
        await sim.stop()
    good, bad = (r for r in seen if r.der_id == "gm.meter")
    assert good.quality is Quality.GOOD and good.values["power_w"] == 200.0
    assert bad.quality is Quality.BAD and "power_w" not in bad.values
    assert driver.counters["rejected_out_of_range"] == 1


# --- MQTT through a real mosquitto ----------------------------------------------------------------

SHELLY = "shellypro3em-meter"
EM0 = {"id": 0, "a_current": 4.1, "b_current": 1.2, "c_current": 0.5, "total_act_power": 1122.2}


async def test_mqtt_nan_inf_and_huge_values_make_the_meter_unknown(mosquitto: MosquittoBroker) -> None:
    state = SiteState(grid_meter="mq.grid")
    state.register("mq.grid", DerKind.METER, 5.0)
    driver = MqttDriver(device_id="mq", host=mosquitto.host, port=mosquitto.port, clock=SystemClock(), timeout_s=2.0,
                        mappings=preset_mappings("shelly_em", SHELLY, "mq.grid", DerKind.METER),
                        backoff_initial_s=0.05, backoff_max_s=0.2)  # fmt: skip
    seen: list[Reading] = []

    def sink(r: Reading) -> None:
        seen.append(r)
        state.update(r)

    guard = ReadingGuard(driver.name, sink, driver.counters)
    task = asyncio.create_task(driver.run(guard))
    topic = f"{SHELLY}/status/em:0"
    try:
        await eventually(lambda: driver.connected)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, timeout=5) as client:

            async def send(payload: str | bytes, wanted: Quality) -> None:
                n = len(seen)
                await client.publish(topic, payload, qos=1)
                await eventually(lambda: len(seen) > n, what=f"reading for {payload!r:.60}")
                assert seen[-1].quality is wanted, (payload, seen[-1])
                snap = state.snapshot(datetime.now(UTC))
                decision = choose(snap.ts, None, True, snap)
                if wanted is Quality.BAD:
                    assert snap.grid_w is None and decision.rung is Rung.SAFE_HOLD
                else:
                    assert snap.grid_w is not None and decision.rung is Rung.SELF_CONSUMPTION

            good = json.dumps(EM0)
            await send(good, Quality.GOOD)
            await send(json.dumps({**EM0, "total_act_power": "NaN"}), Quality.BAD)  # a string: no number
            await send(good, Quality.GOOD)
            await send(json.dumps({**EM0, "total_act_power": math.inf}), Quality.BAD)  # JSON Infinity
            await send(good.replace("1122.2", "1e400"), Quality.BAD)  # overflows to +Inf
            await send(good.replace("1122.2", "-1e400"), Quality.BAD)
            await send(good.replace("1122.2", "1e12"), Quality.BAD)  # finite, but no site draws a terawatt
            await send(json.dumps({**EM0, "a_current": math.nan}), Quality.BAD)
            await send(good, Quality.GOOD)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert driver.counters["bad_payloads"] == 1
    assert driver.counters["rejected_nonfinite"] == 5  # NaN string (as NaN), Infinity, 1e400, -1e400, NaN current
    assert driver.counters["rejected_out_of_range"] == 1
    assert all(math.isfinite(v) for r in seen for v in r.values.values())


# --- DSMR through a real pty ----------------------------------------------------------------------


def _telegram(name: str, **replace: str) -> bytes:
    """A recorded telegram with some registers replaced and its CRC recomputed (a meter that says so)."""
    lines = (FIXTURES / name).read_bytes().decode("ascii").split("\r\n")
    body = [ln for ln in lines[1:] if ln and not ln.startswith("!")]
    for obis, value in replace.items():
        body = [f"{obis}({value})" if ln.startswith(f"{obis}(") else ln for ln in body]
    return frame_telegram(lines[0].removeprefix("/"), body)


@pytest.mark.parametrize(
    ("obis", "value", "reason"),
    [
        ("1-0:1.7.0", "99999999.999*kW", "rejected_out_of_range"),  # 1e11 W
        ("1-0:31.7.0", "99999999*A", "rejected_out_of_range"),
        ("1-0:1.8.1", "-000004.426*kWh", "rejected_out_of_range"),  # an energy counter below zero
        ("1-0:1.8.1", "999999999999.999*kWh", "rejected_out_of_range"),
    ],
)
async def test_p1_absurd_telegram_makes_the_meter_unknown(obis: str, value: str, reason: str) -> None:
    clock = ManualClock(datetime(2026, 6, 1, 12, tzinfo=UTC))
    state = SiteState(grid_meter="grid")
    state.register("grid", DerKind.METER, 1.0)
    seen: list[Reading] = []

    def sink(r: Reading) -> None:
        seen.append(r)
        state.update(r, now=clock.now())

    with SimP1Pty(SimSite()) as sim:
        meter = P1Meter(device_id="grid", transport=SerialP1(sim.port), clock=clock, poll_s=1.0, dsmr_version="5")
        guard = ReadingGuard(meter.name, sink, meter.counters)
        task = asyncio.create_task(meter.run(guard))
        try:
            await eventually(lambda: meter.connected)
            for raw, quality in (
                (_telegram("v5_iskra.txt"), Quality.GOOD),
                (_telegram("v5_iskra.txt", **{obis: value}), Quality.BAD),
                (_telegram("v5_iskra.txt"), Quality.GOOD),
            ):
                n = len(seen)
                sim.write_raw(raw)
                await eventually(lambda n=n: len(seen) > n, what="a reading")  # type: ignore[misc]
                assert seen[-1].quality is quality
                snap = state.snapshot(clock.now())
                assert (snap.grid_w is None) is (quality is Quality.BAD)
                assert (choose(clock.now(), None, True, snap).rung is Rung.SAFE_HOLD) is (quality is Quality.BAD)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert meter.counters[reason] == 1
    assert seen[0].values["power_w"] == 244.0  # the recorded telegram's 00.244 kW, untouched
