"""The cloud's channel handshake without a network (a fake WebSocket): what is charged to an address.

A late hello (the worker or the Zap's line is slow, as in a reconnect wave) is refused and counted but
not charged to the address's failure budget: one address may be a carrier NAT in front of many Zaps,
and a wave through a busy worker must not lock them all out. A hello that is wrong is charged.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

import cloud.server.channel as channel
from cloud.server.channel import ChannelEndpoint
from cloud.server.limits import Limits, Rate, TokenBuckets
from cloud.server.metrics import Metrics

ADDRESS = "100.64.0.1"  # a carrier-grade NAT address (RFC 6598)


class _SilentWs:
    """A client that got the challenge and says nothing (or, with `text`, sends that instead of a hello)."""

    def __init__(self, text: str | None = None) -> None:
        self.headers = {"host": "cloud.example:443"}
        self.text = text
        self.sent: list[str] = []
        self.closed: int | None = None

    async def send_text(self, data: str) -> None:
        self.sent.append(data)

    async def receive(self) -> dict[str, Any]:
        if self.text is None:
            await asyncio.Event().wait()  # never answers
        return {"type": "websocket.receive", "text": self.text}

    async def close(self, code: int = 1000) -> None:
        self.closed = code


def _endpoint(fails: TokenBuckets, metrics: Metrics) -> ChannelEndpoint:
    return ChannelEndpoint(
        db=None,  # type: ignore[arg-type]  # a refused handshake never reaches the site lookup
        hub=None,  # type: ignore[arg-type]
        metrics=metrics,
        limits=Limits(),
        clock=lambda: datetime.now(UTC),
        fail_buckets=fails,
        max_skew_s=30.0,
    )


async def test_late_hellos_never_lock_an_address_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channel, "AUTH_TIMEOUT_S", 0.01)
    fails, metrics = TokenBuckets(Rate(per_s=1.0, burst=30.0)), Metrics()
    endpoint = _endpoint(fails, metrics)
    sockets = [_SilentWs() for _ in range(60)]  # twice the burst, all at once
    assert await asyncio.gather(*(endpoint._authenticate(ws, ADDRESS) for ws in sockets)) == [None] * 60  # type: ignore[arg-type]
    assert all(ws.closed == channel.CLOSE_POLICY for ws in sockets)
    assert metrics.channel_events[("cloud", "auth_timeout")] == 60
    assert fails.spent(ADDRESS) == 0.0  # the next Zap behind that address is let in


async def test_wrong_hellos_are_charged_to_the_address() -> None:
    fails, metrics = TokenBuckets(Rate(per_s=1.0, burst=30.0)), Metrics()
    endpoint = _endpoint(fails, metrics)
    for _ in range(31):
        await endpoint._authenticate(_SilentWs('{"t": "status"}'), ADDRESS)  # type: ignore[arg-type]
    assert fails.spent(ADDRESS) > 0.0


class _Upgrade(_SilentWs):
    """An upgrade request that records whether it was accepted or denied (and with what status)."""

    def __init__(self) -> None:
        super().__init__()
        self.client = type("Addr", (), {"host": ADDRESS})()
        self.accepted = False
        self.denied: int | None = None

    async def accept(self) -> None:
        self.accepted = True

    async def send_denial_response(self, response: Any) -> None:
        self.denied = response.status_code


async def test_a_wave_past_the_pending_hellos_is_refused_at_the_door(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker with MAX_PENDING_HELLOS handshakes waiting for their hello refuses the next upgrade at once
    (503) instead of queueing it behind them; once they are done it takes new ones again."""
    monkeypatch.setattr(channel, "AUTH_TIMEOUT_S", 0.5)
    fails, metrics = TokenBuckets(Rate(per_s=1.0, burst=30.0)), Metrics()
    endpoint = _endpoint(fails, metrics)
    waiting = [_Upgrade() for _ in range(channel.MAX_PENDING_HELLOS)]
    tasks = [asyncio.create_task(endpoint.handle(ws)) for ws in waiting]  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert endpoint.pending_hellos == channel.MAX_PENDING_HELLOS and all(ws.accepted for ws in waiting)
    late = _Upgrade()
    await endpoint.handle(late)  # type: ignore[arg-type]
    assert (late.accepted, late.denied) == (False, 503)
    assert metrics.channel_events[("cloud", "hello_queue_full")] == 1
    await asyncio.gather(*tasks)  # their hellos never came: timed out, the slots are free again
    assert endpoint.pending_hellos == 0 and metrics.channel_open == 0
    again = _Upgrade()
    task = asyncio.create_task(endpoint.handle(again))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert again.accepted and again.denied is None
    await task
