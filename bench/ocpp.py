"""OCPP figures against a real `zapd run`: meter step → SetChargingProfile latency, and chargers per zapd.

Latency: the bench is the site (DSMR telegrams on a pty) and a charger (drivers/sim/ocpp_cp.py, the
`ocpp` library's charge point over a loopback WebSocket). The house load alternates, so the fuse
headroom the EV envelope leaves the car changes with every telegram. t0 = the telegram is written;
t1 = the charger's handler has the SetChargingProfile with the new limit. In between: pty read,
DSMR parse, controller wake-up, ladder, envelope, the driver, JSON + schema validation on both sides.

Capacity: N chargers (each one connector, charging) send MeterValues every 10 s and a Heartbeat
every minute to one zapd; the controller refreshes their profiles every 60 s. The figure is zapd's
CPU (utime + stime from /proc) over the window, as a share of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.latency import percentile, quick
from bench.table import row
from drivers.sim.ocpp_cp import SimCharger
from drivers.sim.p1_pty import SimP1Pty
from drivers.sim.physics import SimSite
from tests.e2e.harness import BIN, Proc, proc_sample
from tests.ports import free_port
from zapd.logs import configure

COMMAND = "python -m bench.ocpp"
P99_TARGET_MS = 200.0
CHARGERS_TARGET = 50
CPU_TARGET_PCT = 5.0
STEP_EVERY_S = 0.5
FUSE_W = 25 * 230 * 3 * 0.95
HOUSE_W = (9000.0, 11_000.0)  # the car gets (FUSE_W - house) / 690 W per A: 10.5 A and 7.6 A


def _config(tmp: Path, port: int, pty: str | None, chargers: int) -> Path:
    meter = f'[[devices]]\ndriver = "p1_serial"\nid = "meter"\nport = "{pty}"\npoll_s = 1\n' if pty else ""
    cps = "".join(f'[[devices.charge_points]]\nid = "cp{i}"\nmax_current_a = 16\n' for i in range(chargers))
    path = tmp / "zapd.toml"
    path.write_text(f"""
[site]
id = "bench-ocpp"
fuse_a = 25
[control]
tick_s = 10
refresh_s = 60
deadband_w = 50
[store]
state_dir = "{tmp / "state"}"
[api]
socket = "{tmp / "zapd.sock"}"
[metrics]
enabled = false
[log]
level = "warning"
{meter}
[[devices]]
driver = "ocpp"
id = "ocpp"
host = "127.0.0.1"
port = {port}
meter_interval_s = 10
{cps}""")
    return path


def _start(tmp: Path, port: int, pty: str | None, chargers: int) -> Proc:
    cmd = [str(BIN / "zapd"), "run", "--config", str(_config(tmp, port, pty, chargers))]
    env = {k: v for k, v in os.environ.items() if k != "ZAPD_SIM_CLOCK"}
    return Proc("zapd", cmd, tmp / "zapd.log", {**env, "NOTIFY_SOCKET": ""}).start()


async def _connect(zapd: Proc, port: int, cp_id: str) -> SimCharger:
    deadline = time.monotonic() + 60
    while True:
        try:
            return await SimCharger(f"ws://127.0.0.1:{port}/ocpp", cp_id).connect()
        except OSError:
            if time.monotonic() > deadline or not zapd.alive():
                raise RuntimeError(f"zapd does not listen: {zapd.output()[-2000:]}") from None
            await asyncio.sleep(0.2)


def _limits(sim: SimCharger) -> list[tuple[float, float]]:
    """(perf_counter when the charger got it, limit) of every live SetChargingProfile."""
    out = []
    for t, (action, payload) in zip(sim.state.received_times, sim.state.received, strict=True):
        if action == "SetChargingProfile" and payload["csChargingProfiles"]["stackLevel"] == 1:
            out.append(
                (t, float(payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"]))
            )
    return out


async def _latency(samples: int) -> tuple[list[float], int]:
    site = SimSite(pv_peak_w=0.0)
    site.step(datetime.now(UTC))
    meter = SimP1Pty(site)
    latencies: list[float] = []
    missed = 0
    with tempfile.TemporaryDirectory(prefix="zapd-ocpp-") as tmp_name:
        port = free_port()
        zapd = _start(Path(tmp_name), port, meter.port, 1)
        sim: SimCharger | None = None
        try:
            sim = await _connect(zapd, port, "cp0")
            await sim.boot()
            await sim.status(1, "Charging")
            expected = [round((FUSE_W - h) / 690 - 0.05, 1) for h in HOUSE_W]
            deadline = time.monotonic() + 60
            i = 0
            while time.monotonic() < deadline:  # warm-up: until zapd follows the steps
                i += 1
                site.grid_w = HOUSE_W[i % 2]
                await meter.send_once(datetime.now(UTC))
                await asyncio.sleep(STEP_EVERY_S)
                if any(abs(v - expected[i % 2]) < 0.15 for _, v in _limits(sim)[-2:]):
                    break
            else:
                raise RuntimeError(f"zapd never followed the meter: {zapd.output()[-2000:]}")
            for _ in range(samples):
                i += 1
                site.grid_w = HOUSE_W[i % 2]
                seen = len(sim.state.received_times)
                await meter.send_once(datetime.now(UTC))
                t0 = time.perf_counter()
                await asyncio.sleep(STEP_EVERY_S)
                fresh = [(t, v) for t, v in _limits(sim) if t >= t0 and abs(v - expected[i % 2]) < 0.15]
                if fresh and len(sim.state.received_times) > seen:
                    latencies.append((fresh[0][0] - t0) * 1000)
                else:
                    missed += 1
            if not zapd.alive():
                raise RuntimeError(f"zapd exited: {zapd.output()[-2000:]}")
        finally:
            if sim is not None:
                await sim.close()
            await asyncio.to_thread(zapd.stop)
            meter.close()
    return latencies, missed


async def _charger_life(sim: SimCharger, stop: float) -> int:
    """One charging car: MeterValues every 10 s, a Heartbeat a minute; returns the calls answered."""
    await sim.boot()
    await sim.status(1, "Charging")
    tx = (await sim.start_transaction(1, "BENCH", 0)).transaction_id
    answered, energy = 0, 0.0
    await asyncio.sleep(random.uniform(0, 10))  # chargers are not in step
    n = 0
    while time.monotonic() < stop:
        energy += 11_000 * 10 / 3600
        ok = await sim.meter_values(
            1, power_w=11_000, energy_wh=energy, currents_a=(16.0, 16.0, 16.0), soc_pct=50, transaction_id=tx
        )
        answered += ok is not None
        n += 1
        if n % 6 == 0:
            answered += (await sim.heartbeat()) is not None
        await asyncio.sleep(10)
    return answered


async def _capacity(chargers: int, window_s: float) -> tuple[float, int, int, float]:
    with tempfile.TemporaryDirectory(prefix="zapd-ocpp-cap-") as tmp_name:
        port = free_port()
        zapd = _start(Path(tmp_name), port, None, chargers)
        sims: list[SimCharger] = []
        try:
            sims = [await _connect(zapd, port, f"cp{i}") for i in range(chargers)]
            await asyncio.sleep(5)  # every setup done
            assert zapd.popen is not None
            before = proc_sample(zapd.popen.pid)
            stop = time.monotonic() + window_s
            answered = await asyncio.gather(*(_charger_life(s, stop) for s in sims))
            after = proc_sample(zapd.popen.pid)
            cpu_pct = 100 * (after.cpu_s - before.cpu_s) / (after.at - before.at)
            connected = sum(1 for s in sims if s.ws is not None and s.ws.close_code is None)
            if not zapd.alive():
                raise RuntimeError(f"zapd exited: {zapd.output()[-2000:]}")
            return cpu_pct, connected, sum(answered), after.rss_kb / 1024
        finally:
            for s in sims:
                await s.close()
            await asyncio.to_thread(zapd.stop)


def rows() -> list[dict[str, str]]:
    configure("warning")
    samples = 40 if quick() else 200
    window_s = 60.0 if quick() else 180.0
    latencies, missed = asyncio.run(_latency(samples))
    if not latencies:
        raise RuntimeError("no meter step was followed by a SetChargingProfile")
    cpu_pct, connected, answered, rss_mb = asyncio.run(_capacity(CHARGERS_TARGET, window_s))
    label = f"meter step → SetChargingProfile at the charger (n={len(latencies)}, missed {missed})"
    cap = f"{CHARGERS_TARGET} OCPP chargers, MeterValues every 10 s, {window_s:g} s"
    return [
        row(f"ocpp latency p50: {label}", f"{statistics.median(latencies):.1f} ms", "-", COMMAND),
        row(f"ocpp latency p99: {label}", f"{percentile(latencies, 99):.1f} ms", f"<= {P99_TARGET_MS:g} ms", COMMAND),
        row(f"ocpp: chargers connected at the end ({cap})", str(connected), f">= {CHARGERS_TARGET}", COMMAND),
        row(
            f"ocpp: zapd CPU, share of one core ({cap}; {answered} calls answered)",
            f"{cpu_pct:.2f} %",
            f"<= {CPU_TARGET_PCT:g} %",
            COMMAND,
        ),
        row(f"ocpp: zapd resident memory ({cap})", f"{rss_mb:.0f} MB", "-", COMMAND),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--quick", action="store_true", help="40 steps and a 60 s window instead of 200 and 180 s")
    if parser.parse_args().quick:
        os.environ["ZAPD_BENCH_QUICK"] = "1"
    from bench.table import print_table

    print_table(rows())
    return 0


if __name__ == "__main__":
    sys.exit(main())
