"""`python -m drivers.sim`: the simulated site as its own process, for end-to-end tests.

Serves the inverter/battery over Modbus-TCP on 127.0.0.1 and the meter as DSMR telegrams
on a pty (or TCP), steps the physics on the shared clock (ZAPD_SIM_CLOCK), and prints one
JSON line with the endpoints so the test can write the daemon's config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

from drivers.sim.control import ModbusSwitch, SimControl
from drivers.sim.modbus_server import SimModbusServer, start_modbus_sim
from drivers.sim.p1_pty import SimP1Pty, SimP1Tcp
from drivers.sim.physics import BatteryModel, SimSite
from zapd.clock import Clock, clock_from_env


async def _physics(site: SimSite, clock: Clock, step_s: float) -> None:
    while True:
        site.step(clock.now())
        await clock.sleep(step_s)


async def main_async(args: argparse.Namespace) -> int:
    clock = clock_from_env()
    site = SimSite(
        battery=BatteryModel(capacity_wh=args.capacity_wh, soc=args.soc, max_charge_w=5000, max_discharge_w=5000),
        pv_peak_w=args.pv_peak_w,
    )
    site.step(clock.now())
    # Further inverters (unit ids 2..N+1) on the same endpoint: benches and soaks with many devices.
    extra = {
        uid: SimSite(
            battery=BatteryModel(capacity_wh=args.capacity_wh, soc=args.soc, max_charge_w=5000, max_discharge_w=5000),
            pv_peak_w=args.pv_peak_w,
        )
        for uid in range(2, 2 + args.extra_units)
    }
    for other in extra.values():
        other.step(clock.now())

    async def serve_modbus(port: int) -> SimModbusServer:
        return await start_modbus_sim(site, port=port, extra_units=extra)

    modbus = await serve_modbus(args.modbus_port)
    meter: SimP1Pty | SimP1Tcp
    if args.p1 == "tcp":
        meter = SimP1Tcp(site)
        p1_endpoint: object = await meter.start()
    else:
        meter = SimP1Pty(site)
        p1_endpoint = meter.port
    print(json.dumps({"modbus_port": modbus.port, "p1": args.p1, "p1_endpoint": p1_endpoint}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.create_task(_physics(site, clock, args.step_s)),
        asyncio.create_task(meter.run(clock, interval_s=args.p1_interval_s)),
        *(asyncio.create_task(_physics(other, clock, args.step_s)) for other in extra.values()),
    ]
    switch = ModbusSwitch(serve_modbus, modbus)
    control = SimControl(Path(args.control), meter, switch) if args.control else None
    if control is not None:
        await control.start()
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if control is not None:
        await control.stop()
    await switch.down()
    if isinstance(meter, SimP1Tcp):
        await meter.stop()
    else:
        meter.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m drivers.sim", description="simulated site on loopback")
    parser.add_argument("--modbus-port", type=int, default=0)
    parser.add_argument("--p1", choices=["pty", "tcp"], default="pty")
    parser.add_argument("--p1-interval-s", type=float, default=10.0, help="telegram interval (clock seconds)")
    parser.add_argument("--step-s", type=float, default=5.0, help="physics step (clock seconds)")
    parser.add_argument("--capacity-wh", type=float, default=10_000.0)
    parser.add_argument("--soc", type=float, default=0.5)
    parser.add_argument("--pv-peak-w", type=float, default=4_500.0)
    parser.add_argument("--extra-units", type=int, default=0, help="further inverters at unit ids 2..N+1")
    parser.add_argument("--control", default="", help="unix socket for fault injection (drivers/sim/control.py)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
