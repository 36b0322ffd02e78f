"""The Zap side of the live channel without a network: reconnect spread, and DR windows only ever tighten."""

from __future__ import annotations

import asyncio
import heapq
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from websockets.asyncio.server import ServerConnection

from cloud_sync.channel import ChannelClient, LiveState, reconnect_backoff
from cloud_sync.channel_wire import Challenge, Hello, Welcome, decode_zap_frame, encode_frame, new_challenge
from cloud_sync.commands import DemandResponse, DrWindow
from drivers.resilience import Backoff
from zapd.clock import SystemClock
from zapd.model import Intent

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_a_thousand_reconnects_after_a_restart_are_spread() -> None:
    """Every Zap's first retry after the cloud went away (what ChannelClient uses: 30 s, full jitter)."""
    delays = [Backoff(30.0, 300.0, full_jitter=True).next_delay() for _ in range(1000)]
    assert all(0.0 <= d <= 30.0 for d in delays)
    per_second = Counter(int(d) for d in delays)
    # Uniform over 30 s: ~33 a second; never a crowd in one second, and the whole window is used.
    assert max(per_second.values()) <= 80, per_second.most_common(3)
    assert len(per_second) >= 28
    assert min(delays) < 2.0 and max(delays) > 28.0


class _KV:
    def __init__(self) -> None:
        self.kv: dict[str, str] = {}

    async def kv_get(self, key: str) -> str | None:
        return self.kv.get(key)

    async def kv_set(self, key: str, value: str) -> None:
        self.kv[key] = value


limits = st.one_of(st.none(), st.floats(min_value=0, max_value=1e6, allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(plan_import=limits, plan_export=limits, windows=st.lists(st.tuples(limits, limits), max_size=4))
def test_a_dr_window_never_loosens_a_limit(
    plan_import: float | None, plan_export: float | None, windows: list[tuple[float | None, float | None]]
) -> None:
    dr = DemandResponse(_KV())  # type: ignore[arg-type]
    for i, (imp, exp) in enumerate(windows):
        asyncio.run(dr.add(DrWindow(f"{i:032x}", NOW - timedelta(minutes=1), NOW + timedelta(hours=1), imp, exp), NOW))
    out = dr.overlay(NOW, Intent(grid_import_limit_w=plan_import, grid_export_limit_w=plan_export))
    for before, after, mine in (
        (plan_import, out.grid_import_limit_w, [w[0] for w in windows]),
        (plan_export, out.grid_export_limit_w, [w[1] for w in windows]),
    ):
        bounds = [b for b in (before, *mine) if b is not None]
        assert after == (min(bounds) if bounds else None)
    # Outside the window nothing changes.
    later = dr.overlay(NOW + timedelta(hours=2), Intent(grid_import_limit_w=plan_import))
    assert later.grid_import_limit_w == plan_import


async def test_dr_windows_survive_a_restart(tmp_path: Path) -> None:
    kv = _KV()
    dr = DemandResponse(kv)  # type: ignore[arg-type]
    await dr.add(DrWindow("a" * 32, NOW, NOW + timedelta(hours=1), 1500.0, None), NOW)
    again = DemandResponse(kv)  # type: ignore[arg-type]
    await again.load(NOW + timedelta(minutes=1))
    assert again.overlay(NOW + timedelta(minutes=1), Intent()).grid_import_limit_w == 1500.0
    gone = DemandResponse(kv)  # type: ignore[arg-type]
    await gone.load(NOW + timedelta(hours=2))
    assert gone.windows == []


def test_a_restart_wave_through_a_busy_cloud_stays_spread() -> None:
    """10,000 Zaps whose channel a cloud restart cut at t=0, under the exact policy ChannelClient runs
    (cloud_sync/channel.reconnect_backoff, reset after a welcomed session as keep_connected does).

    The cloud is back after 5 s and then takes at most 500 handshakes a second (what one worker of this
    box does, bench/channel.py); an attempt while it is down or full fails and backs off. Seeded: the
    figures are the policy's, not luck."""
    n, down_s, capacity = 10_000, 5.0, 500
    master = random.Random(14)
    pending = [(reconnect_backoff(rng=random.Random(master.getrandbits(64))), 0.0) for _ in range(n)]
    attempts: Counter[int] = Counter()
    accepted: Counter[int] = Counter()
    back_at: list[float] = []
    heap = [(policy.next_delay(), i) for i, (policy, _) in enumerate(pending)]  # welcomed before: reset
    heapq.heapify(heap)
    while heap:
        t, i = heapq.heappop(heap)
        second = int(t)
        attempts[second] += 1
        if t >= down_s and accepted[second] < capacity:
            accepted[second] += 1
            back_at.append(t)
        else:
            heapq.heappush(heap, (t + pending[i][0].next_delay(), i))
    back_at.sort()
    # No second brings more than 5 % of the fleet to the door (a crowd would be 100 %), and the first
    # retries fill the window: the busiest second holds at most twice the uniform share.
    assert max(attempts.values()) <= 0.05 * n, attempts.most_common(3)
    assert max(accepted.values()) < capacity, accepted.most_common(3)  # the cloud is never saturated
    # 99 % are back within the first window plus one doubled one; nobody waits for the 300 s cap.
    assert back_at[int(0.99 * n) - 1] <= 90.0, back_at[int(0.99 * n) - 1]
    assert len(back_at) == n


class _WelcomeThenDrop:
    """A loopback WebSocket server speaking the channel's handshake: the first `refuse` connections are
    cut before the challenge, the next one is welcomed and then closed with 1012 (service restart, what
    uvicorn sends when zapcloud stops); it records the client's backoff attempt at each arrival."""

    def __init__(self, refuse: int) -> None:
        self.refuse = refuse
        self.arrivals = 0
        self.attempt_at_arrival: list[int] = []
        self.client: ChannelClient | None = None
        self.done = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        self.arrivals += 1
        assert self.client is not None
        self.attempt_at_arrival.append(self.client.backoff.attempt)
        if self.arrivals <= self.refuse:
            await ws.close(1011)
            return
        if self.arrivals > self.refuse + 1:
            self.done.set()
            await ws.close(1000)
            return
        host = ws.request.headers["Host"] if ws.request is not None else ""
        await ws.send(encode_frame(Challenge(challenge=new_challenge(), origin=host, server_time=NOW)))
        hello = decode_zap_frame(await ws.recv())
        assert isinstance(hello, Hello)
        await ws.send(encode_frame(Welcome(site_id=hello.site_id, plan_version=None)))
        await ws.close(1012)


async def test_a_dropped_channel_starts_its_backoff_over() -> None:
    """A Zap that needed three tries to connect, then lost the welcomed channel to a cloud restart, retries
    within the first window (attempt 0 → 0..reconnect_s), not after the doubled delays of its earlier
    failures. A drop ends the session with an exception (1012 is no clean close), and that must count as
    a session that was up."""
    from websockets.asyncio.server import serve

    server = _WelcomeThenDrop(refuse=3)
    async with serve(server.handler, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        client = ChannelClient(
            url=f"ws://127.0.0.1:{port}/v1/channel",
            site_id="site-a",
            key=SigningKey.generate(),
            cloud_key=SigningKey.generate().verify_key,
            clock=SystemClock(),
            fetcher=_Fetcher(),
            nonces=None,  # type: ignore[arg-type]  # no command is sent
            applier=None,  # type: ignore[arg-type]
            live=lambda: LiveState(None, "up", None, None),
            reconnect_s=0.01,
            reconnect_max_s=10.0,
        )
        server.client = client
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(server.done.wait(), 10.0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert client.connects == 1
    # three refused tries (attempts 0, 1, 2 before them), the welcomed one after attempt 3, then a fresh start
    assert server.attempt_at_arrival == [0, 1, 2, 3, 1], server.attempt_at_arrival


class _Fetcher:
    accepted_version: int | None = None

    async def fetch_now(self) -> int | None:
        return None
