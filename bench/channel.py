"""Live channel at fleet size: N simulated Zaps (lightweight clients in this process, each its own WebSocket,
Ed25519 hello, signature check of every command) connected to one real `zapcloud serve` on loopback.

Figures: event → Zap applied (acknowledged) p50/p99: an admin POST of a DR command for one connected site,
timed until that Zap has verified it and sent its ack, sampled while N are connected; memory per idle
connected Zap in the cloud worker (RSS growth / N); the Zap-side RSS the channel adds (a real ChannelClient
in a child process: RSS with the channel up minus RSS before it dialed).

`make bench` runs 100 and 1,000 (--quick: 100); bigger: `python -m bench.channel --sizes 1000,10000`.
"""

# The harness starts processes and polls from the event loop on purpose (it drives, it is not measured).
# ruff: noqa: ASYNC110, ASYNC220, ASYNC221, ASYNC240
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from nacl.signing import SigningKey

from bench.table import row
from cloud.db import Database
from cloud_sync.channel_wire import (
    Ack,
    Challenge,
    CommandFrame,
    Welcome,
    decode_server_frame,
    encode_frame,
    sign_hello,
    verify_command,
    ws_url,
)
from cloud_sync.keys import key_id, load_verify_key_b64, public_key_b64
from tests.cloud_server import ADMIN, cloud_env, free_port, serve_cmd

COMMAND = "python -m bench.channel --sizes 1000,10000"


async def _serving(port: int, log: Path) -> str:
    """Wait until the server on `port` answers /healthz and its log names its public key; that key (base64)."""
    for _ in range(200):
        key = re.search(r"cloud public key (\S+)", log.read_text())
        with contextlib.suppress(httpx.TransportError):
            async with httpx.AsyncClient(timeout=5.0) as http:
                if key and (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return key.group(1)
        await asyncio.sleep(0.1)
    raise AssertionError(f"server on {port} not up:\n{log.read_text()[-2000:]}")


REPO = Path(__file__).resolve().parents[1]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _register_all(db_url: str, n: int) -> list[tuple[str, SigningKey]]:
    db = Database(db_url)
    await db.create_schema()
    sites = []
    now = datetime.now(UTC)
    for i in range(n):
        key = SigningKey.generate()
        site_id = f"bench-{i:05d}"
        await db.upsert_site(site_id, public_key_b64(key), key_id(key), now=now)
        sites.append((site_id, key))
    await db.dispose()
    return sites


class SimZap:
    def __init__(self, site_id: str, key: SigningKey, url: str, cloud_key: Any) -> None:
        self.site_id, self.key, self.url, self.cloud_key = site_id, key, url, cloud_key
        self.applied: dict[str, float] = {}
        self.ready = asyncio.Event()
        self.retries = 0

    async def run(self) -> None:
        """Connect and serve; a refused or failed connect is retried after a jittered pause, as zapd does."""
        import random

        while True:
            try:
                await self._session()
            except (OSError, TimeoutError, Exception) as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                self.retries += 1
                await asyncio.sleep(random.uniform(0.0, 5.0))

    async def _session(self) -> None:
        from websockets.asyncio.client import connect

        origin = self.url.split("://", 1)[1].split("/", 1)[0]
        async with connect(self.url, compression=None, proxy=None, max_size=16384, open_timeout=60) as ws:
            ch = decode_server_frame(await ws.recv())
            assert isinstance(ch, Challenge)
            await ws.send(encode_frame(sign_hello(self.key, key_id(self.key), ch.challenge, origin, self.site_id,
                                                  datetime.now(UTC))))  # fmt: skip
            assert isinstance(decode_server_frame(await ws.recv()), Welcome)
            self.ready.set()
            async for data in ws:
                frame = decode_server_frame(data)
                if isinstance(frame, CommandFrame):
                    cmd = verify_command(frame, self.cloud_key, site_id=self.site_id, now=datetime.now(UTC))
                    self.applied[cmd.command_id] = time.perf_counter()
                    ack = Ack(command_id=cmd.command_id, result="applied", applied={"import_limit_w": 1000.0},
                              applied_at=datetime.now(UTC))  # fmt: skip
                    await ws.send(encode_frame(ack))


async def _measure(n: int, samples: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-channel-") as tmp_s:
        tmp = Path(tmp_s)
        db_url = f"sqlite+aiosqlite:///{tmp / 'cloud.sqlite'}"
        sites = await _register_all(db_url, n)
        port = free_port()
        log = (tmp / "serve.log").open("wb")
        proc = subprocess.Popen(serve_cmd(port, db_url, tmp / "cloud.key", "--no-planner", "--admin-rate", "10000",
                                          "--admin-burst", "10000"),
                                stdout=log, stderr=subprocess.STDOUT, env=cloud_env(), cwd=REPO)  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            admin = {"Authorization": f"Bearer {ADMIN}"}
            async with httpx.AsyncClient(base_url=base, headers=admin, timeout=30.0) as http:
                cloud_key = load_verify_key_b64(await _serving(port, tmp / "serve.log"))
                await asyncio.sleep(1.0)
                rss_before = rss_kb(proc.pid)
                zaps = [SimZap(s, k, ws_url(base), cloud_key) for s, k in sites]
                tasks = []
                for i, z in enumerate(zaps):
                    tasks.append(asyncio.create_task(z.run()))
                    if i % 30 == 29:
                        # ~300 arrivals a second: what 10,000 Zaps whose first retry is uniform in 0..30 s
                        # (full jitter, cloud_sync/channel.py) bring to a restarted cloud
                        await asyncio.sleep(0.1)
                await asyncio.wait_for(asyncio.gather(*(z.ready.wait() for z in zaps)), 300)
                await asyncio.sleep(3.0)  # idle: status flush, GC settle
                rss_after = rss_kb(proc.pid)
                now = datetime.now(UTC)
                action = {"kind": "dr", "start": now.isoformat(), "end": (now + timedelta(hours=1)).isoformat(),
                          "import_limit_kw": 1.0}  # fmt: skip
                lat: list[float] = []
                for i in range(-5, samples):  # the first five warm the worker up (lazy imports), not counted
                    z = zaps[(i * 7919) % n]
                    t0 = time.perf_counter()
                    r = await http.post(f"/v1/sites/{z.site_id}/commands", json={"action": action})
                    cid = r.json()["command_id"]
                    while cid not in z.applied:
                        await asyncio.sleep(0.001)
                    if i >= 0:
                        lat.append(z.applied[cid] - t0)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            log.close()
            if os.environ.get("BENCH_CHANNEL_KEEP"):
                import shutil

                shutil.copy(tmp / "serve.log", os.environ["BENCH_CHANNEL_KEEP"])
    lat.sort()
    return {
        "retries": float(sum(z.retries for z in zaps)),
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "kb_per_conn": (rss_after - rss_before) / n,
    }


_ZAP_RSS = r"""
import asyncio, base64, sys, pathlib, time
from datetime import UTC, datetime
from cloud_sync.session import CloudSync
from cloud_sync.channel import LiveState
from nacl.signing import SigningKey
from zapd.clock import SystemClock
from zapd.config import CloudConfig
from zapd.store import Store

def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])

async def main():
    port, seed, cloud_pub, tmp = sys.argv[1], sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4])
    key = SigningKey(base64.b64decode(seed))
    store = await Store.open(tmp / 'zap.sqlite')
    cfg = CloudConfig(url=f'http://127.0.0.1:{port}', public_key=cloud_pub)
    sync = CloudSync(config=cfg, site_id='bench-00000', key=key, store=store, clock=SystemClock(), capabilities=list)
    await sync.load()
    ch = sync.enable_channel(override=None, grid_w=lambda: 0.0, live=lambda: LiveState(None, 'up', None, None),
                             site_import_w=1e4, site_export_w=None)
    await asyncio.sleep(0.5)
    before = rss()
    task = asyncio.create_task(ch.run())
    for _ in range(200):
        if ch.state == 'up':
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)
    print(ch.state, rss() - before)
    task.cancel()

asyncio.run(main())
"""


async def _zap_rss() -> float:
    with tempfile.TemporaryDirectory(prefix="bench-zaprss-") as tmp_s:
        tmp = Path(tmp_s)
        db_url = f"sqlite+aiosqlite:///{tmp / 'cloud.sqlite'}"
        ((_, key),) = await _register_all(db_url, 1)
        port = free_port()
        with (tmp / "serve.log").open("wb") as log:
            proc = subprocess.Popen(serve_cmd(port, db_url, tmp / "cloud.key", "--no-planner"), stdout=log,
                                    stderr=subprocess.STDOUT, env=cloud_env(), cwd=REPO)  # fmt: skip
        try:
            cloud_key_b64 = await _serving(port, tmp / "serve.log")
            seed = base64.b64encode(bytes(key)).decode()
            out = subprocess.run([sys.executable, "-c", _ZAP_RSS, str(port), seed, cloud_key_b64, str(tmp)],
                                 capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                 timeout=60)  # fmt: skip
            state, kb = out.stdout.split()[-2:]
            assert state == "up", out.stderr[-2000:]
            return int(kb) / 1024
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def rows(sizes: list[int] | None = None) -> list[dict[str, str]]:
    quick = os.environ.get("ZAPD_BENCH_QUICK") == "1"
    sizes = sizes or ([100] if quick else [100, 1000])
    out = []
    for n in sizes:
        r = asyncio.run(_measure(n, samples=100 if n <= 1000 else 200))
        out += [
            row(f"channel: event → Zap applied p50, {n:,} connected", f"{r['p50_ms']:.1f} ms", "<= 200 ms", COMMAND),
            row(f"channel: event → Zap applied p99, {n:,} connected", f"{r['p99_ms']:.1f} ms", "<= 1000 ms", COMMAND),
            row(f"channel: connect retries, {n:,} dialing at ~300/s", f"{r['retries']:.0f}", "-", COMMAND),
            row(
                f"channel: cloud memory per idle Zap, {n:,} connected",
                f"{r['kb_per_conn']:.1f} kB",
                "<= 50 kB",
                COMMAND,
            ),
        ]
    out.append(row("channel: Zap RSS added by the channel", f"{asyncio.run(_zap_rss()):.2f} MB", "<= 3 MB", COMMAND))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.channel", description=__doc__)
    parser.add_argument("--sizes", default="100,1000", help="comma-separated numbers of connected Zaps")
    args = parser.parse_args()
    from bench.table import print_table

    print_table(rows([int(s) for s in args.sizes.split(",")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
