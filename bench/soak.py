"""Soak: many simulated hours with 10 devices polled every (simulated) second; does zapd's memory stay flat?

A gateway runs for months; a leak of a few kB per poll is invisible in a minute and fatal in a
quarter. The whole site (zapcloud, the simulator with 9 inverters + a meter, zapd) runs on one
fast shared clock, so a simulated day passes in minutes with every reading crossing the real
pty, Modbus socket, SQLite and HTTP paths. At high speed zapd polls as fast as it can rather than
once a simulated second; the figures state the readings it actually processed. Memory is
sampled from /proc; growth is measured after a warm-up (imports, caches, SQLite page cache and
the first plan settle in the first minutes).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.footprint import start_site
from bench.table import row
from tests.e2e.harness import ProcSample, proc_sample, wait_for

COMMAND = "python -m bench.soak"
GROWTH_TARGET_MB = 10.0


@dataclass(frozen=True)
class SoakResult:
    hours: float
    speed: float
    samples: list[tuple[float, ProcSample]]  # (simulated hours since start, sample)
    warm_index: int
    readings: int
    outbox_depth: int

    @property
    def warm(self) -> ProcSample:
        return self.samples[self.warm_index][1]

    @property
    def growth_mb(self) -> float:
        """Last RSS minus RSS at the end of the warm-up."""
        return (self.samples[-1][1].rss_kb - self.warm.rss_kb) / 1024

    @property
    def peak_mb(self) -> float:
        return max(s.rss_kb for _, s in self.samples) / 1024

    @property
    def cpu_pct(self) -> float:
        first, last = self.samples[0][1], self.samples[-1][1]
        return 100 * (last.cpu_s - first.cpu_s) / (last.at - first.at)

    def slope_mb_per_hour(self) -> float:
        """Least-squares slope of RSS after warm-up, MB per simulated hour (a leak shows as a steady slope)."""
        pts = [(h, s.rss_kb / 1024) for h, s in self.samples[self.warm_index :]]
        if len(pts) < 2:
            return 0.0
        mx = sum(h for h, _ in pts) / len(pts)
        my = sum(m for _, m in pts) / len(pts)
        den = sum((h - mx) ** 2 for h, _ in pts)
        return sum((h - mx) * (m - my) for h, m in pts) / den if den else 0.0

    def describe(self) -> str:
        lines = [f"soak {self.hours:g} h simulated at {self.speed:g}x: {self.readings} readings"]
        lines += [f"  t={h:6.2f} h  rss={s.rss_kb / 1024:6.1f} MB  cpu={s.cpu_s:7.1f} s" for h, s in self.samples]
        return "\n".join(lines)


def soak(tmp: Path, *, hours: float, speed: float, samples: int = 24, warmup_fraction: float = 0.2) -> SoakResult:
    site = start_site(tmp, speed=speed)
    try:
        wait_for(lambda: site.zapctl("status")["readings_in"] > 100, 60, "all devices reporting")
        pid = site.zapctl("status")["pid"]
        start = site.clock.now()
        first_readings = site.zapctl("status")["readings_in"]
        real_total = hours * 3600 / speed
        out: list[tuple[float, ProcSample]] = []
        for i in range(samples + 1):
            target = i * real_total / samples
            time.sleep(max(0.0, target - (out[-1][1].at - out[0][1].at if out else 0.0)))
            out.append(((site.clock.now() - start).total_seconds() / 3600, proc_sample(pid)))
        st = site.zapctl("status")
        assert site.procs["zapd"].alive(), site.procs["zapd"].output()[-3000:]
        assert "Traceback" not in site.procs["zapd"].output()
        depth = int(st["link"]["outbox_depth"] or 0)
        return SoakResult(hours, speed, out, round(samples * warmup_fraction), st["readings_in"] - first_readings,
                          depth)  # fmt: skip
    finally:
        site.stop_all()


def quick() -> bool:
    return os.environ.get("ZAPD_BENCH_QUICK") == "1"


def rows() -> list[dict[str, str]]:
    hours, speed = (2.0, 120.0) if quick() else (24.0, 120.0)
    with tempfile.TemporaryDirectory(prefix="zapd-soak-") as tmp:
        r = soak(Path(tmp), hours=hours, speed=speed)
    print(r.describe(), file=sys.stderr)
    label = f"{hours:g} h simulated at {speed:g}x, 10 devices, {r.readings:,} readings"
    cmd = COMMAND + (" --quick" if quick() else "")
    return [
        row(f"soak RSS growth after warm-up ({label})", f"{r.growth_mb:+.1f} MB", f"<= {GROWTH_TARGET_MB:g} MB", cmd),
        row(f"soak RSS slope after warm-up ({label})", f"{r.slope_mb_per_hour():+.3f} MB/h", "-", cmd),
        row(f"soak RSS peak ({label})", f"{r.peak_mb:.1f} MB", "-", cmd),
        row(f"soak zapd CPU at {speed:g}x ({label})", f"{r.cpu_pct:.0f} %", "-", cmd),
        row(f"soak outbox depth at the end ({label})", str(r.outbox_depth), "-", cmd),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 simulated hours instead of 24")
    if parser.parse_args().quick:
        os.environ["ZAPD_BENCH_QUICK"] = "1"
    from bench.table import print_table

    print_table(rows())
    return 0


if __name__ == "__main__":
    sys.exit(main())
