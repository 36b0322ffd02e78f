"""Live reading → GraphQL subscriber latency against a live daemon (issue 16 bench): `python -m bench.live`.

A real `zapd run` on the simulated site, uploading every 0.5 s to a real `zapcloud serve`; a
graphql-transport-ws subscriber (tests/e2e/live.py) measures, per reading, receive time minus the instant
zapd read it (one real-time clock line): zapd's poll-to-outbox, its upload interval, the ingest, the
subscription's wake-up and the push. 20 s of readings (quick: 8 s). A second row is the cloud's part alone:
a signed upload of one reading to its receipt by a subscriber.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

from bench.table import Row, row

COMMAND = "python -m bench.live"


def rows() -> list[Row]:
    from tests.e2e.live import UPLOAD_INTERVAL_S, live_site, percentile, subscribe, upload_to_subscriber

    seconds = 8.0 if os.environ.get("ZAPD_BENCH_QUICK") == "1" else 20.0
    with tempfile.TemporaryDirectory(prefix="bench-live-") as d:
        site = live_site(Path(d))
        try:
            got = asyncio.run(subscribe(site, seconds=seconds))
            direct = asyncio.run(upload_to_subscriber(site))
        finally:
            site.stop_all()
    lat = [r.latency_s for r in got]
    load = os.getloadavg()[0]
    return [
        row(
            f"live reading -> GraphQL subscriber p99 (zapd uploading every {UPLOAD_INTERVAL_S:g} s)",
            f"{percentile(lat, 0.99) * 1000:.0f} ms (p50 {percentile(lat, 0.5) * 1000:.0f} ms, {len(lat)} readings "
            f"in {seconds:g} s; load avg {load:.1f} on {os.cpu_count()} cores)",
            "<= 1000 ms",
            COMMAND,
        ),
        row(
            "the cloud's part: signed upload -> GraphQL subscriber p99",
            f"{percentile(direct, 0.99) * 1000:.0f} ms (p50 {percentile(direct, 0.5) * 1000:.0f} ms, "
            f"{len(direct)} uploads; zapd adds its outbox flush delay and its upload interval)",
            "-",
            COMMAND,
        ),
    ]


def main() -> int:
    from bench.table import print_table

    print_table(rows())
    return 0


if __name__ == "__main__":
    sys.exit(main())
