"""Fleet scale bench (issue 14 item 5): planning and DR throughput on PostgreSQL with real worker processes.

`python -m bench.fleet` (in `make bench`: 100 sites) or `python -m bench.fleet --sites 1000 --sites 100` for
the bigger run. A throwaway PostgreSQL cluster is started (tests/pg_cluster.py, Debian's server); without one
the bench says so and uses a SQLite file. Each simulated site is registered in the database with a 10 kWh
battery, 4 kWp PV and a spot tariff, and 1 day of 15-minute telemetry (meter, PV, battery: 288 readings);
the planner reads up to 28 days, so real sites with more history cost more in `prepare` (reading and
binning telemetry), not in solving.

Figures:
* planning (at the smallest size): 2 worker processes (`plan_next`, the planner loop's body) plan every
  site once; sites/s in total and per worker, and the workers' CPU per site;
* ingest: one process stores 1-day batches (288 readings) through `Database.ingest_telemetry` (no HTTP:
  the HTTP path is bench/sync.py); readings/s;
* demand response: `create_event` (what `POST /v1/fleet/events` does before its 202), then 2 worker
  processes run `fleet_work.work_one` until the event is published; seconds from the POST's transaction to
  every chosen site's plan stored (dispatched), per size, and the workers' CPU per site. The growth to
  10,000 sites is written out from the largest measured size (linear: one curve per site, the publish is
  one transaction whose size grows with the chosen sites), marked as an extrapolation, both at the load the
  machine had and from the CPU per site (what 2 idle cores would take; the shared machine is often at a
  load average well above its core count, which each row states).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.table import Row, row

COMMAND = "python -m bench.fleet"
T0 = datetime(2026, 6, 15, 12, 7, tzinfo=UTC)  # a Monday after the day-ahead publication
AREA = "10YNL----------L"
ASSETS: dict[str, Any] = {
    "location": {"lat": 52.1, "lon": 5.18},
    "grid": {"max_import_kw": 17.0, "max_export_kw": 10.0},
    "battery": {"capacity_kwh": 10.0, "max_charge_kw": 5.0, "max_discharge_kw": 5.0},
    "pv": [{"kwp": 4.0}],
}
TARIFF: dict[str, Any] = {
    "spot_area": AREA,
    "energy": {"kind": "spot"},
    "energy_tax": 0.1,
    "vat": 0.21,
    "export": {"kind": "spot"},
}
DR_TARGET_S = 30.0


def _quick() -> bool:
    return os.environ.get("ZAPD_BENCH_QUICK") == "1"


# --- the simulated fleet ---------------------------------------------------------------------


def _readings(site_index: int, start: datetime, hours: int, first_seq: int) -> list[Any]:
    from cloud_sync.wire import WireReading
    from zapd.model import DerKind

    out = []
    seq = first_seq
    for q in range(hours * 4):
        t = start + timedelta(minutes=15 * q)
        h = t.hour + t.minute / 60
        load = 0.3 + 1.5 * math.exp(-(((h - 18) / 2) ** 2)) + 0.1 * (site_index % 7)
        pv = max(0.0, 3.0 * math.sin((h - 5) / 14 * math.pi)) if 5 <= h <= 19 else 0.0
        soc = 0.3 + 0.1 * (site_index % 6)
        for der, kind, values in (
            ("meter", DerKind.METER, {"power_w": (load - pv) * 1000}),
            ("pv1", DerKind.PV, {"power_w": pv * 1000}),
            ("bat1", DerKind.BATTERY, {"power_w": 0.0, "soc": soc}),
        ):
            out.append(WireReading(seq=seq, der_id=der, kind=kind, ts=t, values=values))
            seq += 1
    return out


async def _setup(url: str, n: int, t0: datetime = T0, keys: list[Any] | None = None) -> float:
    """Register n sites with a day of telemetry and 2 days of prices; returns the ingest rate (readings/s).

    `keys`: the sites' signing keys (bench/fleet_channel.py dials as them); fresh ones if not given.
    """
    from nacl.signing import SigningKey

    from cloud.db import Database
    from cloud.db import planning as store
    from cloud.prices import PriceSeries
    from cloud.server.service import register_site
    from cloud_sync.keys import public_key_b64
    from cloud_sync.wire import make_batch

    db = Database(url)
    await db.create_schema()
    start = t0.replace(minute=0) - timedelta(days=1)
    ingest_s = 0.0
    stored = 0
    try:
        for i in range(n):
            sid = f"b{i:05d}"
            await register_site(db, sid, public_key_b64(keys[i] if keys else SigningKey.generate()), assets=ASSETS,
                                tariff=TARIFF, now=t0)  # fmt: skip
            batch = make_batch(sid, _readings(i, start, 24, 1))
            t = time.perf_counter()
            assert (await db.ingest_telemetry(batch)).accepted
            ingest_s += time.perf_counter() - t
            stored += len(batch.readings)
        day = t0.replace(hour=0, minute=0) - timedelta(hours=2)
        prices = tuple(0.08 + 0.12 * math.exp(-((((h - 2) % 24 - 18) / 2.5) ** 2)) for h in range(50))
        await store.put_spot_prices(db, AREA, PriceSeries(day, timedelta(hours=1), prices), t0)
        await store.ensure_jobs(db, t0)
    finally:
        await db.dispose()
    return stored / ingest_s


# --- worker processes ------------------------------------------------------------------------


async def _worker(url: str, key_path: str, mode: str, owner: str, now: datetime = T0) -> dict[str, Any]:
    from cloud.db import Database
    from cloud.fleet_work import work_one
    from cloud.planner import PlannerOptions, plan_next
    from cloud_sync.keys import load_or_create_signing_key

    key = load_or_create_signing_key(Path(key_path))
    db = Database(url)
    opts = PlannerOptions()
    done = 0
    await db.ping()  # connected and imported: now wait for the go
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    started = time.perf_counter()
    cpu = time.process_time()
    try:
        while True:
            if mode == "plan":
                if await plan_next(db, key, owner, now, opts) is None:
                    break
            elif not await work_one(db, key, owner, now, opts):
                break
            done += 1
    finally:
        await db.dispose()
    return {"owner": owner, "done": done, "seconds": time.perf_counter() - started, "cpu_s": time.process_time() - cpu}


def _run_workers(
    url: str, key_path: Path, mode: str, workers: int, before: Any = None, now: datetime = T0
) -> tuple[float, Any, list[dict[str, Any]]]:
    """Start the workers, wait until each is connected and imported, run `before()`, then let them go.

    Returns (seconds from `before` to the last worker done, what `before` returned, each worker's result).
    """
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.fleet",
                "--worker",
                mode,
                "--db",
                url,
                "--key",
                str(key_path),
                "--owner",
                f"w{i}",
                "--now",
                now.isoformat(),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            while (line := p.stdout.readline()) and line.strip() != "ready":
                pass
            if not line:
                raise RuntimeError(f"bench worker exited {p.wait()} before it was ready")
        started = time.perf_counter()
        got = before() if before is not None else None
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        out = []
        for p in procs:
            stdout, _ = p.communicate(timeout=3600)
            if p.returncode != 0:
                raise RuntimeError(f"bench worker exited {p.returncode}")
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        return time.perf_counter() - started, got, out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


async def _create_event(url: str, now: datetime = T0, in_h: float = 6.0) -> tuple[str, float]:
    from cloud.db import Database
    from cloud.fleet import EventRequest
    from cloud.fleet_work import create_event

    db = Database(url)
    try:
        t = time.perf_counter()
        # at T0: 18:00-19:00 UTC, the evening peak
        start = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=in_h)
        made = await create_event(db, EventRequest(start, start + timedelta(hours=1), reduction_kw=1e5), now)
        return made.event_id, time.perf_counter() - t
    finally:
        await db.dispose()


async def _event(url: str, event_id: str) -> dict[str, Any]:
    from cloud.db import Database
    from cloud.fleet_status import event_status

    db = Database(url)
    try:
        status = await event_status(db, event_id, T0)
        assert status is not None
        return status
    finally:
        await db.dispose()


# --- one size ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _database(tmp: Path) -> Iterator[tuple[str, str]]:
    """(url, engine name): a throwaway PostgreSQL if Debian's server is installed, else a SQLite file."""
    try:
        from tests.pg_cluster import cluster, pg_bindir

        pg_bindir()
    except (ImportError, SystemExit):
        yield f"sqlite+aiosqlite:///{tmp / 'fleet.sqlite'}", "SQLite (no PostgreSQL installed)"
        return
    with cluster() as url:
        yield url, "PostgreSQL"


def measure(n: int, tmp: Path, *, plan: bool = True) -> dict[str, Any]:
    from cloud_sync.keys import load_or_create_signing_key
    from tests.db_backends import reset_pg

    tmp.mkdir(parents=True, exist_ok=True)
    with _database(tmp) as (url, engine):
        if url.startswith("postgresql"):
            asyncio.run(reset_pg(url))
        ingest = asyncio.run(_setup(url, n))
        key = tmp / "cloud.key"
        load_or_create_signing_key(key)
        plan_s, plan_out = 1.0, [{"done": 0, "seconds": 1.0, "cpu_s": 0.0}] * 2
        if plan:  # the routine planning figure is taken at the smallest size only
            plan_s, _, plan_out = _run_workers(url, key, "plan", 2)
        planned = sum(w["done"] for w in plan_out)
        dr_s, (event_id, create_s), dr_out = _run_workers(url, key, "dr", 2, lambda: asyncio.run(_create_event(url)))
        status = asyncio.run(_event(url, event_id))
        load = os.getloadavg()[0]
    assert status["status"] == "dispatched", status
    return {
        "sites": n,
        "engine": engine,
        "ingest_readings_s": ingest,
        "planned": planned,
        "plan_s": plan_s,
        "plan_per_worker": [w["done"] / w["seconds"] for w in plan_out],
        "plan_cpu_per_site": sum(w["cpu_s"] for w in plan_out) / max(1, planned),
        "dr_cpu_per_site": sum(w["cpu_s"] for w in dr_out) / n,
        "load": load,
        "create_s": create_s,
        "dr_s": dr_s,
        "dr_by_worker": [w["done"] for w in dr_out],
        "dispatched": status["progress"]["dispatched"],
        "planned_dr": status["progress"]["planned"],
    }


def rows(sizes: list[int] | None = None) -> list[Row]:
    sizes = sizes or ([30] if _quick() else [100])
    out: list[Row] = []
    biggest: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as d:
        for n in sorted(sizes):
            m = measure(n, Path(d) / str(n), plan=n == min(sizes))
            biggest = m
            cmd = f"{COMMAND} --sites {n}"
            eng = m["engine"]
            busy = f"load avg {m['load']:.1f} on {os.cpu_count()} cores"
            if n == min(sizes):
                per = ", ".join(f"{x:.1f}" for x in m["plan_per_worker"])
                out += [
                    row(
                        f"planning, {n} sites, 2 workers ({eng})",
                        f"{m['planned'] / m['plan_s']:.1f} sites/s (per worker {per}; worker CPU "
                        f"{m['plan_cpu_per_site'] * 1000:.0f} ms/site; {busy})",
                        "-",
                        cmd,
                    ),
                    row(
                        f"ingest, 1-day batches of 288 readings ({eng}, no HTTP)",
                        f"{m['ingest_readings_s']:,.0f} readings/s",
                        "-",
                        cmd,
                    ),
                ]
            target = f"<= {DR_TARGET_S:g} s" if n == 1000 else "-"
            out.append(
                row(
                    f"DR event over {n} sites fully dispatched, 2 workers ({eng})",
                    f"{m['dr_s']:.1f} s ({m['dispatched']} dispatched, turns of <= 8 sites "
                    f"{'/'.join(str(x) for x in m['dr_by_worker'])}; worker CPU {m['dr_cpu_per_site'] * 1000:.0f} "
                    f"ms/site; 202 after {m['create_s'] * 1000:.0f} ms; {busy})",
                    target,
                    cmd,
                )
            )
    assert biggest is not None
    per_site = biggest["dr_s"] / biggest["sites"]
    cpu = biggest["dr_cpu_per_site"]
    out.append(
        row(
            f"DR event over 10,000 sites, 2 workers (extrapolated linearly from {biggest['sites']} sites)",
            f"~{per_site * 10_000:.0f} s at this load ({per_site * 1000:.0f} ms/site); on 2 idle cores "
            f"~{cpu * 10_000 / 2:.0f} s from the workers' CPU ({cpu * 1000:.0f} ms/site); W workers on W cores: / W",
            "-",
            f"{COMMAND} --sites 10000 (measures it; the setup alone is long)",
        )
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--sites", type=int, action="append", help="fleet size (repeatable; default 100)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=("plan", "dr"), help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--owner", help=argparse.SUPPRESS)
    parser.add_argument("--now", type=datetime.fromisoformat, default=T0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(asyncio.run(_worker(args.db, args.key, args.worker, args.owner, args.now))), flush=True)
        return 0
    if args.quick:
        os.environ["ZAPD_BENCH_QUICK"] = "1"
    from bench.table import print_table

    print_table(rows(args.sites))
    return 0


if __name__ == "__main__":
    sys.exit(main())
