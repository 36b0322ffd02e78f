"""The live channel between the Zap's real channel client (cloud_sync: CloudSync, PlanFetcher, Store on a
real SQLite file) and a real `zapcloud serve` on 127.0.0.1, on SQLite and PostgreSQL.

Cloud → Zap: a stored plan is fetched within a second of publication; a DR command is applied (a tighter
import limit in the controller's intent) and acknowledged in the cloud's database. What the Zap must
refuse reaches it through the real server (rows put in the command queue as a compromised or confused
cloud would): forged signature, expired, replayed nonce, another site's command, oversize, malformed;
each is refused, counted, never applied. Zap → cloud: a forged hello, another site's ack, oversize and
malformed frames are refused and counted in the cloud's /metrics. Two workers on one PostgreSQL: the
Zap on worker A, the command posted through worker B, applied and acknowledged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from nacl.signing import SigningKey

from cloud.db import Database
from cloud.server.channel_hub import channel_commands, command_acks, send_command
from cloud_sync.channel import LiveState
from cloud_sync.channel_wire import (
    Ack,
    Challenge,
    Command,
    DrAction,
    Refused,
    Status,
    Welcome,
    decode_server_frame,
    encode_frame,
    new_command_id,
    sign_hello,
    ws_url,
)
from cloud_sync.keys import key_id, load_signing_key, public_key_b64
from cloud_sync.session import CloudSync
from tests.cloud_server import Cloud, serve
from tests.db_backends import BACKENDS, empty_db_url_async
from tests.waiting import wait_until
from zapd.clock import SystemClock
from zapd.config import CloudConfig
from zapd.model import Intent, IntentMode, Plan, PlanSlot
from zapd.override import OperatorOverride
from zapd.state import SiteState
from zapd.store import Store

SITE = "chan-site"
REFUSED = ("other_site", "malformed", "oversize")  # frames the cloud refuses on a welcomed channel


def register(cloud: Cloud, site_id: str) -> SigningKey:
    key = SigningKey.generate()
    r = cloud.client.post("/v1/sites", json={"site_id": site_id, "public_key": public_key_b64(key)},
                          headers=cloud.admin())  # fmt: skip
    assert r.status_code == 201, r.text
    return key


def publish(cloud: Cloud, site_id: str, version: int) -> None:
    now = datetime.now(UTC)
    plan = Plan(site_id=site_id, version=version, issued_at=now, valid_until=now + timedelta(hours=2),
                slots=(PlanSlot(start=now - timedelta(minutes=1), end=now + timedelta(hours=1),
                                intent=Intent(mode=IntentMode.SETPOINT, battery_w=500.0)),))  # fmt: skip
    r = cloud.client.put(f"/v1/sites/{site_id}/plan", content=msgspec.json.encode(plan), headers=cloud.admin())
    assert r.status_code == 200, r.text


def metric(cloud: Cloud, side: str, reason: str) -> int:
    text = cloud.client.get("/metrics", headers=cloud.admin()).text
    m = re.search(rf'zapcloud_channel_events_total{{side="{side}",reason="{reason}"}} (\d+)', text)
    return int(m.group(1)) if m else 0


class Zap:
    """The Zap side as the daemon builds it (cloud_sync.session.CloudSync), without devices."""

    def __init__(self, sync: CloudSync, grid_w: list[float | None]) -> None:
        self.sync = sync
        self.grid_w = grid_w
        assert sync.channel is not None
        self.channel = sync.channel


@contextlib.asynccontextmanager
async def zap(tmp: Path, cloud: Cloud, key: SigningKey, site_id: str = SITE, *, port: int | None = None,
              plan_interval_s: float = 3600.0, channel_url: str | None = None) -> AsyncIterator[Zap]:  # fmt: skip
    store = await Store.open(tmp / f"zapd-{site_id}-{secrets.token_hex(3)}.sqlite")
    clock = SystemClock()
    config = CloudConfig(
        url=f"http://127.0.0.1:{port or cloud.port}",
        public_key=base64.b64encode(bytes(cloud.cloud_key)).decode(),
        plan_interval_s=plan_interval_s,
        channel_reconnect_s=0.2,
    )
    sync = CloudSync(config=config, site_id=site_id, key=key, store=store, clock=clock, capabilities=list)
    await sync.load()
    grid: list[float | None] = [2500.0]
    sync.enable_channel(
        override=OperatorOverride(clock, SiteState()),
        grid_w=lambda: grid[0],
        live=lambda: LiveState(rung="plan", link="up", soc=0.5, grid_w=grid[0]),
        site_import_w=17_000.0,
        site_export_w=5_000.0,
    )
    assert sync.channel is not None
    if channel_url is not None:
        sync.channel.url = channel_url
    tasks = [asyncio.create_task(sync.channel.run()), asyncio.create_task(sync.fetcher.run())]
    try:
        yield Zap(sync, grid)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sync.close()
        await store.close()


async def until(cond: Any, within: float = 10.0) -> None:
    await wait_until(cond, within)


@pytest.fixture(scope="module", params=BACKENDS)
def cloud(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """One `zapcloud serve` per backend for the module: each test registers a site of its own (`site`)."""
    tmp = tmp_path_factory.mktemp("channel")
    url = asyncio.run(empty_db_url_async(request.param, tmp))
    with serve(tmp, url, "serve", "--no-planner") as c:
        yield c


@pytest.fixture
def site() -> str:
    """A site id no other test on the module's cloud has registered."""
    return f"{SITE}-{secrets.token_hex(4)}"


def cloud_signing_key(cloud: Cloud) -> SigningKey:
    return load_signing_key(cloud.tmp / "cloud.key")


async def test_plan_notice_is_fetched_within_a_second_and_dr_is_applied_and_acked(
    cloud: Cloud, site: str, tmp_path: Path
) -> None:
    key = register(cloud, site)
    async with zap(tmp_path, cloud, key, site) as z:
        await until(lambda: z.channel.state == "up")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.to_thread(publish, cloud, site, 1)
        await until(lambda: z.sync.fetcher.accepted_version == 1, within=5)
        assert loop.time() - started < 1.0, "plan notice → fetched took too long"  # polling is 1 h here

        now = datetime.now(UTC)
        window = {"start": (now - timedelta(seconds=1)).isoformat(), "end": (now + timedelta(minutes=30)).isoformat()}
        started = loop.time()
        cid = await asyncio.to_thread(post_command, cloud, site, {"kind": "dr", **window, "import_limit_kw": 2.0})
        await until(lambda: z.channel.commands_applied == 1)
        limited = z.sync.demand.overlay(datetime.now(UTC), Intent(battery_w=0.0, grid_import_limit_w=9000.0))
        assert limited.grid_import_limit_w == 2000.0
        # The DR window only tightens: a tighter plan limit stays its own.
        tighter = z.sync.demand.overlay(datetime.now(UTC), Intent(grid_import_limit_w=1500.0))
        assert tighter.grid_import_limit_w == 1500.0
        got = await wait_ack(cloud, cid)
        assert loop.time() - started < 1.0, "command → acknowledged in the cloud took too long"
        assert got["result"] == "applied" and got["applied"]["import_limit_w"] == 2000.0
        assert abs((datetime.fromisoformat(got["applied_at"]) - now).total_seconds()) < 5

        # An offset: the import limit is the measured import less the offset.
        z.grid_w[0] = 3000.0
        cid2 = await asyncio.to_thread(post_command, cloud, site, {"kind": "dr", **window, "offset_kw": 1.2})
        got2 = await wait_ack(cloud, cid2)
        assert got2["applied"]["import_limit_w"] == pytest.approx(1800.0)
        # A limit above the site's fuse is applied as the fuse: never looser than the site allows.
        cid3 = await asyncio.to_thread(post_command, cloud, site, {"kind": "dr", **window, "import_limit_kw": 99.0})
        assert (await wait_ack(cloud, cid3))["applied"]["import_limit_w"] == 17_000.0
        # Safe mode: the operator override's SAFE_HOLD for the window.
        until_ = (now + timedelta(minutes=10)).isoformat()
        cid4 = await asyncio.to_thread(post_command, cloud, site, {"kind": "safe_mode", "until": until_})
        assert (await wait_ack(cloud, cid4))["applied"]["rung"] == "safe_hold"
        # Re-plan: the Zap fetches now and says which plan it has.
        cid5 = await asyncio.to_thread(post_command, cloud, site, {"kind": "replan"})
        assert (await wait_ack(cloud, cid5))["applied"]["plan_version"] == 1.0
        # Out-of-bounds numbers never leave the cloud.
        r = await asyncio.to_thread(cloud.client.post, f"/v1/sites/{site}/commands", headers=cloud.admin(),
                                    json={"action": {"kind": "dr", **window, "import_limit_kw": -1.0}})  # fmt: skip
        assert r.status_code == 422


def post_command(cloud: Cloud, site_id: str, action: dict[str, Any]) -> str:
    r = cloud.client.post(f"/v1/sites/{site_id}/commands", json={"action": action}, headers=cloud.admin())
    assert r.status_code == 202, r.text
    return str(r.json()["command_id"])


async def wait_ack(cloud: Cloud, cid: str, within: float = 5.0) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cloud.port}", headers=cloud.admin()) as client:

        async def acked() -> dict[str, Any] | None:
            got: dict[str, Any] = (await client.get(f"/v1/commands/{cid}")).json()
            return got if got.get("result") is not None else None

        result: dict[str, Any] = await wait_until(acked, within, f"the ack of {cid}")
        return result


async def _queue_raw(db: Database, site_id: str, body: bytes, signature: str, *, command_id: str | None = None) -> str:
    """A row in the command queue exactly as given: what a broken or hostile cloud process could send."""
    cid = command_id or new_command_id()
    now = datetime.now(UTC)
    async with db.engine.begin() as conn:
        await conn.execute(channel_commands.insert().values(
            command_id=cid, site_id=site_id, kind="dr", body=body, signature=signature, created_at=now,
            expires_at=now + timedelta(minutes=5)))  # fmt: skip
    # The doorbell of another process is the sweep (every few seconds) or a NOTIFY; ring it via a plan notice.
    return cid


def _cmd(site_id: str, *, issued: datetime, expires: datetime, command_id: str | None = None) -> Command:
    now = datetime.now(UTC)
    return Command(v=1, command_id=command_id or new_command_id(), site_id=site_id, issued_at=issued,
                   expires_at=expires, action=DrAction(start=now, end=now + timedelta(minutes=10),
                                                       import_limit_kw=0.5))  # fmt: skip


def _sign(key: SigningKey, body: bytes) -> str:
    return base64.b64encode(key.sign(body).signature).decode()


async def test_the_zap_refuses_forged_expired_replayed_foreign_oversize_and_malformed_commands(
    cloud: Cloud, site: str, tmp_path: Path
) -> None:
    key = register(cloud, site)
    ck = cloud_signing_key(cloud)
    db = Database(cloud.db_url)
    try:
        async with zap(tmp_path, cloud, key, site) as z:
            await until(lambda: z.channel.state == "up")
            now = datetime.now(UTC)
            good = msgspec.json.encode(_cmd(site, issued=now, expires=now + timedelta(minutes=5)))
            cases = [
                ("bad_signature", good, _sign(SigningKey.generate(), good)),
                ("expired", (b := msgspec.json.encode(_cmd(site, issued=now - timedelta(minutes=10),
                                                          expires=now - timedelta(minutes=1)))), _sign(ck, b)),
                ("other_site", (b := msgspec.json.encode(_cmd("someone-else", issued=now,
                                                             expires=now + timedelta(minutes=5)))), _sign(ck, b)),
                ("malformed", b"{\"v\": 1, \"nonsense\": [", _sign(ck, b"{\"v\": 1, \"nonsense\": [")),
                ("oversize", (b := b" " * 9000 + good), _sign(ck, b)),
            ]  # fmt: skip
            for reason, body, sig in cases:
                await _queue_raw(db, site, body, sig)
                await until(lambda r=reason: z.channel.refused[r] >= 1, within=10)  # type: ignore[misc]
            assert z.channel.commands_applied == 0
            assert z.sync.demand.windows == []

            # The good one is applied once; the same signed body again (another row, same nonce) is a replay.
            await _queue_raw(db, site, good, _sign(ck, good))
            await until(lambda: z.channel.commands_applied == 1)
            await _queue_raw(db, site, good, _sign(ck, good))
            await until(lambda: z.channel.refused["replay"] >= 1)
            assert z.channel.commands_applied == 1 and len(z.sync.demand.windows) == 1
    finally:
        await db.dispose()


async def test_the_nonce_window_survives_a_restart(cloud: Cloud, site: str, tmp_path: Path) -> None:
    key = register(cloud, site)
    ck = cloud_signing_key(cloud)
    store_path = tmp_path / "persist.sqlite"
    now = datetime.now(UTC)
    good = msgspec.json.encode(_cmd(site, issued=now, expires=now + timedelta(minutes=5)))
    db = Database(cloud.db_url)
    try:
        for round_ in range(2):
            store = await Store.open(store_path)
            config = CloudConfig(url=f"http://127.0.0.1:{cloud.port}", channel_reconnect_s=0.2,
                                 public_key=base64.b64encode(bytes(cloud.cloud_key)).decode())  # fmt: skip
            sync = CloudSync(config=config, site_id=site, key=key, store=store, clock=SystemClock(), capabilities=list)
            await sync.load()
            channel = sync.enable_channel(override=None, grid_w=lambda: 0.0,
                                          live=lambda: LiveState(None, "up", None, None),
                                          site_import_w=10_000.0, site_export_w=None)  # fmt: skip
            assert channel is not None
            task = asyncio.create_task(channel.run())
            try:
                await until(lambda c=channel: c.state == "up")  # type: ignore[misc]
                await _queue_raw(db, site, good, _sign(ck, good))
                if round_ == 0:
                    await until(lambda c=channel: c.commands_applied == 1)  # type: ignore[misc]
                else:
                    await until(lambda c=channel: c.refused["replay"] >= 1)  # type: ignore[misc]
                    assert channel.commands_applied == 0
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await sync.close()
                await store.close()
    finally:
        await db.dispose()


async def test_the_cloud_refuses_forged_hellos_foreign_acks_oversize_and_malformed_frames(
    cloud: Cloud, site: str, tmp_path: Path
) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    key = register(cloud, site)
    other = f"{site}-other"
    other_key = register(cloud, other)
    # The module's cloud serves other tests too: every count below is this test's own (after - before).
    before = {r: metric(cloud, "cloud", r) for r in ("bad_signature", "bad_origin", "bad_challenge", *REFUSED)}

    def counted(reason: str) -> int:
        return metric(cloud, "cloud", reason) - before[reason]

    url = ws_url(f"http://127.0.0.1:{cloud.port}")
    origin = f"127.0.0.1:{cloud.port}"

    async def hello(ws: Any, signer: SigningKey, site: str, kid: str, *, origin_: str = origin) -> Any:
        ch = decode_server_frame(await ws.recv())
        assert isinstance(ch, Challenge)
        await ws.send(encode_frame(sign_hello(signer, kid, ch.challenge, origin_, site, datetime.now(UTC))))
        return decode_server_frame(await ws.recv())

    # Forged: the other site's key presenting this site's key id.
    async with connect(url, proxy=None) as ws:
        assert isinstance(await hello(ws, other_key, site, key_id(key)), Refused)
    assert counted("bad_signature") == 1
    # Signed for another server.
    async with connect(url, proxy=None) as ws:
        assert isinstance(await hello(ws, key, site, key_id(key), origin_="evil.example:443"), Refused)
    assert counted("bad_origin") == 1
    # A hello replayed on a new connection answers the wrong challenge.
    async with connect(url, proxy=None) as ws:
        ch = decode_server_frame(await ws.recv())
        assert isinstance(ch, Challenge)
        old = sign_hello(key, key_id(key), base64.b64encode(b"x" * 32).decode(), origin, site, datetime.now(UTC))
        await ws.send(encode_frame(old))
        assert isinstance(decode_server_frame(await ws.recv()), Refused)
    assert counted("bad_challenge") == 1

    db = Database(cloud.db_url)
    try:
        cid = await send_command(db, cloud_signing_key(cloud), other,
                                 DrAction(start=datetime.now(UTC), end=datetime.now(UTC) + timedelta(minutes=5),
                                          import_limit_kw=1.0), now=datetime.now(UTC))  # fmt: skip
        async with connect(url, proxy=None, max_size=None) as ws:
            assert isinstance(await hello(ws, key, site, key_id(key)), Welcome)
            # Another site's command id: refused, and that command stays unanswered.
            await ws.send(encode_frame(Ack(command_id=cid, result="applied", applied_at=datetime.now(UTC))))
            assert decode_server_frame(await ws.recv()) == Refused(reason="other_site")
            await ws.send("{not json")
            assert decode_server_frame(await ws.recv()) == Refused(reason="malformed")
            await ws.send(encode_frame(Status(ts=datetime.now(UTC), soc=7.0)))  # SoC out of 0..1
            assert decode_server_frame(await ws.recv()) == Refused(reason="malformed")
            await ws.send("x" * 9000)  # over the cap, under the protocol's hard limit
            assert decode_server_frame(await ws.recv()) == Refused(reason="oversize")
            await ws.send("x" * 40_000)  # over the protocol's limit: the connection is closed (1009)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        assert (await command_acks(db, [cid]))[cid].result is None
    finally:
        await db.dispose()
    await wait_until(lambda: all(counted(r) >= 1 for r in REFUSED), 10, "the refusals counted")
    for reason in REFUSED:
        assert counted(reason) >= 1, reason
    assert counted("malformed") >= 2


async def test_with_the_channel_refused_polling_still_brings_the_plan(cloud: Cloud, site: str, tmp_path: Path) -> None:
    """The channel cut (the Zap dials a port where nothing listens): plans still arrive by polling."""
    key = register(cloud, site)
    # The channel dials a dead port: it keeps failing and backing off; the fetcher polls the real cloud.
    async with zap(tmp_path, cloud, key, site, plan_interval_s=0.5, channel_url="ws://127.0.0.1:9/v1/channel") as z:
        await asyncio.to_thread(publish, cloud, site, 1)
        await until(lambda: z.sync.fetcher.accepted_version == 1, within=10)
        assert z.channel.state != "up" and z.channel.last_error


async def test_two_workers_zap_on_a_command_through_b(tmp_path: Path) -> None:
    """Fan-out: the Zap holds its channel to worker A; the command is posted to worker B (LISTEN/NOTIFY)."""
    from tests.db_backends import pg_url

    pg_url()  # skips without PostgreSQL
    url = await empty_db_url_async("postgresql", tmp_path)
    with serve(tmp_path, url, "a", "--no-planner") as a, serve(tmp_path, url, "b", "--no-planner") as b:
        key = register(a, SITE)
        async with zap(tmp_path, a, key) as z:
            await until(lambda: z.channel.state == "up")
            now = datetime.now(UTC)
            window = {"start": now.isoformat(), "end": (now + timedelta(minutes=10)).isoformat()}
            loop = asyncio.get_running_loop()
            started = loop.time()
            cid = await asyncio.to_thread(post_command, b, SITE, {"kind": "dr", **window, "export_limit_kw": 1.0})
            got = await wait_ack(b, cid)
            assert loop.time() - started < 1.0  # the doorbell, not the sweep
            assert got["result"] == "applied" and got["applied"]["export_limit_w"] == 1000.0
            # A plan published through B is announced by A.
            await asyncio.to_thread(publish, b, SITE, 1)
            await until(lambda: z.sync.fetcher.accepted_version == 1, within=1.0)
