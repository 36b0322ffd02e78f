"""The cloud closed by default and bounded at every boundary, against real `zapcloud serve` processes.

Each attack of issue 10 ("The cloud is open by default", "One message can pin a Zap or a site",
"Cheap denial of service and 500s") is replayed here on loopback; the limits are configured small so
that each test runs in seconds.
"""

from __future__ import annotations

import base64
import gzip
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from nacl.signing import SigningKey

from cloud_sync.keys import public_key_b64
from cloud_sync.wire import (
    MAX_SEQ,
    TelemetryBatch,
    WireReading,
    encode,
    encode_plan,
    gzip_body,
    make_batch,
    sign_body,
)
from tests.cloud_server import REPO, Cloud, accepted_connections, cloud_env, serve, serve_cmd
from tests.ports import free_port
from tests.waiting import wait_until_sync
from zapd.model import DerKind, Intent, Plan, PlanSlot

# One of the 8 small-order points of edwards25519 (order 8), as listed in libsodium's
# crypto_sign_ed25519 blocklist: a "public key" that verifies forged signatures.
SMALL_ORDER_POINT = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _sqlite(tmp: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp / 'cloud.sqlite'}"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    tmp = tmp_path_factory.mktemp("hardening")
    with serve(tmp, _sqlite(tmp), "bounds") as c:
        yield c


def _register(cloud: Cloud, site_id: str) -> SigningKey:
    key = SigningKey.generate()
    r = cloud.client.post(
        "/v1/sites", json={"site_id": site_id, "public_key": public_key_b64(key)}, headers=cloud.admin()
    )
    assert r.status_code == 201, r.text
    return key


def _readings(first: int, last: int, ts: datetime, **values: float) -> list[WireReading]:
    vals = values or {"power_w": 100.0}
    return [WireReading(seq=s, der_id="m1", kind=DerKind.METER, ts=ts, values=vals) for s in range(first, last + 1)]


def _post(cloud: Cloud, site_id: str, key: SigningKey, body: bytes) -> httpx.Response:
    headers = {**sign_body(key, body), "Content-Type": "application/json"}
    return cloud.client.post(f"/v1/sites/{site_id}/telemetry", content=body, headers=headers)


def _batch(site_id: str, readings: list[WireReading], lost_through: int | None = None) -> bytes:
    """A batch body built field by field, so that out-of-bounds values reach the server unchecked."""
    return encode(
        TelemetryBatch(
            site_id=site_id,
            first_seq=readings[0].seq,
            last_seq=readings[-1].seq,
            readings=readings,
            lost_through=lost_through,
        )
    )


def _plan(site_id: str, version: int, *, valid: timedelta = timedelta(hours=24)) -> Plan:
    now = _now()
    slot = PlanSlot(start=now, end=now + timedelta(hours=1), intent=Intent(battery_w=1000.0))
    return Plan(site_id=site_id, version=version, issued_at=now, valid_until=now + valid, slots=(slot,))


# --- closed by default -------------------------------------------------------------------------


def _start(tmp: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = serve_cmd(free_port(), _sqlite(tmp), tmp / "cloud.key", *extra)
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)


# The servers a test starts for its own limits run without the planner: it plans nothing here (no prices), and
# importing and starting it was a third of each start-up.


def test_serve_refuses_to_start_without_an_admin_token(tmp_path: Path) -> None:
    env = cloud_env()
    env.pop("ZAPCLOUD_ADMIN_TOKEN")
    done = _start(tmp_path, env)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--admin-token-file" in lines[0] and "ZAPCLOUD_ADMIN_TOKEN" in lines[0], lines
    assert not (tmp_path / "cloud.sqlite").exists()  # refused before it touched anything
    # A guessable token is no credential either.
    done = _start(tmp_path, cloud_env(ZAPCLOUD_ADMIN_TOKEN="admin"))
    assert done.returncode == 2 and "too short" in done.stderr
    done = _start(tmp_path, env, "--admin-token-file", str(tmp_path / "missing"))
    assert done.returncode == 2 and "cannot read" in done.stderr


def test_admin_token_file_and_a_read_only_metrics_token(tmp_path: Path) -> None:
    admin_file, metrics_file = tmp_path / "admin.token", tmp_path / "metrics.token"
    for path in (admin_file, metrics_file):
        made = subprocess.run(
            [sys.executable, "-m", "cloud.cli", "token", str(path)], env=cloud_env(), cwd=REPO, capture_output=True
        )
        assert made.returncode == 0, made.stderr
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    admin, metrics = admin_file.read_text().strip(), metrics_file.read_text().strip()
    env = cloud_env()
    env.pop("ZAPCLOUD_ADMIN_TOKEN")
    args = ("--admin-token-file", str(admin_file), "--metrics-token-file", str(metrics_file))
    with serve(tmp_path, _sqlite(tmp_path), "tokfile", "--no-planner", *args, env=env, admin=admin) as c:
        body = {"site_id": "tok", "public_key": public_key_b64(SigningKey.generate())}
        assert c.client.post("/v1/sites", json=body).status_code == 401
        as_metrics = {"Authorization": f"Bearer {metrics}"}
        assert c.client.post("/v1/sites", json=body, headers=as_metrics).status_code == 401
        assert c.client.post("/v1/sites", json=body, headers=c.admin()).status_code == 201
        assert c.client.get("/metrics").status_code == 401
        assert c.client.get("/metrics", headers={"Authorization": "Bearer " + "x" * 40}).status_code == 401
        r = c.client.get("/metrics", headers=as_metrics)
        assert r.status_code == 200 and 'endpoint="register"' in r.text
        assert c.client.get("/metrics", headers=c.admin()).status_code == 200


def test_database_file_is_private(cloud: Cloud, tmp_path: Path) -> None:
    db = Path(cloud.db_url.split("///", 1)[1])
    for path in (db, db.with_name(db.name + "-wal")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    done = subprocess.run(
        serve_cmd(free_port(), f"sqlite+aiosqlite:///{open_dir / 'c.sqlite'}", tmp_path / "k.key"),
        env=cloud_env(), cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "world-writable" in done.stderr, done.stderr
    assert not (open_dir / "c.sqlite").exists()


# --- bounded numbers ---------------------------------------------------------------------------


def test_telemetry_seq_is_bounded(cloud: Cloud) -> None:
    key = _register(cloud, "seq-max")
    now = _now()
    for seq in (2**63 - 1, 2**63, 2**64 + 5, MAX_SEQ + 1):
        r = _post(cloud, "seq-max", key, _batch("seq-max", _readings(seq, seq, now), lost_through=seq - 1))
        assert r.status_code == 422, (seq, r.status_code, r.text)
    # The first batch of a site may start anywhere up to the bound (a Zap with a long history).
    r = _post(cloud, "seq-max", key, _batch("seq-max", _readings(MAX_SEQ - 1, MAX_SEQ, now), lost_through=MAX_SEQ - 2))
    assert (r.status_code, r.json()["stored_through"]) == (200, MAX_SEQ)


def test_a_seq_jump_beyond_what_a_zap_can_have_written_is_refused(cloud: Cloud) -> None:
    key = _register(cloud, "seq-jump")
    t = _now() - timedelta(minutes=10)
    assert _post(cloud, "seq-jump", key, _batch("seq-jump", _readings(1, 3, t))).status_code == 200
    # 10 minutes later, a batch declares 10^12 readings lost: 1.6 billion per second.
    far = 10**12
    r = _post(cloud, "seq-jump", key, _batch("seq-jump", _readings(far, far + 1, _now()), lost_through=far - 1))
    assert (r.status_code, r.json()["error"]) == (422, "seq_jump"), r.text
    # The site is not pinned: the stream goes on where it was.
    r = _post(cloud, "seq-jump", key, _batch("seq-jump", _readings(4, 5, t)))
    assert (r.status_code, r.json()["stored_through"]) == (200, 5)
    # A plausible loss (an outbox that dropped 100 000 readings over 10 minutes) is accepted.
    r = _post(cloud, "seq-jump", key, _batch("seq-jump", _readings(100_006, 100_007, _now()), lost_through=100_005))
    assert (r.status_code, r.json()["stored_through"]) == (200, 100_007)


def test_reading_times_and_values_are_bounded(cloud: Cloud) -> None:
    key = _register(cloud, "ts-bounds")
    for ts in (datetime(1970, 1, 1, tzinfo=UTC), datetime(2099, 1, 1, tzinfo=UTC), _now() + timedelta(hours=1)):
        r = _post(cloud, "ts-bounds", key, _batch("ts-bounds", _readings(1, 1, ts)))
        assert r.status_code == 422 and "outside" in r.json()["detail"], (ts, r.text)
    for value in (1e308, -1e13):
        r = _post(cloud, "ts-bounds", key, _batch("ts-bounds", _readings(1, 1, _now(), power_w=value)))
        assert r.status_code == 422, (value, r.text)
    big = make_batch("ts-bounds", _readings(1, 2, _now()))
    many = TelemetryBatch(site_id="ts-bounds", first_seq=1, last_seq=6000, readings=_readings(1, 6000, _now()))
    assert _post(cloud, "ts-bounds", key, encode(many)).status_code == 422
    assert _post(cloud, "ts-bounds", key, encode(big)).status_code == 200


def test_plan_versions_and_validity_are_bounded(cloud: Cloud) -> None:
    _register(cloud, "plan-bounds")
    url = "/v1/sites/plan-bounds/plan"
    for version in (2**63, 2**63 - 1, 2**53, 10**7):
        r = cloud.client.put(url, content=encode_plan(_plan("plan-bounds", version)), headers=cloud.admin())
        assert r.status_code == 422, (version, r.text)
    r = cloud.client.put(
        url, content=encode_plan(_plan("plan-bounds", 1, valid=timedelta(days=50 * 365))), headers=cloud.admin()
    )
    assert r.status_code == 422 and "days" in r.json()["detail"], r.text
    # The site can still be planned normally.
    assert cloud.client.put(url, content=encode_plan(_plan("plan-bounds", 1)), headers=cloud.admin()).status_code == 200


def test_prices_are_bounded(cloud: Cloud) -> None:
    start = _now().replace(minute=0, second=0)
    for start_ts, prices in (
        (start.isoformat(), [1e308, 0.1]),
        (start.isoformat(), [-1e308]),
        (start.isoformat(), [25.0]),  # EUR/MWh sent as EUR/kWh
        ("9999-12-31T00:00:00+00:00", [0.1] * 48),
        ("1970-01-01T00:00:00+00:00", [0.1]),
        (start.isoformat(), [0.1] * 200_000),  # 800 000 rows
    ):
        body = {"start": start_ts, "step_minutes": 60, "prices": prices}
        r = cloud.client.put("/v1/prices/NL", json=body, headers=cloud.admin())
        assert r.status_code == 422, (start_ts, prices[:2], r.text[:200])
    r = cloud.client.put("/v1/prices/" + "A" * 40, json={"start": start.isoformat(), "step_minutes": 60,
                                                          "prices": [0.1]}, headers=cloud.admin())  # fmt: skip
    assert r.status_code == 422
    ok = {"start": start.isoformat(), "step_minutes": 60, "prices": [0.25, -0.05]}
    r = cloud.client.put("/v1/prices/NL", json=ok, headers=cloud.admin())
    assert (r.status_code, r.json()["rows"]) == (200, 8)


def test_demand_response_and_fleet_reads_are_bounded(cloud: Cloud) -> None:
    now = _now()
    for kw, start in ((1e12, now), (5.0, now + timedelta(days=30))):
        body = {"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat(), "reduction_kw": kw}
        r = cloud.client.post("/v1/fleet/events", json=body, headers=cloud.admin())
        assert r.status_code == 422, (kw, r.text)
    for slots in ("1000000000", "-1", "0", "1e3"):
        r = cloud.client.get("/v1/fleet/flexibility", params={"slots": slots}, headers=cloud.admin())
        assert r.status_code == 422, slots


def test_public_keys_must_be_real_curve_points(cloud: Cloud) -> None:
    for raw in (bytes(32), SMALL_ORDER_POINT, b"\xff" * 32):
        body = {"site_id": "badkey", "public_key": base64.b64encode(raw).decode()}
        r = cloud.client.post("/v1/sites", json=body, headers=cloud.admin())
        assert r.status_code == 422, (raw.hex(), r.text)


def test_discovery_numbers_are_bounded(cloud: Cloud) -> None:
    key = _register(cloud, "disc-bounds")
    der = {"der_id": "bat1", "kind": "battery", "capacity_wh": 1e300}
    body = encode({"site_id": "disc-bounds", "ders": [der]})
    r = cloud.client.post("/v1/sites/disc-bounds/discovery", content=body, headers=sign_body(key, body))
    assert r.status_code == 422, r.text


# --- cheap checks first ------------------------------------------------------------------------


def test_key_lookup_comes_before_decompression(cloud: Cloud) -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)  # 64 MiB in ~64 KiB
    stranger = SigningKey.generate()
    headers = {**sign_body(stranger, b"x"), "Content-Encoding": "gzip"}
    r = cloud.client.post("/v1/sites/nosuch/telemetry", content=bomb, headers=headers)
    assert (r.status_code, r.json()["error"]) == (401, "unknown_key")
    # A registered key with the same bomb: refused by the capped decompressor, not by memory.
    key = _register(cloud, "bomb")
    r = cloud.client.post("/v1/sites/bomb/telemetry", content=bomb, headers={**sign_body(key, b"x"),
                                                                             "Content-Encoding": "gzip"})  # fmt: skip
    assert (r.status_code, r.json()["error"]) == (400, "bad_encoding")
    # A signature header that cannot be one is refused before the lookup.
    r = cloud.client.post("/v1/sites/bomb/telemetry", content=b"{}", headers={**sign_body(key, b"x"),
                                                                              "X-Zap-Signature": "AAAA"})  # fmt: skip
    assert (r.status_code, r.json()["error"]) == (401, "bad_signature")


# --- connection and rate limits ----------------------------------------------------------------


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> bool:
    """True if the server closes `sock` within `seconds` while we keep sending `trickle`."""
    sock.settimeout(0.25)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if trickle:
                sock.sendall(trickle)
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def test_slow_headers_are_cut_off(tmp_path: Path) -> None:
    with serve(tmp_path, _sqlite(tmp_path), "slowloris", "--no-planner", "--header-timeout-s", "1") as c:
        with socket.create_connection(("127.0.0.1", c.port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            t0 = time.monotonic()
            assert _closed_within(sock, 6.0, trickle=b"X-A: b\r\n"), "a trickling client kept its connection"
            assert time.monotonic() - t0 < 4.0
        with socket.create_connection(("127.0.0.1", c.port)) as idle:
            assert _closed_within(idle, 6.0), "an idle new connection was kept"
        assert c.client.get("/healthz").status_code == 200
        text = c.client.get("/metrics", headers=c.admin()).text
        assert 'zapcloud_connections_refused_total{reason="header_timeout"} 2' in text


def test_slow_body_is_cut_off(tmp_path: Path) -> None:
    with (
        serve(tmp_path, _sqlite(tmp_path), "slowbody", "--no-planner", "--body-timeout-s", "1") as c,
        socket.create_connection(("127.0.0.1", c.port)) as sock,
    ):
        head = (
            f"POST /v1/sites HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {c.admin_token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        sock.sendall(head.encode())
        sock.settimeout(6.0)
        t0 = time.monotonic()
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - t0 < 4.0


def test_connection_cap(tmp_path: Path) -> None:
    with serve(
        tmp_path, _sqlite(tmp_path), "cap", "--no-planner", "--max-connections", "3", "--header-timeout-s", "30"
    ) as c:
        c.client.close()  # its keep-alive connection would count
        idle = [socket.create_connection(("127.0.0.1", c.port)) for _ in range(3)]
        try:
            wait_until_sync(lambda: accepted_connections(c.proc, c.port) == 3, 10, "the server to hold 3 connections")
            with (
                httpx.Client(base_url=f"http://127.0.0.1:{c.port}", timeout=5.0) as fresh,
                pytest.raises(httpx.TransportError),
            ):
                fresh.get("/healthz")
        finally:
            for s in idle:
                s.close()
        wait_until_sync(lambda: accepted_connections(c.proc, c.port) == 0, 10, "the server to drop the 3 idle ones")
        with httpx.Client(base_url=f"http://127.0.0.1:{c.port}", timeout=5.0) as fresh:
            assert fresh.get("/healthz").status_code == 200
            text = fresh.get("/metrics", headers=c.admin()).text
            assert 'zapcloud_connections_refused_total{reason="connection_cap"}' in text


def test_rate_limit_per_site_key(tmp_path: Path) -> None:
    with serve(tmp_path, _sqlite(tmp_path), "siterate", "--no-planner", "--site-rate", "0.2", "--site-burst", "3") as c:
        key, other = _register(c, "r1"), _register(c, "r2")
        body = encode(make_batch("r1", _readings(1, 2, _now())))
        assert [_post(c, "r1", key, body).status_code for _ in range(3)] == [200, 200, 200]
        r = _post(c, "r1", key, body)
        assert (r.status_code, r.json()["error"]) == (429, "rate_limited")
        assert 1 <= int(r.headers["Retry-After"]) <= 5
        # Another site's key has its own budget.
        assert _post(c, "r2", other, encode(make_batch("r2", _readings(1, 2, _now())))).status_code == 200


def test_rate_limit_per_admin_token(tmp_path: Path) -> None:
    with serve(
        tmp_path, _sqlite(tmp_path), "adminrate", "--no-planner", "--admin-rate", "0.2", "--admin-burst", "3"
    ) as c:
        codes = [c.client.get("/v1/fleet/flexibility", headers=c.admin()).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]


def test_failed_authentications_are_rate_limited_per_address(tmp_path: Path) -> None:
    with serve(tmp_path, _sqlite(tmp_path), "failrate", "--no-planner", "--fail-rate", "0.2", "--fail-burst", "3") as c:
        wrong = {"Authorization": "Bearer " + "w" * 32}
        assert [c.client.get("/v1/fleet/flexibility", headers=wrong).status_code for _ in range(3)] == [401] * 3
        r = c.client.get("/v1/fleet/flexibility", headers=c.admin())  # even the right token, for a while
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        r = c.client.post("/v1/sites/x/telemetry", content=b"{}", headers=sign_body(SigningKey.generate(), b"{}"))
        assert r.status_code == 429  # before any key lookup
        assert c.client.get("/healthz").status_code == 200


def test_gzip_upload_still_works_end_to_end(cloud: Cloud) -> None:
    key = _register(cloud, "gz-ok")
    body = encode(make_batch("gz-ok", _readings(1, 500, _now())))
    headers = {**sign_body(key, body), "Content-Encoding": "gzip"}
    r = cloud.client.post("/v1/sites/gz-ok/telemetry", content=gzip_body(body), headers=headers)
    assert (r.status_code, r.json()["stored_through"]) == (200, 500)
