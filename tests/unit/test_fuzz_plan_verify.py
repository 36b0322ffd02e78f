"""Fuzzing plan verification: nothing but a plan validly signed by the pinned key is ever accepted.

Why: the plan drives the batteries. The promise is that a malformed, unsigned, mis-signed,
replayed, other-site or expired plan is refused and the plan in force stays; here hypothesis
throws random bodies, random signatures, bit flips and other keys at `verify_plan`, and the only
outcomes allowed are PlanRejected, or acceptance of exactly what the pinned key signed.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from cloud_sync.wire import PlanRejected, encode_plan, sign_body, verify_plan
from zapd.model import Intent, Plan, PlanSlot

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLOUD = SigningKey(b"\x11" * 32)
OTHER = SigningKey(b"\x22" * 32)
NOW = datetime(2026, 6, 21, 12, tzinfo=UTC)
SITE = "site-1"


def signature(key: SigningKey, body: bytes) -> str:
    return sign_body(key, body)["X-Zap-Signature"]


def plan(version: int = 5, *, site: str = SITE, hours: float = 2.0, watts: float = 1000.0) -> bytes:
    slot = PlanSlot(start=NOW, end=NOW + timedelta(hours=hours), intent=Intent(battery_w=watts))
    p = Plan(site_id=site, version=version, issued_at=NOW - timedelta(minutes=1),
             valid_until=NOW + timedelta(hours=hours), slots=(slot,))  # fmt: skip
    return encode_plan(p)


def verify(body: bytes, sig: str | None, held: int | None = 4) -> Plan:
    return verify_plan(body, sig, CLOUD.verify_key, site_id=SITE, min_version_exclusive=held, now=NOW)


@FUZZ
@given(st.binary(max_size=1500), st.none() | st.text(max_size=120) | st.binary(min_size=64, max_size=64).map(
    lambda b: base64.b64encode(b).decode()))  # fmt: skip
def test_random_body_and_signature_is_always_rejected(body: bytes, sig: str | None) -> None:
    with pytest.raises(PlanRejected):
        verify(body, sig)


@FUZZ
@given(st.binary(max_size=1500))
def test_random_body_signed_by_the_pinned_key_is_accepted_only_if_it_is_a_valid_plan(body: bytes) -> None:
    """Even a correctly signed body is decoded and checked before it counts (a buggy cloud is not trusted)."""
    try:
        verify(body, signature(CLOUD, body))
    except PlanRejected as exc:
        assert exc.reason in (
            "malformed", "out_of_range", "wrong_site", "stale_version", "issued_in_future", "expired"
        )  # fmt: skip


@FUZZ
@given(st.data())
def test_any_bit_flip_of_a_signed_plan_is_rejected(data: st.DataObject) -> None:
    body = plan()
    sig = signature(CLOUD, body)
    assert verify(body, sig).version == 5
    i = data.draw(st.integers(0, len(body) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = body[:i] + bytes([body[i] ^ (1 << bit)]) + body[i + 1 :]
    with pytest.raises(PlanRejected) as info:
        verify(flipped, sig)
    assert info.value.reason == "bad_signature"
    raw = bytearray(base64.b64decode(sig))
    j = data.draw(st.integers(0, len(raw) - 1))
    raw[j] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(PlanRejected):
        verify(body, base64.b64encode(bytes(raw)).decode())


@FUZZ
@given(
    version=st.integers(-5, 10),
    site=st.sampled_from([SITE, "site-2", ""]),
    hours=st.floats(-3, 3).filter(lambda h: abs(h) > 1e-3),
    key=st.sampled_from(["cloud", "other"]),
    held=st.none() | st.integers(0, 8),
)
def test_signed_plans_pass_only_when_every_rule_holds(
    version: int, site: str, hours: float, key: str, held: int | None
) -> None:
    slot = PlanSlot(start=NOW, end=NOW + timedelta(hours=abs(hours)), intent=Intent(battery_w=1.0))
    until = NOW + timedelta(hours=hours)
    p = Plan(site_id=site, version=version, issued_at=NOW - timedelta(hours=4), valid_until=until, slots=(slot,))
    body = encode_plan(p)
    sig = signature(CLOUD if key == "cloud" else OTHER, body)
    should_pass = key == "cloud" and site == SITE and version >= 1 and hours > 0 and (held is None or version > held)
    if should_pass:
        assert verify(body, sig, held) == p
    else:
        with pytest.raises(PlanRejected):
            verify(body, sig, held)
