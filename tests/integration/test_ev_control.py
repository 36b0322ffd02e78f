"""The EV path end to end on real sockets: sim charger (Modbus) → driver → state → controller → EvCurrent → sim."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from drivers.config_structs import EvLimits
from drivers.modbus.bus import close_all_buses, get_tcp_bus
from drivers.modbus.ev_charger import ModbusEvCharger
from drivers.modbus.register_map import load_register_map
from drivers.sim.modbus_server import start_modbus_sim
from drivers.sim.physics import EvModel, SimSite
from fallback.policy import Decision, Rung
from zapd.clock import ManualClock
from zapd.controller import Controller
from zapd.envelope import SiteLimits
from zapd.model import POWER_W, DerKind, Intent, IntentMode, Reading
from zapd.state import SiteState
from zapd.store import Store


async def test_controller_drives_the_simulated_charger(tmp_path: Path) -> None:
    site = SimSite()
    site.ev = EvModel(connected=True, phases=3)
    server = await start_modbus_sim(site, map_name="alfen_eve")
    store = await Store.open(tmp_path / "zapd.sqlite")
    clock = ManualClock(datetime(2026, 6, 1, 12, tzinfo=UTC))
    try:
        charger = ModbusEvCharger(
            device_id="eve",
            bus=get_tcp_bus(server.host, server.port, timeout_s=0.5),
            unit_id=1,
            register_map=load_register_map("alfen_eve"),
            poll_s=5,
            clock=clock,
            limits=EvLimits(max_current_a=16),
        )
        state = SiteState()
        state.register("meter", DerKind.METER, 5)
        state.register("eve.ev", DerKind.EV_CHARGER, 5)
        intent = [Intent(ev_w=8280.0)]  # 12 A x 3 x 230 V
        ctl = Controller(
            clock=clock,
            state=state,
            store=store,
            batteries=dict,
            actuators={"eve.ev": charger},
            site=SiteLimits(fuse_limit_w=25 * 230 * 3, fuse_a=25, voltage_v=230, phases=3, max_export_w=None),
            tick_s=10,
            refresh_s=60,
            deadband_w=50,
            plan_source=lambda: None,
            plan_fresh=lambda: True,
            forced_rung=lambda: Decision(Rung.PLAN, intent[0], "test"),
            evs=lambda: {"eve.ev": EvLimits(max_current_a=16)},
        )

        async def tick(house_w: float) -> None:
            assert site.ev is not None
            grid_w = house_w + site.ev.power_w  # the meter sees the car too
            state.update(Reading(der_id="meter", kind=DerKind.METER, ts=clock.now(), values={POWER_W: grid_w}))
            await charger.poll_once(state.update)
            await ctl.cycle()
            site.ev.step(10)
            clock.advance(10)

        await tick(500.0)
        assert site.ev is not None
        assert site.ev.setpoint_a == pytest.approx(12.0)
        # the house now draws 12 kW: the fuse (25 A x 3 x 230 V = 17250 W) leaves the car 5250 W = 7.6 A
        await tick(12_000.0)
        assert site.ev.setpoint_a == pytest.approx(7.6)
        await tick(14_000.0)  # 17250 - 14000 = 3250 W: under 6 A x 3 phases: pause
        assert site.ev.setpoint_a == 0.0
        intent[0] = Intent(mode=IntentMode.HOLD, battery_w=0.0)
        await tick(1000.0)
        assert site.ev.setpoint_a == pytest.approx(6.0)
        logged = await store.recent_commands()
        assert [r.clamped_reason for r in reversed(logged)] == ["", "fuse limit", "fuse limit", ""]
    finally:
        await store.close()
        await close_all_buses()
        await server.stop()
