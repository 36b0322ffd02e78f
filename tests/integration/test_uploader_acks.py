"""The Zap deletes its outbox only on an ACK it can trust and that makes sense (issue 10, item 6).

The attacks of issue 10, against a real HTTP server on loopback (a small hostile starlette app
under uvicorn that answers what each test tells it) and against the real `zapcloud serve`:
- a forged, unsigned `{"stored_through": 1e18}` over plain http:// deleted the whole outbox;
- a batch at seq 2^63-1 made the cloud answer stored_through 2^63-1 to every later batch, the
  Zap deleted its outbox and showed the link "up".
The rule (docs/wire.md, "What the Zap does with the answer"): the answer is signed by the pinned
cloud key for this site, and stored_through lies in [first seq of the batch - 1, highest seq ever
sent] (200) or below the batch start (409). Anything else: counted, logged once, link not up,
nothing deleted. The outbox is read back from the real SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import pytest
from nacl.signing import SigningKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from cloud_sync.keys import generate_keypair, public_key_b64
from cloud_sync.link import LinkStatus
from cloud_sync.uploader import Uploader
from cloud_sync.wire import HEADER_SIGNATURE, AckRejected, gunzip_limited, sign_body, verify_body
from drivers.sim.p1_pty import SimP1Tcp
from drivers.sim.physics import SimSite
from tests.integration.loopback_http import serve_on_loopback
from tests.integration.test_cloud_api import Cloud, _register, _serve
from tests.ports import free_port
from tests.waiting import wait_until
from zapd.clock import ManualClock, ScaledClock
from zapd.config import validate_config
from zapd.daemon import Daemon
from zapd.model import DerKind, Reading
from zapd.store import Store

T0 = datetime(2026, 6, 21, 12, tzinfo=UTC)
SITE = "site-a"
CLOUD = SigningKey(b"\x05" * 32)
OTHER = SigningKey(b"\x06" * 32)


@dataclass
class Hostile:
    """What the server answers: `answer(batch)` -> (status, JSON body, signing key or None)."""

    answer: Callable[[dict[str, object]], tuple[int, bytes, SigningKey | None]]
    batches: list[dict[str, object]] = field(default_factory=list)


def ack(stored: object, *, site: str = SITE, status: int = 200) -> bytes:
    body: dict[str, object] = {"stored_through": stored, "site_id": site}
    if status == 409:
        body["error"] = "gap"
    return msgspec.json.encode(body)


@contextlib.asynccontextmanager
async def hostile_cloud(h: Hostile) -> AsyncIterator[str]:
    async def telemetry(request: Request) -> Response:
        batch = msgspec.json.decode(gunzip_limited(await request.body()))
        h.batches.append(batch)
        status, body, key = h.answer(batch)
        headers = sign_body(key, body) if key is not None else {}
        return Response(body, status_code=status, headers=headers, media_type="application/json")

    async def no_plan(request: Request) -> Response:
        return Response(b'{"error": "no_plan"}', status_code=404, media_type="application/json")

    app = Starlette(routes=[Route(f"/v1/sites/{SITE}/telemetry", telemetry, methods=["POST"]),
                            Route(f"/v1/sites/{SITE}/plan", no_plan)])  # fmt: skip
    async with serve_on_loopback(app) as url:
        yield url


def readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading(der_id="m", kind=DerKind.METER, ts=T0 + timedelta(seconds=start + i), values={"power_w": 1.0})
            for i in range(n)]  # fmt: skip


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "zapd.sqlite")
    await s.append_readings(readings(20))
    yield s
    await s.close()


def uploader(store: Store, client: httpx.AsyncClient, link: LinkStatus | None = None, **kw: object) -> Uploader:
    args: dict[str, object] = {"interval_s": 0.01, "batch_max": 50, "cloud_key": CLOUD.verify_key}
    args.update(kw)
    return Uploader(store=store, client=client, site_id=SITE, key=SigningKey(b"\x01" * 32), clock=ManualClock(T0),
                    link=link or LinkStatus(), **args)  # type: ignore[arg-type]  # fmt: skip


async def kept(store: Store) -> tuple[int, int]:
    """(acked seq, readings still in the outbox)."""
    async with store._db.execute("SELECT COUNT(*) FROM outbox") as cur:
        row = await cur.fetchone()
    return await store.acked_seq(), int(row[0]) if row else 0


async def rejected(up: Uploader) -> str:
    with pytest.raises(AckRejected) as info:
        await up.upload_once()
    return info.value.reason


async def test_forged_unsigned_ack_keeps_the_outbox(store: Store) -> None:
    """The issue's attack: plain http://, an unsigned 10^18 (as an integer and as 1e18)."""
    forged = [(200, ack(10**18), None), (200, b'{"stored_through": 1e18}', None), (200, ack(10**18), OTHER),
              (200, ack(20), None), (200, ack(20), OTHER)]  # fmt: skip
    reasons = []
    h = Hostile(answer=lambda b: forged[len(h.batches) - 1])
    async with hostile_cloud(h) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        up = uploader(store, client)
        for _ in forged:
            reasons.append(await rejected(up))
    assert reasons == ["unsigned", "unsigned", "bad_signature", "unsigned", "bad_signature"]
    assert await kept(store) == (0, 20)
    assert up.acks_rejected == {"unsigned": 3, "bad_signature": 2}


async def test_signed_ack_beyond_what_was_sent_keeps_the_outbox(store: Store) -> None:
    """A cloud that took a batch at seq 2^63-1 answers that to every batch; even signed, it is refused."""
    for stored in (2**63 - 1, 10**18, 21):
        h = Hostile(answer=lambda b, s=stored: (200, ack(s), CLOUD))  # type: ignore[misc]
        async with hostile_cloud(h) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
            assert await rejected(uploader(store, client)) == "ahead", stored
            # The range check holds without signatures too (a Zap built without the cloud key).
            assert await rejected(uploader(store, client, cloud_key=None)) == "ahead", stored
    assert await kept(store) == (0, 20)


async def test_ack_below_the_batch_start_loses_nothing(store: Store) -> None:
    answers = iter([(200, ack(10), CLOUD), (200, ack(3), CLOUD), (200, ack(-1), CLOUD)])
    h = Hostile(answer=lambda b: next(answers))
    async with hostile_cloud(h) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        up = uploader(store, client, batch_max=10)
        assert await up.upload_once() == 10  # 1..10 stored and acknowledged
        assert await rejected(up) == "behind"  # 11..20 sent, "stored through 3"
        assert await rejected(up) == "behind"
    assert await kept(store) == (10, 10)
    assert [b["first_seq"] for b in h.batches] == [1, 11, 11]


async def test_gap_answers_are_checked_and_a_server_behind_gets_a_resend(store: Store) -> None:
    answers = iter([(200, ack(10), CLOUD), (409, ack(10, status=409), CLOUD), (409, ack(10**18, status=409), CLOUD),
                    (409, ack(5, status=409), CLOUD), (200, ack(20), CLOUD)])  # fmt: skip
    h = Hostile(answer=lambda b: next(answers))
    async with hostile_cloud(h) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        up = uploader(store, client, batch_max=10)
        assert await up.upload_once() == 10
        assert await rejected(up) == "not_a_gap"  # 11..20 connects to 10: a gap answer is a lie
        assert await rejected(up) == "ahead"
        assert await up.upload_once() == 0  # the server is behind (5): re-send from there
        assert await kept(store) == (10, 10)
        assert await up.upload_once() == 10
    assert await kept(store) == (20, 0)
    # 6..10 are gone here (acknowledged earlier): the resend declares them lost rather than jump.
    assert h.batches[-1]["first_seq"] == 11 and h.batches[-1]["lost_through"] == 10


async def test_an_ack_signed_for_another_site_is_refused(store: Store) -> None:
    h = Hostile(answer=lambda b: (200, ack(20, site="site-b"), CLOUD))
    async with hostile_cloud(h) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        assert await rejected(uploader(store, client)) == "wrong_site"
    assert await kept(store) == (0, 20)


async def test_an_ack_for_an_earlier_larger_batch_is_taken(store: Store) -> None:
    """The one legitimate ACK past the batch: the answer to 1..20 was lost, the Zap restarts with
    smaller batches and the cloud confirms all 20 (they were sent). Not stuck, nothing lost."""
    answers = iter([(503, b'{"error": "timeout"}', None), (200, ack(20), CLOUD)])
    h = Hostile(answer=lambda b: next(answers))
    async with hostile_cloud(h) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        with pytest.raises(Exception, match="503"):
            await uploader(store, client, batch_max=50).upload_once()
        assert await uploader(store, client, batch_max=5).upload_once() == 20
    assert await kept(store) == (20, 0)
    assert [(b["first_seq"], b["last_seq"]) for b in h.batches] == [(1, 20), (1, 5)]


async def test_a_refused_ack_keeps_the_link_down_and_is_logged_once(store: Store) -> None:
    link = LinkStatus()
    h = Hostile(answer=lambda b: (200, ack(10**18), None))
    async with hostile_cloud(h) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        up = uploader(store, client, link=link)
        with capture_logs() as logs:
            task = asyncio.create_task(up.run())

            def three_refused() -> bool:
                link.ok(T0, "plan")  # the plan fetcher keeps succeeding meanwhile
                return up.acks_rejected.get("unsigned", 0) >= 3

            with contextlib.suppress(AssertionError):  # the assertions below say what was missing
                await wait_until(three_refused, 4.0, "three refused acks", every_s=0.02)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert up.acks_rejected["unsigned"] >= 3
    assert link.state == "down" and link.failing == {"upload": link.failing["upload"]}
    assert "unsigned" in link.last_error
    assert [e["reason"] for e in logs if e["event"] == "upload.ack_rejected"] == ["unsigned"]
    assert await kept(store) == (0, 20)


async def test_the_daemon_keeps_its_outbox_against_a_forging_cloud(tmp_path: Path) -> None:
    """The whole daemon (config, key files, a P1 meter feeding readings) against a cloud URL where a
    forger answers every upload with an unsigned 10^18: the outbox grows, the link is down, the
    refusals show in `zapctl status` and in the metrics."""
    state = tmp_path / "state"
    generate_keypair(state)
    site = SimSite()
    site.step(T0)
    meter = SimP1Tcp(site)
    p1_port = await meter.start()
    clock = ScaledClock(T0, 1.0)
    metrics_port = free_port()
    h = Hostile(answer=lambda b: (200, ack(10**18), None))
    async with hostile_cloud(h) as url:
        config = validate_config(
            {
                "site": {"id": SITE, "fuse_a": 25},
                "control": {"tick_s": 0.2},
                "store": {"state_dir": str(state)},
                "api": {"socket": str(tmp_path / "zapd.sock")},
                "metrics": {"port": metrics_port},
                "cloud": {"url": url, "public_key": public_key_b64(CLOUD.verify_key), "upload_interval_s": 0.2,
                          "plan_interval_s": 0.5},
                "devices": [{"driver": "p1_tcp", "id": "meter", "host": "127.0.0.1", "port": p1_port, "poll_s": 0.2}],
            },
            "test",
        )  # fmt: skip
        daemon = Daemon(config, clock)
        feeder = asyncio.create_task(meter.run(clock, 0.1))
        run = asyncio.create_task(daemon.run())
        try:

            async def two_unsigned() -> dict[str, object] | None:
                link = await daemon.link_status()
                return link if dict(link.get("acks_rejected") or {}).get("unsigned", 0) >= 2 else None  # type: ignore[call-overload]

            link = await wait_until(two_unsigned, 15, "two unsigned acks")
            assert link["state"] == "down" and link["acked_seq"] == 0
            assert link["acks_rejected"] == {"unsigned": link["acks_rejected"]["unsigned"]}  # type: ignore[index]
            assert 2 <= link["acks_rejected"]["unsigned"] <= len(h.batches)  # type: ignore[index]
            assert int(str(link["outbox_depth"])) >= int(str(h.batches[-1]["last_seq"]))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}", timeout=5) as client:

                async def scraped() -> bool:
                    # the sync gauges refresh every 5 s: until the first refresh after the rejections
                    return (
                        'zapd_telemetry_acks_rejected_total{reason="unsigned"}' in (await client.get("/metrics")).text
                    )

                await wait_until(scraped, 15, "the rejections in /metrics", every_s=0.2)
        finally:
            daemon.stop()
            await asyncio.wait_for(run, 20)
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
            await meter.stop()


# --- the real zapcloud serve ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    tmp = tmp_path_factory.mktemp("cloud")
    with _serve(tmp, f"sqlite+aiosqlite:///{tmp / 'cloud.sqlite'}", "acks") as c:
        yield c


async def test_the_real_cloud_signs_its_answers_and_the_zap_drains(cloud: Cloud, tmp_path: Path) -> None:
    site = "site-acks"
    key = _register(cloud, site)
    store = await Store.open(tmp_path / "zapd.sqlite")
    try:
        await store.append_readings(readings(30))
        link = LinkStatus()
        async with httpx.AsyncClient(base_url=str(cloud.client.base_url), timeout=10) as client:
            up = Uploader(store=store, client=client, site_id=site, key=key, clock=ManualClock(T0), link=link,
                          batch_max=7, cloud_key=cloud.cloud_key)  # fmt: skip
            assert await up.drain() == 30
            assert up.acks_rejected == {}
            assert await kept(store) == (30, 0)
            # The answer itself: signed by the cloud key over the exact bytes, naming the site.
            raw = await client.post(f"/v1/sites/{site}/telemetry", content=b"{}", headers={})
            assert raw.status_code == 401
            await store.append_readings(readings(1, start=30))
            resp, _ = await up._post(await store.outbox_after(30, 10), [], None)
            assert resp.status_code == 200
            assert verify_body(cloud.cloud_key, resp.content, resp.headers.get(HEADER_SIGNATURE))
            assert msgspec.json.decode(resp.content) == {"stored_through": 31, "site_id": site}
    finally:
        await store.close()
