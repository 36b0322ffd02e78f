"""Planning through real `zapcloud serve` workers on 127.0.0.1, on a SQLite file and on PostgreSQL: the
planner loop publishes signed plans from telemetry and prices, the fleet endpoints aggregate them and
dispatch a demand-response event; `--no-planner` keeps a worker from planning."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.signing import SigningKey, VerifyKey

from cloud_sync.keys import load_verify_key_b64, public_key_b64
from cloud_sync.wire import WireReading, encode, make_batch, sign_body, sign_request, verify_plan
from tests.cloud_server import ADMIN, cloud_env, serve_cmd
from tests.db_backends import BACKENDS, empty_db_url
from tests.ports import free_port
from tests.waiting import wait_until_sync
from zapd.model import DerKind, IntentMode

REPO = Path(__file__).resolve().parents[2]
AREA = "10YNL----------L"
ASSETS: dict[str, Any] = {
    "location": {"lat": 52.1, "lon": 5.18},
    "grid": {"max_import_kw": 17.0, "max_export_kw": 10.0},
    "battery": {"capacity_kwh": 10.0, "max_charge_kw": 5.0, "max_discharge_kw": 5.0},
    "pv": [{"kwp": 4.0}],
}
TARIFF: dict[str, Any] = {"spot_area": AREA, "energy": {"kind": "spot"}, "energy_tax": 0.1, "vat": 0.21,
                          "export": {"kind": "spot"}}  # fmt: skip


@dataclass
class Server:
    client: httpx.Client
    cloud_key: VerifyKey
    log: Path
    proc: subprocess.Popen[bytes]

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN}"}


@contextlib.contextmanager
def serve(tmp: Path, *extra: str, db_url: str | None = None, env: dict[str, str] | None = None) -> Iterator[Server]:
    env = cloud_env(**(env or {}))  # its own admin token, no ENTSO-E token (no network at test time)
    port = free_port()
    log = tmp / f"serve-{port}.log"
    cmd = serve_cmd(port, db_url or f"sqlite+aiosqlite:///{tmp / 'cloud.sqlite'}", tmp / "cloud.key", *extra)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0) as client:

            def healthy() -> bool:
                if proc.poll() is not None:
                    pytest.fail(f"zapcloud exited:\n{log.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    return client.get("/healthz").status_code == 200
                return False

            try:
                wait_until_sync(healthy, 20, "zapcloud /healthz", every_s=0.1)
            except AssertionError as exc:
                pytest.fail(f"{exc}:\n{log.read_text()}")
            m = re.search(r"cloud public key (\S+)", log.read_text())
            assert m
            yield Server(client, load_verify_key_b64(m.group(1)), log, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def register(srv: Server, site_id: str) -> SigningKey:
    key = SigningKey.generate()
    body = {"site_id": site_id, "public_key": public_key_b64(key), "assets": ASSETS, "tariff": TARIFF}
    r = srv.client.post("/v1/sites", json=body, headers=srv.admin())
    assert r.status_code == 201, r.text
    return key


def send_telemetry(srv: Server, site_id: str, key: SigningKey, now: datetime, soc: float) -> None:
    readings: list[WireReading] = []
    seq = 1
    t = now - timedelta(hours=6)
    while t < now:
        for der, kind, values in (
            ("meter", DerKind.METER, {"power_w": 600.0}),
            ("bat", DerKind.BATTERY, {"power_w": 0.0, "soc": soc}),
        ):
            readings.append(WireReading(seq=seq, der_id=der, kind=kind, ts=t, values=values))
            seq += 1
        t += timedelta(minutes=5)
    body = encode(make_batch(site_id, readings))
    r = srv.client.post(
        f"/v1/sites/{site_id}/telemetry",
        content=body,
        headers={**sign_body(key, body), "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text


def put_prices(srv: Server, now: datetime) -> None:
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    # evening peak, cheap night and midday: the battery has something to do
    prices = [0.08 + 0.12 * math.exp(-(((h % 24 - 18) / 2.5) ** 2)) - 0.05 * math.exp(-(((h % 24 - 13) / 2) ** 2))
              for h in range(48)]  # fmt: skip
    r = srv.client.put(
        f"/v1/prices/{AREA}", json={"start": day.isoformat(), "step_minutes": 60, "prices": prices}, headers=srv.admin()
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == 48 * 4


def get_plan(srv: Server, site_id: str, key: SigningKey) -> httpx.Response:
    path = f"/v1/sites/{site_id}/plan"
    return srv.client.get(path, headers=sign_request(key, "GET", path, datetime.now(UTC)))


def wait_plan(srv: Server, site_id: str, key: SigningKey, min_version: int = 1, timeout: float = 30) -> Any:
    def plan() -> Any:
        r = get_plan(srv, site_id, key)
        if r.status_code != 200:
            return None
        got = verify_plan(r.content, r.headers.get("X-Zap-Signature"), srv.cloud_key, site_id=site_id,
                          min_version_exclusive=None, now=datetime.now(UTC))  # fmt: skip
        return got if got.version >= min_version else None

    try:
        return wait_until_sync(plan, timeout, f"plan v{min_version} for {site_id}", every_s=0.1)
    except AssertionError as exc:
        pytest.fail(f"{exc}:\n{srv.log.read_text()[-3000:]}")


def wait_event(srv: Server, href: str, status: str, timeout: float = 60) -> Any:
    def reached() -> Any:
        r = srv.client.get(href, headers=srv.admin())
        assert r.status_code == 200, r.text
        return r.json() if r.json()["status"] == status else None

    try:
        return wait_until_sync(reached, timeout, f"event {status}", every_s=0.1)
    except AssertionError as exc:
        pytest.fail(f"{exc}\n{srv.log.read_text()[-3000:]}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_planner_loop_plans_and_the_fleet_responds(backend: str, tmp_path: Path) -> None:
    """Two workers on one database: sites registered at one are planned, an event posted at the other."""
    now = datetime.now(UTC)
    url = empty_db_url(backend, tmp_path)
    with serve(tmp_path, db_url=url) as srv, serve(tmp_path, db_url=url) as other:
        keys = {sid: register(srv, sid) for sid in ("a", "b")}
        for i, (sid, key) in enumerate(keys.items()):
            send_telemetry(srv, sid, key, now, soc=0.6 + 0.2 * i)
        put_prices(srv, now)
        plans = {sid: wait_plan(srv, sid, key) for sid, key in keys.items()}
        for plan in plans.values():
            assert len(plan.slots) >= 4
            assert plan.slots[0].start <= datetime.now(UTC) < plan.slots[0].end + timedelta(minutes=15)
            assert {s.intent.mode for s in plan.slots} <= {IntentMode.SETPOINT, IntentMode.SELF_CONSUMPTION}

        r = srv.client.get("/v1/fleet/flexibility", params={"slots": 8}, headers=srv.admin())
        assert r.status_code == 200, r.text
        flex = r.json()
        assert flex["sites"] == 2 and len(flex["slots"]) == 8
        first = flex["slots"][0]
        assert first["sites"] == 2
        assert first["down_kw"] > 1.0  # two batteries well above their reserve
        assert first["up_kw"] > 1.0
        assert srv.client.get("/v1/fleet/flexibility").status_code == 401

        start = (now + timedelta(minutes=45)).replace(second=0, microsecond=0)
        event = {"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat(), "reduction_kw": 1.0,
                 "client_key": f"dr-{backend}-1"}  # fmt: skip
        r = other.client.post("/v1/fleet/events", json=event, headers=other.admin())
        assert r.status_code == 202, r.text  # at once: the workers solve and dispatch it
        created = r.json()
        assert created["client_key"] == event["client_key"] and not created["replayed"]
        href = created["href"]
        assert r.headers["location"] == href == f"/v1/fleet/events/{created['event_id']}"
        # The retry (at the other worker, as after a lost answer) names the same event; nothing new is made.
        again = srv.client.post("/v1/fleet/events", json=event, headers=srv.admin())
        assert again.status_code == 200, again.text
        assert again.json()["event_id"] == created["event_id"] and again.json()["replayed"]
        reused = srv.client.post("/v1/fleet/events", json={**event, "reduction_kw": 2.0}, headers=srv.admin())
        assert reused.status_code == 422 and "other parameters" in reused.text
        status = wait_event(srv, href, "dispatched")
        assert status["progress"]["sites"] == 2 and status["progress"]["planned"] == 2
        result = status["allocation"]
        assert result["fully_met"] and result["met_kw"] >= 1.0
        assert result["sites"], result
        assert status["progress"]["dispatched"] == len(result["sites"])
        for chosen in result["sites"]:
            sid = chosen["site_id"]
            plan = wait_plan(srv, sid, keys[sid], min_version=chosen["plan_version"])  # the Zap's poll
            in_window = [s for s in plan.slots if start <= s.start < start + timedelta(hours=1)]
            assert in_window and all(s.intent.grid_import_limit_w is not None for s in in_window)
            assert max(s.intent.grid_import_limit_w or 0 for s in in_window) < 17000
        # every chosen site fetched its plan: acknowledged
        assert wait_event(other, href, "acknowledged")["progress"]["acknowledged"] == len(result["sites"])
        assert srv.client.get(href).status_code == 401
        assert srv.client.get("/v1/fleet/events/" + "0" * 32, headers=srv.admin()).status_code == 404

        bad = srv.client.post("/v1/fleet/events", json={**event, "reduction_kw": -1}, headers=srv.admin())
        assert bad.status_code == 422
        errs = srv.client.get("/v1/sites/a/forecast-errors", headers=srv.admin())
        assert errs.status_code == 200 and errs.json()["site_id"] == "a"


def test_no_planner_flag(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    with serve(tmp_path, "--no-planner") as srv:
        key = register(srv, "quiet")
        send_telemetry(srv, "quiet", key, now, soc=0.5)
        put_prices(srv, now)
        time.sleep(1.5)  # wall-clock: nothing plans during 1.5 s (a running planner would within its first tick)
        assert get_plan(srv, "quiet", key).status_code == 404


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_worker_killed_mid_event_leaves_the_rest_to_the_other(backend: str, tmp_path: Path) -> None:
    """SIGKILL the only worker while it solves an event's sites; a second worker finishes the event: every
    site planned, the killed worker's sites (its last batch, fleet_work.CLAIM_BATCH) taken over after their
    lease, each chosen site dispatched once."""
    from cloud.fleet_work import CLAIM_BATCH

    now = datetime.now(UTC)
    url = empty_db_url(backend, tmp_path)
    lease = {"ZAPCLOUD_FLEET_LEASE_S": "3"}
    sites = [f"k{i:02d}" for i in range(CLAIM_BATCH + 4)]  # a first batch solved, the second one held
    with serve(tmp_path, db_url=url, env=lease) as first:
        keys = {sid: register(first, sid) for sid in sites}
        for i, (sid, key) in enumerate(keys.items()):
            send_telemetry(first, sid, key, now, soc=0.3 + 0.05 * i)
        put_prices(first, now)
        before = {sid: wait_plan(first, sid, key).version for sid, key in keys.items()}
        start = (now + timedelta(minutes=45)).replace(second=0, microsecond=0)
        event = {"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat(), "reduction_kw": 500.0}
        r = first.client.post("/v1/fleet/events", json=event, headers=first.admin())
        assert r.status_code == 202, r.text
        href = r.json()["href"]
        event_id = r.json()["event_id"]

        def mid_event() -> Any:  # some sites solved, others pending, leases held: frozen (SIGSTOP) to read it
            progress = first.client.get(href, headers=first.admin()).json()["progress"]
            if progress["planned"] < 2 or not progress["solving"]:
                return None
            first.proc.send_signal(signal.SIGSTOP)
            rows = asyncio.run(_attempts(url, event_id))
            held = {s: a for s, (a, owner, state) in rows.items() if owner is not None and state == "pending"}
            planned = sum(1 for _a, _o, state in rows.values() if state != "pending")
            if held and planned < len(sites):
                return planned, held  # what it holds as it dies
            first.proc.send_signal(signal.SIGCONT)  # a batch had just finished: wait for the next one
            return None

        planned, held = wait_until_sync(mid_event, 60, "the event half planned, leases held")
        first.proc.kill()
        first.proc.wait(timeout=10)
    assert 2 <= planned < len(sites) and 1 <= len(held) <= CLAIM_BATCH, (planned, held)
    with serve(tmp_path, db_url=url, env=lease) as second:
        status = wait_event(second, href, "dispatched", timeout=120)
        assert status["progress"]["planned"] == len(sites) and status["progress"]["failed"] == 0, status
        chosen = {s["site_id"]: s["plan_version"] for s in status["allocation"]["sites"]}
        assert chosen  # 500 kW is more than the fleet has: every site that can help is chosen
        for sid, key in keys.items():
            # one new plan for a chosen site (the event's), none for the others: nothing dispatched twice
            assert wait_plan(second, sid, key).version == (before[sid] + 1 if sid in chosen else before[sid])
            if sid in chosen:
                assert chosen[sid] == before[sid] + 1
    # the sites the killed worker held were taken over once their lease ran out (a second attempt); no other was
    attempts = {s: a for s, (a, _owner, _state) in asyncio.run(_attempts(url, event_id)).items()}
    assert attempts == {s: held[s] + 1 if s in held else 1 for s in sites}, (attempts, held)


async def _attempts(url: str, event_id: str) -> dict[str, tuple[int, str | None, str]]:
    """Each site's (attempts, lease owner, state) in the event's work rows."""
    from sqlalchemy import select

    from cloud.db import Database, fleet_event_jobs

    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            rows = await conn.execute(
                select(
                    fleet_event_jobs.c.site_id,
                    fleet_event_jobs.c.attempts,
                    fleet_event_jobs.c.lease_owner,
                    fleet_event_jobs.c.state,
                ).where(fleet_event_jobs.c.event_id == event_id)
            )
            return {str(s): (int(a), o, str(st)) for s, a, o, st in rows}
    finally:
        await db.dispose()
