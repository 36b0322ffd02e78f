"""The demo run (`python -m zapd_demo`, `zapd demo`): a whole simulated site on loopback, driven by the real daemon.

The simulated inverter/battery is a pymodbus server on 127.0.0.1, the meter writes DSMR v5
telegrams into a real pty, and `zapd run`'s Daemon drives them on a shared fast clock. The
plan comes from the optimizer (a local file, as a Zap without a cloud would have it). The
summary is computed from the simulator's ground truth, not from what the daemon believes.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from drivers.sim.modbus_server import start_modbus_sim
from drivers.sim.p1_pty import SimP1Pty
from drivers.sim.physics import BatteryModel, SimSite, load_power_w, pv_power_w, realistic
from zapd.clock import SIM_CLOCK_ENV, ScaledClock, clock_from_env, sim_clock_env
from zapd.config import validate_config
from zapd.config_load import to_structs
from zapd.daemon import Daemon
from zapd.model import EXPORT_WH, IMPORT_WH, DerKind, Intent, IntentMode, Plan, PlanSlot
from zapd.store import Store
from zapd_demo.local_cloud import LocalCloud, cloud_config

DEMO_START = datetime(2026, 6, 21, 0, 0, tzinfo=UTC)
DEMO_WALL_S = 40.0
CLOUD_STARTUP_S = 6.0
DEMO_SITE_ID = "demo"
PHYSICS_STEP_S = 10.0
SAMPLE_S = 300.0
SLOT_MIN = 15
EXPORT_PRICE = 0.07
RESERVE_SOC = 0.10

# An example dynamic tariff (EUR/kWh incl. taxes) by hour: cheap night and solar noon, dear evening.
_PRICE_BY_HOUR = [
    0.24,
    0.23,
    0.22,
    0.22,
    0.23,
    0.26,
    0.31,
    0.36,
    0.33,
    0.27,
    0.21,
    0.17,
    0.15,
    0.15,
    0.17,
    0.21,
    0.27,
    0.36,
    0.42,
    0.40,
    0.35,
    0.30,
    0.27,
    0.25,
]


def import_price(ts: datetime) -> float:
    return _PRICE_BY_HOUR[ts.hour]


@dataclass
class Trace:
    ts: list[datetime] = field(default_factory=list)
    soc: list[float] = field(default_factory=list)
    grid_w: list[float] = field(default_factory=list)
    pv_w: list[float] = field(default_factory=list)
    load_w: list[float] = field(default_factory=list)
    battery_w: list[float] = field(default_factory=list)
    plan_w: list[float] = field(default_factory=list)  # the plan's battery setpoint; nan = local rules
    # The simulator's energy counters after every physics step: what the site really exchanged up to then.
    truth: list[TruthPoint] = field(default_factory=list)

    def truth_at(self, ts: datetime) -> TruthPoint:
        """The counters as they stood at `ts`: those of the last physics step at or before it.

        Between steps the counters do not move, and a telegram built then prints exactly these.
        """
        i = bisect.bisect_right([p.ts for p in self.truth], ts) - 1
        return self.truth[max(i, 0)]


@dataclass(frozen=True, slots=True)
class TruthPoint:
    ts: datetime
    import_wh: float
    export_wh: float
    through_wh: float  # load + PV: the energy through the site, the scale the metering error is relative to


@dataclass(frozen=True, slots=True)
class Metered:
    """What zapd metered through the P1 meter: the registers' change between its first and last stored telegram."""

    first_ts: datetime
    last_ts: datetime
    import_wh: float
    export_wh: float


def build_plan(site: SimSite, start: datetime, hours: float) -> tuple[Plan | None, str]:
    """Optimize the simulated day with a perfect forecast; None if the optimizer is not installed."""
    try:
        from cloud.optimizer import solve
        from cloud.optimizer_io import Battery, Grid, Problem
    except ImportError:
        return None, "optimizer not installed (pip install zapd[cloud]): self-consumption rules only"
    steps = math.ceil(hours * 60 / SLOT_MIN)
    mids = [start + timedelta(minutes=SLOT_MIN * (i + 0.5)) for i in range(steps)]
    b = site.battery
    problem = Problem(
        start=start,
        step_minutes=SLOT_MIN,
        import_price=[import_price(t) for t in mids],
        export_price=[EXPORT_PRICE] * steps,
        load_kw=[load_power_w(t, site.load_scale) / 1000 for t in mids],
        pv_kw=[pv_power_w(t, site.pv_peak_w, site.cloudiness) / 1000 for t in mids],
        battery=Battery(
            capacity_kwh=b.capacity_wh / 1000,
            soc_initial=b.soc,
            soc_min=RESERVE_SOC + 0.02,
            soc_max=0.98,
            max_charge_kw=b.max_charge_w / 1000,
            max_discharge_kw=b.max_discharge_w / 1000,
            charge_efficiency=b.charge_efficiency,
            discharge_efficiency=b.discharge_efficiency,
            cycle_cost_per_kwh=0.02,
            soc_final_min=b.soc,  # end the horizon where it started: no free energy from the battery
        ),
        grid=Grid(max_import_kw=17.0, max_export_kw=10.0),
    )
    solution = solve(problem)
    if solution.status != "optimal":
        return None, f"optimizer: {solution.status} {solution.message or ''}"
    slots = tuple(
        PlanSlot(
            start=start + timedelta(minutes=SLOT_MIN * i),
            end=start + timedelta(minutes=SLOT_MIN * (i + 1)),
            intent=Intent(
                mode=IntentMode.SETPOINT,
                battery_w=round((solution.battery_charge_kw[i] - solution.battery_discharge_kw[i]) * 1000, 1),
            ),
        )
        for i in range(steps)
    )
    plan = Plan(
        site_id=DEMO_SITE_ID,
        version=1,
        issued_at=start,
        valid_until=start + timedelta(hours=hours),
        slots=slots,
    )
    return plan, f"optimizer: optimal in {solution.solve_ms:.1f} ms, planned cost {solution.cost:.2f} EUR"


def demo_config(out: Path, modbus_port: int, p1_port: str, plan_file: Path | None) -> dict[str, object]:
    config: dict[str, object] = {
        "site": {"id": DEMO_SITE_ID, "phases": 3, "fuse_a": 25.0, "max_export_w": 10_000.0},
        "control": {"tick_s": 60.0, "refresh_s": 120.0, "deadband_w": 50.0},
        "store": {"state_dir": str(out / "state")},
        "api": {"socket": str(out / "zapd.sock")},
        "log": {"level": "warning"},
        "metrics": {"enabled": False},  # no fixed port on a developer's machine
        "devices": [
            {
                "driver": "modbus_tcp",
                "id": "inverter",
                "host": "127.0.0.1",
                "port": modbus_port,
                "unit_id": 1,
                "map": "sim_hybrid",
                "poll_s": 60.0,
                "timeout_s": 2.0,
                # An hour of site time is ~2 s of wall time here: give the dead-man timer room.
                "command_timeout_s": 3600,
                "battery": {"reserve_soc": RESERVE_SOC},
            },
            # Telegrams come every 20 s of site time; stale after 3 x 60 s leaves room for the event
            # loop's hiccups at the demo's ~2000x speed-up (a real DSMR 5 meter sends every second).
            {"driver": "p1_serial", "id": "meter", "port": p1_port, "poll_s": 60.0, "role": "grid"},
        ],
    }
    if plan_file is not None:
        config["plan"] = {"file": str(plan_file)}
    return config


async def _physics(site: SimSite, clock: ScaledClock, trace: Trace, end: datetime, daemon: Daemon) -> None:
    next_sample = clock.now()
    while True:
        now = clock.now()
        site.step(min(now, end), import_price(now), EXPORT_PRICE)
        c = site.counters
        trace.truth.append(TruthPoint(min(now, end), c.import_wh, c.export_wh, c.load_wh + c.pv_wh))
        if now >= next_sample:
            plan = daemon.current_plan()
            slot = plan.slot_at(now) if plan is not None else None
            planned = slot.intent.battery_w if slot is not None and slot.intent.mode is IntentMode.SETPOINT else None
            trace.plan_w.append(math.nan if planned is None else planned)
            trace.ts.append(now)
            trace.soc.append(site.battery.soc)
            trace.grid_w.append(site.grid_w)
            trace.pv_w.append(site.pv_w)
            trace.load_w.append(site.load_w)
            trace.battery_w.append(site.battery.power_w)
            next_sample = now + timedelta(seconds=SAMPLE_S)
        await clock.sleep(PHYSICS_STEP_S)


def prepare_out_dir(out: Path) -> Path:
    """A fresh state database for each run, so the summary speaks of this run only."""
    out.mkdir(parents=True, exist_ok=True)
    state_db = out / "state" / "zapd.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state_db}{suffix}").unlink(missing_ok=True)
    return state_db


def new_site() -> SimSite:
    """The demo's site, with a hybrid inverter's dead time and ramp and a DSMR 5 meter's lag (sim/physics.py)."""
    return realistic(
        SimSite(
            battery=BatteryModel(capacity_wh=10_000, soc=0.5, max_charge_w=5_000, max_discharge_w=5_000),
            pv_peak_w=4_500.0,
            load_scale=1.6,
        )
    )


def write_plan(site: SimSite, out: Path, hours: float) -> tuple[Path | None, str]:
    plan, plan_note = build_plan(site, DEMO_START, hours)
    if plan is None:
        return None, plan_note
    plan_file = out / "plan.json"
    plan_file.write_bytes(msgspec.json.encode(plan))
    return plan_file, plan_note


async def run_site(
    site: SimSite,
    hours: float,
    clock: ScaledClock,
    out: Path,
    plan_file: Path | None,
    plan_note: str,
    cloud: LocalCloud | None = None,
) -> dict[str, object]:
    state_db = out / "state" / "zapd.sqlite"
    modbus = await start_modbus_sim(site)
    meter = SimP1Pty(site)
    config_dict = demo_config(out, modbus.port, meter.port, plan_file)
    if cloud is not None:
        config_dict["cloud"] = cloud_config(cloud)
    await asyncio.to_thread((out / "zapd.toml").write_text, _to_toml(config_dict))
    config = validate_config(config_dict, str(out / "zapd.toml"))
    # The clock may already have started while the cloud came up: the day starts when we do.
    start = max(DEMO_START, clock.now())
    site.step(start)
    trace = Trace()
    end = start + timedelta(hours=hours)
    daemon = Daemon(to_structs(config), clock)
    wall0 = time.monotonic()
    tasks = [
        asyncio.create_task(_physics(site, clock, trace, end, daemon)),
        asyncio.create_task(meter.run(clock, interval_s=20.0)),
    ]
    daemon_task = asyncio.create_task(daemon.run())
    day = asyncio.create_task(clock.sleep((end - clock.now()).total_seconds()))
    try:
        # Ctrl-C or SIGTERM stops the daemon (its own handlers); the demo then ends early too.
        await asyncio.wait({day, daemon_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        day.cancel()
        daemon.stop()
        try:
            async with asyncio.timeout(30):
                await daemon_task
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await modbus.stop()
            meter.close()
    end = min(end, clock.now())
    site.step(end, import_price(end), EXPORT_PRICE)
    wall = time.monotonic() - wall0
    ran_h = (end - start).total_seconds() / 3600
    if cloud is not None:
        held = await asyncio.to_thread(cloud.stats)
        plan_note = (
            f"zapcloud planner: {held['plans']} signed plans (last v{held['last_version']}); "
            f"{held['readings']} readings uploaded"
        )
    return await _summarize(site, trace, daemon, state_db, plan_note, ran_h, wall, out, cloud)


# Below this much PV in the window (a night, a short run) a share of it means nothing.
MIN_PV_WH_FOR_SHARE = 100.0


def self_consumption(pv_wh: float, export_wh: float) -> float | None:
    """Share of the PV used on site, 0..1; None when the window had (almost) no PV.

    Export may be battery energy too (a discharge into the grid at night), so at most
    min(export, PV) of it was PV: the share is never below 0, and never a ratio of two near-zero
    numbers (`--hours 6` from midnight printed "-2856363.8 %").
    """
    if pv_wh < MIN_PV_WH_FOR_SHARE:
        return None
    return (pv_wh - min(max(export_wh, 0.0), pv_wh)) / pv_wh


async def _summarize(
    site: SimSite,
    trace: Trace,
    daemon: Daemon,
    db: Path,
    plan_note: str,
    hours: float,
    wall: float,
    out: Path,
    cloud: LocalCloud | None,
) -> dict[str, object]:
    c = site.counters
    store = await Store.open(db)
    try:
        events = await store.events("fallback", limit=10_000)
        commands = await store.recent_commands(limit=100_000)
        stored = await store.last_seq()
        metered = await _metered_energy(store, cloud)
    finally:
        await store.close()
    balance_in = c.pv_wh + c.import_wh + c.discharge_wh
    balance_out = c.load_wh + c.charge_wh + c.export_wh
    summary: dict[str, object] = {
        "hours": hours,
        "wall_s": round(wall, 1),
        "plan": plan_note,
        "import_kwh": c.import_wh / 1000,
        "export_kwh": c.export_wh / 1000,
        "pv_kwh": c.pv_wh / 1000,
        "load_kwh": c.load_wh / 1000,
        "charge_kwh": c.charge_wh / 1000,
        "discharge_kwh": c.discharge_wh / 1000,
        "self_consumption": self_consumption(c.pv_wh, c.export_wh),
        "baseline_self_consumption": self_consumption(c.pv_wh, c.baseline_export_wh),
        "battery_cycles": c.discharge_wh / site.battery.capacity_wh,
        "cost_eur": c.cost,
        "baseline_cost_eur": c.baseline_cost,
        "baseline_import_kwh": c.baseline_import_wh / 1000,
        "baseline_export_kwh": c.baseline_export_wh / 1000,
        "balance_error": abs(balance_in - balance_out) / max(balance_in, 1e-9),
        "final_soc": site.battery.soc,
        # the samples are every SAMPLE_S; the final SoC is a sample too (it may be the lowest)
        "min_soc": min([*trace.soc, site.battery.soc]),
        "fallback_transitions": [e.detail for e in reversed(events)],
        "commands": len(commands),
        "readings_stored": stored,
        # What the daemon measured through the P1 meter, against the simulator's ground truth.
        **_metering(metered, trace),
    }
    _plot(trace, out / "demo.png")
    summary["plot"] = str(out / "demo.png")
    return summary


async def _metered_energy(store: Store, cloud: LocalCloud | None) -> Metered | None:
    """Import and export Wh between the first and last meter telegram zapd stored (None: it stored none).

    Readings already uploaded live in the cloud's database, the rest still in the outbox.
    """
    meter: list[tuple[int, datetime, dict[str, float]]] = []
    if cloud is not None:
        meter = await asyncio.to_thread(cloud.meter_counters)
    after = meter[-1][0] if meter else 0
    while rows := await store.outbox_after(after, 5000):
        for row in rows:
            r = row.reading()
            if r.kind is DerKind.METER:
                meter.append((row.seq, r.ts, r.values))
        after = rows[-1].seq
    meter = [m for m in meter if IMPORT_WH in m[2]]
    if not meter:
        return None
    (_, t0, first), (_, t1, last) = meter[0], meter[-1]
    return Metered(t0, t1, last[IMPORT_WH] - first[IMPORT_WH], last.get(EXPORT_WH, 0.0) - first.get(EXPORT_WH, 0.0))


def _metering(metered: Metered | None, trace: Trace) -> dict[str, float]:
    """zapd's metered energy against the simulator's truth *over the span zapd metered*.

    The meter's first telegram reaches zapd only once its serial driver is up, minutes of site
    time into a fast demo, and its last one up to a telegram interval before the end; the whole
    run's truth would count that unmetered energy as a metering error (on a night start, the
    import before control began is most of the import).
    """
    if metered is None or not trace.truth:
        return {"metered_import_kwh": 0.0, "metered_export_kwh": 0.0, "metered_hours": 0.0, "metering_error": 1.0}
    t0, t1 = trace.truth_at(metered.first_ts), trace.truth_at(metered.last_ts)
    truth_import, truth_export = t1.import_wh - t0.import_wh, t1.export_wh - t0.export_wh
    error_wh = abs(metered.import_wh - truth_import) + abs(metered.export_wh - truth_export)
    return {
        "metered_import_kwh": metered.import_wh / 1000,
        "metered_export_kwh": metered.export_wh / 1000,
        "metered_hours": (metered.last_ts - metered.first_ts).total_seconds() / 3600,
        # Relative to the energy through the site: the meter counts whole Wh, so a tiny import alone
        # would make rounding look like an error.
        "metering_error": error_wh / max(t1.through_wh - t0.through_wh, 1.0),
    }


# One colour per line, named in the legend; tests/unit/test_demo_summary.py finds each in the PNG.
COLOURS = {
    "grid": "#1f77b4",
    "pv": "#ff9900",
    "load": "#2ca02c",
    "battery": "#9467bd",
    "plan": "#17becf",
    "soc": "#8c564b",
    "reserve": "#d62728",
}
# Site lines drawn widest first: where two coincide (no PV at night: grid = load) the one beneath
# still shows as a band around the one above, so no legend entry is ever hidden.
SITE_WIDTHS = {"grid": 7.0, "pv": 4.0, "load": 1.6}


def _kw(series: list[float]) -> list[float]:
    return [w / 1000 for w in series]


def _plot(trace: Trace, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for key, label, series in (
        ("grid", "grid kW (+ import)", trace.grid_w),
        ("pv", "PV kW", trace.pv_w),
        ("load", "load kW", trace.load_w),
    ):
        ax1.plot(trace.ts, _kw(series), color=COLOURS[key], linewidth=SITE_WIDTHS[key], label=label)
    ax1.set_ylabel("site kW")
    ax2.plot(trace.ts, _kw(trace.battery_w), color=COLOURS["battery"], linewidth=4.0, label="battery kW (+ charge)")
    planned = [w for w in trace.plan_w if math.isfinite(w)]
    if planned:
        ax2.step(trace.ts, _kw(trace.plan_w), where="post", color=COLOURS["plan"], linewidth=1.6,
                 label="plan: battery setpoint kW (gaps: local rules)")  # fmt: skip
    else:
        ax2.text(0.01, 0.05, "the plan set no battery setpoints: local rules", transform=ax2.transAxes, fontsize=8)
    ax2.set_ylabel("battery kW")
    ax3.plot(trace.ts, [s * 100 for s in trace.soc], color=COLOURS["soc"], linewidth=2.5, label="battery SoC %")
    ax3.axhline(RESERVE_SOC * 100, color=COLOURS["reserve"], linestyle="--", linewidth=2.0, label="reserve SoC %")
    ax3.set_ylabel("SoC %")
    ax3.set_ylim(0, 100)
    for ax in (ax1, ax2, ax3):
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("zapd demo: simulated site")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _to_toml(data: dict[str, object]) -> str:
    """Enough TOML for the demo's own config (tables, arrays of tables, scalars)."""

    def scalar(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines: list[str] = []

    def table(prefix: str, tbl: dict[str, object], array: bool = False) -> None:
        lines.append(f"[[{prefix}]]" if array else f"[{prefix}]")
        subtables = []
        for k, v in tbl.items():
            if isinstance(v, dict):
                subtables.append((k, v))
            else:
                lines.append(f"{k} = {scalar(v)}")
        for k, v in subtables:
            table(f"{prefix}.{k}", v)
        lines.append("")

    for key, value in data.items():
        if isinstance(value, dict):
            table(key, value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    table(key, item, array=True)
    return "\n".join(lines)


def format_summary(s: dict[str, object]) -> str:
    def f(key: str, fmt: str = "{:.2f}") -> str:
        v = s[key]
        if v is None:
            return "n/a (no PV in this window)" if key == "self_consumption" else "n/a"
        return fmt.format(v) if isinstance(v, float | int) else str(v)

    rows = [
        ("simulated hours", f("hours", "{:.1f}"), f"{s['wall_s']} s wall"),
        ("plan", str(s["plan"]), ""),
        ("PV produced", f("pv_kwh") + " kWh", ""),
        ("load consumed", f("load_kwh") + " kWh", ""),
        ("grid import", f("import_kwh") + " kWh", f"without battery {f('baseline_import_kwh')} kWh"),
        ("grid export", f("export_kwh") + " kWh", f"without battery {f('baseline_export_kwh')} kWh"),
        (
            "self-consumption",
            f("self_consumption", "{:.1%}"),
            f"without battery {f('baseline_self_consumption', '{:.1%}')}",
        ),
        (
            "battery charged/discharged",
            f"{f('charge_kwh')} / {f('discharge_kwh')} kWh",
            f"{f('battery_cycles')} cycles",
        ),
        (
            "battery SoC final / min",
            f"{f('final_soc', '{:.1%}')} / {f('min_soc', '{:.1%}')}",
            f"reserve {RESERVE_SOC:.0%}",
        ),
        ("energy cost", f("cost_eur") + " EUR", f"without battery {f('baseline_cost_eur')} EUR"),
        ("savings", f"{float(s['baseline_cost_eur']) - float(s['cost_eur']):.2f} EUR", ""),  # type: ignore[arg-type]
        ("energy balance error", f("balance_error", "{:.3%}"), "pv+import+discharge vs load+charge+export"),
        (
            "metered by zapd (P1)",
            f"{f('metered_import_kwh')} / {f('metered_export_kwh')} kWh",
            f"import/export over the {f('metered_hours', '{:.1f}')} h zapd metered; "
            f"error vs. truth {f('metering_error', '{:.2%}')} of site energy",
        ),
        ("commands written", f("commands", "{}"), f"readings stored {s['readings_stored']}"),
        ("fallback transitions", str(len(s["fallback_transitions"])), "; ".join(s["fallback_transitions"])[:90]),  # type: ignore[arg-type]
        ("plot", str(s["plot"]), ""),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows)


def run_demo(*, hours: float, speed: float, out_dir: Path, quiet: bool = False, use_cloud: bool = True) -> int:
    from zapd.logs import configure

    configure("error" if quiet else "warning")
    prepare_out_dir(out_dir)
    site = new_site()
    speed = speed if speed > 0 else hours * 3600 / DEMO_WALL_S
    cloud: LocalCloud | None = None
    plan_file: Path | None = None
    plan_note = ""
    # The shared clock starts a few seconds from now, so the cloud process is up when the day begins.
    clock_env = sim_clock_env(DEMO_START, speed, wall_ref=time.time() + CLOUD_STARTUP_S)
    clock = clock_from_env({SIM_CLOCK_ENV: clock_env})
    assert isinstance(clock, ScaledClock)
    if use_cloud and cloud_available():
        cloud = LocalCloud(out_dir, clock_env, DEMO_SITE_ID)
        try:
            cloud.start()
            cloud.register(out_dir / "state", site)
            day0 = DEMO_START - timedelta(days=1)
            cloud.publish_prices(day0, [import_price(day0 + timedelta(hours=h)) for h in range(24)], days=4)
        except Exception:
            cloud.stop()
            raise
    else:
        plan_file, plan_note = write_plan(site, out_dir, hours)
    try:
        summary = asyncio.run(_wait_then_run(site, hours, clock, out_dir, plan_file, plan_note, cloud))
    finally:
        if cloud is not None:
            cloud.stop()
    print(format_summary(summary))
    return 0


async def _wait_then_run(
    site: SimSite,
    hours: float,
    clock: ScaledClock,
    out: Path,
    plan_file: Path | None,
    plan_note: str,
    cloud: LocalCloud | None,
) -> dict[str, object]:
    wait_s = (DEMO_START - clock.now()).total_seconds() / clock.speed
    await asyncio.sleep(max(0.0, wait_s))
    return await run_site(site, hours, clock, out, plan_file, plan_note, cloud)


def cloud_available() -> bool:
    """The local cloud needs the [cloud] extra (solver, web stack)."""
    try:
        import uvicorn  # noqa: F401

        import cloud.planner  # noqa: F401
    except ImportError:
        return False
    return True
