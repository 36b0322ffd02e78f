"""The cloud HTTP API against a real `zapcloud serve` process on loopback, on a SQLite file and on
PostgreSQL (ZAPCLOUD_TEST_DB_URL, started by `make test`; tests/db_backends.py empties it first).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from nacl.signing import SigningKey
from sqlalchemy import Select, select

from cloud import db as schema
from cloud.db import Database
from cloud_sync.keys import public_key_b64
from cloud_sync.wire import (
    HEADER_KEY_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    CommandReport,
    DiscoveryReport,
    PlanRejected,
    TelemetryBatch,
    WireReading,
    encode,
    encode_plan,
    gzip_body,
    make_batch,
    sign_body,
    sign_request,
    verify_plan,
)
from tests.cloud_server import ADMIN, Cloud, serve
from tests.db_backends import BACKENDS, empty_db_url
from zapd.model import BatterySetpoint, DerCapabilities, DerKind, Intent, Plan, PlanSlot

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# Other test modules start their cloud through these names.
_serve = serve
__all__ = ["ADMIN", "Cloud", "_serve"]


@pytest.fixture(scope="module", params=BACKENDS)
def cloud(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    tmp = tmp_path_factory.mktemp("cloud")
    with serve(tmp, empty_db_url(request.param, tmp, "x"), "a") as c:
        yield c


def _register(cloud: Cloud, site_id: str) -> SigningKey:
    key = SigningKey.generate()
    r = cloud.client.post(
        "/v1/sites",
        json={"site_id": site_id, "public_key": public_key_b64(key), "tariff": {"flat": 0.3}},
        headers=cloud.admin(),
    )
    assert r.status_code == 201, r.text
    return key


def _readings(first: int, last: int) -> list[WireReading]:
    return [
        WireReading(
            seq=s,
            der_id="meter1",
            kind=DerKind.METER,
            ts=T0 + timedelta(seconds=s),
            values={"power_w": 100.0 + s},
        )
        for s in range(first, last + 1)
    ]


def _batch(site_id: str, first: int, last: int, **kw: object) -> TelemetryBatch:
    return make_batch(site_id, _readings(first, last), **kw)  # type: ignore[arg-type]


def _post(cloud: Cloud, site_id: str, key: SigningKey, body: bytes, *, gzip: bool = False) -> httpx.Response:
    headers = {**sign_body(key, body), "Content-Type": "application/json"}
    if gzip:
        headers["Content-Encoding"] = "gzip"
        body = gzip_body(body)
    return cloud.client.post(f"/v1/sites/{site_id}/telemetry", content=body, headers=headers)


def _fetch(cloud: Cloud, stmt: Select[Any]) -> list[tuple[Any, ...]]:
    """Look into the server's database directly, through the same data layer, whatever the engine."""

    async def run() -> list[tuple[Any, ...]]:
        db = Database(cloud.db_url)
        try:
            async with db.engine.connect() as conn:
                return [tuple(r) for r in await conn.execute(stmt)]
        finally:
            await db.dispose()

    return asyncio.run(run())


def _rows(cloud: Cloud, site_id: str) -> list[int]:
    stmt = select(schema.telemetry.c.seq).where(schema.telemetry.c.site_id == site_id).order_by("seq")
    return [r[0] for r in _fetch(cloud, stmt)]


def test_register_requires_admin_token(cloud: Cloud) -> None:
    key = SigningKey.generate()
    body = {"site_id": "noadmin", "public_key": public_key_b64(key)}
    assert cloud.client.post("/v1/sites", json=body).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert cloud.client.post("/v1/sites", json=body, headers=bad).status_code == 401
    bad_key = {"site_id": "badkey", "public_key": "not-base64!"}
    assert cloud.client.post("/v1/sites", json=bad_key, headers=cloud.admin()).status_code == 422


def test_telemetry_ingest_is_idempotent_and_in_order(cloud: Cloud) -> None:
    key = _register(cloud, "site-a")
    body = encode(_batch("site-a", 1, 5))
    r = _post(cloud, "site-a", key, body)
    assert r.status_code == 200, r.text
    assert r.json() == {"stored_through": 5, "site_id": "site-a"}

    # The same batch again (a lost ack): harmless, same answer, no duplicate rows.
    r = _post(cloud, "site-a", key, body)
    assert (r.status_code, r.json()) == (200, {"stored_through": 5, "site_id": "site-a"})

    # An overlapping re-batch advances without duplicating 3..5.
    r = _post(cloud, "site-a", key, encode(_batch("site-a", 3, 8)))
    assert (r.status_code, r.json()) == (200, {"stored_through": 8, "site_id": "site-a"})
    assert _rows(cloud, "site-a") == list(range(1, 9))


def test_gap_is_refused_with_the_resume_point(cloud: Cloud) -> None:
    key = _register(cloud, "site-gap")
    assert _post(cloud, "site-gap", key, encode(_batch("site-gap", 1, 3))).status_code == 200
    r = _post(cloud, "site-gap", key, encode(_batch("site-gap", 7, 9)))
    assert r.status_code == 409
    assert r.json() == {"error": "gap", "stored_through": 3, "site_id": "site-gap"}
    assert _rows(cloud, "site-gap") == [1, 2, 3]
    # The Zap may declare readings lost (outbox retention); then the stream resumes past them.
    r = _post(cloud, "site-gap", key, encode(_batch("site-gap", 7, 9, lost_through=6)))
    assert (r.status_code, r.json()) == (200, {"stored_through": 9, "site_id": "site-gap"})


def test_gzip_body_is_verified_after_decompression(cloud: Cloud) -> None:
    key = _register(cloud, "site-gz")
    r = _post(cloud, "site-gz", key, encode(_batch("site-gz", 1, 50)), gzip=True)
    assert (r.status_code, r.json()) == (200, {"stored_through": 50, "site_id": "site-gz"})
    bad = cloud.client.post(
        "/v1/sites/site-gz/telemetry",
        content=b"not gzip",
        headers={**sign_body(key, b"not gzip"), "Content-Encoding": "gzip"},
    )
    assert bad.status_code == 400


def test_command_reports_ride_along(cloud: Cloud) -> None:
    key = _register(cloud, "site-cmd")
    cmd = CommandReport(
        ts=T0, der_id="bat1", command=BatterySetpoint(der_id="bat1", power_w=2000.0), result="ok",
        clamped_reason="soc_reserve",
    )  # fmt: skip
    body = encode(_batch("site-cmd", 1, 2, commands=[cmd]))
    assert _post(cloud, "site-cmd", key, body).status_code == 200
    assert _post(cloud, "site-cmd", key, body).status_code == 200
    cr = schema.command_reports
    stmt = select(cr.c.der_id, cr.c.result).where(cr.c.site_id == "site-cmd").order_by(cr.c.ts)
    assert _fetch(cloud, stmt) == [("bat1", "ok")]
    # The same (already stored) readings re-sent with a newer report: the report is kept.
    later = CommandReport(ts=T0 + timedelta(seconds=5), der_id="bat1", command=cmd.command, result="timeout")
    r = _post(cloud, "site-cmd", key, encode(_batch("site-cmd", 1, 2, commands=[cmd, later])))
    assert (r.status_code, r.json()) == (200, {"stored_through": 2, "site_id": "site-cmd"})
    assert _fetch(cloud, stmt) == [("bat1", "ok"), ("bat1", "timeout")]


def test_bad_signature_and_unknown_key_are_401(cloud: Cloud) -> None:
    key = _register(cloud, "site-auth")
    body = encode(_batch("site-auth", 1, 2))
    headers = sign_body(key, body)
    tampered = body.replace(b"101.0", b"999.0")
    r = cloud.client.post("/v1/sites/site-auth/telemetry", content=tampered, headers=headers)
    assert (r.status_code, r.json()["error"]) == (401, "bad_signature")

    stranger = SigningKey.generate()
    r = _post(cloud, "site-auth", stranger, body)
    assert (r.status_code, r.json()["error"]) == (401, "unknown_key")
    # A key registered for another site does not open this one.
    other = _register(cloud, "site-auth-other")
    assert _post(cloud, "site-auth", other, body).status_code == 401
    # Unregistered site, missing headers.
    assert _post(cloud, "nosuchsite", key, body).status_code == 401
    r = cloud.client.post("/v1/sites/site-auth/telemetry", content=body)
    assert r.status_code == 401
    assert _rows(cloud, "site-auth") == []


def test_malformed_signed_bodies_are_422(cloud: Cloud) -> None:
    key = _register(cloud, "site-bad")
    for body in (
        b"{not json",
        b'{"site_id": "site-bad"}',
        b'{"site_id":"site-bad","first_seq":1,"last_seq":3,"readings":[]}',
    ):
        r = _post(cloud, "site-bad", key, body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"] == "malformed"
    # Non-contiguous sequence numbers.
    readings = _readings(1, 2) + _readings(4, 4)
    holey = TelemetryBatch(site_id="site-bad", first_seq=1, last_seq=4, readings=readings)
    r = _post(cloud, "site-bad", key, encode(holey))
    assert r.status_code == 422 and "contiguous" in r.json()["detail"]
    # Body names another site than the URL.
    r = _post(cloud, "site-bad", key, encode(_batch("site-other", 1, 2)))
    assert (r.status_code, r.json()["error"]) == (422, "site_mismatch")
    assert _rows(cloud, "site-bad") == []


def test_discovery_is_stored(cloud: Cloud) -> None:
    key = _register(cloud, "site-disc")
    report = DiscoveryReport(
        site_id="site-disc",
        ders=[DerCapabilities(der_id="bat1", kind=DerKind.BATTERY, controllable=True, capacity_wh=10_000.0)],
    )
    body = encode(report)
    r = cloud.client.post("/v1/sites/site-disc/discovery", content=body, headers=sign_body(key, body))
    assert (r.status_code, r.json()) == (200, {"ders": 1})
    dm = schema.der_models
    assert _fetch(cloud, select(dm.c.der_id).where(dm.c.site_id == "site-disc")) == [("bat1",)]


def _plan(site_id: str, version: int, *, hours: float = 24) -> Plan:
    now = datetime.now(UTC).replace(microsecond=0)
    slot = PlanSlot(start=now, end=now + timedelta(hours=1), intent=Intent(battery_w=1500.0))
    return Plan(
        site_id=site_id,
        version=version,
        issued_at=now,
        valid_until=now + timedelta(hours=hours),
        slots=(slot,),
    )


def _get_plan(cloud: Cloud, site_id: str, key: SigningKey, **headers: str) -> httpx.Response:
    path = f"/v1/sites/{site_id}/plan"
    return cloud.client.get(path, headers={**sign_request(key, "GET", path, datetime.now(UTC)), **headers})


def test_plan_put_then_signed_get(cloud: Cloud) -> None:
    key = _register(cloud, "site-plan")
    assert _get_plan(cloud, "site-plan", key).status_code == 404

    plan = _plan("site-plan", 1)
    r = cloud.client.put("/v1/sites/site-plan/plan", content=encode_plan(plan), headers=cloud.admin())
    assert r.status_code == 200, r.text
    assert cloud.client.put("/v1/sites/site-plan/plan", content=encode_plan(plan)).status_code == 401

    r = _get_plan(cloud, "site-plan", key)
    assert r.status_code == 200
    assert r.headers["etag"] == '"1"'
    got = verify_plan(
        r.content, r.headers.get(HEADER_SIGNATURE), cloud.cloud_key,
        site_id="site-plan", min_version_exclusive=None, now=datetime.now(UTC),
    )  # fmt: skip
    assert got == plan

    # Conditional GET on the version the Zap holds.
    assert _get_plan(cloud, "site-plan", key, **{"If-None-Match": '"1"'}).status_code == 304

    # A newer version replaces it; the older one can no longer be published.
    plan2 = _plan("site-plan", 2)
    assert cloud.client.put("/v1/sites/site-plan/plan", content=encode_plan(plan2), headers=cloud.admin()).is_success
    r = cloud.client.put("/v1/sites/site-plan/plan", content=encode_plan(plan), headers=cloud.admin())
    assert r.status_code == 409
    r = _get_plan(cloud, "site-plan", key, **{"If-None-Match": '"1"'})
    assert r.status_code == 200 and r.headers["etag"] == '"2"'
    got2 = verify_plan(
        r.content, r.headers[HEADER_SIGNATURE], cloud.cloud_key,
        site_id="site-plan", min_version_exclusive=1, now=datetime.now(UTC),
    )  # fmt: skip
    assert got2.version == 2
    # The Zap that holds version 2 rejects a replay of it.
    with pytest.raises(PlanRejected) as exc:
        verify_plan(
            r.content, r.headers[HEADER_SIGNATURE], cloud.cloud_key,
            site_id="site-plan", min_version_exclusive=2, now=datetime.now(UTC),
        )  # fmt: skip
    assert exc.value.reason == "stale_version"


def test_plan_get_must_be_signed_and_fresh(cloud: Cloud) -> None:
    key = _register(cloud, "site-pget")
    path = "/v1/sites/site-pget/plan"
    assert cloud.client.get(path).status_code == 401
    old = sign_request(key, "GET", path, datetime.now(UTC) - timedelta(hours=1))
    r = cloud.client.get(path, headers=old)
    assert (r.status_code, r.json()["error"]) == (401, "stale_timestamp")
    other_path = sign_request(key, "GET", "/v1/sites/other/plan", datetime.now(UTC))
    r = cloud.client.get(path, headers=other_path)
    assert (r.status_code, r.json()["error"]) == (401, "bad_signature")
    stranger = SigningKey.generate()
    assert _get_plan(cloud, "site-pget", stranger).status_code == 401
    assert HEADER_KEY_ID in old and HEADER_TIMESTAMP in old


def test_plan_put_rejects_bad_plans(cloud: Cloud) -> None:
    _register(cloud, "site-pput")
    url = "/v1/sites/site-pput/plan"
    expired = _plan("site-pput", 1, hours=-1)
    r = cloud.client.put(url, content=encode_plan(expired), headers=cloud.admin())
    assert r.status_code == 422
    other = _plan("elsewhere", 1)
    assert cloud.client.put(url, content=encode_plan(other), headers=cloud.admin()).status_code == 422
    r = cloud.client.put("/v1/sites/nosite/plan", content=encode_plan(_plan("nosite", 1)), headers=cloud.admin())
    assert r.status_code == 404


def test_metrics_count_rejections(cloud: Cloud) -> None:
    cloud.client.post("/v1/sites/site-m/telemetry", content=b"{}")
    assert cloud.client.get("/metrics").status_code == 401  # metrics are not public
    text = cloud.client.get("/metrics", headers=cloud.admin()).text
    assert 'zapcloud_requests_rejected_total{endpoint="telemetry",reason="missing_signature"}' in text


def test_two_workers_share_one_database(cloud: Cloud) -> None:
    """No state in the process: a second worker on the same DB serves the same sites, and
    racing re-sends of one batch to both workers store every reading exactly once."""
    with serve(cloud.tmp, cloud.db_url, "b") as other:
        key = _register(cloud, "site-two")
        body = encode(_batch("site-two", 1, 200))

        def post(i: int) -> int:
            target = cloud if i % 2 else other
            r = _post(target, "site-two", key, body)
            assert r.json() == {"stored_through": 200, "site_id": "site-two"}, r.text
            return r.status_code

        with ThreadPoolExecutor(max_workers=4) as pool:
            assert set(pool.map(post, range(8))) == {200}
        assert _rows(cloud, "site-two") == list(range(1, 201))
        r = _post(other, "site-two", key, encode(_batch("site-two", 150, 250)))
        assert (r.status_code, r.json()) == (200, {"stored_through": 250, "site_id": "site-two"})

        plan = _plan("site-two", 1)
        assert other.client.put("/v1/sites/site-two/plan", content=encode_plan(plan), headers=other.admin()).is_success
        r = _get_plan(cloud, "site-two", key)
        assert r.status_code == 200
        assert verify_plan(
            r.content, r.headers[HEADER_SIGNATURE], other.cloud_key,
            site_id="site-two", min_version_exclusive=None, now=datetime.now(UTC),
        ) == plan  # fmt: skip
