"""The cloud's checks on numbers and times that the wire format alone cannot bound.

cloud_sync/wire.py holds the rules both sides share (seq and plan-version maxima, batch sizes, finite
reading values). Here are the rules that need the server's clock or its stored state: how old or new a
timestamp may be, how far a telemetry stream may jump, and the admin inputs (prices, demand response,
public keys) that only the cloud receives. Each failure is a `BoundsError`, answered 422 with its
message; docs/operations.md lists the bounds.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Final

from nacl.bindings import crypto_core_ed25519_is_valid_point

from cloud_sync.wire import (
    MAX_BATCH_READINGS,
    MAX_ID_CHARS,
    MAX_PLAN_VALIDITY,
    DiscoveryReport,
    TelemetryBatch,
    format_ts,
)
from zapd.model import Plan

# Readings may be as old as the longest outbox retention a Zap can be configured with (zapd/config.py
# store.retention_days <= 3650): anything older cannot have come from a Zap's outbox.
MAX_READING_AGE: Final = timedelta(days=3650)
# A Zap writes far fewer readings than this (100 devices at 10 Hz); a stream that declares more lost
# readings than this rate allows since its last stored reading is refused, so no batch can move a site's
# position further than the clock has.
MAX_READINGS_PER_S: Final = 1000.0
# A plan is issued now; the server allows this much for a publisher's clock or a slow solve.
MAX_PLAN_ISSUED_AGE: Final = timedelta(hours=24)
# The planner always publishes the next version; an admin may skip ahead, but not to the end of time.
MAX_PLAN_VERSION_STEP: Final = 1_000_000
# Spot prices per kWh (EUR or the tariff's currency). Day-ahead markets clear within -0.5..4 EUR/kWh
# (EPEX harmonised limits -500..4000 EUR/MWh); 10 leaves room for a changed cap, not for a unit mix-up.
MAX_PRICE_ABS: Final = 10.0
PRICE_EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)
PRICE_HORIZON: Final = timedelta(days=730)
MAX_PRICE_ROWS: Final = 10_000  # 15-minute rows per upload: ~104 days
AREA_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
# Demand response: a fleet endpoint serves thousands of homes, not a power plant.
MAX_EVENT_KW: Final = 1_000_000.0
MAX_EVENT_LEAD: Final = timedelta(days=7)
MAX_FLEX_SLOTS: Final = 7 * 96
MAX_DISCOVERY_DERS: Final = 256
_PUBLIC_KEY_BYTES: Final = 32


class BoundsError(ValueError):
    """An input outside its documented bounds (422)."""


def check_finite(name: str, value: float, limit: float) -> None:
    if not math.isfinite(value) or abs(value) > limit:
        raise BoundsError(f"{name} = {value!r} is not finite or beyond ±{limit:g}")


def check_times(batch: TelemetryBatch, now: datetime, future_skew: timedelta) -> None:
    """Every reading and command report is dated within [now - MAX_READING_AGE, now + future_skew]."""
    earliest, latest = now - MAX_READING_AGE, now + future_skew
    stamps = [(f"seq {r.seq}", r.ts) for r in batch.readings]
    stamps += [(f"command report {c.der_id}", c.ts) for c in batch.commands]
    for what, ts in stamps:
        if not earliest <= ts <= latest:
            raise BoundsError(
                f"{what}: ts {format_ts(ts)} outside {format_ts(earliest)} .. {format_ts(latest)} (the server's clock)"
            )
    for c in batch.commands:
        if not 0 < len(c.der_id) <= MAX_ID_CHARS or len(c.result) > 1000 or len(c.clamped_reason or "") > 1000:
            raise BoundsError(f"command report {c.der_id[:40]!r}: ids or texts too long")


def check_seq_jump(batch: TelemetryBatch, stored_through: int, last_stored_ts: datetime | None) -> None:
    """A batch that declares readings lost may skip only as many as the Zap can have written since.

    The first batch of a site (nothing stored) may start anywhere up to MAX_SEQ: a Zap with a long
    history may be registered anew. After that the jump is bounded by time, which a batch's timestamps
    cannot outrun (they are at most a few minutes ahead of the server's clock).
    """
    if batch.lost_through is None or last_stored_ts is None or batch.first_seq <= stored_through + 1:
        return
    newest = max(r.ts for r in batch.readings)
    elapsed = max(0.0, (newest - last_stored_ts).total_seconds())
    allowed = int(elapsed * MAX_READINGS_PER_S) + MAX_BATCH_READINGS
    jump = batch.last_seq - stored_through
    if jump > allowed:
        raise BoundsError(
            f"batch jumps {jump} readings past stored_through {stored_through} in {elapsed:.0f} s of readings; "
            f"at most {allowed} ({MAX_READINGS_PER_S:g} readings/s): the Zap's sequence counter is broken"
        )


def check_plan_publish(plan: Plan, now: datetime, latest_version: int | None, future_skew: timedelta) -> None:
    if not now - MAX_PLAN_ISSUED_AGE <= plan.issued_at <= now + future_skew:
        raise BoundsError(f"plan issued_at {format_ts(plan.issued_at)} is not now (server clock {format_ts(now)})")
    if plan.valid_until > now + MAX_PLAN_VALIDITY:
        raise BoundsError(
            f"plan valid_until {format_ts(plan.valid_until)} is more than {MAX_PLAN_VALIDITY.days} days ahead"
        )
    ceiling = (latest_version or 0) + MAX_PLAN_VERSION_STEP
    if plan.version > ceiling:
        raise BoundsError(
            f"plan version {plan.version} is more than {MAX_PLAN_VERSION_STEP} above the stored version "
            f"{latest_version or 0}"
        )


SOURCE_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:/()-]{0,63}$")


def check_price_source(source: str, published_at: datetime | None, now: datetime) -> None:
    """A price upload's source (1-64 plain characters) and publication time (aware, not in the future)."""
    if not SOURCE_RE.match(source):
        raise BoundsError(f"bad source {source[:70]!r}: 1-64 of A-Z a-z 0-9 space . _ : / ( ) -")
    if published_at is not None and (
        published_at.tzinfo is None or not PRICE_EARLIEST <= published_at <= now + timedelta(minutes=5)
    ):
        raise BoundsError("published_at needs a UTC offset and must lie between 2000-01-01 and now")


def check_prices(area: str, start: datetime, step_minutes: int, prices: list[float], now: datetime) -> None:
    """Checked in an order that never computes a time past year 9999."""
    if not AREA_RE.match(area):
        raise BoundsError(f"bad area {area[:40]!r}: 1-32 of A-Z a-z 0-9 _ -")
    rows = len(prices) * max(1, step_minutes // 15)
    if rows > MAX_PRICE_ROWS:
        raise BoundsError(f"{rows} 15-minute price rows in one upload, more than {MAX_PRICE_ROWS}")
    latest = now + PRICE_HORIZON
    if not PRICE_EARLIEST <= start <= latest or start + timedelta(minutes=step_minutes * len(prices)) > latest:
        raise BoundsError(f"prices must lie within {format_ts(PRICE_EARLIEST)} .. {format_ts(latest)}")
    for i, price in enumerate(prices):
        check_finite(f"prices[{i}]", price, MAX_PRICE_ABS)


def check_event(start: datetime, reduction_kw: float, now: datetime) -> None:
    check_finite("reduction_kw", reduction_kw, MAX_EVENT_KW)
    if start.tzinfo is not None and start > now + MAX_EVENT_LEAD:
        raise BoundsError(f"event start more than {MAX_EVENT_LEAD.days} days ahead")


def check_discovery(report: DiscoveryReport) -> None:
    """Counts, ids and uniqueness (the numbers are checked by wire.decode_discovery)."""
    if len(report.ders) > MAX_DISCOVERY_DERS:
        raise BoundsError(f"{len(report.ders)} DERs, more than {MAX_DISCOVERY_DERS}")
    if len({d.der_id for d in report.ders}) != len(report.ders):
        raise BoundsError("der_id appears twice in the report")
    for der in report.ders:
        if not 0 < len(der.der_id) <= MAX_ID_CHARS or len(der.model) > MAX_ID_CHARS:
            raise BoundsError(f"der_id and model must be 1..{MAX_ID_CHARS} characters")


def check_public_key(raw: bytes) -> None:
    """An Ed25519 public key a Zap can hold: a canonical curve point of the prime-order subgroup.

    The all-zero key and the other small-order points verify forged signatures for some messages;
    libsodium's point check refuses them.
    """
    if len(raw) != _PUBLIC_KEY_BYTES or not crypto_core_ed25519_is_valid_point(raw):
        raise BoundsError("public key is not a valid Ed25519 point (all-zero, small order or not on the curve)")
