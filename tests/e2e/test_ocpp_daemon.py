"""`zapd run` as the site's OCPP central system: a charger (the `ocpp` library's charge point side)
connects over a real WebSocket, and the controller's EV intent from the plan reaches it as
SetChargingProfile; a plan that pauses gives 0 A, a stopped zapd leaves the charger at its safe current.

The grid meter is the simulated site's DSMR telegrams over TCP (drivers/sim), the plan a local plan
file, both on the shared simulated clock; the charger's clock is the real one (OCPP times are real).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from drivers.sim.ocpp_cp import SimCharger, SimChargerState
from tests.e2e.harness import BIN, Proc, Site
from tests.ports import free_port
from zapd.model import Intent, Plan, PlanSlot

pytestmark = pytest.mark.e2e
PASSWORD = "e2e-ocpp-password"


@pytest.fixture
def slow_site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path, speed=20.0)  # slow enough that a 60 s meter interval leaves real seconds of margin
    try:
        yield s
    finally:
        s.stop_all()


def _plan(site: Site, version: int, ev_w: float) -> bytes:
    now = site.clock.now()
    slot = PlanSlot(start=now - timedelta(hours=1), end=now + timedelta(hours=12), intent=Intent(ev_w=ev_w))
    plan = Plan(site_id=site.site_id, version=version, issued_at=now, valid_until=slot.end, slots=(slot,))
    return msgspec.json.encode(plan)


def _config(site: Site, port: int, plan: Path) -> Path:
    text = f"""
[site]
id = "{site.site_id}"
fuse_a = 25
[control]
tick_s = 10
refresh_s = 60
[store]
state_dir = "{site.state_dir}"
[api]
socket = "{site.socket}"
[metrics]
enabled = false
[plan]
file = "{plan}"
[[devices]]
id = "meter"
driver = "p1_tcp"
host = "127.0.0.1"
port = {site.sim_info["p1_endpoint"]}
poll_s = 10
[[devices]]
driver = "ocpp"
id = "ocpp"
host = "127.0.0.1"
port = {port}
meter_interval_s = 60
call_timeout_s = 5
profile_validity_s = 120
[[devices.charge_points]]
id = "garage"
max_current_a = 16
password = "{PASSWORD}"
"""
    path = site.tmp / "zapd.toml"
    path.write_text(text)
    return path


def _live(sim: SimCharger) -> list[dict[str, Any]]:
    return [
        p["csChargingProfiles"] for p in sim.state.received_profiles() if p["csChargingProfiles"]["stackLevel"] == 1
    ]


async def _until_live_limit(sim: SimCharger, limit: float, timeout_s: float = 30.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            live = _live(sim)
            if live and live[-1]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == limit:
                return live[-1]
            sim.state.changed.clear()
            await sim.state.changed.wait()


def _start_zapd(site: Site, port: int, plan: Path) -> Proc:
    cmd = [str(BIN / "zapd"), "run", "--config", str(_config(site, port, plan))]
    zapd = Proc("zapd", cmd, site.tmp / "zapd.log", {**site.env(), "NOTIFY_SOCKET": ""}).start()
    site.procs["zapd"] = zapd
    return zapd


async def _connect(zapd: Proc, port: int, state: SimChargerState | None = None) -> SimCharger:
    """The charger keeps trying, like a real one, until zapd listens."""
    async with asyncio.timeout(30):
        while True:
            try:
                return await SimCharger(
                    f"ws://127.0.0.1:{port}/ocpp", "garage", password=PASSWORD, state=state
                ).connect()
            except OSError:
                assert zapd.alive(), zapd.output()[-3000:]
                await asyncio.sleep(0.2)


async def test_zapd_run_sends_the_plans_ev_intent_to_an_ocpp_charger(slow_site: Site) -> None:
    site = slow_site
    site.start_sim(p1="tcp")
    port = free_port()
    plan = site.tmp / "plan.json"
    plan.write_bytes(_plan(site, 1, ev_w=6900.0))  # 10 A x 3 phases x 230 V
    zapd = _start_zapd(site, port, plan)
    sim: SimCharger | None = None
    try:
        sim = await _connect(zapd, port)
        assert (await sim.boot(vendor="E2E", model="Wallbox")).status == "Accepted"
        await sim.status(1, "Preparing")  # a car is plugged in
        live = await _until_live_limit(sim, 10.0)
        assert (
            live["chargingProfilePurpose"] == "TxDefaultProfile" and live["chargingSchedule"]["chargingRateUnit"] == "A"
        )
        assert sim.state.limit_a(1) == 10.0

        tx = (await sim.start_transaction(1, "ANY", 0)).transaction_id
        await sim.status(1, "Charging")
        await sim.meter_values(1, power_w=6900, energy_wh=100, transaction_id=tx)

        # The plan pauses charging: 0 A, on the running transaction's own TxProfile.
        plan.write_bytes(_plan(site, 2, ev_w=0.0))
        paused = await _until_live_limit(sim, 0.0)
        assert paused["chargingProfilePurpose"] == "TxProfile" and paused["transactionId"] == tx
        assert sim.state.limit_a(1) == 0.0

        # zapd stops (SIGTERM): it leaves the safe current behind, and its live profile lapses into the
        # baseline (6 A) once validTo passes: never the charger's 32 A hardware maximum.
        await asyncio.to_thread(zapd.stop)  # our loop keeps answering zapd's calls while it shuts down
        assert zapd.popen is not None and zapd.popen.returncode == 0, zapd.output()[-3000:]
        last = _live(sim)[-1]
        assert last["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 6.0
        valid_to = datetime.fromisoformat(last["validTo"].replace("Z", "+00:00"))
        assert valid_to <= datetime.now(UTC) + timedelta(seconds=121)
        assert sim.state.limit_a(1, at=valid_to + timedelta(seconds=1)) == 6.0
        assert "Traceback" not in zapd.output()
        assert PASSWORD not in zapd.output()  # the basic auth password is never logged
    finally:
        if sim is not None:
            await sim.close()


async def test_a_killed_zapd_leaves_the_charger_at_its_safe_current_and_a_new_one_takes_over(slow_site: Site) -> None:
    site = slow_site
    site.start_sim(p1="tcp")
    port = free_port()
    plan = site.tmp / "plan.json"
    plan.write_bytes(_plan(site, 1, ev_w=6900.0))
    zapd = _start_zapd(site, port, plan)
    sim = await _connect(zapd, port)
    try:
        await sim.boot()
        await sim.status(1, "Preparing")
        await _until_live_limit(sim, 10.0)
        await asyncio.to_thread(zapd.kill9)  # no safe mode, no goodbye
        last = _live(sim)[-1]
        valid_to = datetime.fromisoformat(last["validTo"].replace("Z", "+00:00"))
        assert valid_to <= datetime.now(UTC) + timedelta(seconds=121)  # profile_validity_s = 120
        assert sim.state.limit_a(1) == 10.0  # until then the last current holds ...
        assert sim.state.limit_a(1, at=valid_to + timedelta(seconds=1)) == 6.0  # ... then the safe default
        await sim.close()

        # A new zapd: the charger reconnects without rebooting (no BootNotification) and gets its profiles again.
        state = sim.state
        state.received.clear()
        state.received_times.clear()
        zapd = _start_zapd(site, port, plan)
        sim = await _connect(zapd, port, state)
        await sim.heartbeat()
        await sim.status(1, "Preparing")
        await _until_live_limit(sim, 10.0)
        assert {p["csChargingProfiles"]["stackLevel"] for p in state.received_profiles()} == {0, 1}
    finally:
        await sim.close()
