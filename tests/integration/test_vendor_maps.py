"""Each shipped vendor map against the simulator serving that same map on a real Modbus TCP socket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from drivers.api import Controllable, Driver
from drivers.config_structs import EvLimits
from drivers.modbus.bus import ModbusBus, close_all_buses, get_tcp_bus
from drivers.modbus.ev_charger import CURRENT_A, ModbusEvCharger, decode_ascii_state
from drivers.modbus.hybrid_inverter import ModbusHybridInverter
from drivers.modbus.register_map import MAPS_DIR, load_register_map
from drivers.sim.modbus_server import SimModbusServer, start_modbus_sim
from drivers.sim.physics import BatteryModel, EvModel, SimSite
from fallback.policy import Decision, Rung
from tests.waiting import stays, wait_until
from zapd.clock import SystemClock
from zapd.controller import Controller
from zapd.envelope import SiteLimits
from zapd.model import (
    CHARGING,
    CONNECTED,
    POWER_W,
    SESSION_WH,
    SOC,
    BatterySetpoint,
    DerKind,
    EvCurrent,
    Intent,
    Reading,
)
from zapd.state import SiteState
from zapd.store import Store

POLL_S = 0.05


def battery_site() -> SimSite:
    site = SimSite(battery=BatteryModel(capacity_wh=10_000.0, soc=0.42, max_charge_w=5000.0, max_discharge_w=4000.0))
    site.battery.power_w = -800.0
    site.pv_w = 2345.0
    return site


@contextlib.asynccontextmanager
async def serving(site: SimSite, map_name: str, unit_id: int) -> AsyncIterator[tuple[SimModbusServer, ModbusBus]]:
    server = await start_modbus_sim(site, map_name=map_name, unit_id=unit_id)
    try:
        yield server, get_tcp_bus(server.host, server.port, timeout_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.2)
    finally:
        await close_all_buses()
        await server.stop()


async def poll(driver: ModbusHybridInverter | ModbusEvCharger) -> dict[str, Reading]:
    got: dict[str, Reading] = {}
    await driver.poll_once(lambda r: got.__setitem__(r.der_id, r))
    return got


async def test_huawei_sun2000_luna2000_reads_against_the_site_sim() -> None:
    site = battery_site()
    async with serving(site, "huawei_sun2000_luna2000", 1) as (_, bus):
        inv = ModbusHybridInverter(
            device_id="hw",
            bus=bus,
            unit_id=1,
            register_map=load_register_map("huawei_sun2000_luna2000"),
            poll_s=POLL_S,
            clock=SystemClock(),
        )
        await inv.probe()
        got = await poll(inv)
        assert got["hw.battery"].values[SOC] == pytest.approx(0.42)
        assert got["hw.battery"].values[POWER_W] == pytest.approx(-800.0)  # Huawei counts + = charging too
        assert got["hw.pv"].values[POWER_W] == pytest.approx(2345.0)
        battery = inv.capabilities()[0]
        assert (battery.max_charge_w, battery.max_discharge_w, battery.capacity_wh) == (5000.0, 4000.0, 10_000.0)
        # Direction + magnitude control (forcible charge/discharge); its register-level writes are
        # checked against the vendor-document fixture in test_device_profiles.py.
        assert battery.controllable


async def test_sma_sunny_boy_storage_inverted_power_and_control() -> None:
    site = battery_site()
    async with serving(site, "sma_sunny_boy_storage", 3) as (server, bus):
        inv = ModbusHybridInverter(
            device_id="sbs",
            bus=bus,
            unit_id=3,
            register_map=load_register_map("sma_sunny_boy_storage"),
            poll_s=POLL_S,
            clock=SystemClock(),
            max_charge_w=5000.0,
            max_discharge_w=4000.0,
            capacity_wh=10_000.0,
        )
        await inv.probe()
        got = await poll(inv)
        assert set(got) == {"sbs.battery"}  # a stand-alone battery: no PV DER
        assert got["sbs.battery"].values[POWER_W] == pytest.approx(-800.0)  # SMA + = discharging, inverted
        assert got["sbs.battery"].values[SOC] == pytest.approx(0.42)
        assert [c.kind for c in inv.capabilities()] == [DerKind.BATTERY]
        assert inv.capabilities()[0].controllable

        assert not server.remote_control(3)
        result = await inv.apply(BatterySetpoint(der_id="sbs.battery", power_w=1500.0))
        assert result.ok, result.detail
        assert server.remote_control(3)  # 40151 = 802
        assert site.battery.setpoint_w == pytest.approx(1500.0)  # the device saw -1500 (charge)
        result = await inv.apply(BatterySetpoint(der_id="sbs.battery", power_w=-2500.0))
        assert result.ok and site.battery.setpoint_w == pytest.approx(-2500.0)


def ev_site(*, connected: bool = True) -> SimSite:
    site = battery_site()
    site.ev = EvModel(connected=connected, soc=0.3, car_max_current_a=32.0, phases=3, energy_wh=12_345.0)
    return site


def make_charger(bus: ModbusBus, **kw: object) -> ModbusEvCharger:
    args: dict[str, object] = {
        "device_id": "eve",
        "bus": bus,
        "unit_id": 1,
        "register_map": load_register_map("alfen_eve"),
        "poll_s": POLL_S,
        "clock": SystemClock(),
        "limits": EvLimits(max_current_a=16.0, phases=3),
    }
    args.update(kw)
    return ModbusEvCharger(**args)  # type: ignore[arg-type]


def word(state: str) -> int:
    return (ord(state[0]) << 8) | (ord(state[1]) if len(state) > 1 else 0)


def test_ascii_mode3_states() -> None:
    assert decode_ascii_state(word("A")).connected is False
    assert decode_ascii_state(word("B2")).connected and not decode_ascii_state(word("B2")).charging
    assert decode_ascii_state(word("C2")).charging and decode_ascii_state(word("D1")).charging
    assert decode_ascii_state(word("F")).fault


async def test_alfen_eve_charges_at_commanded_current() -> None:
    site = ev_site()
    assert site.ev is not None
    async with serving(site, "alfen_eve", 1) as (_, bus):
        charger = make_charger(bus)
        assert isinstance(charger, Driver) and isinstance(charger, Controllable)
        got = (await poll(charger))["eve.ev"]
        assert got.kind is DerKind.EV_CHARGER
        assert got.values[CONNECTED] == 1.0 and got.values[CHARGING] == 0.0
        assert got.values[SESSION_WH] == 0.0

        result = await charger.apply(EvCurrent(der_id="eve.ev", current_a=10.0, phases=3))
        assert result.ok, result.detail
        assert site.ev.setpoint_a == pytest.approx(10.0)
        site.ev.step(360.0)  # 0.1 h at 10 A x 3 x 230 V = 690 Wh
        got = (await poll(charger))["eve.ev"]
        assert got.values[CHARGING] == 1.0
        assert got.values[POWER_W] == pytest.approx(6900.0)
        assert got.values[CURRENT_A] == pytest.approx(10.0)
        assert got.values[SESSION_WH] == pytest.approx(690.0)

        # one phase: the charger switches (1215) and the car draws a third of the power
        result = await charger.apply(EvCurrent(der_id="eve.ev", current_a=16.0, phases=1))
        assert result.ok, result.detail
        site.ev.step(1.0)
        assert (await poll(charger))["eve.ev"].values[POWER_W] == pytest.approx(16 * 230.0)

        result = await charger.apply(EvCurrent(der_id="eve.ev", current_a=0.0, phases=1))  # pause
        assert result.ok
        site.ev.step(1.0)
        got = (await poll(charger))["eve.ev"]
        assert got.values[POWER_W] == 0.0 and got.values[CHARGING] == 0.0 and got.values[CONNECTED] == 1.0


@pytest.mark.parametrize(
    ("current_a", "phases", "why"),
    [(3.0, 3, "outside"), (20.0, 3, "outside"), (float("nan"), 3, "not a number"), (8.0, 2, "phase")],
)
async def test_ev_charger_refuses_out_of_range(current_a: float, phases: int, why: str) -> None:
    site = ev_site()
    async with serving(site, "alfen_eve", 1) as (server, bus):
        charger = make_charger(bus)
        result = await charger.apply(EvCurrent(der_id="eve.ev", current_a=current_a, phases=phases))
        assert not result.ok and why in result.detail
        assert server.counters(1)["writes"] == 0  # nothing reached the wire
        assert charger.counters["commands_refused"] == 1


async def test_ev_session_resets_on_unplug_and_safe_mode() -> None:
    site = ev_site(connected=False)
    assert site.ev is not None
    async with serving(site, "alfen_eve", 1) as (_, bus):
        charger = make_charger(bus, safe_mode="pause")
        got = (await poll(charger))["eve.ev"]
        assert got.values[CONNECTED] == 0.0 and SESSION_WH not in got.values
        site.ev.connected = True
        assert (await poll(charger))["eve.ev"].values[SESSION_WH] == 0.0
        assert (await charger.apply(EvCurrent(der_id="eve.ev", current_a=6.0))).ok
        site.ev.step(3600.0)
        assert (await poll(charger))["eve.ev"].values[SESSION_WH] == pytest.approx(6 * 3 * 230.0)
        await charger.safe_mode()
        assert site.ev.setpoint_a == 0.0
        minimum = make_charger(bus, safe_mode="minimum")
        await minimum.safe_mode()
        assert site.ev.setpoint_a == 6.0


async def test_the_controller_keeps_the_charger_setpoint_alive_and_the_driver_survives_outage(
    tmp_path: Path,
) -> None:
    """The charger forgets an EMS setpoint after its validity time: the driver says so in its
    capabilities and the controller, the only writer, writes it again; the driver writes nothing
    on its own (issue 15: it used to keep the setpoint alive itself, a second writer)."""
    site = ev_site()
    assert site.ev is not None
    server = await start_modbus_sim(site, map_name="alfen_eve", unit_id=1)
    port = server.port
    bus = get_tcp_bus(server.host, port, timeout_s=0.3, backoff_initial_s=0.05, backoff_max_s=0.1)
    charger = make_charger(bus, keepalive_s=0.3, backoff_max_s=0.1)
    (cap,) = charger.capabilities()
    assert cap.keepalive_s == 0.3
    readings: list[Reading] = []
    task = asyncio.create_task(charger.run(readings.append))
    store = await Store.open(tmp_path / "zapd.sqlite")
    try:
        assert (await charger.apply(EvCurrent(der_id="eve.ev", current_a=8.0))).ok
        site.ev.setpoint_a = 6.0  # the charger fell back to its safe current
        # > 3 validity periods of polling: the driver alone writes nothing
        await stays(lambda: site.ev.setpoint_a == 6.0, 1.0, "the charger's own safe current")

        clock = SystemClock()
        state = SiteState()
        state.register("meter", DerKind.METER, 1.0)
        state.register("eve.ev", DerKind.EV_CHARGER, POLL_S)
        ctl = Controller(
            clock=clock,
            state=state,
            store=store,
            batteries=dict,
            actuators={"eve.ev": charger},
            site=SiteLimits(fuse_limit_w=25 * 230 * 3, fuse_a=25, voltage_v=230, phases=3, max_export_w=None),
            tick_s=0.05,
            refresh_s=60,
            deadband_w=50,
            plan_source=lambda: None,
            plan_fresh=lambda: True,
            forced_rung=lambda: Decision(Rung.PLAN, Intent(ev_w=8 * 3 * 230.0), "test"),
            evs=lambda: {"eve.ev": EvLimits(max_current_a=16)},
            keepalive_s=lambda: {c.der_id: c.keepalive_s for c in charger.capabilities()},
        )
        writes = 0
        for _ in range(20):  # 1 s of cycles; the charger's own readings feed the state
            state.update(Reading(der_id="meter", kind=DerKind.METER, ts=clock.now(), values={POWER_W: 1000.0}))
            if readings:
                state.update(readings[-1])
            await ctl.cycle()
            if site.ev.setpoint_a == 8.0 and writes == 0:
                writes = ctl.stats.writes
                site.ev.setpoint_a = 6.0  # it forgets again: the controller must write again in time
            await asyncio.sleep(0.05)  # wall-clock: the control cycle's period; the keep-alive is timed on it
        assert writes >= 1 and site.ev.setpoint_a == 8.0
        assert ctl.stats.writes >= writes + 1 and ctl.stats.write_failures == 0

        await server.stop()
        await eventually(lambda: not charger.healthy)
        server = await start_modbus_sim(site, map_name="alfen_eve", unit_id=1, port=port)
        before = len(readings)
        await eventually(lambda: charger.healthy and len(readings) > before, within_s=5.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
        await close_all_buses()
        await server.stop()


async def eventually(pred: Callable[[], bool], within_s: float = 3.0) -> None:
    """Poll a condition: the driver's loop runs on its own schedule, so tests wait for its effects."""
    await wait_until(pred, within_s)


async def test_ev_charger_map_pointing_at_a_missing_register_is_a_configuration_error(tmp_path: Path) -> None:
    """Illegal data address is reported and counted as a configuration error, not hammered."""
    text = (MAPS_DIR / "alfen_eve.toml").read_text().replace("address = 1206", "address = 1300")
    bad = tmp_path / "alfen_wrong.toml"
    bad.write_text(text)
    site = ev_site()
    async with serving(site, "alfen_eve", 1) as (server, bus):
        charger = make_charger(bus, register_map=load_register_map(bad), backoff_max_s=5.0)
        readings: list[Reading] = []
        task = asyncio.create_task(charger.run(readings.append))
        try:
            await eventually(lambda: charger.counters["config_errors"] == 1)
            reads = server.counters(1)["reads"]
            # it waits backoff_max_s before asking again
            await stays(lambda: server.counters(1)["reads"] == reads, 0.3, "no reads during the backoff")
            assert charger.counters["config_errors"] == 1
            assert not readings and not charger.healthy
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
