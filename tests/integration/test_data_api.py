"""The data API (issue 16) against a real `zapcloud serve` on loopback: OAuth flows, the GraphQL permission
matrix (every field × every scope × own/other site), downsampling, prices, the live subscription.

Each test runs on a SQLite file and on PostgreSQL (ZAPCLOUD_TEST_DB_URL, which `make test` sets to a
throwaway cluster, tests/pg_cluster.py; without it the PostgreSQL cases are skipped, saying so).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import websockets
from nacl.signing import SigningKey

from cloud_sync.wire import DiscoveryReport, WireReading, encode, make_batch, sign_body
from tests.db_backends import BACKENDS, empty_db_url
from tests.integration.test_cloud_api import ADMIN, Cloud, _serve
from tests.waiting import wait_until, wait_until_sync
from zapd.model import DerCapabilities, DerKind

REDIRECT = "http://127.0.0.1:9/callback"
PASSWORD = "correct horse battery"
DAY = datetime(2026, 3, 2, tzinfo=UTC)
PRICE_SOURCE = "EPEX SPOT via operator"
PRICE_PUBLISHED = DAY - timedelta(hours=11, minutes=13)
SCOPES = ("site:read", "telemetry:read", "telemetry:live", "prices:read", "plans:read")


@dataclass
class World:
    cloud: Cloud
    keys: dict[str, SigningKey]
    seq: dict[str, int]


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _admin(cloud: Cloud) -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def _upload(world: World, site: str, readings: list[tuple[str, DerKind, datetime, dict[str, float]]]) -> None:
    first = world.seq[site] + 1
    wire = [
        WireReading(seq=first + i, der_id=d, kind=k, ts=ts, values=v)  # type: ignore[arg-type]
        for i, (d, k, ts, v) in enumerate(readings)
    ]
    for i in range(0, len(wire), 5000):
        body = encode(make_batch(site, wire[i : i + 5000]))
        r = world.cloud.client.post(
            f"/v1/sites/{site}/telemetry", content=body, headers=sign_body(world.keys[site], body)
        )
        assert r.status_code == 200, r.text
    world.seq[site] = first + len(wire) - 1


def _setup(cloud: Cloud) -> World:
    c = cloud.client
    keys = {}
    for site in ("site-a", "site-b"):
        key = SigningKey.generate()
        from cloud_sync.keys import public_key_b64

        tariff = {"energy": {"kind": "spot", "markup": 0.02}, "vat": 0.21, "spot_area": "10YNL----------L"}
        r = c.post(
            "/v1/sites",
            json={
                "site_id": site,
                "public_key": public_key_b64(key),
                "tariff": tariff,
                "assets": {"battery": {"capacity_kwh": 10}},
            },
            headers=_admin(cloud),
        )
        assert r.status_code == 201, r.text
        keys[site] = key
        report = encode(
            DiscoveryReport(
                site_id=site,
                ders=[
                    DerCapabilities(der_id="bat1", kind=DerKind.BATTERY, controllable=True, capacity_wh=10_000.0),
                ],
            )
        )
        assert c.post(f"/v1/sites/{site}/discovery", content=report, headers=sign_body(key, report)).is_success
    world = World(cloud, keys, {"site-a": 0, "site-b": 0})
    # One hour of 10 s meter readings per site: a known ramp so the buckets have known values.
    for site, base in (("site-a", 1000.0), ("site-b", 5000.0)):
        _upload(
            world,
            site,
            [("meter1", DerKind.METER, DAY + timedelta(seconds=10 * i), {"power_w": base + i}) for i in range(360)],
        )
    # Day-ahead prices for the zone, hourly, published by the operator.
    prices = [0.10 + 0.01 * h for h in range(24)]
    r = c.put(
        "/v1/prices/10YNL----------L",
        json={
            "start": DAY.isoformat(),
            "step_minutes": 60,
            "prices": prices,
            "source": PRICE_SOURCE,
            "published_at": PRICE_PUBLISHED.isoformat(),
        },
        headers=_admin(cloud),
    )
    assert r.status_code == 200, r.text
    for owner, site in (("alice", "site-a"), ("bob", "site-b")):
        r = c.post("/v1/owners", json={"owner_id": owner, "password": PASSWORD, "sites": [site]}, headers=_admin(cloud))
        assert r.status_code == 201, r.text
    r = c.post(
        "/v1/oauth/clients",
        json={
            "client_id": "app1",
            "name": "Energy App",
            "grant_types": ["authorization_code", "refresh_token"],
            "scope": " ".join(SCOPES),
            "redirect_uris": [REDIRECT],
            "confidential": False,
        },
        headers=_admin(cloud),
    )
    assert r.status_code == 201, r.text
    return world


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Every test of this module runs on a SQLite file and on PostgreSQL (tests/db_backends.py)."""
    tmp = tmp_path_factory.mktemp("dataapi")
    with _serve(tmp, empty_db_url(request.param, tmp, "d"), "d") as cloud:
        yield _setup(cloud)


def _authorize(
    cloud: Cloud, scope: str, *, user: str = "alice", password: str = PASSWORD, client_id: str = "app1"
) -> tuple[str, str]:
    """Sign in as `user` and allow; returns (code, verifier)."""
    verifier, challenge = _pkce()
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": "st4te",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    page = cloud.client.get("/oauth/authorize", params=params)
    assert page.status_code == 200 and "<form" in page.text, page.text
    r = cloud.client.post(
        "/oauth/authorize", params=params, data={"username": user, "password": password, "decision": "allow"}
    )
    assert r.status_code == 302, r.text
    loc = urlsplit(r.headers["location"])
    q = parse_qs(loc.query)
    assert f"{loc.scheme}://{loc.netloc}{loc.path}" == REDIRECT and q["state"] == ["st4te"], r.headers["location"]
    return q["code"][0], verifier


def _token(cloud: Cloud, scope: str, **kw: str) -> dict[str, Any]:
    code, verifier = _authorize(cloud, scope, **kw)
    r = cloud.client.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": "app1",
            "code_verifier": verifier,
        },
    )
    assert r.status_code == 200, r.text
    tok: dict[str, Any] = r.json()
    return tok


def _gql(cloud: Cloud, token: str, query: str, variables: dict[str, Any] | None = None) -> httpx.Response:
    return cloud.client.post(
        "/graphql", json={"query": query, "variables": variables or {}}, headers={"Authorization": f"Bearer {token}"}
    )


def _codes(resp: httpx.Response) -> list[str]:
    return [e.get("extensions", {}).get("code", "?") for e in resp.json().get("errors") or []]


FROM, TO = DAY.isoformat(), (DAY + timedelta(hours=1)).isoformat()
# Every data field of the schema, with the one scope that opens it. {site} is filled in per case.
FIELDS: dict[str, tuple[str, str]] = {
    "assets": ('{ site(id: "{site}") { assets } }', "site:read"),
    "tariff": ('{ site(id: "{site}") { tariff } }', "site:read"),
    "registeredAt": ('{ site(id: "{site}") { registeredAt } }', "site:read"),
    "ders": ('{ site(id: "{site}") { ders { derId kind capabilities } } }', "site:read"),
    "link": ('{ site(id: "{site}") { link { storedThrough lastReadingAt } } }', "site:read"),
    "telemetry": (
        f'{{ site(id: "{{site}}") {{ telemetry(der: "meter1", from: "{FROM}", to: "{TO}", '
        f"resolution: MIN15) {{ buckets {{ mean }} }} }} }}",
        "telemetry:read",
    ),
    "plans": ('{ site(id: "{site}") { plans { version slots } } }', "plans:read"),
    "forecasts": ('{ site(id: "{site}") { forecasts { kind maeKw } } }', "plans:read"),
    "tariffPrices": (
        f'{{ site(id: "{{site}}") {{ tariffPrices(from: "{FROM}", to: "{TO}") {{ importPrice }} }} }}',
        "prices:read",
    ),
    "live": ('{ site(id: "{site}") { live { rung } } }', "site:read"),
    "flexibility": ('{ site(id: "{site}") { flexibility { reserveSoc availableKwh } } }', "site:read"),
}
# Fields whose granted answer may be null: `live` is the channel's last status, and this world has no channel.
NULL_WHEN_GRANTED = {"live"}


def test_the_matrix_names_every_field_of_a_site() -> None:
    """A field added to `Site` without a row here would escape the permission matrix."""
    from cloud.dataapi.graphql import schema

    site_type = schema._schema.get_type("Site")
    assert site_type is not None
    assert set(site_type.fields) - {"id"} == set(FIELDS)


@pytest.fixture(scope="module")
def scoped_tokens(world: World) -> dict[str, str]:
    """One token per single scope, all for alice (who owns site-a only)."""
    return {s: _token(world.cloud, s)["access_token"] for s in SCOPES}


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_permission_matrix_every_field_scope_and_site(world: World, scoped_tokens: dict[str, str], field: str) -> None:
    template, needed = FIELDS[field]
    for scope, token in scoped_tokens.items():
        for site in ("site-a", "site-b", "no-such-site"):
            r = _gql(world.cloud, token, template.replace("{site}", site))
            assert r.status_code == 200, r.text
            body = r.json()
            if scope == needed and site == "site-a":
                assert not body.get("errors"), (field, scope, site, body)
                assert field in NULL_WHEN_GRANTED or body["data"]["site"][field] is not None, body
            else:
                codes = _codes(r)
                assert codes, (field, scope, site, body)
                # Another site, or one that does not exist, answers the same: no grant.
                want = "forbidden_site" if site != "site-a" else "insufficient_scope"
                assert codes == [want], (field, scope, site, body)
                # Nothing leaks next to the error: no site, or the field is null.
                site_data = (body.get("data") or {}).get("site")
                assert site_data is None or site_data[field] is None, body
    # The owner of site-b with every scope never reaches site-a.
    bob = _token(world.cloud, " ".join(SCOPES), user="bob")["access_token"]
    r = _gql(world.cloud, bob, template.replace("{site}", "site-a"))
    assert _codes(r) == ["forbidden_site"], r.text
    assert not _gql(world.cloud, bob, template.replace("{site}", "site-b")).json().get("errors")


def test_prices_and_sites_fields_check_scope(world: World, scoped_tokens: dict[str, str]) -> None:
    q = f'{{ prices(area: "10YNL----------L", from: "{FROM}", to: "{TO}") {{ points {{ price }} }} }}'
    for scope, token in scoped_tokens.items():
        r = _gql(world.cloud, token, q)
        assert (not r.json().get("errors")) == (scope == "prices:read"), (scope, r.text)
        r = _gql(world.cloud, token, "{ sites }")
        if scope == "site:read":
            assert r.json()["data"]["sites"] == ["site-a"]
        else:
            assert _codes(r) == ["insufficient_scope"]


def test_no_or_bad_token_is_401(world: World) -> None:
    c = world.cloud.client
    assert c.post("/graphql", json={"query": "{ me { scopes } }"}).status_code == 401
    assert _gql(world.cloud, "not-a-token", "{ me { scopes } }").status_code == 401


def test_downsampling_matches_the_uploaded_ramp(world: World, scoped_tokens: dict[str, str]) -> None:
    tok = scoped_tokens["telemetry:read"]
    q = """query($f: DateTime!, $t: DateTime!, $r: Resolution!) { site(id: "site-a") {
        telemetry(der: "meter1", from: $f, to: $t, resolution: $r) { buckets { start mean min max count energyWh }
        points { ts value } hasMore } } }"""
    r = _gql(world.cloud, tok, q, {"f": FROM, "t": TO, "r": "MIN15"})
    buckets = r.json()["data"]["site"]["telemetry"]["buckets"]
    assert len(buckets) == 4
    # 15 min of 10 s samples = 90 samples of 1000+i: mean is 1000 + 44.5 (+90 per bucket).
    for k, b in enumerate(buckets):
        assert b["count"] == 90
        assert b["min"] == 1000 + 90 * k and b["max"] == 1000 + 90 * k + 89
        assert b["mean"] == pytest.approx(1000 + 90 * k + 44.5)
        # Each sample held 10 s until the next: Wh = sum(P) * 10 / 3600. The hour's last sample is held until
        # its successor arrives (none yet, or the live test's, 2 h later: at most MAX_HOLD_S = 300 s).
        held = sum(1000 + 90 * k + i for i in range(90)) * 10 / 3600
        if k < 3:
            assert b["energyWh"] == pytest.approx(held)
        else:
            last = 1000 + 359
            assert held - last * 10 / 3600 - 1e-9 <= b["energyWh"] <= held - last * 10 / 3600 + last * 300 / 3600
        assert datetime.fromisoformat(b["start"]) == DAY + timedelta(minutes=15 * k)
    r = _gql(world.cloud, tok, q, {"f": FROM, "t": TO, "r": "HOUR1"})
    (hour,) = r.json()["data"]["site"]["telemetry"]["buckets"]
    assert hour["count"] == 360 and hour["mean"] == pytest.approx(1179.5)
    # Raw pages: first N, hasMore.
    raw = (
        f'{{ site(id: "site-a") {{ telemetry(der: "meter1", from: "{FROM}", to: "{TO}", resolution: RAW, first: 100)'
        " { points { value } hasMore } } }"
    )
    t = _gql(world.cloud, tok, raw).json()["data"]["site"]["telemetry"]
    assert [p["value"] for p in t["points"]][:3] == [1000, 1001, 1002] and len(t["points"]) == 100 and t["hasMore"]


def test_query_cost_limits(world: World, scoped_tokens: dict[str, str]) -> None:
    tok = scoped_tokens["telemetry:read"]
    year = f'from: "{DAY.isoformat()}", to: "{(DAY + timedelta(days=300)).isoformat()}"'
    r = _gql(
        world.cloud,
        tok,
        f'{{ site(id: "site-a") {{ telemetry(der: "meter1", {year}, resolution: MIN1) {{ buckets {{ mean }} }} }} }}',
    )
    assert _codes(r) == ["bad_range"]
    # Many aliases of an allowed range add up past the per-request budget.
    one = f'telemetry(der: "meter1", from: "{FROM}", to: "{(DAY + timedelta(days=6)).isoformat()}", resolution: MIN1)'
    many = " ".join(f"t{i}: {one} {{ buckets {{ mean }} }}" for i in range(4))
    r = _gql(world.cloud, tok, f'{{ site(id: "site-a") {{ {many} }} }}')
    assert "too_costly" in _codes(r), r.text
    deep = '{ site(id: "site-a") { plans { executed { der_id } } } }'.replace("der_id", "derId")
    assert not _gql(world.cloud, scoped_tokens["plans:read"], deep).json().get("errors")
    r = _gql(world.cloud, tok, "{ " + " ".join(f"a{i}: me {{ scopes }}" for i in range(30)) + " }")
    assert r.json().get("errors"), r.text


def test_refresh_rotates_and_revocation_stops_the_token(world: World) -> None:
    c = world.cloud.client
    tok = _token(world.cloud, "site:read")
    assert tok["expires_in"] > 0 and tok["refresh_token"]
    r = c.post(
        "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"], "client_id": "app1"}
    )
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["access_token"] != tok["access_token"]
    # The old pair is spent: rotation revoked it.
    assert _gql(world.cloud, tok["access_token"], "{ sites }").status_code == 401
    again = c.post(
        "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": tok["refresh_token"], "client_id": "app1"}
    )
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # A refresh cannot widen the scope.
    wide = c.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": new["refresh_token"],
            "client_id": "app1",
            "scope": "site:read telemetry:read",
        },
    )
    assert wide.status_code == 400 and wide.json()["error"] == "invalid_scope"
    assert _gql(world.cloud, new["access_token"], "{ sites }").json()["data"]["sites"] == ["site-a"]
    r = c.post("/oauth/revoke", data={"token": new["access_token"], "client_id": "app1"})
    assert r.status_code == 200, r.text
    assert _gql(world.cloud, new["access_token"], "{ sites }").status_code == 401


def test_authorization_code_needs_pkce_and_the_right_password(world: World) -> None:
    c = world.cloud.client
    base = {"response_type": "code", "client_id": "app1", "redirect_uri": REDIRECT, "scope": "site:read"}
    r = c.post("/oauth/authorize", params=base, data={"username": "alice", "password": PASSWORD, "decision": "allow"})
    assert r.status_code == 400 and "PKCE required" in r.text and "location" not in r.headers
    _v, challenge = _pkce()
    pk = {**base, "code_challenge": challenge, "code_challenge_method": "S256"}
    r = c.post(
        "/oauth/authorize", params=pk, data={"username": "alice", "password": "wrong password", "decision": "allow"}
    )
    assert r.status_code == 401 and "wrong user or password" in r.text
    # A redirect URI the client did not register is never redirected to.
    r = c.get("/oauth/authorize", params={**pk, "redirect_uri": "https://evil.example/cb"})
    assert r.status_code == 400 and "location" not in r.headers
    # Deny: back to the app with access_denied.
    r = c.post("/oauth/authorize", params=pk, data={"username": "alice", "password": PASSWORD, "decision": "deny"})
    assert r.status_code == 302 and "error=access_denied" in r.headers["location"]
    # A wrong verifier does not redeem the code; the code is single-use.
    code, verifier = _authorize(world.cloud, "site:read")
    bad = c.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": "app1",
            "code_verifier": secrets.token_urlsafe(48),
        },
    )
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    good = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": "app1",
        "code_verifier": verifier,
    }
    assert c.post("/oauth/token", data=good).status_code == 200
    replay = c.post("/oauth/token", data=good)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"


def test_client_credentials_for_operator_services(world: World) -> None:
    c = world.cloud.client
    r = c.post(
        "/v1/oauth/clients",
        json={
            "client_id": "billing",
            "name": "Billing",
            "grant_types": ["client_credentials"],
            "scope": "telemetry:read prices:read",
            "sites": ["site-b"],
        },
    )
    assert r.status_code == 401  # admin only
    r = c.post(
        "/v1/oauth/clients",
        json={
            "client_id": "billing",
            "name": "Billing",
            "grant_types": ["client_credentials"],
            "scope": "telemetry:read prices:read",
            "sites": ["site-b"],
        },
        headers=_admin(world.cloud),
    )
    assert r.status_code == 201, r.text
    secret = r.json()["client_secret"]
    r = c.post(
        "/oauth/token", data={"grant_type": "client_credentials", "scope": "telemetry:read"}, auth=("billing", secret)
    )
    assert r.status_code == 200, r.text
    tok = r.json()
    assert "refresh_token" not in tok
    q = (
        '{ site(id: "%s") { telemetry(der: "meter1", from: "' + FROM + '", to: "' + TO + '", resolution: HOUR1)'
        " { buckets { mean } } } }"
    )
    assert _gql(world.cloud, tok["access_token"], q % "site-b").json()["data"]["site"]["telemetry"]["buckets"]
    assert _codes(_gql(world.cloud, tok["access_token"], q % "site-a")) == ["forbidden_site"]
    wrong = c.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=("billing", "nope"))
    assert wrong.status_code == 401


def test_rest_prices(world: World, scoped_tokens: dict[str, str]) -> None:
    c = world.cloud.client
    url = "/v1/prices/10YNL----------L"
    params = {"from": DAY.isoformat(), "to": (DAY + timedelta(hours=3)).isoformat()}
    assert c.get(url, params=params).status_code == 401
    assert (
        c.get(url, params=params, headers={"Authorization": f"Bearer {scoped_tokens['site:read']}"}).status_code == 403
    )
    auth = {"Authorization": f"Bearer {scoped_tokens['prices:read']}"}
    r = c.get(url, params=params, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["resolution_minutes"] == 15 and len(body["prices"]) == 12
    # the source and publication time the operator's upload declared, not when the cloud stored them
    assert body["source"] == PRICE_SOURCE
    assert datetime.fromisoformat(body["published_at"]) == PRICE_PUBLISHED
    q = f'{{ prices(area: "10YNL----------L", from: "{FROM}", to: "{TO}") {{ source publishedAt }} }}'
    got = _gql(world.cloud, scoped_tokens["prices:read"], q).json()["data"]["prices"]
    assert got["source"] == PRICE_SOURCE and datetime.fromisoformat(got["publishedAt"]) == PRICE_PUBLISHED
    bad = c.put(
        "/v1/prices/10YNL----------L",
        json={"start": DAY.isoformat(), "step_minutes": 60, "prices": [0.1], "source": "x\n<script>"},
        headers=_admin(world.cloud),
    )
    assert bad.status_code == 422, bad.text
    assert [p["price"] for p in body["prices"][:5]] == pytest.approx([0.10, 0.10, 0.10, 0.10, 0.11])
    r = c.get(url, params={**params, "resolution": "60"}, headers=auth)
    assert [p["price"] for p in r.json()["prices"]] == pytest.approx([0.10, 0.11, 0.12])
    assert c.get(url, params={**params, "resolution": "5"}, headers=auth).status_code == 422
    assert c.get(url, params={"from": "2026-01-01T00:00:00"}, headers=auth).status_code == 422


def test_live_subscription_pushes_new_readings(world: World) -> None:
    tok = _token(world.cloud, "telemetry:live")["access_token"]
    other = _token(world.cloud, "telemetry:live", user="bob")["access_token"]
    ws_url = str(world.cloud.client.base_url).replace("http://", "ws://") + "/graphql"
    sub = 'subscription { telemetry(site: "site-a", der: "meter1") { seq ts values } }'

    async def run() -> tuple[list[float], list[str]]:
        latencies: list[float] = []
        async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {tok}"}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": sub}}))

            async def streaming() -> bool:  # the server has read where the stream starts
                got = await asyncio.to_thread(world.cloud.client.get, "/metrics", headers=world.cloud.admin())
                return "\nzapcloud_live_subscriptions 1\n" in got.text

            await wait_until(streaming, 5, "the subscription to stream")
            for i in range(5):
                sent = time.monotonic()
                await asyncio.to_thread(
                    _upload,
                    world,
                    "site-a",
                    [("meter1", DerKind.METER, DAY + timedelta(hours=2, seconds=i), {"power_w": 42.0 + i})],
                )
                msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert msg["type"] == "next", msg
                assert msg["payload"]["data"]["telemetry"]["values"]["power_w"] == 42.0 + i
                latencies.append(time.monotonic() - sent)
        # bob's token (site-b) subscribing to site-a is refused.
        async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {other}"}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": sub}}))
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        # graphql-transport-ws: a refused subscription is an "error" (list) or a "next" carrying errors.
        errors = msg["payload"] if msg["type"] == "error" else msg["payload"].get("errors", [])
        assert msg["type"] in ("error", "next") and (msg["type"] == "error" or not msg["payload"].get("data")), msg
        return latencies, [e.get("extensions", {}).get("code") for e in errors]

    latencies, codes = asyncio.run(run())
    assert max(latencies) < 2.0, latencies
    assert codes == ["forbidden_site"]


def test_expired_token_is_refused(tmp_path: Path) -> None:
    os.environ["ZAPCLOUD_ACCESS_TOKEN_TTL_S"] = "1"
    try:
        with _serve(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'e.sqlite'}", "e") as cloud:
            _setup(cloud)
            tok = _token(cloud, "site:read")
            assert tok["expires_in"] == 1
            assert _gql(cloud, tok["access_token"], "{ sites }").status_code == 200
            # within its 1 s lifetime plus the server's clock rounding, the token stops working
            r = wait_until_sync(
                lambda: (got := _gql(cloud, tok["access_token"], "{ sites }")).status_code != 200 and got,
                5,
                "the token to expire",
            )
            assert r.status_code == 401 and "expired" in r.text
    finally:
        del os.environ["ZAPCLOUD_ACCESS_TOKEN_TTL_S"]


def test_owner_sign_in_is_rate_limited_per_account_and_per_address(tmp_path: Path) -> None:
    """5 failures lock an account (even the right password gets 429), 20 lock the address; all counted."""
    with _serve(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'r.sqlite'}", "r") as cloud:
        _setup(cloud)
        c = cloud.client
        _v, challenge = _pkce()
        params = {
            "response_type": "code",
            "client_id": "app1",
            "redirect_uri": REDIRECT,
            "scope": "site:read",
            "state": "s",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }

        def attempt(user: str, password: str) -> httpx.Response:
            return c.post(
                "/oauth/authorize", params=params, data={"username": user, "password": password, "decision": "allow"}
            )

        started = time.monotonic()
        assert [attempt("alice", f"wrong {i}").status_code for i in range(5)] == [401] * 5
        locked = attempt("alice", PASSWORD)  # the right password, but the account is over its limit
        assert locked.status_code == 429 and "too many failed sign-ins" in locked.text
        assert 1 <= int(locked.headers["retry-after"]) <= 60
        assert attempt("bob", PASSWORD).status_code == 302  # another account from the same address still works
        # 5 failures so far from this address; 15 more (each account once) reach its limit of 20, plus one
        # more for each 10 s the test took (the bucket refills)
        guesses = 0
        while (by_address := attempt(f"guess{guesses}", "nope nope nope")).status_code == 401:
            guesses += 1
            assert guesses < 100
        refilled = int((time.monotonic() - started) / 10)
        assert 15 <= guesses <= 15 + refilled, (guesses, refilled)
        assert by_address.status_code == 429 and int(by_address.headers["retry-after"]) >= 1
        assert attempt("bob", PASSWORD).status_code == 429  # the whole address waits now
        metrics = c.get("/metrics", headers=_admin(cloud)).text
        assert f'endpoint="oauth_authorize",reason="sign_in_failed"}} {5 + guesses}' in metrics
        assert 'endpoint="oauth_authorize",reason="sign_in_rate_limited"} 3' in metrics
