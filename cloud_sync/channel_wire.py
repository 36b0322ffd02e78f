"""The live channel's messages (docs/wire.md, "Live channel"): one schema for the Zap and the cloud.

Every frame is one JSON text message, at most MAX_MESSAGE_BYTES, decoded by msgspec into exactly one
of the tagged structs below (field `t`); anything else is refused and counted by the receiver. Two
things are signed with Ed25519:

- the Zap's answer to the server's challenge (`auth_payload`): challenge, site id, the server origin
  the Zap dialed and the Zap's time, so a signature is worth one connection to one server;
- every command from the cloud (`Command`, signed by the cloud key the Zap pins): it names its site,
  carries a random nonce (`command_id`) and expires; the Zap remembers nonces until they expire
  (cloud_sync/channel.py), so a replay inside the window is refused and one after it is expired.

"Plan vN available" is not signed: it only makes the Zap fetch, and the plan itself is verified as
a polled one (cloud_sync/fetcher.py).
"""

from __future__ import annotations

import base64
import binascii
import math
import secrets
from datetime import datetime, timedelta
from typing import Literal

import msgspec
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from cloud_sync.wire import MAX_REQUEST_SKEW_S

CHANNEL_PATH = "/v1/channel"
PROTOCOL_VERSION = 1
# One frame, either way. The biggest message is a command (~600 B); 8 KiB leaves room and bounds memory.
MAX_MESSAGE_BYTES = 8 * 1024
# The Zap's signed answer to the challenge must come this fast, and its time must be this close to ours.
AUTH_TIMEOUT_S = 10.0
AUTH_SKEW_S = MAX_REQUEST_SKEW_S
# A command is valid from issue to expiry; longer-lived orders are refused (the nonce window is this long).
MAX_COMMAND_TTL_S = 3600.0
# The longest window a DR activation or a safe-mode order may cover.
MAX_WINDOW_S = 24 * 3600.0
# Every power a command carries is within this (kW); the site's own limits clamp it further.
MAX_POWER_KW = 10_000.0
COMMAND_ID_HEX = 32  # 16 random bytes
_SITE_ID_MAX = 64
_AUTH_DOMAIN = b"zapd-channel-auth-v1"


class ChannelError(ValueError):
    """A message that is not accepted; `reason` is the stable counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --- command bodies (signed by the cloud) -------------------------------------------------------


class DrAction(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="dr", tag_field="kind"):
    """Demand response for a window: cap import and/or export, or import `offset_kw` less than at activation.

    The Zap applies each as a tightening of the site's limits: it never loosens the fuse or export limit.
    """

    start: datetime
    end: datetime
    import_limit_kw: float | None = None
    export_limit_kw: float | None = None
    offset_kw: float | None = None


class ReplanAction(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="replan", tag_field="kind"
):
    """Upload telemetry and fetch the plan now (the cloud re-plans on fresh data)."""


class SafeModeAction(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="safe_mode", tag_field="kind"
):
    """Hold the site safe (batteries idle, EVs at minimum) until `until`."""

    until: datetime
    reason: str = ""


Action = DrAction | ReplanAction | SafeModeAction


class Command(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    v: int
    command_id: str  # the nonce: 32 hex chars, never reused
    site_id: str
    issued_at: datetime
    expires_at: datetime
    action: Action


# --- frames -----------------------------------------------------------------------------------


class _Frame(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="t"):
    """Every frame carries its kind in "t", so one tagged union decodes any frame and refuses unknown kinds."""


class Challenge(_Frame, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="challenge"):
    challenge: str  # base64 of 32 random bytes
    origin: str  # the server's host[:port] as the Zap dialed it (origin_of); the Zap signs it
    server_time: datetime


class Hello(_Frame, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="hello"):
    v: int
    site_id: str
    key_id: str
    challenge: str
    origin: str
    ts: datetime
    signature: str  # base64 Ed25519 over auth_payload(...)


class Welcome(_Frame, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="welcome"):
    site_id: str
    plan_version: int | None = None  # the newest stored plan: the Zap fetches if it has an older one


class PlanAvailable(_Frame, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="plan"):
    site_id: str
    version: int


class CommandFrame(_Frame, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="command"):
    body: str  # the Command's JSON, exactly as signed
    signature: str  # base64 Ed25519 by the cloud key


class Refused(_Frame, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="refused"):
    """The server says why it closes (authentication) or what it did not take (a frame)."""

    reason: str
    detail: str = ""


class Ack(_Frame, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="ack"):
    """What the Zap did with a command: applied (and what exactly, when) or refused (why)."""

    command_id: str
    result: Literal["applied", "refused"]
    reason: str = ""
    applied: dict[str, float | str | None] = {}
    applied_at: datetime


class PlanAck(_Frame, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="plan_ack"):
    version: int
    applied_at: datetime


class Status(_Frame, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="status"):
    """Live state for the fleet page; every number is checked on arrival (`check_status`)."""

    ts: datetime
    rung: str | None = None
    link: str = "up"
    soc: float | None = None  # 0..1, the site's mean
    grid_w: float | None = None  # + import
    plan_version: int | None = None


ServerFrame = Challenge | Welcome | PlanAvailable | CommandFrame | Refused
ZapFrame = Hello | Ack | PlanAck | Status

_server_decoder: msgspec.json.Decoder[ServerFrame] = msgspec.json.Decoder(ServerFrame)
_zap_decoder: msgspec.json.Decoder[ZapFrame] = msgspec.json.Decoder(ZapFrame)
_command_decoder = msgspec.json.Decoder(Command)
_encoder = msgspec.json.Encoder()


def encode_frame(frame: _Frame) -> str:
    return _encoder.encode(frame).decode()


def _raw(data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ChannelError("oversize", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    return raw


def decode_server_frame(data: str | bytes) -> ServerFrame:
    """A frame from the cloud, at the Zap; ChannelError('oversize'|'malformed') otherwise."""
    try:
        return _server_decoder.decode(_raw(data))
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise ChannelError("malformed", str(exc)[:200]) from None


def decode_zap_frame(data: str | bytes) -> ZapFrame:
    """A frame from a Zap, at the cloud; numbers checked; ChannelError otherwise."""
    try:
        frame = _zap_decoder.decode(_raw(data))
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise ChannelError("malformed", str(exc)[:200]) from None
    if isinstance(frame, Status):
        check_status(frame)
    elif isinstance(frame, Ack):
        _check_ack(frame)
    elif isinstance(frame, PlanAck) and not 1 <= frame.version < 2**62:
        raise ChannelError("malformed", "plan version out of range")
    return frame


def check_status(s: Status) -> None:
    if s.ts.tzinfo is None:
        raise ChannelError("malformed", "status ts needs a UTC offset")
    if s.soc is not None and not (math.isfinite(s.soc) and 0.0 <= s.soc <= 1.0):
        raise ChannelError("malformed", "soc must be in 0..1")
    if s.grid_w is not None and not (math.isfinite(s.grid_w) and abs(s.grid_w) <= MAX_POWER_KW * 1000):
        raise ChannelError("malformed", "grid_w out of range")
    if s.plan_version is not None and not 0 <= s.plan_version < 2**62:
        raise ChannelError("malformed", "plan_version out of range")
    for name in ("rung", "link"):
        value = getattr(s, name)
        if value is not None and len(value) > 32:
            raise ChannelError("malformed", f"{name} longer than 32")


def _check_ack(a: Ack) -> None:
    if len(a.command_id) != COMMAND_ID_HEX or len(a.reason) > 200 or len(a.applied) > 16:
        raise ChannelError("malformed", "ack fields out of bounds")
    if a.applied_at.tzinfo is None:
        raise ChannelError("malformed", "applied_at needs a UTC offset")
    for key, value in a.applied.items():
        if len(key) > 32 or (isinstance(value, str) and len(value) > 64):
            raise ChannelError("malformed", "ack applied entry too long")
        if isinstance(value, float) and not math.isfinite(value):
            raise ChannelError("malformed", f"ack applied {key} is not finite")


# --- authentication -----------------------------------------------------------------------------


def new_challenge() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def auth_payload(challenge: str, site_id: str, origin: str, ts: datetime) -> bytes:
    """The bytes the Zap signs: domain, challenge, site, server origin, time (newline-separated)."""
    parts = (_AUTH_DOMAIN, challenge.encode(), site_id.encode(), origin.encode(), ts.isoformat().encode())
    return b"\n".join(parts)


def sign_hello(key: SigningKey, key_id: str, challenge: str, origin: str, site_id: str, now: datetime) -> Hello:
    """The answer to `challenge`, bound to the `origin` the Zap dialed (not the one the server claims)."""
    sig = key.sign(auth_payload(challenge, site_id, origin, now)).signature
    return Hello(
        v=PROTOCOL_VERSION,
        site_id=site_id,
        key_id=key_id,
        challenge=challenge,
        origin=origin,
        ts=now,
        signature=base64.b64encode(sig).decode(),
    )


def verify_hello(
    hello: Hello,
    verify_key: VerifyKey,
    *,
    challenge: str,
    origin: str,
    now: datetime,
    max_skew_s: float = AUTH_SKEW_S,
) -> None:
    """Raise ChannelError unless `hello` answers our challenge, for our origin, now, by this key."""
    if hello.challenge != challenge:
        raise ChannelError("bad_challenge", "the answer is not to this connection's challenge")
    if hello.origin != origin:
        raise ChannelError("bad_origin", f"signed for {hello.origin[:80]!r}, this server is {origin!r}")
    if hello.ts.tzinfo is None or abs((hello.ts - now).total_seconds()) > max_skew_s:
        raise ChannelError("clock_skew", "hello ts too far from the server's time")
    if not _verify(verify_key, auth_payload(hello.challenge, hello.site_id, hello.origin, hello.ts), hello.signature):
        raise ChannelError("bad_signature", "hello signature does not verify with the site's key")


def _verify(verify_key: VerifyKey, payload: bytes, signature_b64: str) -> bool:
    try:
        sig = base64.b64decode(signature_b64, validate=True)
        if len(sig) != 64:
            return False
        verify_key.verify(payload, sig)
    except (binascii.Error, ValueError, BadSignatureError):
        return False
    return True


# --- commands ------------------------------------------------------------------------------------


def new_command_id() -> str:
    return secrets.token_hex(COMMAND_ID_HEX // 2)


def make_command(site_id: str, action: Action, *, now: datetime, ttl_s: float = 300.0) -> Command:
    """A new command with a fresh nonce; `check_command` is applied so the cloud never signs a bad one."""
    cmd = Command(
        v=PROTOCOL_VERSION,
        command_id=new_command_id(),
        site_id=site_id,
        issued_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
        action=action,
    )
    check_command(cmd, now=now)
    return cmd


def sign_command(key: SigningKey, cmd: Command) -> CommandFrame:
    body = _encoder.encode(cmd)
    return CommandFrame(body=body.decode(), signature=base64.b64encode(key.sign(body).signature).decode())


def verify_command(frame: CommandFrame, cloud_key: VerifyKey, *, site_id: str, now: datetime) -> Command:
    """Signature over the exact body first, then schema, site and bounds: ChannelError otherwise.

    Nonce freshness is the caller's (it owns the persisted window).
    """
    body = frame.body.encode()
    if not _verify(cloud_key, body, frame.signature):
        raise ChannelError("bad_signature", "command signature does not verify with the pinned cloud key")
    try:
        cmd = _command_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        raise ChannelError("malformed", str(exc)[:200]) from None
    if cmd.site_id != site_id:
        raise ChannelError("other_site", f"command for {cmd.site_id[:_SITE_ID_MAX]!r}")
    check_command(cmd, now=now)
    return cmd


def _finite_kw(name: str, value: float | None, *, positive: bool = False) -> None:
    if value is None:
        return
    low_ok = value > 0 if positive else value >= 0
    if not (math.isfinite(value) and low_ok and value <= MAX_POWER_KW):
        raise ChannelError("out_of_bounds", f"{name} must be in {'(0' if positive else '[0'}, {MAX_POWER_KW:g}] kW")


def check_command(cmd: Command, *, now: datetime) -> None:
    """Version, nonce shape, validity window and every number of the action."""
    if cmd.v != PROTOCOL_VERSION:
        raise ChannelError("malformed", f"command version {cmd.v}")
    if len(cmd.command_id) != COMMAND_ID_HEX or any(c not in "0123456789abcdef" for c in cmd.command_id):
        raise ChannelError("malformed", "command_id must be 32 lowercase hex chars")
    if not 0 < len(cmd.site_id) <= _SITE_ID_MAX:
        raise ChannelError("malformed", "site_id length")
    for ts in (cmd.issued_at, cmd.expires_at):
        if ts.tzinfo is None:
            raise ChannelError("malformed", "command times need a UTC offset")
    skew = timedelta(seconds=AUTH_SKEW_S)
    if cmd.issued_at > now + skew:
        raise ChannelError("future", "command issued in the future")
    ttl = (cmd.expires_at - cmd.issued_at).total_seconds()
    if not 0 < ttl <= MAX_COMMAND_TTL_S:
        raise ChannelError("out_of_bounds", f"command lifetime must be in (0, {MAX_COMMAND_TTL_S:g}] s")
    if cmd.expires_at <= now:
        raise ChannelError("expired", f"expired at {cmd.expires_at.isoformat()}")
    action = cmd.action
    if isinstance(action, DrAction):
        if action.start.tzinfo is None or action.end.tzinfo is None:
            raise ChannelError("malformed", "window times need a UTC offset")
        window = (action.end - action.start).total_seconds()
        if not 0 < window <= MAX_WINDOW_S:
            raise ChannelError("out_of_bounds", f"window must be in (0, {MAX_WINDOW_S:g}] s")
        if action.end <= now:
            raise ChannelError("expired", "the window is over")
        if action.start > now + timedelta(seconds=MAX_WINDOW_S):
            raise ChannelError("out_of_bounds", "window starts more than a day ahead")
        if action.import_limit_kw is None and action.export_limit_kw is None and action.offset_kw is None:
            raise ChannelError("malformed", "a DR activation needs a limit or an offset")
        if action.offset_kw is not None and action.import_limit_kw is not None:
            raise ChannelError("malformed", "give an import limit or an offset, not both")
        _finite_kw("import_limit_kw", action.import_limit_kw)
        _finite_kw("export_limit_kw", action.export_limit_kw)
        _finite_kw("offset_kw", action.offset_kw, positive=True)
    elif isinstance(action, SafeModeAction):
        if action.until.tzinfo is None:
            raise ChannelError("malformed", "until needs a UTC offset")
        if not now < action.until <= now + timedelta(seconds=MAX_WINDOW_S):
            raise ChannelError("out_of_bounds", "safe mode until must be within the next day")
        if len(action.reason) > 200:
            raise ChannelError("malformed", "reason longer than 200")


def ws_url(cloud_url: str) -> str:
    """The channel URL for a cloud base URL: http→ws, https→wss, plus CHANNEL_PATH."""
    if cloud_url.startswith("https://"):
        return "wss://" + cloud_url[len("https://") :].rstrip("/") + CHANNEL_PATH
    if cloud_url.startswith("http://"):
        return "ws://" + cloud_url[len("http://") :].rstrip("/") + CHANNEL_PATH
    raise ValueError(f"cloud URL must be http(s)://, got {cloud_url[:40]!r}")


def origin_of(url: str) -> str:
    """host[:port] of a ws(s) URL: what the Zap signs and the server compares with its Host header.

    The scheme is left out on purpose: behind a TLS-terminating balancer the Zap dials wss:// and the
    worker sees plain ws://, with the same Host.
    """
    _scheme, _, rest = url.partition("://")
    return rest.split("/", 1)[0].lower()
