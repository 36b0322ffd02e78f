"""Data API figures (issue 16): history queries through the GraphQL schema, and live reading → subscriber.

History: a SQLite file holds one DER's 1 s readings (a month; 7 days with --quick), stored through the
same ingest the Zaps use, then folded into the per-minute rollup (its throughput is a row of its own).
The figure is the median wall time of `schema.execute` for the query (resolver, SQL, serialisation; no
HTTP), operator token, after one warm-up run.

Live: a real `zapcloud serve` on loopback; a graphql-transport-ws subscriber; readings uploaded one at a
time as signed batches. t0 = just before the upload's POST; t1 = the subscriber has the reading.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.latency import percentile, quick
from bench.table import row

COMMAND = "python -m bench.dataapi"
DAY0 = datetime(2026, 3, 2, tzinfo=UTC)
QUERY = """query($f: DateTime!, $t: DateTime!, $r: Resolution!) { site(id: "bench") {
  telemetry(der: "meter1", from: $f, to: $t, resolution: $r) { buckets { start mean min max energyWh } } } }"""


async def _fill(db_url: str, seconds: int) -> None:
    from nacl.signing import SigningKey

    import cloud.dataapi.tables  # noqa: F401  (the data API's tables, on the same metadata)
    from cloud.db import Database
    from cloud.server.service import register_site
    from cloud_sync.keys import public_key_b64
    from cloud_sync.wire import WireReading, make_batch
    from zapd.model import DerKind

    db = Database(db_url)
    await db.create_schema()
    await register_site(db, "bench", public_key_b64(SigningKey.generate()))
    chunk = 5_000
    for first in range(1, seconds + 1, chunk):
        last = min(seconds, first + chunk - 1)
        readings = [
            WireReading(
                seq=s,
                der_id="meter1",
                kind=DerKind.METER,
                ts=DAY0 + timedelta(seconds=s - 1),
                values={"power_w": 500.0 + (s % 900)},
            )
            for s in range(first, last + 1)
        ]
        result = await db.ingest_telemetry(make_batch("bench", readings))
        assert result.accepted
    await db.dispose()


async def _time_query(db_url: str, span: timedelta, resolution: str, repeats: int) -> tuple[float, int, float]:
    """Median ms of the warm query, its bucket count, and ms of the first (which folds the rollup)."""
    from cloud.dataapi.access import OPERATOR
    from cloud.dataapi.graphql import schema
    from cloud.db import Database

    db = Database(db_url)
    times: list[float] = []
    buckets = 0
    try:
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            res = await schema.execute(
                QUERY,
                variable_values={"f": DAY0.isoformat(), "t": (DAY0 + span).isoformat(), "r": resolution},
                context_value={"db": db, "access": OPERATOR, "cost": 0},
            )
            times.append(time.perf_counter() - t0)
            assert not res.errors, res.errors
            assert res.data is not None
            buckets = len(res.data["site"]["telemetry"]["buckets"])
    finally:
        await db.dispose()
    return statistics.median(times[1:]) * 1000, buckets, times[0] * 1000


async def _fold(db_url: str) -> None:
    from cloud.dataapi.rollup import catch_up
    from cloud.db import Database

    db = Database(db_url)
    try:
        while not await catch_up(db, "bench", budget_s=60.0):
            pass
    finally:
        await db.dispose()


def history_rows() -> list[dict[str, str]]:
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-dataapi-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'h.sqlite'}"
        days = 7 if quick() else 30
        asyncio.run(_fill(url, days * 86400))
        t0 = time.perf_counter()
        asyncio.run(_fold(url))
        rate = days * 86400 / (time.perf_counter() - t0)
        label = f"data API: rollup folds a backlog of 1 s readings ({days} days)"
        out.append(row(label, f"{rate:,.0f} readings/s", "-", COMMAND))
        ms, n, _first = asyncio.run(_time_query(url, timedelta(days=1), "MIN15", 5))
        out.append(
            row(f"data API: a day of 1 s telemetry at 15 min ({n} buckets)", f"{ms:.0f} ms", "<= 50 ms", COMMAND)
        )
        ms, n, _first = asyncio.run(_time_query(url, timedelta(days=days), "HOUR1", 3))
        label = "a month" if days == 30 else f"{days} days (--quick)"
        out.append(
            row(f"data API: {label} of 1 s telemetry at 1 h ({n} buckets)", f"{ms:.0f} ms", "<= 100 ms", COMMAND)
        )
    return out


def live_rows() -> list[dict[str, str]]:
    import websockets
    from nacl.signing import SigningKey

    from cloud_sync.keys import public_key_b64
    from cloud_sync.wire import WireReading, encode, make_batch, sign_body
    from tests.integration.test_cloud_api import ADMIN, _serve
    from zapd.model import DerKind

    samples = 50 if quick() else 200
    with (
        tempfile.TemporaryDirectory(prefix="bench-live-") as tmp,
        _serve(Path(tmp), f"sqlite+aiosqlite:///{Path(tmp) / 'l.sqlite'}", "live") as cloud,
    ):
        key = SigningKey.generate()
        r = cloud.client.post(
            "/v1/sites",
            json={"site_id": "live", "public_key": public_key_b64(key)},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert r.status_code == 201, r.text
        ws_url = str(cloud.client.base_url).replace("http://", "ws://") + "/graphql"

        def upload(seq: int) -> None:
            reading = WireReading(
                seq=seq, der_id="m", kind=DerKind.METER, ts=datetime.now(UTC), values={"power_w": float(seq)}
            )
            body = encode(make_batch("live", [reading]))
            resp = cloud.client.post("/v1/sites/live/telemetry", content=body, headers=sign_body(key, body))
            assert resp.status_code == 200, resp.text

        async def run() -> list[float]:
            lat: list[float] = []
            async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
                await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {ADMIN}"}}))
                await ws.recv()
                q = 'subscription { telemetry(site: "live") { seq } }'
                await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": q}}))
                await asyncio.sleep(0.5)
                for seq in range(1, samples + 1):
                    t0 = time.perf_counter()
                    await asyncio.to_thread(upload, seq)
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    assert msg["payload"]["data"]["telemetry"]["seq"] == seq, msg
                    lat.append(time.perf_counter() - t0)
                    await asyncio.sleep(0.05)
            return lat

        lat = asyncio.run(run())
    p99 = percentile(lat, 99) * 1000
    return [
        row(
            f"data API: live reading → subscriber p99 ({samples} readings, p50 {percentile(lat, 50) * 1000:.0f} ms)",
            f"{p99:.0f} ms",
            "<= 1000 ms",
            COMMAND,
        )
    ]


def rows() -> list[dict[str, str]]:
    return history_rows() + live_rows()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        import os

        os.environ["ZAPD_BENCH_QUICK"] = "1"
    from bench.table import print_table

    print_table(rows())
    return 0


if __name__ == "__main__":
    sys.exit(main())
