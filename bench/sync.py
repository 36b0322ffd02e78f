"""Store-and-forward throughput: outbox inserts, draining a long outage's backlog to zapcloud, Ed25519.

Why these: after days offline the backlog must reach the cloud in minutes, not hours, while the
site keeps controlling; so the drain (the real Uploader, gzip + Ed25519 per batch, over HTTP to a
real `zapcloud serve` on loopback, which verifies, decodes and stores every reading in its
SQLite) is the figure with a target. The insert rate shows the writer's headroom over the ~20
readings/s a 10-device site makes. --quick drains 100,000 readings instead of 1,000,000.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from bench.table import row
from cloud_sync.keys import load_verify_key_b64
from cloud_sync.link import LinkStatus
from cloud_sync.uploader import Uploader, batch_body
from cloud_sync.wire import HEADER_SIGNATURE, sign_body, verify_body
from tests.e2e.harness import Site
from zapd.clock import SystemClock
from zapd.logs import configure
from zapd.model import DerKind, Reading
from zapd.store import Store

COMMAND = "python -m bench.sync"
DRAIN_TARGET = 20_000.0
INSERT_BATCH = 1000


def quick() -> bool:
    return os.environ.get("ZAPD_BENCH_QUICK") == "1"


def readings(n: int, start: datetime) -> list[Reading]:
    """A realistic mix: meter with import/export and phase currents, battery, PV."""
    out = []
    for i in range(n):
        ts = start + timedelta(seconds=i // 3)
        if i % 3 == 0:
            values = {"power_w": 812.0 + i % 97, "import_wh": 1_234_567.0 + i, "export_wh": 345_678.0,
                      "l1_a": 1.2, "l2_a": 0.8, "l3_a": 1.1}  # fmt: skip
            out.append(Reading(der_id="meter", kind=DerKind.METER, ts=ts, values=values))
        elif i % 3 == 1:
            out.append(Reading(der_id="inverter.battery", kind=DerKind.BATTERY, ts=ts,
                               values={"power_w": -1500.0, "soc": 0.5 + (i % 50) / 1000}))  # fmt: skip
        else:
            out.append(Reading(der_id="inverter.pv", kind=DerKind.PV, ts=ts, values={"power_w": 2300.0 + i % 13}))
    return out


async def fill(store: Store, n: int) -> float:
    """Append n readings in batches; returns readings/s."""
    start = datetime(2026, 6, 1, tzinfo=UTC)
    t0 = time.perf_counter()
    for first in range(0, n, INSERT_BATCH):
        await store.append_readings(readings(min(INSERT_BATCH, n - first), start + timedelta(seconds=first)))
    return n / (time.perf_counter() - t0)


async def drain(site: Site, store: Store) -> tuple[float, int]:
    assert site.zap_key is not None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{site.cloud_port}", timeout=60.0) as client:
        # As the daemon does: every answer must be signed by the pinned cloud key.
        uploader = Uploader(store=store, client=client, site_id=site.site_id, key=site.zap_key,
                            clock=SystemClock(), link=LinkStatus(), batch_max=5000,
                            cloud_key=load_verify_key_b64(site.cloud_key_b64))  # fmt: skip
        t0 = time.perf_counter()
        sent = await uploader.drain()
        return sent / (time.perf_counter() - t0), sent


async def _run(n: int) -> list[dict[str, str]]:
    configure("warning")
    with tempfile.TemporaryDirectory(prefix="zapd-sync-") as tmp_name:
        tmp = Path(tmp_name)
        site = Site(tmp, speed=1.0)
        site.start_cloud()
        try:
            site.keygen()
            site.register()
            store = await Store.open(tmp / "outbox.sqlite")
            try:
                insert_rate = await fill(store, n)
                body = batch_body(site.site_id, await store.outbox_after(0, 5000), [], None)
                drain_rate, sent = await drain(site, store)
                if sent != n or site.cloud_seqs()[-1] != n:
                    raise RuntimeError(f"drained {sent} of {n}; the cloud holds up to {site.cloud_seqs()[-1:]}")
            finally:
                await store.close()
        finally:
            site.stop_all()
    assert site.zap_key is not None
    key = site.zap_key
    reps = 50 if quick() else 200
    t0 = time.perf_counter()
    for _ in range(reps):
        headers = sign_body(key, body)
    sign_rate = reps / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(reps):
        if not verify_body(key.verify_key, body, headers[HEADER_SIGNATURE]):
            raise RuntimeError("signature did not verify")
    verify_rate = reps / (time.perf_counter() - t0)
    kb = len(body) / 1024
    size = f"{n:,} readings" + (" (--quick)" if quick() else "")
    drain_cmd = COMMAND + (" --quick" if quick() else "")
    per_batch = f"one 5,000-reading batch body ({kb:,.0f} kB)"
    return [
        row(
            f"outbox insert rate (batches of {INSERT_BATCH}, WAL, synchronous=FULL)",
            f"{insert_rate:,.0f} readings/s",
            "-",
            COMMAND,
        ),
        row(
            f"drain {size} to zapcloud on loopback (gzip, signed, 5,000/batch)",
            f"{drain_rate:,.0f} readings/s",
            f">= {DRAIN_TARGET:,.0f} readings/s",
            drain_cmd,
        ),
        row(
            f"Ed25519 sign, {per_batch}",
            f"{sign_rate:,.0f} batches/s = {sign_rate * 5000:,.0f} readings/s",
            "-",
            COMMAND,
        ),
        row(
            f"Ed25519 verify, {per_batch}",
            f"{verify_rate:,.0f} batches/s = {verify_rate * 5000:,.0f} readings/s",
            "-",
            COMMAND,
        ),
    ]


def rows() -> list[dict[str, str]]:
    return asyncio.run(_run(100_000 if quick() else 1_000_000))


def main() -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--quick", action="store_true", help="drain 100,000 readings instead of 1,000,000")
    if parser.parse_args().quick:
        os.environ["ZAPD_BENCH_QUICK"] = "1"
    from bench.table import print_table

    print_table(rows())
    return 0


if __name__ == "__main__":
    sys.exit(main())
