"""The cloud's end of the live channel: `GET /v1/channel` upgraded to a WebSocket (docs/wire.md).

The server speaks first: a random challenge and its own host. The Zap answers with a `Hello` signed
by its key over (challenge, site id, host, time); the site's registered key decides. Nothing else is
read before that, the answer must come within AUTH_TIMEOUT_S, and an address that keeps failing
authentication (a wrong key, signature or challenge; a late hello is no such failure) is refused before
the lookup (the HTTP API's failure budget). From then on the connection is bound to
that site: its acknowledgements may only answer that site's commands, its status only describes
that site. Frames are capped (MAX_MESSAGE_BYTES, and uvicorn closes anything over twice that), decoded
against the schema, rate-limited per connection; every refusal is counted by reason
(`zapcloud_channel_events_total{side="cloud"}`), answered with a `Refused` frame and logged at debug.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from cloud.db import Database
from cloud.server.channel_hub import ChannelHub
from cloud.server.limits import Limits, TokenBuckets
from cloud.server.metrics import Metrics
from cloud_sync.channel_wire import (
    AUTH_TIMEOUT_S,
    Ack,
    Challenge,
    ChannelError,
    Hello,
    PlanAck,
    Refused,
    Status,
    Welcome,
    decode_zap_frame,
    encode_frame,
    new_challenge,
    verify_hello,
)
from cloud_sync.keys import load_verify_key_b64

log = structlog.get_logger("zapcloud.channel")

# WebSocket close codes (RFC 6455 §7.4 and the private range).
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_LATER = 1013
CLOSE_REPLACED = 4000  # the site connected again (to this worker); the newest connection wins
# A Zap sends an ack per command and a status every few seconds; this many frames a second is abuse.
FRAME_RATE_PER_S = 20.0
FRAME_BURST = 60.0
# A connection that sends this many refused frames is closed.
MAX_BAD_FRAMES = 10
# Handshakes looking up their site at once: a reconnect wave waits here, in order, instead of taking every
# pooled database connection (the hub's delivery, the API and the planner need theirs).
AUTH_DB_SLOTS = 6
# Handshakes between the upgrade and the welcome at once. Past it a new upgrade is refused at once (503 with
# Retry-After, counted `hello_queue_full`) instead of queued: in a reconnect wave a worker that queues every
# arrival ends up answering hellos the Zaps have given up on (their 10 s timeouts) while its CPU is full;
# refusing early keeps the queue to what it clears in a second or two (~1-3 ms of CPU each) and sends the
# rest back to their jittered backoff. Sized for the line too: most of a pending hello is the Zap's round
# trip (LTE: ~0.3 s), so 330 arrivals a second (10,000 over 30 s) keep ~100 pending on an idle worker.
MAX_PENDING_HELLOS = 512


@dataclass
class _Conn:
    """One authenticated channel, as the hub sees it."""

    site_id: str
    ws: WebSocket

    async def send_text(self, data: str) -> None:
        await self.ws.send_text(data)


class _FrameBudget:
    """A token bucket per connection, on the monotonic clock."""

    def __init__(self) -> None:
        self.tokens = FRAME_BURST
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(FRAME_BURST, self.tokens + (now - self.at) * FRAME_RATE_PER_S)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class ChannelEndpoint:
    def __init__(
        self,
        *,
        db: Database,
        hub: ChannelHub,
        metrics: Metrics,
        limits: Limits,
        clock: Callable[[], datetime],
        fail_buckets: TokenBuckets,
        max_skew_s: float,
    ) -> None:
        self.db = db
        self.hub = hub
        self.metrics = metrics
        self.limits = limits
        self.clock = clock
        self.fail_buckets = fail_buckets
        self.max_skew_s = max_skew_s
        self._lookups = asyncio.Semaphore(AUTH_DB_SLOTS)
        self.pending_hellos = 0

    def _refuse(self, reason: str, **fields: object) -> None:
        self.metrics.channel("cloud", reason)
        log.debug("channel.refused", reason=reason, **fields)

    async def handle(self, ws: WebSocket) -> None:
        client = ws.client.host if ws.client else "unknown"
        if self.fail_buckets.spent(client) > 0:
            self._refuse("auth_rate_limited", client=client)
            await ws.close(CLOSE_TRY_LATER)
            return
        if self.metrics.channel_open >= self.limits.max_channels:
            self._refuse("channel_cap", client=client)
            await ws.close(CLOSE_TRY_LATER)
            return
        if self.pending_hellos >= MAX_PENDING_HELLOS:
            self._refuse("hello_queue_full", client=client)
            await ws.send_denial_response(Response(status_code=503, headers={"Retry-After": "5"}))
            return
        self.metrics.channel_open += 1
        self.pending_hellos += 1
        try:
            try:
                await ws.accept()
                conn = await self._authenticate(ws, client)
            finally:
                self.pending_hellos -= 1
            if conn is not None:
                await self._serve(ws, conn)
        except WebSocketDisconnect as exc:
            if exc.code == CLOSE_TOO_BIG:
                self._refuse("oversize")
        except (OSError, RuntimeError):
            pass  # the peer went away mid-send
        finally:
            self.metrics.channel_open -= 1

    async def _authenticate(self, ws: WebSocket, client: str) -> _Conn | None:
        challenge = new_challenge()
        host = ws.headers.get("host", "").lower()
        await ws.send_text(encode_frame(Challenge(challenge=challenge, origin=host, server_time=self.clock())))
        try:
            message = await asyncio.wait_for(ws.receive(), AUTH_TIMEOUT_S)
        except TimeoutError:
            # Not charged to the address: under a reconnect wave the hello is late because this worker (or
            # the Zap's line) is slow, not because a key is being guessed, and one address may be a whole
            # carrier NAT of Zaps; charging it would lock every Zap behind it out. A silent connection
            # costs a slot for AUTH_TIMEOUT_S, and the slots are capped (max_channels).
            await self._auth_failed(ws, client, "auth_timeout", "no hello in time", charge=False)
            return None
        if message["type"] == "websocket.disconnect":
            if message.get("code") == CLOSE_TOO_BIG:
                self._refuse("oversize")
            return None
        try:
            frame = decode_zap_frame(message.get("text") or message.get("bytes") or b"")
        except ChannelError as exc:
            await self._auth_failed(ws, client, exc.reason, exc.detail)
            return None
        if not isinstance(frame, Hello):
            await self._auth_failed(ws, client, "not_hello", "the first frame must be a hello")
            return None
        try:
            async with asyncio.timeout(AUTH_TIMEOUT_S), self._lookups:
                # A site id is at most 64 characters (the schema's column): a longer one names no site.
                site = await self.db.channel_identity(frame.site_id) if len(frame.site_id) <= 64 else None
        except (SQLAlchemyError, TimeoutError) as exc:
            self._refuse("busy" if isinstance(exc, TimeoutError) else "database")
            await ws.close(CLOSE_TRY_LATER)  # the Zap retries after its jittered backoff
            return None
        if site is None or not hmac.compare_digest(site[1].encode(), frame.key_id.encode()):
            await self._auth_failed(ws, client, "unknown_key", "key id not registered for this site")
            return None
        public_key, _key_id, version = site
        site_id = frame.site_id
        try:
            verify_hello(
                frame,
                load_verify_key_b64(public_key),
                challenge=challenge,
                origin=host,
                now=self.clock(),
                max_skew_s=self.max_skew_s,
            )
        except ChannelError as exc:
            await self._auth_failed(ws, client, exc.reason, exc.detail)
            return None
        # The welcome goes out before the hub may send anything: the Zap expects it second.
        await ws.send_text(encode_frame(Welcome(site_id=site_id, plan_version=version)))
        conn = _Conn(site_id, ws)
        old = self.hub.attach(conn)
        if isinstance(old, _Conn):
            self.metrics.channel("cloud", "replaced")
            with contextlib.suppress(Exception):
                await old.ws.close(CLOSE_REPLACED)
        self.metrics.channel("cloud", "connected")
        log.debug("channel.connected", site_id=site_id, worker=self.hub.worker)
        return conn

    async def _auth_failed(self, ws: WebSocket, client: str, reason: str, detail: str, *, charge: bool = True) -> None:
        if charge:
            self.fail_buckets.charge(client)
        self._refuse(reason, client=client, detail=detail)
        log.info("channel.auth_refused", client=client, reason=reason)
        with contextlib.suppress(Exception):
            await ws.send_text(encode_frame(Refused(reason=reason)))
            await ws.close(CLOSE_POLICY)

    async def _serve(self, ws: WebSocket, conn: _Conn) -> None:
        budget = _FrameBudget()
        bad = 0
        last_status: datetime | None = None
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    if message.get("code") == CLOSE_TOO_BIG:
                        self._refuse("oversize", site_id=conn.site_id)
                    return
                if not budget.take():
                    self._refuse("flood", site_id=conn.site_id)
                    await ws.close(CLOSE_POLICY)
                    return
                problem = await self._frame(conn, message.get("text") or message.get("bytes") or b"", last_status)
                if isinstance(problem, datetime):
                    last_status = problem
                elif problem is not None:
                    bad += 1
                    self._refuse(problem, site_id=conn.site_id)
                    with contextlib.suppress(Exception):
                        await ws.send_text(encode_frame(Refused(reason=problem)))
                    if bad >= MAX_BAD_FRAMES:
                        await ws.close(CLOSE_POLICY)
                        return
        finally:
            self.hub.detach(conn)

    async def _frame(self, conn: _Conn, data: str | bytes, last_status: datetime | None) -> str | datetime | None:
        """Handle one frame: None when taken, a refusal reason, or a status's time (taken)."""
        try:
            frame = decode_zap_frame(data)
        except ChannelError as exc:
            return exc.reason
        if isinstance(frame, Ack):
            try:
                mine = await self.hub.on_ack(conn.site_id, frame)
            except SQLAlchemyError:
                return "database"
            return None if mine else "other_site"
        if isinstance(frame, Status):
            skew = abs((frame.ts - self.clock()).total_seconds())
            if skew > self.max_skew_s or (last_status is not None and frame.ts <= last_status):
                return "stale_status"
            self.hub.on_status(conn.site_id, frame)
            return frame.ts
        if isinstance(frame, PlanAck):
            self.hub.on_plan_ack(conn.site_id, frame.version, frame.applied_at)
            return None
        return "unexpected_hello"
