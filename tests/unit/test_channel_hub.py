"""The cloud's channel hub on a real SQLite file: a command queued from "any worker" reaches the
connection held here, signed; the Zap's answer is stored once, for its own site only."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from cloud.db import Database
from cloud.server.channel_hub import ChannelHub, command_acks, live_sites, notify_plan, send_command
from cloud.server.metrics import Metrics
from cloud_sync.channel_wire import (
    Ack,
    ChannelError,
    CommandFrame,
    DrAction,
    PlanAvailable,
    Status,
    decode_server_frame,
    verify_command,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class FakeConn:
    def __init__(self, site_id: str) -> None:
        self.site_id = site_id
        self.frames: asyncio.Queue[str] = asyncio.Queue()

    async def send_text(self, data: str) -> None:
        await self.frames.put(data)


@pytest.fixture
async def hub(tmp_path: Path):  # type: ignore[no-untyped-def]
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    await db.create_schema()
    h = ChannelHub(db, Metrics(), lambda: NOW)
    await h.start()
    yield h
    await h.stop()
    await db.dispose()


async def test_command_reaches_the_connected_site_and_the_ack_is_stored(hub: ChannelHub) -> None:
    key = SigningKey.generate()
    conn = FakeConn("s1")
    hub.attach(conn)
    action = DrAction(start=NOW, end=NOW + timedelta(hours=1), import_limit_kw=3.0)
    # A second Database object on the same file stands for another part of this worker (the fleet code).
    other = Database(hub.db_url)
    cid = await send_command(other, key, "s1", action, now=NOW)
    frame = decode_server_frame(await asyncio.wait_for(conn.frames.get(), 2))
    assert isinstance(frame, CommandFrame)
    cmd = verify_command(frame, key.verify_key, site_id="s1", now=NOW)
    assert cmd.command_id == cid and cmd.action == action
    with pytest.raises(ChannelError) as err:
        verify_command(frame, key.verify_key, site_id="s2", now=NOW)
    assert err.value.reason == "other_site"

    ack = Ack(command_id=cid, result="applied", applied={"import_limit_w": 3000.0}, applied_at=NOW)
    assert not await hub.on_ack("s2", ack)  # another site cannot answer for s1
    assert await hub.on_ack("s1", ack)
    assert await hub.on_ack("s1", Ack(command_id=cid, result="refused", reason="replay", applied_at=NOW))
    got = (await command_acks(other, [cid]))[cid]
    assert got.result == "applied" and got.applied == {"import_limit_w": 3000.0}  # the first answer stays
    assert got.sent_at == NOW and got.applied_at == NOW
    await other.dispose()


async def test_plan_notice_and_status(hub: ChannelHub) -> None:
    conn = FakeConn("s1")
    hub.attach(conn)
    await notify_plan(hub.db, "s1", 7)
    await notify_plan(hub.db, "elsewhere", 3)  # not connected here: nothing sent
    frame = decode_server_frame(await asyncio.wait_for(conn.frames.get(), 2))
    assert frame == PlanAvailable(site_id="s1", version=7)
    assert conn.frames.empty()
    hub.on_status("s1", Status(ts=NOW, rung="plan", soc=0.5, grid_w=1200.0, plan_version=7))
    await hub._flush()
    live = (await live_sites(hub.db))["s1"]
    assert live.connected and live.status is not None and live.status["rung"] == "plan"
    assert live.plan_version == 7
    hub.detach(conn)
    await hub._flush()
    assert not (await live_sites(hub.db, ["s1"]))["s1"].connected


async def test_a_command_queued_while_disconnected_is_sent_on_connect(hub: ChannelHub) -> None:
    key = SigningKey.generate()
    action = DrAction(start=NOW, end=NOW + timedelta(minutes=5), offset_kw=1.0)
    cid = await send_command(hub.db, key, "s1", action, now=NOW)
    conn = FakeConn("s1")
    hub.attach(conn)
    frame = decode_server_frame(await asyncio.wait_for(conn.frames.get(), 2))
    assert isinstance(frame, CommandFrame)
    assert verify_command(frame, key.verify_key, site_id="s1", now=NOW).command_id == cid


async def test_listen_retries_use_the_shared_jittered_backoff_and_warn_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Postgres down (a real refused connection on loopback): one warning for the outage, not one per retry,
    and the delays double with jitter (drivers/resilience.Backoff), not the same fixed 0.5, 1, 2, ... on
    every worker (issue 15 item 1)."""
    from structlog.testing import capture_logs

    from tests.ports import free_port

    port = free_port()  # a port nobody listens on
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    hub = ChannelHub(db, Metrics(), lambda: NOW)
    hub.db_url = f"postgresql+asyncpg://u:p@127.0.0.1:{port}/zap"
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float, *args: object) -> None:
        delays.append(delay)
        if len(delays) >= 6:
            raise asyncio.CancelledError
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    with capture_logs() as logs, pytest.raises(asyncio.CancelledError):
        await hub._listen_loop()
    await db.dispose()
    failed = [e for e in logs if e["event"] == "channel.listen_connect_failed"]
    assert len(failed) == 1, logs
    assert "ConnectionRefused" in failed[0]["error"] or "Errno" in failed[0]["error"], failed[0]
    bases = [min(30.0, 0.5 * 2**i) for i in range(6)]
    assert all(b / 2 <= d <= b for d, b in zip(delays, bases, strict=True)), delays
    assert delays != bases  # jittered: a fixed doubling would retry in step with every other worker
