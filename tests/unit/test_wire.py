"""Signing and plan verification rules of cloud_sync.wire, property-tested where it matters."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from cloud_sync.keys import key_id, load_verify_key_b64, public_key_b64
from cloud_sync.wire import (
    HEADER_KEY_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    MAX_PLAN_SLOTS,
    MAX_PLAN_VERSION,
    MAX_REQUEST_SKEW_S,
    PlanRejected,
    TelemetryBatch,
    WireError,
    WireReading,
    check_batch,
    decode_ack,
    decode_batch,
    encode,
    encode_plan,
    gunzip_limited,
    gzip_body,
    if_none_match_hits,
    make_batch,
    sign_body,
    sign_plan,
    sign_request,
    signed_request_body,
    verify_body,
    verify_plan,
    verify_request,
)
from zapd.model import DerKind, Intent, IntentMode, Plan, PlanSlot

# Fixed seeds: deterministic tests, and no entropy drawn per example.
CLOUD = SigningKey(b"\x01" * 32)
OTHER = SigningKey(b"\x02" * 32)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _flip(data: bytes, bit: int) -> bytes:
    i = bit % (len(data) * 8)
    out = bytearray(data)
    out[i // 8] ^= 1 << (i % 8)
    return bytes(out)


# --- detached body signatures ------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(body=st.binary(min_size=1, max_size=512), bit=st.integers(min_value=0))
def test_any_bit_flip_in_body_fails(body: bytes, bit: int) -> None:
    sig = sign_body(CLOUD, body)[HEADER_SIGNATURE]
    assert verify_body(CLOUD.verify_key, body, sig)
    assert not verify_body(CLOUD.verify_key, _flip(body, bit), sig)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=512), bit=st.integers(min_value=0, max_value=64 * 8 - 1))
def test_any_bit_flip_in_signature_fails(body: bytes, bit: int) -> None:
    raw = base64.b64decode(sign_body(CLOUD, body)[HEADER_SIGNATURE])
    flipped = base64.b64encode(_flip(raw, bit)).decode()
    assert not verify_body(CLOUD.verify_key, body, flipped)


@pytest.mark.parametrize("sig", [None, "", "not base64!", base64.b64encode(b"short").decode()])
def test_garbage_signatures_fail(sig: str | None) -> None:
    assert not verify_body(CLOUD.verify_key, b"{}", sig)


def test_signature_headers_name_the_key() -> None:
    headers = sign_body(CLOUD, b"x")
    assert headers[HEADER_KEY_ID] == key_id(CLOUD) == key_id(CLOUD.verify_key)
    assert len(headers[HEADER_KEY_ID]) == 16
    assert not verify_body(OTHER.verify_key, b"x", headers[HEADER_SIGNATURE])


def test_public_key_round_trip() -> None:
    assert load_verify_key_b64(public_key_b64(CLOUD)) == CLOUD.verify_key
    for bad in ("", "!!!", base64.b64encode(b"x" * 31).decode()):
        with pytest.raises(ValueError):
            load_verify_key_b64(bad)


# --- signed GET requests -----------------------------------------------------------------


def test_signed_request_rules() -> None:
    path = "/v1/sites/s1/plan"
    h = sign_request(OTHER, "GET", path, NOW)
    ts, sig = h[HEADER_TIMESTAMP], h[HEADER_SIGNATURE]
    vk = OTHER.verify_key
    assert verify_request(vk, "GET", path, ts, sig, now=NOW + timedelta(seconds=60)) is None
    assert verify_request(vk, "GET", path, ts, sig, now=NOW + timedelta(minutes=10)) == "stale_timestamp"
    assert verify_request(vk, "GET", path, ts, sig, now=NOW - timedelta(minutes=10)) == "stale_timestamp"
    assert verify_request(vk, "GET", "/v1/sites/s2/plan", ts, sig, now=NOW) == "bad_signature"
    assert verify_request(vk, "PUT", path, ts, sig, now=NOW) == "bad_signature"
    assert verify_request(CLOUD.verify_key, "GET", path, ts, sig, now=NOW) == "bad_signature"
    assert verify_request(vk, "GET", path, None, sig, now=NOW) == "missing_timestamp"
    assert verify_request(vk, "GET", path, "yesterday", sig, now=NOW) == "bad_timestamp"
    assert verify_request(vk, "GET", path, "2026-03-01T12:00:00", sig, now=NOW) == "bad_timestamp"
    assert ts.endswith("Z")


# --- plans -------------------------------------------------------------------------------


def _plan(site_id: str = "s1", version: int = 5, valid_for: timedelta = timedelta(hours=12)) -> Plan:
    slot = PlanSlot(start=NOW, end=NOW + timedelta(minutes=15), intent=Intent(battery_w=-2000.0))
    return Plan(site_id=site_id, version=version, issued_at=NOW, valid_until=NOW + valid_for, slots=(slot,))


def _verify(body: bytes, sig: str | None, **kw: object) -> Plan:
    args: dict[str, object] = {"site_id": "s1", "min_version_exclusive": 4, "now": NOW}
    args.update(kw)
    return verify_plan(body, sig, CLOUD.verify_key, **args)  # type: ignore[arg-type]


def test_good_plan_is_accepted_unchanged() -> None:
    signed = sign_plan(CLOUD, _plan())
    assert _verify(signed.body, signed.signature) == _plan()
    assert _verify(signed.body, signed.signature, min_version_exclusive=None) == _plan()


def _reason(body: bytes, sig: str | None, **kw: object) -> str:
    with pytest.raises(PlanRejected) as exc:
        _verify(body, sig, **kw)
    return exc.value.reason


def _signed(plan: Plan, key: SigningKey = CLOUD) -> tuple[bytes, str]:
    s = sign_plan(key, plan)
    return s.body, s.signature


@pytest.mark.parametrize(
    ("case", "make", "kw", "reason"),
    [
        ("unsigned", lambda: (encode_plan(_plan()), None), {}, "unsigned"),
        ("empty signature", lambda: (encode_plan(_plan()), ""), {}, "unsigned"),
        ("other key", lambda: _signed(_plan(), OTHER), {}, "bad_signature"),
        ("replayed version", lambda: _signed(_plan(version=4)), {}, "stale_version"),
        ("older version", lambda: _signed(_plan(version=2)), {}, "stale_version"),
        ("expired", lambda: _signed(_plan(valid_for=HOUR)), {"now": NOW + 2 * HOUR}, "expired"),
        ("expires now", lambda: _signed(_plan(valid_for=HOUR)), {"now": NOW + HOUR}, "expired"),
        ("other site", lambda: _signed(_plan(site_id="s2")), {}, "wrong_site"),
    ],
)  # fmt: skip
def test_plan_rejections(case: str, make: object, kw: dict[str, object], reason: str) -> None:
    body, sig = make()  # type: ignore[operator]
    assert _reason(body, sig, **kw) == reason, case


def _sign_raw(body: bytes) -> tuple[bytes, str]:
    return body, sign_body(CLOUD, body)[HEADER_SIGNATURE]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"site_id": "s1"}',
        # Naive timestamps: the Zap could not compare them with its UTC clock.
        b'{"site_id":"s1","version":5,"issued_at":"2026-03-01T12:00:00","valid_until":"2026-03-02T12:00:00"}',
        # valid_until not after issued_at.
        b'{"site_id":"s1","version":5,"issued_at":"2026-03-01T12:00:00Z","valid_until":"2026-03-01T12:00:00Z"}',
        # Version below 1.
        b'{"site_id":"s1","version":0,"issued_at":"2026-03-01T12:00:00Z","valid_until":"2026-03-02T12:00:00Z"}',
    ],
)
def test_signed_but_malformed_plans_are_rejected(body: bytes) -> None:
    assert _reason(*_sign_raw(body), min_version_exclusive=None) == "malformed"


def test_inverted_slot_is_malformed() -> None:
    slot = PlanSlot(start=NOW, end=NOW - timedelta(minutes=1), intent=Intent(mode=IntentMode.HOLD))
    plan = Plan(site_id="s1", version=9, issued_at=NOW, valid_until=NOW + timedelta(hours=1), slots=(slot,))
    assert _reason(*_signed(plan)) == "malformed"


def _one_slot(intent: Intent, **kw: object) -> Plan:
    slot = PlanSlot(start=NOW, end=NOW + timedelta(minutes=15), intent=intent)
    args: dict[str, object] = {"site_id": "s1", "version": 9, "issued_at": NOW, "valid_until": NOW + HOUR}
    args.update(kw)
    return Plan(slots=(slot,), **args)  # type: ignore[arg-type]


# Issue 10: one signed message must not pin the Zap. The bounds are the documented ones
# (docs/wire.md "Plan"), written out here rather than taken from the module's constants.
@pytest.mark.parametrize(
    ("case", "plan", "reason"),
    [
        ("version 2^63-1", _one_slot(Intent(), version=2**63 - 1), "out_of_range"),
        ("version 2^53", _one_slot(Intent(), version=2**53), "out_of_range"),
        ("valid 50 years", _one_slot(Intent(), valid_until=NOW + timedelta(days=365 * 50)), "out_of_range"),
        ("valid 7 days + 1 s", _one_slot(Intent(), valid_until=NOW + timedelta(days=7, seconds=1)), "out_of_range"),
        ("issued 1 h ahead", _one_slot(Intent(), issued_at=NOW + HOUR, valid_until=NOW + 2 * HOUR),
         "issued_in_future"),
        ("battery 1e308 W", _one_slot(Intent(battery_w=1e308)), "out_of_range"),
        ("battery -11 MW", _one_slot(Intent(battery_w=-11e6)), "out_of_range"),
        ("import limit 1e12 W", _one_slot(Intent(grid_import_limit_w=1e12)), "out_of_range"),
        ("target soc 50 (percent)", _one_slot(Intent(target_soc=50.0)), "out_of_range"),
    ],
)  # fmt: skip
def test_plans_beyond_the_bounds_are_refused(case: str, plan: Plan, reason: str) -> None:
    assert _reason(*_signed(plan), min_version_exclusive=None) == reason, case


def test_plans_at_the_bounds_are_accepted() -> None:
    at_bounds = [
        _one_slot(Intent(), version=2**53 - 1),
        _one_slot(Intent(), valid_until=NOW + timedelta(days=7)),
        _one_slot(Intent(), issued_at=NOW + timedelta(seconds=300), valid_until=NOW + HOUR),
        _one_slot(Intent(battery_w=-10e6, ev_w=10e6, grid_import_limit_w=0.0, target_soc=1.0)),
    ]
    for plan in at_bounds:
        assert _verify(*_signed(plan), min_version_exclusive=None) == plan
    assert MAX_PLAN_VERSION == 2**53 - 1 and MAX_REQUEST_SKEW_S == 300


def test_non_finite_and_overlong_plans_are_refused() -> None:
    for raw in (b"1e999", b"-1e999"):
        body = (
            b'{"site_id":"s1","version":9,"issued_at":"2026-03-01T12:00:00Z","valid_until":"2026-03-01T13:00:00Z",'
            b'"slots":[{"start":"2026-03-01T12:00:00Z","end":"2026-03-01T12:15:00Z","intent":{"battery_w":'
            + raw
            + b"}}]}"
        )
        assert _reason(*_sign_raw(body), min_version_exclusive=None) == "malformed"
    minute = timedelta(minutes=1)
    many = tuple(
        PlanSlot(start=NOW + i * minute, end=NOW + (i + 1) * minute, intent=Intent()) for i in range(MAX_PLAN_SLOTS + 1)
    )
    plan = Plan(site_id="s1", version=9, issued_at=NOW, valid_until=NOW + HOUR, slots=many)
    assert _reason(*_signed(plan), min_version_exclusive=None) == "out_of_range"
    far = PlanSlot(start=NOW + timedelta(days=15), end=NOW + timedelta(days=15, hours=1), intent=Intent())
    assert _reason(*_signed(Plan(site_id="s1", version=9, issued_at=NOW, valid_until=NOW + HOUR, slots=(far,))),
                   min_version_exclusive=None) == "out_of_range"  # fmt: skip
    a = PlanSlot(start=NOW, end=NOW + HOUR, intent=Intent())
    b = PlanSlot(start=NOW + timedelta(minutes=30), end=NOW + 2 * HOUR, intent=Intent())
    overlapping = Plan(site_id="s1", version=9, issued_at=NOW, valid_until=NOW + HOUR, slots=(a, b))
    assert _reason(*_signed(overlapping), min_version_exclusive=None) == "malformed"


def test_a_plan_issued_before_a_reset_is_a_replay() -> None:
    plan = _one_slot(Intent(), issued_at=NOW - timedelta(minutes=10))
    assert _reason(*_signed(plan), min_version_exclusive=None, issued_floor=NOW - timedelta(minutes=5)) == (
        "issued_before_reset"
    )
    assert _verify(*_signed(plan), min_version_exclusive=None, issued_floor=NOW - timedelta(minutes=10)) == plan


@settings(max_examples=200, deadline=None)
@given(bit=st.integers(min_value=0))
def test_any_bit_flip_in_signed_plan_is_rejected(bit: int) -> None:
    body, sig = _signed(_plan())
    assert _reason(_flip(body, bit), sig) == "bad_signature"
    raw = base64.b64decode(sig)
    assert _reason(body, base64.b64encode(_flip(raw, bit % (64 * 8))).decode()) == "bad_signature"


@settings(max_examples=150, deadline=None)
@given(
    version=st.integers(min_value=1, max_value=2**40),
    held=st.none() | st.integers(min_value=0, max_value=2**40),
    valid_minutes=st.integers(min_value=1, max_value=7 * 24 * 60),
    now_offset_minutes=st.integers(min_value=-60, max_value=8 * 24 * 60),
    site=st.sampled_from(["s1", "s2"]),
)
def test_plan_accepted_iff_every_rule_holds(
    version: int, held: int | None, valid_minutes: int, now_offset_minutes: int, site: str
) -> None:
    plan = _plan(site_id=site, version=version, valid_for=timedelta(minutes=valid_minutes))
    body, sig = _signed(plan)
    now = NOW + timedelta(minutes=now_offset_minutes)
    not_from_the_future = plan.issued_at <= now + timedelta(seconds=MAX_REQUEST_SKEW_S)
    should_accept = site == "s1" and (held is None or version > held) and plan.valid_until > now and not_from_the_future
    try:
        got = _verify(body, sig, min_version_exclusive=held, now=now)
    except PlanRejected:
        assert not should_accept
    else:
        assert should_accept and got == plan


def test_if_none_match() -> None:
    assert if_none_match_hits('"7"', 7)
    assert if_none_match_hits('W/"7"', 7)
    assert if_none_match_hits('"3", "7"', 7)
    assert if_none_match_hits("*", 7)
    assert not if_none_match_hits('"6"', 7)
    assert not if_none_match_hits(None, 7)
    assert not if_none_match_hits("7", 7)


# --- telemetry batches -------------------------------------------------------------------


def _readings(seqs: list[int]) -> list[WireReading]:
    return [
        WireReading(seq=s, der_id="m", kind=DerKind.METER, ts=NOW + timedelta(seconds=s), values={"power_w": 1.0})
        for s in seqs
    ]


def test_batch_round_trip() -> None:
    batch = make_batch("s1", _readings([3, 4, 5]))
    assert (batch.first_seq, batch.last_seq) == (3, 5)
    assert decode_batch(encode(batch)) == batch
    assert b'"ts":"2026-03-01T12:00:03Z"' in encode(batch)


@pytest.mark.parametrize(
    ("seqs", "first", "last", "lost"),
    [
        ([1, 2, 4], 1, 4, None),  # hole
        ([2, 1], 2, 1, None),  # out of order
        ([1, 1], 1, 1, None),  # duplicate
        ([1, 2], 1, 3, None),  # last_seq lies
        ([1, 2], 2, 2, None),  # first_seq lies
        ([], 1, 1, None),  # empty
        ([5, 6], 5, 6, 3),  # lost_through does not touch first_seq
    ],
)
def test_bad_batches(seqs: list[int], first: int, last: int, lost: int | None) -> None:
    batch = TelemetryBatch(site_id="s1", first_seq=first, last_seq=last, readings=_readings(seqs), lost_through=lost)
    with pytest.raises(WireError):
        check_batch(batch)


@pytest.mark.parametrize(
    "body",
    [
        b'{"site_id":"s1","first_seq":0,"last_seq":0,"readings":[]}',
        b'{"site_id":"../etc","first_seq":1,"last_seq":1,"readings":[]}',
        b'{"site_id":"s1","first_seq":1,"last_seq":1,"readings":[{"seq":1,"der_id":"m","kind":"meter",'
        b'"ts":"2026-03-01T12:00:00","values":{}}]}',  # naive ts
        b'{"site_id":"s1","first_seq":1,"last_seq":1,"readings":[{"seq":1,"der_id":"m","kind":"toaster",'
        b'"ts":"2026-03-01T12:00:00Z","values":{}}]}',
    ],
)
def test_malformed_batch_bodies(body: bytes) -> None:
    with pytest.raises(WireError):
        decode_batch(body)


# --- gzip --------------------------------------------------------------------------------


def test_gzip_round_trip_and_limits() -> None:
    body = encode(make_batch("s1", _readings(list(range(1, 200)))))
    assert gunzip_limited(gzip_body(body)) == body
    bomb = gzip_body(b"\0" * 1_000_000)
    with pytest.raises(WireError, match="larger"):
        gunzip_limited(bomb, limit=100_000)
    with pytest.raises(WireError):
        gunzip_limited(gzip_body(body)[:-10])
    with pytest.raises(WireError):
        gunzip_limited(b"plain")


def test_structs_are_msgspec() -> None:
    # The uploader stores batches and the fetcher caches SignedPlans with msgspec too.
    signed = sign_plan(CLOUD, _plan())
    assert msgspec.json.decode(msgspec.json.encode(signed), type=type(signed)) == signed


def test_signed_request_body_signs_the_uncompressed_bytes() -> None:
    batch = make_batch("s1", _readings([1, 2]))
    for compress in (False, True):
        content, headers = signed_request_body(OTHER, batch, compress=compress)
        plain = gunzip_limited(content) if compress else content
        assert plain == encode(batch)
        assert verify_body(OTHER.verify_key, plain, headers[HEADER_SIGNATURE])
        assert headers[HEADER_KEY_ID] == key_id(OTHER)
        assert ("Content-Encoding" in headers) == compress


def test_ack_and_gap_bodies_both_give_the_resume_point() -> None:
    assert decode_ack(b'{"stored_through": 7}').stored_through == 7
    assert decode_ack(b'{"error": "gap", "stored_through": 3}').stored_through == 3
    with pytest.raises(WireError):
        decode_ack(b'{"error": "bad_signature"}')
