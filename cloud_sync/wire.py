"""Wire formats between the Zap and the cloud, and the signing rules around them.

Shared by the edge (uploader, plan fetcher) and the cloud endpoint so that both sides
encode, sign and verify with the same code. docs/wire.md is the human description.

Signatures are Ed25519, detached, over the EXACT uncompressed body bytes. Signing the
uncompressed bytes keeps the signature independent of transport choices (a proxy may
re-encode, the gzip header carries an mtime, compression levels differ) and lets the
receiver verify before it parses JSON; the cost is that the receiver gunzips before it
verifies, so gunzip is size-capped (`gunzip_limited`).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import math
import zlib
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal

import msgspec
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from cloud_sync.keys import key_id
from zapd.bounds import MAX_CURRENT_A, MAX_ENERGY_WH, MAX_POWER_W, MAX_VOLTAGE_V, bad_values, check_ts
from zapd.model import BatterySetpoint, Command, DerCapabilities, DerKind, EvCurrent, Intent, Plan, Quality, Reading

HEADER_KEY_ID: Final = "X-Zap-Key-Id"
HEADER_SIGNATURE: Final = "X-Zap-Signature"
HEADER_TIMESTAMP: Final = "X-Zap-Timestamp"

# Caps that keep a hostile or buggy peer from exhausting memory. Both sides use them: the
# uploader sizes its batches below them, the server rejects anything above them.
MAX_BODY_BYTES: Final = 8 * 1024 * 1024
# 5000 readings are ~0.8 MB of JSON and ~50 ms of one SQLite write transaction on the cloud.
MAX_BATCH_READINGS: Final = 5_000
MAX_BATCH_COMMANDS: Final = 1_000
# Telemetry seqs stay exact in every JSON parser (IEEE double) and fit a signed 64-bit column.
MAX_SEQ: Final = 2**53 - 1
MAX_ID_CHARS: Final = 128  # der_id and value names
MAX_READING_VALUES: Final = 64
# How far the timestamp of a signed GET may be from the server's clock.
MAX_REQUEST_SKEW_S: Final = 300.0

_SIGNATURE_BYTES: Final = 64

# Bounds on every number a plan carries, device-independent (the safety envelope applies the
# device and site limits later). They exist so that one signed message cannot pin a Zap:
# a version the cloud can never exceed, a plan that never expires, a clock far in the future.
# 2^53 - 1 is the largest integer every JSON implementation holds exactly; at one plan a
# minute it lasts 17 billion years.
MAX_PLAN_VERSION: Final = 2**53 - 1
# valid_until - issued_at. The planner issues plans valid for a day; a week covers any
# sensible cloud and bounds how long a plan issued in error can stay in force.
MAX_PLAN_VALIDITY: Final = timedelta(days=7)
# Every slot starts and ends within this of issued_at (slots may run past valid_until).
MAX_PLAN_HORIZON: Final = timedelta(days=14)
# A week of one-minute slots.
MAX_PLAN_SLOTS: Final = 7 * 24 * 60
# The numbers of each slot's intent are bounded by zapd/bounds.py (intent_problem).

SiteId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Seq = Annotated[int, msgspec.Meta(ge=1)]
UtcDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


class WireReading(msgspec.Struct, frozen=True, kw_only=True):
    """A Reading plus its outbox sequence number, which makes re-sending idempotent."""

    seq: Seq
    der_id: str
    kind: DerKind
    ts: UtcDatetime
    values: dict[str, float]
    quality: Quality = Quality.GOOD


class CommandReport(msgspec.Struct, frozen=True, kw_only=True):
    """What the controller asked a device to do and what came of it, for the cloud's audit."""

    ts: UtcDatetime
    der_id: str
    command: Command
    result: str  # "ok" or a short failure reason
    clamped_reason: str | None = None  # set when the safety envelope changed the intent


class TelemetryBatch(msgspec.Struct, frozen=True, kw_only=True):
    site_id: SiteId
    first_seq: Seq
    last_seq: Seq
    readings: list[WireReading]
    commands: list[CommandReport] = msgspec.field(default_factory=list)
    # The Zap declares that its outbox dropped everything up to this seq (retention), so the
    # server must accept first_seq == lost_through + 1 despite the gap. None: nothing lost.
    lost_through: int | None = None


class TelemetryAck(msgspec.Struct, frozen=True, kw_only=True):
    """200 body, signed by the cloud key (X-Zap-Signature over these exact bytes).

    `site_id` sits inside the signed bytes so that an ACK signed for one site cannot be
    replayed to another; a cloud older than signed ACKs leaves it out.
    """

    stored_through: int
    site_id: str | None = None


class GapError(msgspec.Struct, frozen=True, kw_only=True):
    """409 body: the Zap must re-send from stored_through + 1. Signed like TelemetryAck."""

    error: str
    stored_through: int
    site_id: str | None = None


class DiscoveryReport(msgspec.Struct, frozen=True, kw_only=True):
    """The full set of DERs the Zap found; it replaces the previous set for the site."""

    site_id: SiteId
    ders: list[DerCapabilities]


class SignedPlan(msgspec.Struct, frozen=True, kw_only=True):
    """The plan exactly as signed, so the edge can cache it and re-verify it after a restart."""

    body: bytes
    signature: str  # base64


class WireError(ValueError):
    """A body that is well-formed JSON but breaks a rule of the format (reported as 422)."""


class OutOfRangeError(WireError):
    """A well-formed body with a number beyond its documented bound (see the MAX_PLAN_* caps)."""


AckRejectReason = Literal["unsigned", "bad_signature", "malformed", "wrong_site", "ahead", "behind", "not_a_gap"]


class AckRejected(WireError):
    """The cloud's answer to a telemetry POST is not one the Zap may act on; it deletes nothing."""

    def __init__(self, reason: AckRejectReason, detail: str = "") -> None:
        super().__init__(f"telemetry ack rejected: {reason}" + (f": {detail}" if detail else ""))
        self.reason: AckRejectReason = reason
        self.detail = detail


PlanRejectReason = Literal[
    "unsigned",
    "bad_signature",
    "malformed",
    "out_of_range",
    "wrong_site",
    "stale_version",
    "issued_before_reset",
    "issued_in_future",
    "expired",
]


class PlanRejected(Exception):
    def __init__(self, reason: PlanRejectReason, detail: str = "") -> None:
        super().__init__(f"plan rejected: {reason}" + (f": {detail}" if detail else ""))
        self.reason: PlanRejectReason = reason
        self.detail = detail


_batch_decoder = msgspec.json.Decoder(TelemetryBatch)
_discovery_decoder = msgspec.json.Decoder(DiscoveryReport)
_ack_decoder = msgspec.json.Decoder(TelemetryAck)
_plan_decoder = msgspec.json.Decoder(Plan)
_encoder = msgspec.json.Encoder()


def encode(obj: object) -> bytes:
    return _encoder.encode(obj)


# --- signatures -------------------------------------------------------------------------


def sign_body(key: SigningKey, body: bytes) -> dict[str, str]:
    """Headers that authenticate `body` (the uncompressed bytes) as coming from `key`."""
    signature = key.sign(body).signature
    return {HEADER_KEY_ID: key_id(key), HEADER_SIGNATURE: base64.b64encode(signature).decode("ascii")}


def verify_body(verify_key: VerifyKey, body: bytes, sig_b64: str | None) -> bool:
    if not sig_b64:
        return False
    try:
        signature = base64.b64decode(sig_b64, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(signature) != _SIGNATURE_BYTES:
        return False
    try:
        verify_key.verify(body, signature)
    except BadSignatureError:
        return False
    return True


def signature_problem(
    verify_key: VerifyKey, body: bytes, sig_b64: str | None
) -> Literal["unsigned", "bad_signature"] | None:
    """Why `body` is not signed by `verify_key` (the order the rejection tables list), or None."""
    if not sig_b64:
        return "unsigned"
    if not verify_body(verify_key, body, sig_b64):
        return "bad_signature"
    return None


def signed_request_body(key: SigningKey, obj: object, *, compress: bool = False) -> tuple[bytes, dict[str, str]]:
    """Encode `obj` for a POST: the bytes to send and every header that goes with them.

    The signature is taken before compression (see the module docstring).
    """
    body = encode(obj)
    headers = {**sign_body(key, body), "Content-Type": "application/json"}
    if compress:
        headers["Content-Encoding"] = "gzip"
        body = gzip_body(body)
    return body, headers


def request_signing_bytes(method: str, path: str, timestamp: str) -> bytes:
    """What a body-less request (GET) signs: method, path and a timestamp the server bounds.

    The timestamp limits replay of a captured request to MAX_REQUEST_SKEW_S; that is enough
    because a GET only reads, and the plan it returns is itself signed by the cloud.
    """
    return f"zap-request-v1\n{method.upper()}\n{path}\n{timestamp}".encode()


def sign_request(key: SigningKey, method: str, path: str, now: datetime) -> dict[str, str]:
    timestamp = format_ts(now)
    headers = sign_body(key, request_signing_bytes(method, path, timestamp))
    headers[HEADER_TIMESTAMP] = timestamp
    return headers


def verify_request(
    verify_key: VerifyKey,
    method: str,
    path: str,
    timestamp: str | None,
    sig_b64: str | None,
    *,
    now: datetime,
    max_skew_s: float = MAX_REQUEST_SKEW_S,
) -> str | None:
    """Check a signed body-less request. Returns None if good, else the rejection reason."""
    if not timestamp:
        return "missing_timestamp"
    try:
        ts = datetime.fromisoformat(timestamp)
    except ValueError:
        return "bad_timestamp"
    if ts.tzinfo is None:
        return "bad_timestamp"
    try:
        skew = abs((ts - now).total_seconds())
    except OverflowError:  # year 1 or 9999 with an offset
        return "bad_timestamp"
    if skew > max_skew_s:
        return "stale_timestamp"
    if not verify_body(verify_key, request_signing_bytes(method, path, timestamp), sig_b64):
        return "bad_signature"
    return None


def format_ts(dt: datetime) -> str:
    """RFC 3339 UTC with a Z, the only timestamp form the wire uses."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime on the wire")
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- compression ------------------------------------------------------------------------


def gzip_body(body: bytes) -> bytes:
    # mtime=0 keeps the compressed bytes reproducible (useful in tests and for caches).
    return gzip.compress(body, compresslevel=6, mtime=0)


def gunzip_limited(data: bytes, limit: int = MAX_BODY_BYTES) -> bytes:
    """Decompress gzip, refusing output above `limit` so a small bomb cannot exhaust memory."""
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise WireError(f"bad gzip body: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise WireError(f"body larger than {limit} bytes after decompression")
    if not d.eof:
        raise WireError("bad gzip body: truncated")
    return out


# --- telemetry --------------------------------------------------------------------------


def decode_batch(body: bytes) -> TelemetryBatch:
    """Decode and check a telemetry batch; raises WireError with a message fit for a 422."""
    try:
        batch = _batch_decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise WireError(f"malformed telemetry batch: {exc}") from None
    check_batch(batch)
    return batch


def check_batch(batch: TelemetryBatch) -> None:
    if not batch.readings:
        raise WireError("batch has no readings")
    if len(batch.readings) > MAX_BATCH_READINGS:
        raise WireError(f"batch has {len(batch.readings)} readings, more than {MAX_BATCH_READINGS}")
    if batch.first_seq != batch.readings[0].seq or batch.last_seq != batch.readings[-1].seq:
        raise WireError("first_seq/last_seq do not match the readings")
    for prev, cur in zip(batch.readings, batch.readings[1:], strict=False):
        if cur.seq != prev.seq + 1:
            raise WireError(f"sequence numbers not contiguous: {prev.seq} then {cur.seq}")
    if batch.lost_through is not None and batch.lost_through != batch.first_seq - 1:
        raise WireError("lost_through must be first_seq - 1")
    if batch.last_seq > MAX_SEQ:
        raise WireError(f"seq {batch.last_seq} is above the maximum {MAX_SEQ} (2^53 - 1)")
    if len(batch.commands) > MAX_BATCH_COMMANDS:
        raise WireError(f"batch has {len(batch.commands)} command reports, more than {MAX_BATCH_COMMANDS}")
    for r in batch.readings:
        problem = shape_problem(r.der_id, r.values)
        if problem is not None:
            raise WireError(f"reading seq {r.seq}: {problem}")
        problem = reading_problem(r.ts, r.values)
        if problem is not None:
            raise WireError(f"reading seq {r.seq} ({r.der_id}): {problem}")
    for c in batch.commands:
        problem = check_ts(c.ts) or command_problem(c.command)
        if problem is not None:
            raise WireError(f"command report for {c.der_id}: {problem}")


# --- the numbers both sides accept (zapd/bounds.py) -------------------------------------------


def _name_ok(name: str) -> bool:
    return 0 < len(name) <= MAX_ID_CHARS


def shape_problem(der_id: str, values: dict[str, float]) -> str | None:
    """Why the cloud refuses a reading for its names or size; None when the shape is accepted."""
    if not _name_ok(der_id):
        return f"der_id must be 1..{MAX_ID_CHARS} characters"
    if len(values) > MAX_READING_VALUES:
        return f"{len(values)} values, more than {MAX_READING_VALUES}"
    if not all(_name_ok(name) for name in values):
        return f"value names must be 1..{MAX_ID_CHARS} characters"
    return None


def reading_problem(ts: datetime, values: dict[str, float]) -> str | None:
    """Why the cloud refuses a reading with this timestamp and these values; None when it accepts it.

    The one rule for both sides: `check_batch` applies it on the cloud, the Zap's telemetry
    writer applies it before anything reaches the outbox, so a stored reading is never refused.
    """
    problem = check_ts(ts)
    if problem is not None:
        return problem
    bad = bad_values(values)
    if bad:
        key = min(bad)
        return f"value {key}={values[key]!r} is {bad[key].replace('_', ' ')} (zapd/bounds.py)"
    return None


def command_problem(command: Command) -> str | None:
    """Why a command is not a command any device could have been sent; None when it is one."""
    if isinstance(command, BatterySetpoint):
        if not math.isfinite(command.power_w) or abs(command.power_w) > MAX_POWER_W:
            return f"battery setpoint {command.power_w!r} W outside +-{MAX_POWER_W:g}"
    elif isinstance(command, EvCurrent):
        if not math.isfinite(command.current_a) or not 0.0 <= command.current_a <= MAX_CURRENT_A:
            return f"EV current {command.current_a!r} A outside 0..{MAX_CURRENT_A:g}"
        if not 1 <= command.phases <= 3:
            return f"EV phases {command.phases} outside 1..3"
    return None


def wire_safe(reading: Reading) -> Reading | None:
    """The reading as the cloud will accept it: implausible values left out (quality BAD), or None
    when nothing can save it (its timestamp is outside the bounds)."""
    if check_ts(reading.ts) is not None or not _name_ok(reading.der_id):
        return None
    bad = bad_values(reading.values)
    if not bad and shape_problem(reading.der_id, reading.values) is None:
        return reading
    # Same rule as check_batch: names the cloud refuses and values past the cap are left out.
    good = {k: v for k, v in sorted(reading.values.items()) if k not in bad and _name_ok(k)}
    good = dict(list(good.items())[:MAX_READING_VALUES])
    return msgspec.structs.replace(reading, values=good, quality=Quality.BAD)


def make_batch(
    site_id: str,
    readings: list[WireReading],
    *,
    commands: list[CommandReport] | None = None,
    lost_through: int | None = None,
) -> TelemetryBatch:
    if not readings:
        raise WireError("batch has no readings")
    batch = TelemetryBatch(
        site_id=site_id,
        first_seq=readings[0].seq,
        last_seq=readings[-1].seq,
        readings=readings,
        commands=commands or [],
        lost_through=lost_through,
    )
    check_batch(batch)
    return batch


def decode_ack(body: bytes) -> TelemetryAck:
    """Read the server's answer to a telemetry POST: a 200 ack and a 409 gap both carry
    stored_through, the point the Zap continues from."""
    try:
        return _ack_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise WireError(f"malformed telemetry ack: {exc}") from None


def verify_ack(body: bytes, sig_b64: str | None, cloud_key: VerifyKey | None, *, site_id: str) -> TelemetryAck:
    """Check and read a 200 ACK or a 409 gap answer; raises AckRejected.

    With `cloud_key` (the Zap's pinned cloud key) the answer must be signed by it over the
    exact body and name this site: only the cloud can then tell the Zap to delete its outbox,
    whatever sits on the path. Without it (tests, tools) only the format is checked. Either
    way the Zap still bounds stored_through by what it sent (cloud_sync.uploader).
    """
    if cloud_key is not None:
        unsigned = signature_problem(cloud_key, body, sig_b64)
        if unsigned is not None:
            raise AckRejected(unsigned)
    try:
        ack = decode_ack(body)
    except WireError as exc:
        raise AckRejected("malformed", str(exc)) from None
    if cloud_key is not None and ack.site_id != site_id:
        raise AckRejected("wrong_site", f"answer is for {ack.site_id!r}")
    return ack


def decode_discovery(body: bytes) -> DiscoveryReport:
    try:
        report = _discovery_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise WireError(f"malformed discovery report: {exc}") from None
    for der in report.ders:
        problem = capabilities_problem(der)
        if problem is not None:
            raise WireError(f"discovery report, {der.der_id}: {problem}")
    return report


_CAPABILITY_RANGES: Final = {
    "max_charge_w": MAX_POWER_W,
    "max_discharge_w": MAX_POWER_W,
    "max_power_w": MAX_POWER_W,
    "capacity_wh": MAX_ENERGY_WH,
    "min_current_a": MAX_CURRENT_A,
    "max_current_a": MAX_CURRENT_A,
    "voltage_v": MAX_VOLTAGE_V,
    "keepalive_s": 86_400.0,
}


def capabilities_problem(der: DerCapabilities) -> str | None:
    """Why a DER's limits are not numbers any device has (0 = unknown is fine); None when they are."""
    for name, hi in _CAPABILITY_RANGES.items():
        value = getattr(der, name)
        if not math.isfinite(value) or not 0.0 <= value <= hi:
            return f"{name} {value!r} outside 0..{hi:g}"
    if not 1 <= der.phases <= 3:
        return f"phases {der.phases} outside 1..3"
    return None


def wire_safe_capabilities(der: DerCapabilities) -> DerCapabilities:
    """The DER as the cloud accepts it: a limit that is not a plausible number becomes 0 (unknown)."""
    if capabilities_problem(der) is None:
        return der
    fixed: dict[str, float | int] = {}
    for name, hi in _CAPABILITY_RANGES.items():
        value = getattr(der, name)
        if not math.isfinite(value) or not 0.0 <= value <= hi:
            fixed[name] = 0.0
    if not 1 <= der.phases <= 3:
        fixed["phases"] = 1
    return msgspec.structs.replace(der, **fixed)


# --- plans ------------------------------------------------------------------------------


def encode_plan(plan: Plan) -> bytes:
    return _encoder.encode(plan)


def sign_plan(key: SigningKey, plan: Plan) -> SignedPlan:
    body = encode_plan(plan)
    return SignedPlan(body=body, signature=sign_body(key, body)[HEADER_SIGNATURE])


def etag(version: int) -> str:
    return f'"{version}"'


def if_none_match_hits(header: str | None, version: int) -> bool:
    """True if an If-None-Match header names `version` (so the answer is 304)."""
    if not header:
        return False
    wanted = etag(version)
    for tag in header.split(","):
        tag = tag.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == "*" or tag == wanted:
            return True
    return False


def decode_plan(body: bytes) -> Plan:
    """Decode and sanity-check a plan; raises WireError. Does not check any signature."""
    try:
        plan = _plan_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise WireError(f"malformed plan: {exc}") from None
    check_plan(plan)
    return plan


def check_plan(plan: Plan) -> None:
    """The rules a plan obeys whoever reads it: the cloud before it signs, the Zap after it verifies.

    Raises WireError (structure) or OutOfRangeError (a number beyond its bound).
    """
    stamps = [plan.issued_at, plan.valid_until]
    for slot in plan.slots:
        stamps += [slot.start, slot.end]
    if any(ts.tzinfo is None or ts.utcoffset() is None for ts in stamps):
        raise WireError("plan has a timestamp without a UTC offset")
    if plan.version < 1:
        raise WireError("plan version must be >= 1")
    if plan.version > MAX_PLAN_VERSION:
        raise OutOfRangeError(f"plan version {plan.version} is above {MAX_PLAN_VERSION} (2^53 - 1)")
    if plan.valid_until <= plan.issued_at:
        raise WireError("plan valid_until is not after issued_at")
    if plan.valid_until - plan.issued_at > MAX_PLAN_VALIDITY:
        raise OutOfRangeError(
            f"plan valid for {plan.valid_until - plan.issued_at}, more than {MAX_PLAN_VALIDITY.days} days"
        )
    if len(plan.slots) > MAX_PLAN_SLOTS:
        raise OutOfRangeError(f"plan has {len(plan.slots)} slots, more than {MAX_PLAN_SLOTS}")
    earliest, latest = plan.issued_at - MAX_PLAN_HORIZON, plan.issued_at + MAX_PLAN_HORIZON
    previous_end: datetime | None = None
    for slot in plan.slots:
        if slot.end <= slot.start:
            raise WireError(f"plan slot ends before it starts: {slot.start} .. {slot.end}")
        if previous_end is not None and slot.start < previous_end:
            raise WireError(f"plan slots overlap or are out of order at {format_ts(slot.start)}")
        previous_end = slot.end
        if slot.start < earliest or slot.end > latest:
            raise OutOfRangeError(
                f"plan slot {format_ts(slot.start)} .. {format_ts(slot.end)} is more than "
                f"{MAX_PLAN_HORIZON.days} days from issued_at"
            )
        problem = intent_problem(slot.intent)
        if problem is not None:
            raise OutOfRangeError(f"plan slot {format_ts(slot.start)}: {problem}")


def intent_problem(intent: Intent) -> str | None:
    """Why an intent holds a number no site can act on (not finite, or outside zapd/bounds.py)."""
    ranges = {
        "battery_w": (intent.battery_w, -MAX_POWER_W, MAX_POWER_W),
        # The controller reads a negative EV power or limit as 0; only magnitude and finiteness matter here.
        "ev_w": (intent.ev_w, -MAX_POWER_W, MAX_POWER_W),
        "grid_import_limit_w": (intent.grid_import_limit_w, -MAX_POWER_W, MAX_POWER_W),
        "grid_export_limit_w": (intent.grid_export_limit_w, -MAX_POWER_W, MAX_POWER_W),
        "target_soc": (intent.target_soc, 0.0, 1.0),
        "grid_w": (intent.grid_w, -MAX_POWER_W, MAX_POWER_W),
    }
    for name, (value, lo, hi) in ranges.items():
        if value is not None and (not math.isfinite(value) or not lo <= value <= hi):
            return f"{name} {value!r} outside {lo:g}..{hi:g}"
    return None


def verify_plan(
    body: bytes,
    sig_b64: str | None,
    pinned_key: VerifyKey,
    *,
    site_id: str,
    min_version_exclusive: int | None,
    now: datetime,
    issued_floor: datetime | None = None,
    max_skew_s: float = MAX_REQUEST_SKEW_S,
) -> Plan:
    """Accept a plan from the cloud only if every rule holds; else raise PlanRejected.

    The signature is checked before the body is parsed, so unauthenticated bytes never
    reach the JSON decoder. `min_version_exclusive` is the version of the plan the Zap
    already holds (None if it holds none): an equal or older version is a replay.
    `issued_floor` is set by an operator's version reset: a plan issued before it is a
    replay of one the reset meant to forget. A plan issued more than `max_skew_s` in the
    Zap's future is refused: the clock that signed it is wrong, and its validity with it.
    """
    unsigned = signature_problem(pinned_key, body, sig_b64)
    if unsigned is not None:
        raise PlanRejected(unsigned)
    try:
        plan = decode_plan(body)
    except OutOfRangeError as exc:
        raise PlanRejected("out_of_range", str(exc)) from None
    except WireError as exc:
        raise PlanRejected("malformed", str(exc)) from None
    if plan.site_id != site_id:
        raise PlanRejected("wrong_site", f"plan is for {plan.site_id!r}")
    if min_version_exclusive is not None and plan.version <= min_version_exclusive:
        raise PlanRejected("stale_version", f"version {plan.version} <= {min_version_exclusive}")
    if issued_floor is not None and plan.issued_at < issued_floor:
        raise PlanRejected(
            "issued_before_reset", f"issued_at {format_ts(plan.issued_at)} < reset {format_ts(issued_floor)}"
        )
    if (plan.issued_at - now).total_seconds() > max_skew_s:
        raise PlanRejected(
            "issued_in_future", f"issued_at {format_ts(plan.issued_at)} is more than {max_skew_s:g} s ahead"
        )
    if plan.valid_until <= now:
        raise PlanRejected("expired", f"valid_until {format_ts(plan.valid_until)}")
    return plan
