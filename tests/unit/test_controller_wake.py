"""A meter reading that arrives while a control cycle is running must get its own cycle at once.

Why: the controller is event driven (a new meter reading wakes it) so the fuse limit reacts in
milliseconds, not at the next tick. Found by `python -m bench.latency`: about one step in 300
waited for the 10 s tick because the wake-up set during a cycle (the cycle awaits Modbus I/O)
was cleared when the cycle ended.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from drivers.config_structs import BatteryLimits
from zapd.clock import SystemClock
from zapd.controller import Controller
from zapd.envelope import SiteLimits
from zapd.model import POWER_W, SOC, Command, CommandResult, DerKind, Reading
from zapd.state import SiteState
from zapd.store import Store

BATTERY = "inverter.battery"


class SlowBattery:
    """Takes 50 ms per write, like a Modbus write plus read-back; the test wakes the controller meanwhile."""

    def __init__(self, on_apply: asyncio.Event) -> None:
        self.applied = on_apply
        self.commands: list[Command] = []

    async def apply(self, command: Command) -> CommandResult:
        self.commands.append(command)
        self.applied.set()
        await asyncio.sleep(0.05)
        return CommandResult(command=command, ok=True)

    async def safe_mode(self) -> None:
        return None


def feed(state: SiteState, grid_w: float, battery_w: float = 0.0) -> None:
    now = datetime.now(UTC)
    state.update(Reading(der_id="meter", kind=DerKind.METER, ts=now, values={POWER_W: grid_w}))
    state.update(Reading(der_id=BATTERY, kind=DerKind.BATTERY, ts=now, values={POWER_W: battery_w, SOC: 0.5}))


async def test_wake_during_a_cycle_runs_another_cycle_without_waiting_for_the_tick(store: Store) -> None:
    state = SiteState()
    state.register("meter", DerKind.METER, 1)
    state.register(BATTERY, DerKind.BATTERY, 1)
    applied = asyncio.Event()
    battery = SlowBattery(applied)
    ctl = Controller(
        clock=SystemClock(),
        state=state,
        store=store,
        batteries=lambda: {BATTERY: BatteryLimits(capacity_wh=10_000, max_charge_w=5000, max_discharge_w=5000)},
        actuators={BATTERY: battery},
        site=SiteLimits(fuse_limit_w=25 * 230 * 3, fuse_a=25, voltage_v=230, phases=3, max_export_w=None),
        tick_s=10,  # the next tick is far away: only a wake-up can explain a prompt second cycle
        refresh_s=60,
        deadband_w=50,
        plan_source=lambda: None,
        plan_fresh=lambda: True,
    )
    feed(state, 1000.0)
    task = asyncio.create_task(ctl.run())
    try:
        await asyncio.wait_for(applied.wait(), 2)  # the first cycle is writing now
        first = battery.commands[0].power_w  # type: ignore[union-attr]
        # A new meter reading lands mid-cycle: the battery does what it was told, and the house now exports 1 kW.
        feed(state, -1000.0 + first, battery_w=first)
        ctl.wake()
        for _ in range(50):
            await asyncio.sleep(0.02)
            if len(battery.commands) >= 2:
                break
        # Self-consumption: discharge to cover the 1 kW import, then charge from the 1 kW surplus (each to
        # within the controller's 50 W estimate tolerance).
        powers = [c.power_w for c in battery.commands]  # type: ignore[union-attr]
        assert len(powers) == 2
        assert powers[0] == pytest.approx(-1000.0, abs=50.0)
        assert powers[1] == pytest.approx(1000.0, abs=50.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
