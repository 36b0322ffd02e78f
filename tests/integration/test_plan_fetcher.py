"""The plan fetcher against a real HTTP server that serves bad plans: each is rejected,
counted, and the plan in force stays in force (also across a restart)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from nacl.signing import SigningKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloud_sync.fetcher import PlanFetcher
from cloud_sync.link import LinkStatus
from cloud_sync.wire import HEADER_SIGNATURE, encode_plan, sign_body
from zapd.clock import ManualClock
from zapd.model import Intent, Plan, PlanSlot
from zapd.store import Store

NOW = datetime(2026, 6, 21, 12, tzinfo=UTC)
SITE = "site-a"


@dataclass
class Served:
    body: bytes = b""
    signature: str | None = None
    status: int = 200


def make_plan(version: int, *, site: str = SITE, valid_h: float = 6, watts: float = 1000.0) -> Plan:
    return Plan(
        site_id=site,
        version=version,
        issued_at=NOW - timedelta(hours=2),
        valid_until=NOW + timedelta(hours=valid_h),
        slots=(PlanSlot(start=NOW - timedelta(hours=1), end=NOW + timedelta(hours=5), intent=Intent(battery_w=watts)),),
    )


def signed(plan: Plan, key: SigningKey) -> Served:
    body = encode_plan(plan)
    return Served(body, sign_body(key, body)[HEADER_SIGNATURE])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def plan_server(served: Served) -> AsyncIterator[str]:
    async def plan(request: Request) -> Response:
        headers = {HEADER_SIGNATURE: served.signature} if served.signature else {}
        return Response(served.body, status_code=served.status, headers=headers, media_type="application/json")

    app = Starlette(routes=[Route(f"/v1/sites/{SITE}/plan", plan)])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # uvicorn has no started event to await
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def flip_bit(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index % len(b)] ^= 0x01
    return bytes(b)


async def test_every_bad_plan_is_rejected_and_the_old_one_stays(tmp_path: Path) -> None:
    cloud_key = SigningKey.generate()
    other_key = SigningKey.generate()
    zap_key = SigningKey.generate()
    served = Served()
    store = await Store.open(tmp_path / "zapd.sqlite")
    clock = ManualClock(NOW)
    async with plan_server(served) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:

        def fetcher() -> PlanFetcher:
            return PlanFetcher(
                store=store,
                client=client,
                site_id=SITE,
                key=zap_key,
                pinned_key=cloud_key.verify_key,
                clock=clock,
                link=LinkStatus(),
                interval_s=60,
            )

        f = fetcher()
        good = signed(make_plan(5), cloud_key)
        served.body, served.signature = good.body, good.signature
        assert await f.fetch_once() == "new"
        assert f.plan is not None and f.plan.version == 5

        v4 = signed(make_plan(4), cloud_key)
        expired = signed(make_plan(9, valid_h=-1), cloud_key)
        other_site = signed(make_plan(9, site="site-b"), cloud_key)
        other_signer = signed(make_plan(9), other_key)
        v9 = signed(make_plan(9, watts=-3000.0), cloud_key)
        cases = {
            "replayed": (good.body, good.signature, "stale_version"),
            "older": (v4.body, v4.signature, "stale_version"),
            "expired": (expired.body, expired.signature, "expired"),
            "other site": (other_site.body, other_site.signature, "wrong_site"),
            "unsigned": (v9.body, None, "unsigned"),
            "other key": (other_signer.body, other_signer.signature, "bad_signature"),
            "bit-flipped body": (flip_bit(v9.body, 40), v9.signature, "bad_signature"),
            "bit-flipped signature": (
                v9.body,
                base64.b64encode(flip_bit(base64.b64decode(v9.signature or ""), 3)).decode(),
                "bad_signature",
            ),
            "garbage signature": (v9.body, "not-base64!!", "bad_signature"),
        }
        for name, (body, signature, reason) in cases.items():
            served.body, served.signature = body, signature
            assert await f.fetch_once() == f"rejected:{reason}", name
            assert f.plan is not None and f.plan.version == 5, name
            assert f.plan.slots[0].intent.battery_w == 1000.0, name
        assert sum(f.rejected.values()) == len(cases)

        # The accepted version survives a restart, so a replay is still refused afterwards.
        f2 = fetcher()
        await f2.load_cached()
        assert f2.plan is not None and f2.plan.version == 5
        served.body, served.signature = good.body, good.signature
        assert await f2.fetch_once() == "rejected:stale_version"

        # A good newer plan is taken.
        served.body, served.signature = v9.body, v9.signature
        assert await f2.fetch_once() == "new"
        assert f2.plan is not None and f2.plan.version == 9

        # A server error is a link failure, not a plan change.
        served.status = 500
        with pytest.raises(httpx.HTTPStatusError):
            await f2.fetch_once()
        assert f2.plan.version == 9
    await store.close()
