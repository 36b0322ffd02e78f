"""zapd's resident memory and CPU with 10 devices polled every second, measured on the zapd process alone.

The gateway is a small ARM box shared with nothing else we control, so the daemon's own cost is
what matters: the simulator (9 hybrid inverters on one Modbus TCP endpoint + a DSMR meter on a
pty, one telegram a second) and a loopback zapcloud run as separate processes and are not
counted. Real time (clock speed 1): a faster clock would poll faster than 1 s and inflate CPU.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.table import row
from tests.e2e.harness import Proc, ProcSample, Site, proc_sample, wait_for

COMMAND = "python -m bench.footprint"
RSS_TARGET_MB = 50.0
CPU_TARGET_PCT = 3.0
INVERTERS = 9  # + the meter = 10 devices


def smaps_mb(pid: int) -> dict[str, float]:
    """Pss (shared library pages split among their users) and private memory, which RSS overstates."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            out[parts[0].rstrip(":")] = int(parts[1]) / 1024
    return out


def quick() -> bool:
    return os.environ.get("ZAPD_BENCH_QUICK") == "1"


def start_site(tmp: Path, *, speed: float = 1.0, inverters: int = INVERTERS) -> Site:
    """Cloud, simulator and zapd with `inverters` + 1 devices, every one polled once a (clock) second."""
    site = Site(tmp, speed=speed)
    site.zapd_overrides = {"poll_s": 1, "meter_poll_s": 1, "upload_interval_s": 10, "log_level": "warning"}
    site.start_cloud()
    site.keygen()
    site.register()
    site.start_sim(p1_interval_s=1.0, step_s=1.0, extra_units=inverters - 1)
    site.start_zapd()
    return site


@dataclass(frozen=True)
class ImportProfile:
    """`python -X importtime` of the daemon's own process (not its config-check child) on the bench site."""

    modules: int  # modules imported (one importtime line each)
    self_ms: float  # the sum of their own import times
    by_package: list[tuple[str, float]]  # top-level package -> self ms, largest first


_IMPORTTIME = re.compile(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)")


def parse_importtime(text: str) -> ImportProfile:
    per_package: collections.Counter[str] = collections.Counter()  # microseconds
    modules = 0
    for match in _IMPORTTIME.finditer(text):
        modules += 1
        per_package[match[2].split(".")[0]] += int(match[1])
    top = [(name, us / 1000) for name, us in per_package.most_common()]
    return ImportProfile(modules, sum(per_package.values()) / 1000, top)


def import_profile(site: Site) -> ImportProfile:
    """Restart the site's zapd under `-X importtime` until all devices report again; its import table."""
    site.procs["zapd"].stop()
    log = site.tmp / "zapd-importtime.log"
    cmd = [sys.executable, "-X", "importtime", "-m", "zapd.cli", "run", "--config", str(site.tmp / "zapd.toml")]
    proc = Proc("zapd-importtime", cmd, log, {**site.env(), "NOTIFY_SOCKET": ""}).start()
    try:
        # a new process: its counters start at 0
        wait_for(lambda: site.zapctl("status")["readings_in"] > 10 * INVERTERS, 30, "zapd back under importtime")
        time.sleep(5.0)  # the cloud link's first upload (its HTTP stack loads on first use)
    finally:
        proc.stop()
    return parse_importtime(log.read_text(errors="replace"))


def measure(warmup_s: float, window_s: float) -> tuple[list[ProcSample], int, dict[str, float], ImportProfile]:
    """Samples of the zapd process over the window (after warm-up), readings it took in, its smaps, imports."""
    with tempfile.TemporaryDirectory(prefix="zapd-footprint-") as tmp:
        site = start_site(Path(tmp))
        try:
            wait_for(lambda: site.zapctl("status")["readings_in"] > 10 * INVERTERS, 30, "all devices reporting")
            pid = site.zapctl("status")["pid"]
            time.sleep(warmup_s)
            before = site.zapctl("status")["readings_in"]
            samples = [proc_sample(pid)]
            end = time.monotonic() + window_s
            while time.monotonic() < end:
                time.sleep(min(5.0, max(0.0, end - time.monotonic())))
                samples.append(proc_sample(pid))
            readings = site.zapctl("status")["readings_in"] - before
            smaps = smaps_mb(pid)
            assert site.procs["zapd"].alive(), site.procs["zapd"].output()[-2000:]
            imports = import_profile(site)
        finally:
            site.stop_all()
    return samples, readings, smaps, imports


def rows() -> list[dict[str, str]]:
    warmup, window = (10.0, 20.0) if quick() else (20.0, 60.0)
    samples, readings, smaps, imports = measure(warmup, window)
    first, last = samples[0], samples[-1]
    cpu_pct = 100.0 * (last.cpu_s - first.cpu_s) / (last.at - first.at)
    peak_mb = max(s.rss_kb for s in samples) / 1024
    growth_mb = (last.rss_kb - first.rss_kb) / 1024
    rate = readings / (last.at - first.at)
    label = f"10 devices @1 s, {window:.0f} s window"
    return [
        row(f"zapd RSS peak ({label})", f"{peak_mb:.1f} MB", f"<= {RSS_TARGET_MB:g} MB", COMMAND),
        row(f"zapd CPU ({label}, {rate:.0f} readings/s)", f"{cpu_pct:.2f} %", f"<= {CPU_TARGET_PCT:g} %", COMMAND),
        row(f"zapd RSS growth over the window ({label})", f"{growth_mb:+.2f} MB", "-", COMMAND),
        row(
            f"zapd PSS / private / shared-clean at the end ({label})",
            f"{smaps.get('Pss', 0):.1f} / {smaps.get('Private_Dirty', 0) + smaps.get('Private_Clean', 0):.1f} / "
            f"{smaps.get('Shared_Clean', 0):.1f} MB",
            "-",
            COMMAND,
        ),
        row("zapd run: modules imported in its process (python -X importtime)", f"{imports.modules}", "-", COMMAND),
        row(
            "zapd run: import self-time, top packages",
            f"{imports.self_ms:.0f} ms: " + ", ".join(f"{name} {ms:.0f}" for name, ms in imports.by_package[:6]),
            "-",
            COMMAND,
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 s window instead of 60 s")
    if parser.parse_args().quick:
        os.environ["ZAPD_BENCH_QUICK"] = "1"
    from bench.table import print_table

    print_table(rows())
    return 0


if __name__ == "__main__":
    sys.exit(main())
