"""A running daemon with two real P1 meters over TCP, one of them a sub-meter (issue 10, item 3).

The grid meter alone feeds the fuse and export checks: the snapshot never adds the sub-meter in,
and when the grid meter goes quiet the site drops to SAFE_HOLD although the sub-meter still
speaks, which is what "a stale grid meter is a stale grid meter" means end to end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from drivers.sim.p1_pty import SimP1Tcp
from drivers.sim.physics import SimSite
from fallback.policy import Rung
from tests.waiting import wait_until
from zapd.clock import ScaledClock
from zapd.config import validate_config
from zapd.daemon import Daemon
from zapd.model import POWER_W


async def _until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    await wait_until(condition, timeout_s)


async def test_grid_meter_alone_counts_and_its_silence_holds_the_site(tmp_path: Path) -> None:
    start = datetime(2026, 6, 21, 12, tzinfo=UTC)
    grid_site, sub_site = SimSite(), SimSite()
    grid_site.step(start)
    sub_site.step(start)
    grid, sub = SimP1Tcp(grid_site), SimP1Tcp(sub_site)
    grid_port, sub_port = await grid.start(), await sub.start()
    clock = ScaledClock(start, 1.0)
    config = validate_config(
        {
            "site": {"id": "two-meters", "fuse_a": 25},
            "control": {"tick_s": 0.2},
            "store": {"state_dir": str(tmp_path / "state")},
            "api": {"socket": str(tmp_path / "zapd.sock")},
            "metrics": {"enabled": False},
            "devices": [
                {"driver": "p1_tcp", "id": "meter", "host": "127.0.0.1", "port": grid_port, "poll_s": 0.2},
                {
                    "driver": "p1_tcp",
                    "id": "heat_pump",
                    "host": "127.0.0.1",
                    "port": sub_port,
                    "poll_s": 0.2,
                    "role": "submeter",
                },
            ],
        },
        "test",
    )
    daemon = Daemon(config, clock)
    grid_feed = asyncio.create_task(grid.run(clock, 0.1))
    sub_feed = asyncio.create_task(sub.run(clock, 0.1))
    run = asyncio.create_task(daemon.run())
    try:
        state = daemon.state
        assert state.grid_meter == "meter"
        await _until(lambda: state.is_fresh("meter", clock.now()) and state.is_fresh("heat_pump", clock.now()))
        await _until(lambda: daemon.controller is not None and daemon.controller.stats.rung is Rung.SELF_CONSUMPTION)
        now = clock.now()
        snap = state.snapshot(now)
        latest = state.latest()
        assert snap.grid_w == latest["meter"].values[POWER_W]
        assert latest["heat_pump"].values[POWER_W] != 0  # so a sum would have shown
        grid_feed.cancel()
        await asyncio.gather(grid_feed, return_exceptions=True)
        await _until(lambda: daemon.controller is not None and daemon.controller.stats.rung is Rung.SAFE_HOLD)
        assert state.is_fresh("heat_pump", clock.now()), "the sub-meter still speaks"
        assert state.snapshot(clock.now()).grid_w is None
        assert daemon.controller is not None and daemon.controller.stats.rung_reason.startswith("meter")
    finally:
        daemon.stop()
        await asyncio.wait_for(run, 20)
        for task in (grid_feed, sub_feed):
            task.cancel()
        await asyncio.gather(grid_feed, sub_feed, return_exceptions=True)
        await grid.stop()
        await sub.stop()
