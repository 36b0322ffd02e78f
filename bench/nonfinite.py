"""What refusing non-finite input costs: the drivers' guard per reading, and an outbox with refused readings.

Why these: every reading of every driver passes `drivers.api.ReadingGuard` (zapd/bounds.py), so its
cost must stay far below a poll; and an outbox that holds readings the cloud refuses (written by a
zapd before the fix: +Inf stored as null) must drain at close to the normal rate, not stall. The
drain is the real Uploader against a real `zapcloud serve` on loopback (SQLite), which refuses each
such reading alone; the uploader narrows the batch down (halving) and skips them. --quick drains
20,000 readings instead of 200,000.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from nacl.signing import SigningKey

from bench.table import row
from cloud_sync.link import LinkStatus
from cloud_sync.uploader import Uploader
from drivers.api import ReadingGuard
from tests.e2e.harness import Site
from zapd.clock import SystemClock
from zapd.logs import configure
from zapd.model import DerKind, Reading
from zapd.store import Store

COMMAND = "python -m bench.nonfinite"
REFUSED = 5  # readings the cloud refuses, spread over the outbox


def quick() -> bool:
    return os.environ.get("ZAPD_BENCH_QUICK") == "1"


def meter(i: int, start: datetime, power_w: float | None = None) -> Reading:
    values = {"power_w": 812.0 + i % 97 if power_w is None else power_w, "import_wh": 1_234_567.0 + i,
              "export_wh": 345_678.0, "l1_a": 1.2, "l2_a": 0.8, "l3_a": 1.1}  # fmt: skip
    return Reading(der_id="meter", kind=DerKind.METER, ts=start + timedelta(seconds=i), values=values)


def guard_cost_us(n: int) -> tuple[float, float]:
    """Mean µs per reading through the guard: a good one, and one with a value of +Inf."""
    start = datetime(2026, 6, 1, tzinfo=UTC)
    guard = ReadingGuard("bench", lambda r: None)
    good, bad = meter(1, start), meter(2, start, math.inf)
    t0 = time.perf_counter()
    for _ in range(n):
        guard(good)
    t1 = time.perf_counter()
    for _ in range(n):
        guard(bad)
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6


async def drain(site: Site, store: Store) -> tuple[float, int, int]:
    assert site.zap_key is not None
    posts = 0

    async def count(request: httpx.Request) -> None:
        nonlocal posts
        posts += 1

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{site.cloud_port}", timeout=60.0,
                                 event_hooks={"request": [count]}) as client:  # fmt: skip
        uploader = Uploader(store=store, client=client, site_id=site.site_id, key=site.zap_key,
                            clock=SystemClock(), link=LinkStatus(), batch_max=5000)  # fmt: skip
        t0 = time.perf_counter()
        sent = await uploader.drain()
        return sent / (time.perf_counter() - t0), posts, uploader.refused_by_cloud


async def _one(site: Site, tmp: Path, n: int, bad: set[int]) -> tuple[float, int, int]:
    """Fill an outbox for a fresh site (`bad` seqs stored with +Inf, as a zapd before the fix did) and drain it."""
    start = datetime(2026, 6, 1, tzinfo=UTC)
    site.site_id, site.zap_key = f"bench-{len(bad)}", SigningKey.generate()  # one key per site
    site.register()
    store = await Store.open(tmp / f"outbox-{len(bad)}.sqlite")
    try:
        for first in range(1, n + 1, 1000):
            last = min(first + 1000, n + 1)
            await store.append_readings([meter(i, start, math.inf if i in bad else None) for i in range(first, last)])
        rate, posts, refused = await drain(site, store)
        stored = site.cloud_seqs()
        if refused != len(bad) or len(stored) != n - len(bad) or stored[-1] != n:
            raise RuntimeError(f"refused {refused}, the cloud holds {len(stored)} of {n - len(bad)}")
        return rate, posts, refused
    finally:
        await store.close()


async def _drain_rows(n: int) -> list[dict[str, str]]:
    configure("critical")  # the refusals are logged (that is the point); here they would only fill the screen
    with tempfile.TemporaryDirectory(prefix="zapd-nonfinite-") as tmp_name:
        tmp = Path(tmp_name)
        site = Site(tmp, speed=1.0)
        site.start_cloud()
        try:
            clean_rate, clean_posts, _ = await _one(site, tmp, n, set())
            rate, posts, _ = await _one(site, tmp, n, {n * (k + 1) // (REFUSED + 1) for k in range(REFUSED)})
        finally:
            site.stop_all()
    size = f"{n:,} readings" + (" (--quick)" if quick() else "")
    cmd = COMMAND + (" --quick" if quick() else "")
    share = rate / clean_rate
    return [
        row(f"drain {size}, none refused (baseline)", f"{clean_rate:,.0f} readings/s, {clean_posts} POSTs", "-", cmd),
        row(f"drain {size}, {REFUSED} refused by the cloud (found by halving, skipped)",
            f"{rate:,.0f} readings/s = {share:.0%} of baseline, {posts} POSTs", ">= 50 % of baseline", cmd)
        | {"ok": "pass" if share >= 0.5 else "fail"},
    ]  # fmt: skip


def rows() -> list[dict[str, str]]:
    n = 20_000 if quick() else 200_000
    good_us, bad_us = guard_cost_us(20_000 if quick() else 200_000)
    out = [
        row("drivers' guard per reading (6 values, all plausible)", f"{good_us:.2f} µs", "<= 100 µs", COMMAND),
        row("drivers' guard per reading (one value +Inf: refused, logged once)", f"{bad_us:.2f} µs", "<= 100 µs",
            COMMAND),
    ]  # fmt: skip
    return out + asyncio.run(_drain_rows(n))


def main() -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--quick", action="store_true", help="drain 20,000 readings instead of 200,000")
    if parser.parse_args().quick:
        os.environ["ZAPD_BENCH_QUICK"] = "1"
    from bench.table import print_table

    print_table(rows())
    return 0


if __name__ == "__main__":
    sys.exit(main())
