"""The plan fetcher against a real HTTP server that serves bad plans: each is rejected,
counted, and the plan in force stays in force (also across a restart)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from nacl.signing import SigningKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloud_sync.fetcher import PlanFetcher
from cloud_sync.link import LinkStatus
from cloud_sync.wire import HEADER_SIGNATURE, encode_plan, sign_body
from tests.integration.loopback_http import serve_on_loopback
from zapd.clock import SIM_CLOCK_ENV, ManualClock, sim_clock_env
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


@contextlib.asynccontextmanager
async def plan_server(served: Served) -> AsyncIterator[str]:
    async def plan(request: Request) -> Response:
        headers = {HEADER_SIGNATURE: served.signature} if served.signature else {}
        return Response(served.body, status_code=served.status, headers=headers, media_type="application/json")

    app = Starlette(routes=[Route(f"/v1/sites/{SITE}/plan", plan)])
    async with serve_on_loopback(app) as url:
        yield url


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


# --- issue 10: one message must not pin the Zap ------------------------------------------------


def plan_at(version: int, *, issued: datetime, valid: timedelta = timedelta(hours=6), watts: float = 500.0) -> Plan:
    slot = PlanSlot(start=issued, end=issued + timedelta(hours=1), intent=Intent(battery_w=watts))
    return Plan(site_id=SITE, version=version, issued_at=issued, valid_until=issued + valid, slots=(slot,))


def fetcher_for(store: Store, client: httpx.AsyncClient, cloud_key: SigningKey, clock: ManualClock) -> PlanFetcher:
    return PlanFetcher(store=store, client=client, site_id=SITE, key=SigningKey.generate(),
                       pinned_key=cloud_key.verify_key, clock=clock, link=LinkStatus(), interval_s=60)  # fmt: skip


def serve(served: Served, plan: Plan, key: SigningKey) -> None:
    s = signed(plan, key)
    served.body, served.signature, served.status = s.body, s.signature, 200


async def test_plans_that_would_pin_the_zap_are_refused(tmp_path: Path) -> None:
    """The attack of issue 10: a signed plan at version 2^63-1 valid for 50 years was taken and every
    later plan was stale for good. Now each such plan is refused and the next sane one is taken."""
    cloud_key = SigningKey.generate()
    served = Served()
    store = await Store.open(tmp_path / "zapd.sqlite")
    clock = ManualClock(NOW)
    async with plan_server(served) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        f = fetcher_for(store, client, cloud_key, clock)
        serve(served, plan_at(3, issued=NOW - timedelta(minutes=5)), cloud_key)
        assert await f.fetch_once() == "new"
        pins = {
            "version 2^63-1": (plan_at(2**63 - 1, issued=NOW), "out_of_range"),
            "version 2^53": (plan_at(2**53, issued=NOW), "out_of_range"),
            "valid 50 years": (plan_at(4, issued=NOW, valid=timedelta(days=365 * 50)), "out_of_range"),
            "valid 8 days": (plan_at(4, issued=NOW, valid=timedelta(days=8)), "out_of_range"),
            "issued in 2 days": (plan_at(4, issued=NOW + timedelta(days=2)), "issued_in_future"),
            "battery 1e300 W": (plan_at(4, issued=NOW, watts=1e300), "out_of_range"),
        }
        for name, (plan, reason) in pins.items():
            serve(served, plan, cloud_key)
            assert await f.fetch_once() == f"rejected:{reason}", name
            assert f.accepted_version == 3, name
            assert f.plan is not None and f.plan.version == 3, name
        # The Zap is not pinned: the cloud's next ordinary plan is taken, also after a restart.
        serve(served, plan_at(4, issued=NOW), cloud_key)
        assert await f.fetch_once() == "new"
        f2 = fetcher_for(store, client, cloud_key, clock)
        await f2.load_cached()
        assert f2.accepted_version == 4
        # A body larger than any plan is not read to the end.
        served.body = b" " * (9 * 1024 * 1024)
        with pytest.raises(httpx.HTTPError, match="larger than"):
            await f2.fetch_once()
        assert f2.plan is not None and f2.plan.version == 4
    await store.close()


async def test_state_an_older_zapd_accepted_is_reset_at_start(tmp_path: Path) -> None:
    """A Zap that took the pinning plan before the upgrade recovers at its next start."""
    cloud_key = SigningKey.generate()
    served = Served()
    store = await Store.open(tmp_path / "zapd.sqlite")
    bad = plan_at(2**63 - 1, issued=NOW - timedelta(days=1), valid=timedelta(days=365 * 50))
    bad_body = encode_plan(bad)
    await store.save_plan(bad, bad_body, sign_body(cloud_key, bad_body)[HEADER_SIGNATURE], NOW - timedelta(days=1))
    await store.kv_set("plan.accepted_version", str(2**63 - 1))
    clock = ManualClock(NOW)
    async with plan_server(served) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        f = fetcher_for(store, client, cloud_key, clock)
        await f.load_cached()
        assert f.plan is None and f.accepted_version is None  # fallback rules until a new plan
        # A plan captured before the reset (issued yesterday, still valid) is not replayed into the gap.
        serve(served, plan_at(7, issued=NOW - timedelta(hours=20), valid=timedelta(days=2)), cloud_key)
        assert await f.fetch_once() == "rejected:issued_before_reset"
        serve(served, plan_at(1, issued=NOW), cloud_key)  # the cleaned cloud starts again at 1
        assert await f.fetch_once() == "new"
        assert f.accepted_version == 1
    await store.close()


async def test_operator_reset_version_recovers_a_pinned_zap(tmp_path: Path) -> None:
    """docs/operations.md "A Zap that refuses every plan as stale_version": `zapd plan reset-version`,
    run while zapd runs (a separate process on the same store), lets the next plan in whatever its
    version; a plan issued before the reset stays refused, also after a restart."""
    cloud_key = SigningKey.generate()
    served = Served()
    db = tmp_path / "zapd.sqlite"
    store = await Store.open(db)
    clock = ManualClock(NOW)
    config = tmp_path / "zapd.toml"
    config.write_text(f'[site]\nid = "{SITE}"\nfuse_a = 25\n\n[store]\nstate_dir = "{tmp_path}"\n')
    async with plan_server(served) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        f = fetcher_for(store, client, cloud_key, clock)
        await f.load_cached()
        # A runaway version within the bounds (a cloud bug): the cleaned cloud's plans are stale.
        serve(served, plan_at(9_000_000_000, issued=NOW - timedelta(hours=2)), cloud_key)
        assert await f.fetch_once() == "new"
        captured = plan_at(2, issued=NOW - timedelta(minutes=30), watts=-4000.0)
        serve(served, captured, cloud_key)
        assert await f.fetch_once() == "rejected:stale_version"

        env = {**os.environ, SIM_CLOCK_ENV: sim_clock_env(NOW, 1.0)}
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "zapd.cli", "plan", "reset-version", "--config", str(config)],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "forgot version 9000000000" in out.stdout
        # A config that points elsewhere creates no empty store there.
        wrong = tmp_path / "wrong.toml"
        wrong.write_text(f'[site]\nid = "{SITE}"\nfuse_a = 25\n\n[store]\nstate_dir = "{tmp_path / "nowhere"}"\n')
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "zapd.cli", "plan", "reset-version", "--config", str(wrong)],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert out.returncode == 1 and "no store" in out.stderr
        assert not (tmp_path / "nowhere").exists()

        assert await f.fetch_once() == "rejected:issued_before_reset"  # the replay
        assert f.plan is None and f.accepted_version is None
        serve(served, plan_at(1, issued=NOW + timedelta(seconds=10)), cloud_key)
        assert await f.fetch_once() == "new"
        assert f.plan is not None and f.plan.version == 1

        f2 = fetcher_for(store, client, cloud_key, clock)
        await f2.load_cached()
        assert f2.plan is not None and f2.plan.version == 1
        serve(served, captured, cloud_key)  # version 2 > 1, but issued before the reset
        assert await f2.fetch_once() == "rejected:issued_before_reset"
        serve(served, plan_at(1, issued=NOW + timedelta(seconds=10)), cloud_key)
        assert await f2.fetch_once() == "rejected:stale_version"  # versions rise again from 1
        serve(served, plan_at(2, issued=NOW + timedelta(minutes=1)), cloud_key)
        assert await f2.fetch_once() == "new"
    await store.close()
