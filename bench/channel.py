"""Live channel at fleet size: N simulated Zaps connected to one real `zapcloud serve` on loopback.

The Zaps are light clients in up to four client processes (250 each, up to 2,500), so that at 10,000 the measuring
side's own event loop is not what is measured. Each has its own WebSocket dialed with the Zap's options,
the Ed25519 hello, a signature check of every command and its ack, and reconnects under the Zap's own
loop and policy (cloud_sync/channel.keep_connected, reconnect_backoff: full jitter, 0..30 s first).

Figures: event → Zap applied (acknowledged) p50/p99/max: an admin POST of a DR command for one
connected site, timed until that Zap has verified it and sent its ack (both ends on CLOCK_MONOTONIC),
sampled while N are connected, with the drops and the client processes' own longest GC pause meanwhile;
the connect wave (dialing at ~300/s, what a full-jitter fleet brings); memory per idle connected Zap in the
cloud worker (RSS growth / N); a cloud restart with N connected (SIGTERM, uvicorn closes each channel with
1012, the same port and database again): the busiest second of reconnects and the time until 99 % are
back, from the stop; the Zap-side RSS the channel adds (a real ChannelClient in a child process). The
load average of the box is stated with each figure: the box is shared.

Two workers (`--workers 2`, issue 14 item 5: "connected to one worker and to two"): a throwaway PostgreSQL
(tests/pg_cluster.py) and two `zapcloud serve` processes on that database and two ports; the Zaps are split
between them, half dial worker A and half worker B (bench stand-in for the balancer a real deployment has in
front). Every command is POSTed to worker A: for a Zap held by A it goes A's database row + NOTIFY → A, for
a Zap held by B it crosses workers (the row, then the NOTIFY doorbell wakes B's LISTEN, which pushes it:
cloud/server/channel_hub.py); both are timed, and memory per idle Zap is given per worker. No restart there.

`make bench` runs 100 and 1,000 (--quick: 100) on one worker and, where PostgreSQL is installed, 100 on two
(not with --quick); bigger: `python -m bench.channel --sizes 1000,10000`; two workers at other sizes:
`python -m bench.channel --workers 2 --sizes 100,1000`.
"""

# The harness starts processes and polls from the event loop on purpose (it drives, it is not measured).
# ruff: noqa: ASYNC220, ASYNC221, ASYNC240
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from nacl.signing import SigningKey

from bench.table import row
from cloud.db import Database
from cloud_sync.channel import CONNECT_OPTIONS, keep_connected, reconnect_backoff
from cloud_sync.channel_wire import (
    AUTH_TIMEOUT_S,
    Ack,
    Challenge,
    CommandFrame,
    Welcome,
    decode_server_frame,
    encode_frame,
    origin_of,
    sign_hello,
    verify_command,
    ws_url,
)
from cloud_sync.keys import key_id, load_verify_key_b64, public_key_b64
from tests.cloud_server import ADMIN, cloud_env, serve_cmd
from tests.ports import free_port

COMMAND = "python -m bench.channel --sizes 1000,10000"
COMMAND_2 = "python -m bench.channel --workers 2 --sizes 100,1000"


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
    """One light Zap: its own WebSocket dialed as the Zap dials (CONNECT_OPTIONS), the Ed25519 hello, a
    signature check of every command and its ack; reconnects under the Zap's own loop and policy
    (cloud_sync/channel.keep_connected, reconnect_backoff). It reports what happens as lines on stdout."""

    def __init__(self, site_id: str, key: SigningKey, url: str, cloud_key: Any, say: Any) -> None:
        self.site_id, self.key, self.url, self.cloud_key, self.say = site_id, key, url, cloud_key, say
        self.backoff = reconnect_backoff()
        self.welcomed = False

    async def run(self) -> None:
        await keep_connected(self._session, self.backoff, self._ended)

    def _ended(self, error: Exception | None) -> bool:
        self.say("D" if self.welcomed else "F", self.site_id if self.welcomed else _why(error))
        return self.welcomed

    async def _session(self) -> None:
        from websockets.asyncio.client import connect

        self.welcomed = False
        origin = origin_of(self.url)
        async with connect(self.url, **CONNECT_OPTIONS) as ws:
            ch = decode_server_frame(await asyncio.wait_for(ws.recv(), AUTH_TIMEOUT_S))
            if not isinstance(ch, Challenge):
                return
            await ws.send(encode_frame(sign_hello(self.key, key_id(self.key), ch.challenge, origin, self.site_id,
                                                  datetime.now(UTC))))  # fmt: skip
            if not isinstance(decode_server_frame(await asyncio.wait_for(ws.recv(), AUTH_TIMEOUT_S)), Welcome):
                return
            self.welcomed = True
            self.say("U", self.site_id)
            async for data in ws:
                frame = decode_server_frame(data)
                if isinstance(frame, CommandFrame):
                    cmd = verify_command(frame, self.cloud_key, site_id=self.site_id, now=datetime.now(UTC))
                    ack = Ack(command_id=cmd.command_id, result="applied", applied={"import_limit_w": 1000.0},
                              applied_at=datetime.now(UTC))  # fmt: skip
                    await ws.send(encode_frame(ack))
                    self.say("A", cmd.command_id)


def _why(error: Exception | None) -> str:
    """A failed dial's cause, one word: the exception, with the HTTP status or close code it carries."""
    if error is None:
        return "refused"
    response = getattr(error, "response", None)
    rcvd = getattr(error, "rcvd", None)
    detail = getattr(response, "status_code", None) or getattr(rcvd, "code", None)
    return type(error).__name__ + (f":{detail}" if detail else "")


async def _zaps_main(spec_path: str) -> None:
    """A client process: its share of the fleet, dialing at its share of the rate, until stdin closes."""
    import gc
    import json

    spec = json.loads(Path(spec_path).read_text())
    cloud_key = load_verify_key_b64(spec["cloud_key"])

    def say(kind: str, what: str) -> None:
        sys.stdout.write(f"{kind} {what} {time.monotonic():.6f}\n")
        sys.stdout.flush()

    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:  # the client's own pauses, to tell them from the cloud's
        if info["generation"] == 2:
            if phase == "start":
                gc_started[0] = time.perf_counter()
            else:
                say("G", f"{(time.perf_counter() - gc_started[0]) * 1000:.1f}")

    gc.callbacks.append(on_gc)
    zaps = [
        SimZap(site, SigningKey(base64.b64decode(seed)), spec["url"], cloud_key, say) for site, seed in spec["sites"]
    ]
    tasks = []
    pause = 1.0 / spec["dial_per_s"]
    for z in zaps:
        tasks.append(asyncio.create_task(z.run()))
        await asyncio.sleep(pause)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # the parent closes stdin to stop us
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class Fleet:
    """The simulated Zaps in `procs` client processes, so that the measuring side's event loop is not the
    bottleneck at 10,000; what they report (welcomes, drops, failed attempts, acks) gathered here.
    With several `url`s (workers), client process i dials urls[i % len(urls)]: `worker_of` says whose a Zap is."""

    def __init__(self, sites: list[tuple[str, SigningKey]], url: str | Sequence[str], cloud_key_b64: str, tmp: Path,
                 *, procs: int, dial_per_s: float) -> None:  # fmt: skip
        urls = [url] if isinstance(url, str) else list(url)
        if procs < len(urls):
            raise ValueError(f"{procs} client processes cannot dial {len(urls)} workers")
        self.n = len(sites)
        self.worker_of: dict[str, int] = {}
        self.up: set[str] = set()
        self.ups: list[float] = []  # monotonic time of every welcome
        self.drops: list[float] = []
        self.failures: list[float] = []
        self.failure_causes: Counter[str] = Counter()
        self.applied: dict[str, float] = {}
        self.gc_ms: list[tuple[float, float]] = []
        self.changed = asyncio.Event()
        self._specs = []
        for i in range(procs):
            mine = sites[i::procs]
            self.worker_of.update((s, i % len(urls)) for s, _ in mine)
            spec = {"url": urls[i % len(urls)], "cloud_key": cloud_key_b64, "dial_per_s": dial_per_s / procs,
                    "sites": [(s, base64.b64encode(bytes(k)).decode()) for s, k in mine]}  # fmt: skip
            path = tmp / f"zaps-{i}.json"
            path.write_text(__import__("json").dumps(spec))
            self._specs.append(path)
        self._procs: list[asyncio.subprocess.Process] = []
        self._readers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for path in self._specs:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.channel", "--zaps", str(path), cwd=REPO, env=env,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 20,
            )  # fmt: skip
            self._procs.append(proc)
            self._readers.append(asyncio.create_task(self._read(proc)))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            kind, what, at_s = raw.decode().split()
            at = float(at_s)
            if kind == "U":
                self.up.add(what)
                self.ups.append(at)
            elif kind == "D":
                self.up.discard(what)
                self.drops.append(at)
            elif kind == "F":
                self.failures.append(at)
                self.failure_causes[what] += 1
            elif kind == "A":
                self.applied.setdefault(what, at)
            elif kind == "G":
                self.gc_ms.append((at, float(what)))
            self.changed.set()

    async def until(self, cond: Any, within_s: float, what: str, *, must: bool = True) -> bool:
        """Wait for `cond`; False after `within_s` if not `must` (the figure then says how many made it)."""
        deadline = time.monotonic() + within_s
        while not cond():
            left = deadline - time.monotonic()
            if any(p.returncode is not None for p in self._procs) or (left <= 0 and must):
                raise AssertionError(f"{what}: not within {within_s:.0f} s ({len(self.up):,} of {self.n:,} up)")
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
        return True

    async def stop(self) -> None:
        for proc in self._procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self._procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for t in self._readers:
            t.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


def _start_cloud(port: int, db_url: str, tmp: Path, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(serve_cmd(port, db_url, tmp / "cloud.key", "--no-planner", "--admin-rate", "10000",
                                      "--admin-burst", "10000"),
                            stdout=log, stderr=subprocess.STDOUT, env=cloud_env(), cwd=REPO)  # fmt: skip


def _causes(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.most_common(3)) or "none"


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def _wave(ups: list[float], since: float, n: int) -> dict[str, float]:
    """Arrivals after `since`: the busiest second and the time until 99 % (and all) were back."""
    after = sorted(t - since for t in ups if t >= since)
    per_second = Counter(int(t) for t in after)
    return {
        "peak_per_s": float(max(per_second.values(), default=0)),
        "t99_s": after[max(0, math.ceil(0.99 * n) - 1)] if len(after) >= math.ceil(0.99 * n) else math.inf,
        "t100_s": after[-1] if len(after) >= n else math.inf,
    }


@contextlib.contextmanager
def _database(tmp: Path, workers: int) -> Iterator[str]:
    """One worker: a SQLite file. Two: they must share a database and its NOTIFY, so a throwaway PostgreSQL."""
    if workers == 1:
        yield f"sqlite+aiosqlite:///{tmp / 'cloud.sqlite'}"
        return
    from tests.pg_cluster import cluster

    with cluster() as url:
        yield url


def _latency(lat: list[float]) -> dict[str, float]:
    lat = sorted(lat)
    return {
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "max_ms": lat[-1] * 1000,
        "samples": float(len(lat)),
    }


async def _measure(n: int, samples: int, *, restart: bool, workers: int = 1) -> dict[str, Any]:
    """N Zaps on `workers` (1 or 2) workers; commands POSTed to the first, latency per holding worker."""
    if restart and workers != 1:
        raise ValueError("the restart is measured with one worker only")
    procs = max(workers, min(4, math.ceil(n / 250)))
    with tempfile.TemporaryDirectory(prefix="bench-channel-") as tmp_s, _database(Path(tmp_s), workers) as db_url:
        tmp = Path(tmp_s)
        sites = await _register_all(db_url, n)
        logs = [(tmp / name).open("wb") for name in ("serve.log", "serve-b.log")[:workers]]
        ports: list[int] = []
        cloud: list[subprocess.Popen[bytes]] = []
        out: dict[str, Any] = {"procs": procs, "workers": workers}
        fleet: Fleet | None = None
        try:
            for w, log in enumerate(logs):  # one after the other: the second reads the key the first wrote
                ports.append(free_port())
                cloud.append(_start_cloud(ports[w], db_url, tmp, log))
                cloud_key_b64 = await _serving(ports[w], Path(log.name))
            proc, port, log = cloud[0], ports[0], logs[0]
            bases = [f"http://127.0.0.1:{p}" for p in ports]
            admin = {"Authorization": f"Bearer {ADMIN}"}
            async with httpx.AsyncClient(base_url=bases[0], headers=admin, timeout=30.0) as http:
                await asyncio.sleep(1.0)
                rss_before = [rss_kb(c.pid) for c in cloud]
                # ~300 first dials a second: what 10,000 Zaps whose first retry is uniform in 0..30 s bring
                fleet = Fleet(sites, [ws_url(b) for b in bases], cloud_key_b64, tmp, procs=procs, dial_per_s=300.0)
                out["load_connect"] = _load()
                t0 = time.monotonic()
                await fleet.start()
                await fleet.until(lambda: len(fleet.up) >= n, 600, "the connect wave", must=False)
                out["connect_s"] = time.monotonic() - t0
                out["connected"] = len(fleet.up)  # all of them, or as many as made it in 600 s
                out["retries"] = len(fleet.failures)
                out["causes"] = _causes(fleet.failure_causes)
                await asyncio.sleep(3.0)  # idle: status flush, GC settle
                held = Counter(fleet.worker_of.values())
                kb = [(rss_kb(c.pid) - rss_before[w]) / held[w] for w, c in enumerate(cloud)]
                out["kb_per_conn"], out["kb_per_conn_by_worker"] = kb[0], kb
                now = datetime.now(UTC)
                action = {"kind": "dr", "start": now.isoformat(), "end": (now + timedelta(hours=1)).isoformat(),
                          "import_limit_kw": 1.0}  # fmt: skip
                lat: list[list[float]] = [[] for _ in cloud]
                drops_before, out["load_probe"] = len(fleet.drops), _load()
                probe_start = time.monotonic()
                for i in range(-5, samples):  # the first five warm the worker up (lazy imports), not counted
                    site_id = sites[(i * 7919) % n][0]  # 7919 odd: with two workers, A and B in turn
                    if site_id not in fleet.up:
                        continue  # not connected (yet): its command would wait for it, not measure the channel
                    t_post = time.monotonic()
                    r = await http.post(f"/v1/sites/{site_id}/commands", json={"action": action})
                    cid = r.json()["command_id"]
                    await fleet.until(lambda cid=cid: cid in fleet.applied, 60, "an ack")
                    if i >= 0:
                        lat[fleet.worker_of[site_id]].append(fleet.applied[cid] - t_post)
                out.update(_latency([x for by in lat for x in by]))
                out["by_worker"] = [_latency(by) for by in lat]
                out["load_probe"] = f"{out['load_probe']}-{_load()}"
                out["drops_probing"] = len(fleet.drops) - drops_before
                out["client_gc_max_ms"] = max((ms for at, ms in fleet.gc_ms if at >= probe_start), default=0.0)
                if restart:
                    out.update(await _restart(fleet, proc, port, db_url, tmp, log, len(fleet.up)))
                    cloud[0] = out.pop("proc")
        finally:
            if fleet is not None:
                await fleet.stop()
            for c in cloud:
                c.terminate()
                c.wait(timeout=30)
            for log in logs:
                log.close()
            if os.environ.get("BENCH_CHANNEL_KEEP"):
                import shutil

                shutil.copy(tmp / "serve.log", os.environ["BENCH_CHANNEL_KEEP"])
    return out


async def _restart(fleet: Fleet, proc: subprocess.Popen[bytes], port: int, db_url: str, tmp: Path, log: Any,
                   n: int) -> dict[str, Any]:  # fmt: skip
    """Stop the worker (SIGTERM: uvicorn closes every channel with 1012) and start it again on the same
    port and database; the Zaps come back under their own backoff. Arrivals counted from the stop."""
    load = _load()
    ups_before, failures_before, drops_before = len(fleet.ups), len(fleet.failures), len(fleet.drops)
    causes_before = Counter(fleet.failure_causes)
    t_stop = time.monotonic()
    proc.terminate()
    await asyncio.get_running_loop().run_in_executor(None, proc.wait, 60)
    t_exit = time.monotonic()
    new = _start_cloud(port, db_url, tmp, log)
    await _serving(port, tmp / "serve.log")
    t_ready = time.monotonic()
    # Everyone was dropped (the log's key line is old too, so wait for the new one's /healthz above).
    await fleet.until(lambda: len(fleet.ups) - ups_before >= n and len(fleet.up) >= n, 400, "the reconnect wave",
                      must=False)  # fmt: skip
    wave = _wave(fleet.ups[ups_before:], t_stop, n)
    dropped = sorted(t - t_stop for t in fleet.drops[drops_before:])
    return {
        "proc": new,
        "load_restart": load,
        "restart_down_s": t_ready - t_stop,
        "restart_exit_s": t_exit - t_stop,
        "restart_all_dropped_s": dropped[-1] if dropped else math.nan,
        "restart_failures": len(fleet.failures) - failures_before,
        "restart_causes": _causes(fleet.failure_causes - causes_before),
        **{f"restart_{k}": v for k, v in wave.items()},
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


def _two_worker_rows(n: int, r: dict[str, Any]) -> list[dict[str, str]]:
    """The rows of one size on two workers: latency by the worker that holds the Zap, memory per worker."""
    out = []
    for w, path in ((0, "POSTed to A, Zap on A"), (1, "POSTed to A, Zap on B: cross-worker, NOTIFY")):
        b = r["by_worker"][w]
        out.append(
            row(
                f"channel, 2 workers (PostgreSQL): event → Zap applied p99, {path}, {n:,} connected "
                f"(half on each), load {r['load_probe']} ({b['samples']:.0f} samples, drops meanwhile "
                f"{r['drops_probing']}, client GC max {r['client_gc_max_ms']:.0f} ms)",
                f"{b['p99_ms']:.1f} ms (p50 {b['p50_ms']:.1f}, max {b['max_ms']:.1f})",
                "<= 1000 ms",
                COMMAND_2,
            )
        )
    kb = r["kb_per_conn_by_worker"]
    out += [
        row(
            f"channel, 2 workers: connect wave, {n:,} dialing at ~300/s in {r['procs']} client processes, load "
            f"{r['load_connect']} (failed dials by cause: {r['causes']})",
            f"{r['connected']:,} up in {r['connect_s']:.1f} s, {r['retries']} retries",
            "-",
            COMMAND_2,
        ),
        row(
            f"channel, 2 workers: cloud memory per idle Zap, {n:,} connected (half on each)",
            f"{max(kb):.1f} kB (A {kb[0]:.1f}, B {kb[1]:.1f})",
            "<= 50 kB",
            COMMAND_2,
        ),
    ]
    return out


def _have_postgres() -> bool:
    from tests.pg_cluster import pg_bindir

    try:
        pg_bindir()
    except SystemExit:
        return False
    return True


def rows(sizes: list[int] | None = None, workers: int = 1) -> list[dict[str, str]]:
    """`make bench` (no sizes, not --quick) adds the two workers at 100 (~15 s) where PostgreSQL is installed."""
    quick = os.environ.get("ZAPD_BENCH_QUICK") == "1"
    two_at_100 = not sizes and not quick and workers == 1 and _have_postgres()
    sizes = sizes or ([100] if quick else [100, 1000])
    out = []
    if workers != 1:
        for n in sizes:
            out += _two_worker_rows(n, asyncio.run(_measure(n, samples=200, restart=False, workers=workers)))
        return out
    for n in sizes:
        r = asyncio.run(_measure(n, samples=100 if n <= 1000 else 200, restart=True))
        probe = f"{n:,} connected, load {r['load_probe']}"
        out += [
            row(f"channel: event → Zap applied p50, {probe}", f"{r['p50_ms']:.1f} ms", "<= 200 ms", COMMAND),
            row(f"channel: event → Zap applied p99, {probe}", f"{r['p99_ms']:.1f} ms", "<= 1000 ms", COMMAND),
            row(
                f"channel: event → Zap applied max, {probe} (drops meanwhile {r['drops_probing']}, client GC "
                f"max {r['client_gc_max_ms']:.0f} ms)",
                f"{r['max_ms']:.1f} ms",
                "-",
                COMMAND,
            ),
            row(
                f"channel: connect wave, {n:,} dialing at ~300/s in {r['procs']} client processes, load "
                f"{r['load_connect']} (failed dials by cause: {r['causes']})",
                f"{r['connected']:,} up in {r['connect_s']:.1f} s, {r['retries']} retries",
                "-",
                COMMAND,
            ),
            row(
                f"channel: cloud memory per idle Zap, {n:,} connected",
                f"{r['kb_per_conn']:.1f} kB",
                "<= 50 kB",
                COMMAND,
            ),
            row(
                f"channel: cloud restart with {n:,} connected, busiest second of reconnects, load {r['load_restart']}",
                f"{r['restart_peak_per_s']:.0f}/s ({r['restart_peak_per_s'] / n:.1%})",
                f"<= {0.05 * n:.0f}/s" if n >= 1000 else "-",  # 5 % of N; at 100 one second's noise is that
                COMMAND,
            ),
            row(
                f"channel: cloud restart with {n:,} connected, 99 % back (all dropped "
                f"{r['restart_all_dropped_s']:.1f} s, old worker exited {r['restart_exit_s']:.1f} s, new one up "
                f"{r['restart_down_s']:.1f} s after the stop; {r['restart_failures']} failed dials: "
                f"{r['restart_causes']})",
                f"{r['restart_t99_s']:.1f} s",
                "<= 90 s",
                COMMAND,
            ),
        ]
    out.append(row("channel: Zap RSS added by the channel", f"{asyncio.run(_zap_rss()):.2f} MB", "<= 3 MB", COMMAND))
    if two_at_100:
        out += _two_worker_rows(100, asyncio.run(_measure(100, samples=200, restart=False, workers=2)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.channel", description=__doc__)
    parser.add_argument("--sizes", default="100,1000", help="comma-separated numbers of connected Zaps")
    workers = "zapcloud serve workers: 1 (SQLite) or 2 (a throwaway PostgreSQL, the Zaps split between them)"
    parser.add_argument("--workers", type=int, choices=(1, 2), default=1, help=workers)
    parser.add_argument("--zaps", help=argparse.SUPPRESS)  # internal: run one client process from this spec
    args = parser.parse_args()
    if args.zaps:
        asyncio.run(_zaps_main(args.zaps))
        return 0
    from bench.table import print_table

    print_table(rows([int(s) for s in args.sizes.split(",")], workers=args.workers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
