"""A real `zapd run` on the simulated site uploading to a real `zapcloud serve`, and a GraphQL
graphql-transport-ws subscriber on that cloud: what the subscriber receives and how late.

Shared by tests/e2e/test_live_subscription.py (what arrives) and bench/live.py (the latency figure).
The site runs in real time (speed 1): a reading's `ts` is the site-clock instant zapd read it, which on a
speed-1 clock anchored at `wall_ref` is a wall-clock instant, so reading → subscriber latency is the
subscriber's receive time minus that instant: zapd's poll-to-outbox, its upload interval, the HTTP ingest,
the subscription's database poll (cloud/dataapi/graphql.py LIVE_POLL_S) and the WebSocket push.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import websockets

from tests.e2e.harness import ADMIN, SIM_START, Site

UPLOAD_INTERVAL_S = 0.5


@dataclass(frozen=True, slots=True)
class Received:
    seq: int
    der_id: str
    ts: datetime
    values: dict[str, Any]
    latency_s: float


def live_site(tmp: Path) -> Site:
    """Cloud, simulator and daemon on loopback, real time, uploading every UPLOAD_INTERVAL_S."""
    site = Site(tmp, speed=1.0)
    site.zapd_overrides = {
        "upload_interval_s": UPLOAD_INTERVAL_S,
        "poll_s": 1,
        "meter_poll_s": 1,
        "tick_s": 1,
        "channel": False,
    }
    site.start_cloud()
    site.keygen()
    site.register()
    site.start_sim(p1_interval_s=1.0, step_s=1.0)
    site.start_zapd()
    return site


async def subscribe(site: Site, seconds: float, *, warmup_s: float = 2.0) -> list[Received]:
    """Subscribe to the site's telemetry for `seconds` (after `warmup_s`), with the admin token."""
    wall_ref = float(site.clock_env.split("@")[2])
    url = f"ws://127.0.0.1:{site.cloud_port}/graphql"
    query = f'subscription {{ telemetry(site: "{site.site_id}") {{ seq derId ts values }} }}'
    out: list[Received] = []
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {ADMIN}"}}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ack["type"] == "connection_ack", ack
        await ws.send(json.dumps({"id": "live", "type": "subscribe", "payload": {"query": query}}))
        started = time.monotonic()
        while time.monotonic() - started < warmup_s + seconds:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            received = time.time()
            assert msg["type"] == "next", msg
            assert not msg["payload"].get("errors"), msg
            r = msg["payload"]["data"]["telemetry"]
            ts = datetime.fromisoformat(r["ts"])
            produced = wall_ref + (ts - SIM_START).total_seconds() / site.speed
            if time.monotonic() - started >= warmup_s:
                out.append(Received(int(r["seq"]), r["derId"], ts, r["values"], received - produced))
    return out


async def upload_to_subscriber(site: Site, n: int = 20) -> list[float]:
    """The cloud's part alone: a signed upload of one reading (a second site, our own key) to its push.

    Seconds from the start of the POST to the subscriber's receipt, per reading.
    """
    from nacl.signing import SigningKey

    from cloud_sync.keys import public_key_b64
    from cloud_sync.wire import WireReading, encode, make_batch, sign_body
    from zapd.model import DerKind

    key = SigningKey.generate()
    sid = "direct-upload"
    with site.http() as c:
        r = c.post(
            "/v1/sites",
            json={"site_id": sid, "public_key": public_key_b64(key)},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert r.status_code == 201, r.text
    url = f"ws://127.0.0.1:{site.cloud_port}/graphql"
    query = f'subscription {{ telemetry(site: "{sid}") {{ seq }} }}'
    out: list[float] = []
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {ADMIN}"}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "d", "type": "subscribe", "payload": {"query": query}}))
        await asyncio.sleep(0.5)
        for seq in range(1, n + 1):
            reading = WireReading(
                seq=seq, der_id="meter", kind=DerKind.METER, ts=site.clock.now(), values={"power_w": float(seq)}
            )
            body = encode(make_batch(sid, [reading]))
            sent = time.monotonic()

            def post(body: bytes = body) -> int:
                with site.http() as c:
                    return c.post(f"/v1/sites/{sid}/telemetry", content=body, headers=sign_body(key, body)).status_code

            assert await asyncio.to_thread(post) == 200
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert msg["payload"]["data"]["telemetry"]["seq"] == seq, msg
            out.append(time.monotonic() - sent)
    return out


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


__all__ = ["UPLOAD_INTERVAL_S", "Received", "live_site", "percentile", "subscribe", "upload_to_subscriber"]
