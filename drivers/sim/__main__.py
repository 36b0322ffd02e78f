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
from drivers.sim.physics import (
    DSMR5_METER,
    HYBRID_INVERTER,
    IDEAL_ACTUATOR,
    IDEAL_METER,
    ActuatorDynamics,
    BatteryModel,
    MeterDynamics,
    SimSite,
)
from zapd.clock import Clock, clock_from_env


async def _physics(site: SimSite, clock: Clock, step_s: float) -> None:
    while True:
        site.step(clock.now())
        await clock.sleep(step_s)


def dynamics_from_args(args: argparse.Namespace) -> tuple[ActuatorDynamics, MeterDynamics]:
    """The battery's and the meter's hardware behaviour: a preset, then any option given on top."""
    actuator, meter = (IDEAL_ACTUATOR, IDEAL_METER) if args.ideal else (HYBRID_INVERTER, DSMR5_METER)
    a = {
        "delay_s": args.battery_delay_s,
        "ramp_w_per_s": args.battery_ramp_w_per_s,
        "setpoint_step_w": args.setpoint_step_w,
        "reading_step_w": args.reading_step_w,
        "noise_w": args.battery_noise_w,
    }
    m = {
        "window_s": args.meter_window_s,
        "delay_s": args.meter_delay_s,
        "step_w": args.meter_step_w,
        "noise_w": args.meter_noise_w,
    }
    actuator = ActuatorDynamics(**{**_fields(actuator), **{k: v for k, v in a.items() if v is not None}})
    meter = MeterDynamics(**{**_fields(meter), **{k: v for k, v in m.items() if v is not None}})
    return actuator, meter


def _fields(obj: ActuatorDynamics | MeterDynamics) -> dict[str, float]:
    return {name: float(getattr(obj, name)) for name in obj.__slots__}


def _site(args: argparse.Namespace, seed: int) -> SimSite:
    actuator, meter = dynamics_from_args(args)
    return SimSite(
        battery=BatteryModel(
            capacity_wh=args.capacity_wh,
            soc=args.soc,
            max_charge_w=5000,
            max_discharge_w=5000,
            dynamics=actuator,
            seed=seed,
        ),
        pv_peak_w=args.pv_peak_w,
        meter=meter,
        seed=seed,
    )


async def main_async(args: argparse.Namespace) -> int:
    clock = clock_from_env()
    site = _site(args, args.seed)
    site.step(clock.now())
    # Further inverters (unit ids 2..N+1) on the same endpoint: benches and soaks with many devices.
    extra = {uid: _site(args, args.seed + uid) for uid in range(2, 2 + args.extra_units)}
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
    parser.add_argument(
        "--step-s", type=float, default=0.5, help="physics step (clock seconds); the delays below resolve to it"
    )
    parser.add_argument("--capacity-wh", type=float, default=10_000.0)
    parser.add_argument("--soc", type=float, default=0.5)
    parser.add_argument("--pv-peak-w", type=float, default=4_500.0)
    parser.add_argument("--extra-units", type=int, default=0, help="further inverters at unit ids 2..N+1")
    parser.add_argument("--control", default="", help="unix socket for fault injection (drivers/sim/control.py)")
    hw = parser.add_argument_group(
        "hardware behaviour",
        "Defaults: a hybrid inverter (1.5 s dead time, 3 kW/s ramp, 10 W steps, 10 W noise) and a DSMR 5 meter "
        "(average of the last 1 s, 0.5 s late, 1 W steps, 5 W noise). --ideal: instant and exact; the options "
        "below override either preset.",
    )
    hw.add_argument("--ideal", action="store_true", help="an instant, exact battery and meter")
    hw.add_argument("--battery-delay-s", type=float, help="dead time before a written setpoint acts")
    hw.add_argument("--battery-ramp-w-per-s", type=float, help="how fast the battery power moves (W/s)")
    hw.add_argument("--setpoint-step-w", type=float, help="resolution the inverter keeps a setpoint in")
    hw.add_argument("--reading-step-w", type=float, help="resolution of the reported battery power")
    hw.add_argument("--battery-noise-w", type=float, help="standard deviation of the battery power reading")
    hw.add_argument("--meter-window-s", type=float, help="the meter reports the average over this window")
    hw.add_argument("--meter-delay-s", type=float, help="... that ended this long before the telegram")
    hw.add_argument("--meter-step-w", type=float, help="resolution of the meter's power")
    hw.add_argument("--meter-noise-w", type=float, help="standard deviation of the meter's noise")
    hw.add_argument("--seed", type=int, default=1, help="noise seed (the same run twice gives the same noise)")
    args = parser.parse_args()
    try:
        dynamics_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
