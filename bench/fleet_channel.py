"""DR event → every affected Zap applied, over the live channel (issue 14 item 5), at fleet size.

bench/fleet.py times a DR event until every chosen site's plan is stored; this one goes on to the Zaps.
The same simulated fleet (bench/fleet.py `_setup`: sites with assets, a day of telemetry, prices, on a
throwaway PostgreSQL) is registered under keys whose Zaps are then connected to one real `zapcloud serve`
(`--no-planner`: it only holds the channel) as bench/channel.py's light clients (their own WebSocket,
the Ed25519 hello, a signature check of every command and the ack). The event is created as
`POST /v1/fleet/events` does (`create_event`) and the 2 DR worker processes of bench/fleet.py run it;
on publishing, `cloud/fleet_work.py` `_notify` sends each dispatched, connected site its signed DR-window
command, the NOTIFY doorbell wakes the serve worker, which pushes it down the channel. Measured: from the
event's creation to each Zap's ack (the command verified, the ack sent; one CLOCK_MONOTONIC), p50 and max
per Zap and the total (the last Zap), with the load average of the shared box.

`make bench`: 100 sites (--quick: 30); bigger: `python -m bench.fleet_channel --sites 1000`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey
from sqlalchemy import func, select

from bench.channel import Fleet, _serving, _start_cloud
from bench.fleet import DR_TARGET_S, _create_event, _database, _quick, _run_workers, _setup
from bench.table import Row, row
from cloud_sync.channel_wire import ws_url
from tests.ports import free_port

COMMAND = "python -m bench.fleet_channel"
ACK_WAIT_S = 300.0


async def _all_connected(url: str, site_ids: list[str], within_s: float) -> None:
    """Wait until the serve worker has written every site as connected (channel_sites, every STATUS_FLUSH_S):
    `_notify` sends a DR command only to sites it finds connected there."""
    from cloud.db import Database
    from cloud.server.channel_hub import live_sites

    db = Database(url)
    try:
        deadline = time.monotonic() + within_s
        while True:
            live = await live_sites(db, site_ids)
            if sum(1 for s in live.values() if s.connected) >= len(site_ids):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(live)} of {len(site_ids)} sites connected after {within_s:.0f} s")
            await asyncio.sleep(0.5)
    finally:
        await db.dispose()


async def _commands_sent(url: str) -> int:
    from cloud.db import Database
    from cloud.server.channel_hub import channel_commands

    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(channel_commands))).scalar_one())
    finally:
        await db.dispose()


async def measure(n: int, tmp: Path, db_url: str | None = None) -> dict[str, Any]:
    """One size; `db_url` an empty PostgreSQL database (the test's), else a throwaway cluster is started."""
    from tests.db_backends import reset_pg

    given = contextlib.nullcontext((db_url, "PostgreSQL")) if db_url else None
    with given or _database(tmp) as (url, engine):
        if url.startswith("postgresql"):
            await reset_pg(url)
        keys = [SigningKey.generate() for _ in range(n)]
        sites = [(f"b{i:05d}", k) for i, k in enumerate(keys)]
        await _setup(url, n, datetime.now(UTC).replace(second=0, microsecond=0), keys)  # on the slot grid
        port = free_port()
        log = (tmp / "serve.log").open("wb")
        proc = _start_cloud(port, url, tmp, log)
        fleet: Fleet | None = None
        try:
            cloud_key_b64 = await _serving(port, tmp / "serve.log")
            base = f"http://127.0.0.1:{port}"
            fleet = Fleet(sites, ws_url(base), cloud_key_b64, tmp, procs=max(1, min(4, math.ceil(n / 250))),
                          dial_per_s=300.0)  # fmt: skip
            await fleet.start()
            await fleet.until(lambda: len(fleet.up) >= n, 600, "the connect wave")
            await _all_connected(url, [s for s, _ in sites], 60)
            now = datetime.now(UTC)  # the workers' clock: the command's validity starts here
            posted = [0.0]

            def create() -> tuple[str, float]:
                posted[0] = time.monotonic()
                return asyncio.run(_create_event(url, now, in_h=1.0))

            load = os.getloadavg()[0]
            dr_s, (_event_id, create_s), dr_out = await asyncio.to_thread(
                _run_workers, url, tmp / "cloud.key", "dr", 2, create, now
            )
            sent = await _commands_sent(url)
            await fleet.until(lambda: len(fleet.applied) >= sent, ACK_WAIT_S, "the acks", must=False)
            lat = sorted(t - posted[0] for t in fleet.applied.values())
            load = max(load, os.getloadavg()[0])
        finally:
            if fleet is not None:
                await fleet.stop()
            proc.terminate()
            proc.wait(timeout=30)
            log.close()
    if not lat:
        raise AssertionError(f"no Zap acknowledged a DR command ({sent} sent)")
    return {
        "sites": n,
        "engine": engine,
        "sent": sent,
        "acked": len(lat),
        "p50_s": statistics.median(lat),
        "first_s": lat[0],
        "max_s": lat[-1],
        "total_s": lat[-1] if len(lat) >= sent else math.inf,
        "dispatched_s": dr_s,
        "create_s": create_s,
        "by_worker": [w["done"] for w in dr_out],
        "load": load,
    }


def rows(sizes: list[int] | None = None) -> list[Row]:
    out: list[Row] = []
    for n in sorted(sizes or ([30] if _quick() else [100])):
        with tempfile.TemporaryDirectory(prefix="bench-fleet-channel-") as d:
            m = asyncio.run(measure(n, Path(d)))
        out.append(
            row(
                f"DR event over {n} sites -> every connected Zap acked, 2 workers + 1 serve ({m['engine']})",
                f"total {m['total_s']:.2f} s; per Zap first {m['first_s']:.2f} s, p50 {m['p50_s']:.2f} s, max "
                f"{m['max_s']:.2f} s ({m['acked']}/{m['sent']} commands acked; DR workers exited after "
                f"{m['dispatched_s']:.1f} s, "
                f"turns {'/'.join(str(x) for x in m['by_worker'])}; load avg {m['load']:.1f} on "
                f"{os.cpu_count()} cores)",
                f"<= {DR_TARGET_S:g} s" if n == 1000 else "-",
                f"{COMMAND} --sites {n}",
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--sites", type=int, action="append", help="fleet size (repeatable; default 100)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["ZAPD_BENCH_QUICK"] = "1"
    from bench.table import print_table

    print_table(rows(args.sites))
    return 0


if __name__ == "__main__":
    sys.exit(main())
