"""Property: whatever the server answers, the Zap never deletes what it has not sent (issue 10).

Hypothesis plays a hostile cloud (a fake transport) answering each batch with a status and a
stored_through drawn from anywhere: the batch range, below it, far past it, 2^63 - 1, negative.
The outbox is the real SQLite store. After every answer, the Zap's acknowledged position is at
most the highest seq it has sent, and every reading above that position is still in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from cloud_sync.link import LinkStatus
from cloud_sync.uploader import Uploader, UploadRejected
from cloud_sync.wire import AckRejected, WireError, gunzip_limited, sign_body, verify_ack
from zapd.clock import ManualClock
from zapd.model import DerKind, Reading
from zapd.store import Store

T0 = datetime(2026, 6, 21, 12, tzinfo=UTC)
CLOUD = SigningKey(b"\x09" * 32)
N = 30

answers = st.tuples(
    st.sampled_from([200, 200, 200, 409]),
    st.one_of(
        st.integers(-3, N + 3),  # around the batch
        st.integers(N + 4, 2**63 - 1),  # past anything the Zap has
        st.sampled_from([2**63 - 1, 10**18, -(2**63)]),
    ),
)


async def _run(script: list[tuple[int, int]], batch_max: int, tmp: Path) -> None:
    store = await Store.open(tmp / "zapd.sqlite")
    try:
        meter = [Reading(der_id="m", kind=DerKind.METER, ts=T0 + timedelta(seconds=i), values={"power_w": 1.0})
                 for i in range(N)]  # fmt: skip
        await store.append_readings(meter)
        sent_high = 0
        replies = iter(script)

        def cloud(request: httpx.Request) -> httpx.Response:
            nonlocal sent_high
            batch = msgspec.json.decode(gunzip_limited(request.content))
            sent_high = max(sent_high, int(batch["last_seq"]))
            status, stored = next(replies)
            body = msgspec.json.encode({"stored_through": stored, "site_id": "s", "error": "gap"})
            return httpx.Response(status, content=body, headers=sign_body(CLOUD, body))

        transport = httpx.MockTransport(cloud)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            up = Uploader(store=store, client=client, site_id="s", key=SigningKey(b"\x01" * 32),
                          clock=ManualClock(T0), link=LinkStatus(), batch_max=batch_max,
                          cloud_key=CLOUD.verify_key)  # fmt: skip
            for _ in script:
                with contextlib.suppress(UploadRejected, WireError):
                    await up.upload_once()
                acked = await store.acked_seq()
                assert 0 <= acked <= sent_high, (acked, sent_high)
                kept = [r.seq for r in await store.outbox_after(acked, N + 10)]
                assert kept == list(range(acked + 1, N + 1)), (acked, kept)
    finally:
        await store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(answers, min_size=1, max_size=8), batch_max=st.integers(1, 40))
def test_no_answer_deletes_what_was_not_sent(script: list[tuple[int, int]], batch_max: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_run(script, batch_max, Path(tmp)))


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300) | st.builds(lambda n, s: msgspec.json.encode({"stored_through": n, "site_id": s}),
                                                 st.integers() | st.floats(), st.sampled_from(["s", "t", None])),
       signed=st.booleans())  # fmt: skip
def test_any_answer_body_is_a_valid_ack_or_ack_rejected(body: bytes, signed: bool) -> None:
    """Random bytes, signed or not, give a TelemetryAck for this site or AckRejected, never another error."""
    sig = sign_body(CLOUD, body)["X-Zap-Signature"] if signed else None
    try:
        ack = verify_ack(body, sig, CLOUD.verify_key, site_id="s")
    except AckRejected as exc:
        assert exc.reason in ("malformed", "wrong_site") if signed else exc.reason == "unsigned"
    else:
        assert signed and ack.site_id == "s" and isinstance(ack.stored_through, int)
