"""Fuzzing the wire formats with hypothesis: no byte string gets past decoding except a well-formed message.

Why: the cloud decodes whatever a Zap (or anyone) POSTs and the Zap decodes the cloud's answers;
a decoder that raises anything but WireError turns bad input into a 500 or a crashed uploader
instead of a clean 422 / counted rejection. Properties: random bytes and random JSON give a value
or WireError, never another exception; a batch that decodes satisfies every rule check_batch
states (so nothing malformed reaches the database); gunzip never returns more than its limit.
"""

from __future__ import annotations

import contextlib
import gzip
import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from cloud_sync.wire import (
    MAX_BATCH_READINGS,
    TelemetryBatch,
    WireError,
    WireReading,
    check_batch,
    decode_ack,
    decode_batch,
    decode_discovery,
    encode,
    gunzip_limited,
    make_batch,
    sign_request,
    verify_request,
)
from zapd.model import DerKind

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)
field_names = st.sampled_from(
    ["site_id", "first_seq", "last_seq", "readings", "commands", "lost_through", "seq", "der_id", "kind", "ts",
     "values", "quality", "stored_through", "ders", "command", "result", "power_w"]
)  # fmt: skip
batch_like = st.fixed_dictionaries(
    {},
    optional={
        "site_id": st.sampled_from(["site-1", "", "x" * 70, "../etc"]) | json_scalars,
        "first_seq": st.integers(-3, 10) | json_scalars,
        "last_seq": st.integers(-3, 10) | json_scalars,
        "lost_through": st.none() | st.integers(-3, 10),
        "readings": st.lists(
            st.dictionaries(field_names, json_values | st.integers(-2, 10), max_size=7)
            | st.fixed_dictionaries(
                {
                    "seq": st.integers(-2, 10),
                    "der_id": st.text(max_size=5),
                    "kind": st.sampled_from(list(DerKind)),
                    "ts": st.sampled_from(["2026-06-21T08:00:00Z", "2026-06-21T08:00:00", "yesterday"]),
                    "values": st.dictionaries(st.text(max_size=5), st.floats() | st.text(max_size=3), max_size=3),
                }
            ),
            max_size=6,
        ),
        "commands": st.lists(json_values, max_size=2),
    },
)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes_never_escape_as_another_exception(data: bytes) -> None:
    for decode in (decode_batch, decode_ack, decode_discovery):
        with contextlib.suppress(WireError):
            decode(data)


@FUZZ
@given(batch_like)
def test_batch_shaped_json_decodes_only_when_every_rule_holds(doc: dict[str, object]) -> None:
    try:
        body = json.dumps(doc, allow_nan=True).encode()
    except ValueError:
        return
    try:
        batch = decode_batch(body)
    except WireError:
        return
    # Whatever got through is a batch the server may store as is.
    assert isinstance(batch, TelemetryBatch)
    check_batch(batch)
    seqs = [r.seq for r in batch.readings]
    assert seqs == list(range(batch.first_seq, batch.last_seq + 1))
    assert 1 <= len(seqs) <= MAX_BATCH_READINGS
    assert all(r.ts.tzinfo is not None for r in batch.readings)
    assert batch.lost_through is None or batch.lost_through == batch.first_seq - 1


@FUZZ
@given(st.integers(1, 10**9), st.integers(1, 30), st.data())
def test_valid_batches_round_trip_and_any_seq_tamper_is_refused(first: int, n: int, data: st.DataObject) -> None:
    ts = datetime(2026, 6, 21, tzinfo=UTC)
    readings = [WireReading(seq=first + i, der_id="m", kind=DerKind.METER, ts=ts, values={"power_w": float(i)})
                for i in range(n)]  # fmt: skip
    batch = make_batch("site-1", readings)
    assert decode_batch(encode(batch)) == batch
    doc = json.loads(encode(batch))
    i = data.draw(st.integers(0, n - 1))
    doc["readings"][i]["seq"] += data.draw(st.sampled_from([-2, -1, 1, 2, 10]))
    with pytest.raises(WireError):
        decode_batch(json.dumps(doc).encode())


@FUZZ
@given(st.binary(max_size=3000), st.integers(0, 5000))
def test_gunzip_of_random_bytes_is_data_or_wire_error(data: bytes, limit: int) -> None:
    try:
        out = gunzip_limited(data, limit)
    except WireError:
        return
    assert len(out) <= limit


@FUZZ
@given(st.binary(max_size=20_000), st.integers(0, 30_000))
def test_gunzip_never_returns_more_than_the_limit(payload: bytes, limit: int) -> None:
    packed = gzip.compress(payload)
    try:
        out = gunzip_limited(packed, limit)
    except WireError:
        assert len(payload) > limit
        return
    assert out == payload


KEY = SigningKey(b"\x07" * 32)
NOW = datetime(2026, 6, 21, 12, tzinfo=UTC)


@FUZZ
@given(
    st.sampled_from(["GET", "POST", "get"]),
    st.text(max_size=40),
    st.none() | st.text(max_size=40),
    st.none() | st.text(max_size=100),
)
def test_signed_request_check_never_raises_and_never_passes_forged_input(
    method: str, path: str, timestamp: str | None, signature: str | None
) -> None:
    assert verify_request(KEY.verify_key, method, path, timestamp, signature, now=NOW) is not None


@FUZZ
@given(st.text(min_size=1, max_size=40), st.integers(-400, 400))
def test_signed_request_passes_only_within_skew_for_its_own_path(path: str, skew_s: int) -> None:
    from datetime import timedelta

    headers = sign_request(KEY, "GET", path, NOW + timedelta(seconds=skew_s))
    ts, sig = headers["X-Zap-Timestamp"], headers["X-Zap-Signature"]
    result = verify_request(KEY.verify_key, "GET", path, ts, sig, now=NOW)
    assert (result is None) == (abs(skew_s) <= 300)
    assert verify_request(KEY.verify_key, "GET", path + "x", ts, sig, now=NOW) is not None
    assert verify_request(SigningKey(b"\x08" * 32).verify_key, "GET", path, ts, sig, now=NOW) is not None
