"""Closed-loop figures: how far export and import go over their limits, how fast the setpoint settles.

The real controller and envelope on the simulator's physics (drivers/sim/closedloop.py), in
simulated time, on issue 10's site for 25 minutes: PV surplus, max_export_w = 3000, a 3.5 kW fuse,
a discharge plan that changes every 4 minutes, load and PV steps; a hybrid inverter (1.5 s dead
time, 3 kW/s) and a DSMR meter. For each timing: the worst overshoot of each limit at any time
(the steps themselves push the site over before any controller can act) and after the grace
window (what the controller is answerable for: limit + 5 %, docs/decisions.md "Closed loop"),
the longest settling time and the setpoint reversals (after settling: a limit cycle shows there).

    python -m bench.closedloop
"""

from __future__ import annotations

from dataclasses import replace

from bench.table import Row, row
from drivers.sim.closedloop import LoopConfig, figures, grace_s, issue_10_case, loop_delay_s, run_loop, tolerance_w
from drivers.sim.physics import ActuatorDynamics

COMMAND = "python -m bench.closedloop"

CASES: list[tuple[str, LoopConfig]] = [
    ("tick=poll=5 s, P1 1 s (issue 10)", issue_10_case(5.0, 5.0, 1.0)),
    ("example config: tick 10 s, poll 5 s, P1 1 s", issue_10_case(10.0, 5.0, 1.0)),
    ("tick=poll=5 s, DSMR 4 meter (10 s average)", issue_10_case(5.0, 5.0, 10.0)),
    (
        "tick=poll=5 s, P1 1 s, slow inverter (3 s, 1 kW/s)",
        replace(
            issue_10_case(5.0, 5.0, 1.0),
            actuator=ActuatorDynamics(
                delay_s=3.0, ramp_w_per_s=1000.0, setpoint_step_w=100.0, reading_step_w=10.0, noise_w=10.0
            ),
        ),
    ),
]


def case_rows(label: str, cfg: LoopConfig) -> list[Row]:
    trace = run_loop(cfg)
    grace = grace_s(cfg)
    f = figures(cfg, trace, grace)
    export_limit = cfg.max_export_w or 0.0
    settle_bound = 3 * loop_delay_s(cfg)

    def pct(w: float, limit: float) -> str:
        return f"{w:.0f} W ({100 * w / limit:.1f} %)" if limit > 0 else f"{w:.0f} W"

    return [
        row(
            f"closed loop, {label}: export over {export_limit:.0f} W limit, after {grace:.0f} s grace",
            pct(f.late_export_over_w, export_limit),
            f"<= {tolerance_w(export_limit):.0f} W",
            COMMAND,
        ),
        row(
            f"closed loop, {label}: import over {cfg.fuse_limit_w:.0f} W fuse limit, after grace",
            pct(f.late_import_over_w, cfg.fuse_limit_w),
            f"<= {tolerance_w(cfg.fuse_limit_w):.0f} W",
            COMMAND,
        ),
        row(
            f"closed loop, {label}: worst export / import over, in a step's transient (start: battery idle)",
            f"{pct(f.worst_export_over_w, export_limit)} / {pct(f.worst_import_over_w, cfg.fuse_limit_w)}",
            "-",
            COMMAND,
        ),
        row(
            f"closed loop, {label}: settling time (within 100 W of final)",
            f"{f.settling_s:.1f} s",
            f"<= {settle_bound:.0f} s",
            COMMAND,
        ),
        row(
            f"closed loop, {label}: recovery, step to within limit + tolerance for good",
            f"{f.recovery_s:.1f} s",
            f"<= {grace:.0f} s",
            COMMAND,
        ),
        row(
            f"closed loop, {label}: setpoint reversals after settling (all, {len(cfg.steps)} steps)",
            f"{f.late_reversals} ({f.reversals} in all, {f.writes} writes)",
            "<= 0",
            COMMAND,
        ),
    ]


def rows() -> list[Row]:
    out: list[Row] = []
    for label, cfg in CASES:
        out += case_rows(label, cfg)
    return out


def main() -> None:
    from bench.table import print_table

    print_table(rows())


if __name__ == "__main__":
    main()
