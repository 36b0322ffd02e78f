"""The Zap's end of the live channel: one outbound WebSocket to the cloud (NAT-friendly), kept up.

Nothing depends on it: the plan fetcher keeps polling and the uploader keeps uploading whether the
channel is up or not; the channel only makes things sooner. Over it the cloud says "plan vN is stored"
(the Zap fetches and verifies it as a polled plan, cloud_sync/fetcher.py) and sends signed commands
(cloud_sync/commands.py applies them); the Zap answers each command with what it applied and when,
and sends its live status (rung, link, SoC, grid power) when it changes and every `status_s`.

Every frame from the cloud is size-capped and decoded against the schema (cloud_sync/channel_wire.py);
a command must verify with the pinned cloud key, name this site, be unexpired and carry a nonce not
seen. Refusals are counted by reason (`refused`, in `zapctl status` and /metrics) and logged once per
reason. Reconnects use capped exponential backoff with full jitter, the first retry drawn from
0..`reconnect_s`: after a cloud restart a fleet comes back spread over that window, not in one second.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from nacl.signing import SigningKey, VerifyKey

from cloud_sync.channel_wire import (
    AUTH_TIMEOUT_S,
    MAX_MESSAGE_BYTES,
    Ack,
    Challenge,
    ChannelError,
    CommandFrame,
    PlanAck,
    PlanAvailable,
    Refused,
    Status,
    Welcome,
    decode_server_frame,
    encode_frame,
    origin_of,
    sign_hello,
    verify_command,
)
from cloud_sync.commands import Applier, NonceWindow
from cloud_sync.keys import key_id
from drivers.resilience import Backoff
from zapd.clock import Clock

log = structlog.get_logger(__name__)


RECONNECT_S = 30.0
RECONNECT_MAX_S = 300.0
# How the Zap dials (websockets.asyncio.client.connect); the fleet bench's light clients dial the same.
CONNECT_OPTIONS: dict[str, Any] = {
    "compression": None,  # no per-message deflate: memory, and the frames are small
    "max_size": 2 * MAX_MESSAGE_BYTES,
    "max_queue": 8,
    "open_timeout": AUTH_TIMEOUT_S,
    "ping_interval": 20,
    "ping_timeout": 20,
    "close_timeout": 2,
    "proxy": None,
    "user_agent_header": "zapd",
}


def reconnect_backoff(
    reconnect_s: float = RECONNECT_S, reconnect_max_s: float = RECONNECT_MAX_S, rng: random.Random | None = None
) -> Backoff:
    """The channel's reconnect policy: full jitter, the first retry in 0..`reconnect_s`, doubling to the cap.

    One function so that the fleet bench's light clients (bench/channel.py) run exactly this policy.
    """
    return Backoff(reconnect_s, max(reconnect_s, reconnect_max_s), rng=rng, full_jitter=True)


async def keep_connected(
    session: Callable[[], Awaitable[object]], backoff: Backoff, ended: Callable[[Exception | None], bool]
) -> None:
    """Run `session` forever, sleeping `backoff` between attempts (real seconds, never a simulated clock).

    `ended(error)` is told how each session ended (None: closed cleanly) and answers whether it got as
    far as the welcome. The backoff starts over after every session that did, however it ended: a
    dropped connection (a cloud restart closes with 1012, a ping timeout, a reset) raises, and a drop
    must not count as one more failure, else a Zap that needed a few tries once would wait up to the
    cap after every later restart, and each blip would push it further.
    """
    while True:
        error: Exception | None = None
        try:
            await session()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any network or protocol failure: the channel is down, polling goes on
            error = exc
        if ended(error):
            backoff.reset()
        await asyncio.sleep(backoff.next_delay())


@dataclass(frozen=True, slots=True)
class LiveState:
    """What the status frame reports; the daemon fills it from its controller and state."""

    rung: str | None
    link: str
    soc: float | None
    grid_w: float | None


class Fetcher(Protocol):
    """The part of the plan fetcher the channel uses (cloud_sync/fetcher.py)."""

    accepted_version: int | None

    async def fetch_now(self) -> int | None: ...


class ChannelClient:
    def __init__(
        self,
        *,
        url: str,
        site_id: str,
        key: SigningKey,
        cloud_key: VerifyKey,
        clock: Clock,
        fetcher: Fetcher,
        nonces: NonceWindow,
        applier: Applier,
        live: Callable[[], LiveState],
        status_s: float = 30.0,
        reconnect_s: float = RECONNECT_S,
        reconnect_max_s: float = RECONNECT_MAX_S,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self._tls = tls  # for wss://: the same CA lookup as the HTTP link (cloud_sync/session.tls_context)
        self.origin = origin_of(url)
        self._site_id = site_id
        self._key = key
        self._key_id = key_id(key)
        self._cloud_key = cloud_key
        self._clock = clock
        self._fetcher = fetcher
        self._nonces = nonces
        self._applier = applier
        self._live = live
        self._status_s = status_s
        self.backoff = reconnect_backoff(reconnect_s, reconnect_max_s)
        self.refused: Counter[str] = Counter()
        self.state = "down"  # down | connecting | up
        self.connects = 0
        self.commands_applied = 0
        self.last_error = ""
        self._logged: set[str] = set()
        self._fetching: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._ws: object | None = None
        self._welcomed = False  # the current session got as far as the welcome

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state,
            "url": self.url,
            "connects": self.connects,
            "commands_applied": self.commands_applied,
            "refused": dict(self.refused),
            "last_error": self.last_error,
        }

    def _refuse(self, reason: str, detail: str = "") -> None:
        self.refused[reason] += 1
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("channel.message_refused", reason=reason, detail=detail[:200])

    async def run(self) -> None:
        """Connect, serve, reconnect after the backoff; forever (the supervisor cancels it)."""
        await keep_connected(self._session_once, self.backoff, self._ended)

    async def _session_once(self) -> None:
        self._welcomed = False
        await self.session()

    def _ended(self, error: Exception | None) -> bool:
        if error is not None:
            self.last_error = f"{type(error).__name__}: {error}"[:300]
            if self.state != "down":
                log.info("channel.down", error=self.last_error)
        self.state = "down"
        return self._welcomed

    async def session(self) -> bool:
        """One connection, until it closes; True if it got as far as the welcome."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, PayloadTooBig

        self.state = "connecting"
        tls: dict[str, Any] = {"ssl": self._tls} if self._tls is not None and self.url.startswith("wss://") else {}
        async with connect(self.url, **CONNECT_OPTIONS, **tls) as ws:
            self._ws = ws
            try:
                if not await self._handshake(ws):
                    return False
                self.state = "up"
                self._welcomed = True
                self.connects += 1
                log.info("channel.up", url=self.url)
                status = asyncio.create_task(self._status_loop(ws), name="channel_status")
                try:
                    async for data in ws:
                        await self._on_frame(ws, data)
                except PayloadTooBig:
                    self._refuse("oversize", "frame above the protocol cap")
                except ConnectionClosed as exc:
                    if exc.rcvd is not None and exc.rcvd.code == 1009:
                        self._refuse("oversize", "frame above the protocol cap")
                    raise
                finally:
                    status.cancel()
                    await asyncio.gather(status, return_exceptions=True)
                return True
            finally:
                self._ws = None

    async def _handshake(self, ws: object) -> bool:
        from websockets.asyncio.client import ClientConnection

        assert isinstance(ws, ClientConnection)
        first = decode_server_frame(await asyncio.wait_for(ws.recv(), AUTH_TIMEOUT_S))
        if not isinstance(first, Challenge):
            self._refuse("no_challenge", type(first).__name__)
            return False
        hello = sign_hello(self._key, self._key_id, first.challenge, self.origin, self._site_id, self._clock.now())
        await ws.send(encode_frame(hello))
        answer = decode_server_frame(await asyncio.wait_for(ws.recv(), AUTH_TIMEOUT_S))
        if isinstance(answer, Refused):
            self.last_error = f"refused by the cloud: {answer.reason}"
            self._refuse(f"auth_{answer.reason}"[:40], answer.detail)
            return False
        if not isinstance(answer, Welcome) or answer.site_id != self._site_id:
            self._refuse("bad_welcome", type(answer).__name__)
            return False
        self._maybe_fetch(answer.plan_version)
        return True

    async def _send(self, ws: object, frame: Ack | PlanAck | Status) -> None:
        from websockets.asyncio.client import ClientConnection

        assert isinstance(ws, ClientConnection)
        async with self._send_lock:
            await ws.send(encode_frame(frame))

    async def _on_frame(self, ws: object, data: str | bytes) -> None:
        try:
            frame = decode_server_frame(data)
        except ChannelError as exc:
            self._refuse(exc.reason, exc.detail)
            return
        if isinstance(frame, PlanAvailable):
            if frame.site_id != self._site_id:
                self._refuse("other_site", f"plan notice for {frame.site_id[:64]!r}")
                return
            if not 1 <= frame.version < 2**62:
                self._refuse("out_of_bounds", "plan version")
                return
            self._maybe_fetch(frame.version, ws)
        elif isinstance(frame, CommandFrame):
            await self._command(ws, frame)
        elif isinstance(frame, Refused):
            self._refuse(f"cloud_{frame.reason}"[:40], frame.detail)
        else:
            self._refuse("unexpected", type(frame).__name__)

    async def _command(self, ws: object, frame: CommandFrame) -> None:
        now = self._clock.now()
        try:
            cmd = verify_command(frame, self._cloud_key, site_id=self._site_id, now=now)
        except ChannelError as exc:
            self._refuse(exc.reason, exc.detail)
            return
        seen = self._nonces.seen(cmd.command_id)
        if seen is not None:
            self._refuse("replay", cmd.command_id)
            if seen.ack is not None:
                await self._send(ws, seen.ack)  # the first answer again: the cloud may have missed it
            return
        if self._nonces.full(now):
            self._refuse("nonce_window_full", cmd.command_id)
            return
        await self._nonces.remember(cmd, now)  # before applying: a crash never lets it apply twice
        ack = await self._applier.apply(cmd, now)
        await self._nonces.remember(cmd, now, ack)
        if ack.result == "applied":
            self.commands_applied += 1
        log.info("channel.command", command_id=cmd.command_id, kind=type(cmd.action).__name__, result=ack.result,
                 reason=ack.reason, applied=ack.applied)  # fmt: skip
        await self._send(ws, ack)

    def _maybe_fetch(self, version: int | None, ws: object | None = None) -> None:
        """Fetch now if the cloud has a newer plan than ours; one fetch at a time."""
        have = self._fetcher.accepted_version
        if version is None or (have is not None and version <= have):
            return
        if self._fetching is not None and not self._fetching.done():
            return  # the running fetch gets the newest version anyway
        self._fetching = asyncio.create_task(self._fetch(ws), name="channel_fetch")

    async def _fetch(self, ws: object | None) -> None:
        try:
            version = await self._fetcher.fetch_now()
        except Exception as exc:  # the poll retries; the channel stays up
            log.info("channel.fetch_failed", error=f"{type(exc).__name__}: {exc}")
            return
        if version is not None and ws is not None:
            with contextlib.suppress(Exception):
                await self._send(ws, PlanAck(version=version, applied_at=self._clock.now()))

    async def _status_loop(self, ws: object) -> None:
        last: LiveState | None = None
        sent_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            live = self._live()
            now_m = loop.time()
            # rung or link changed: at once; otherwise every status_s (real seconds).
            if last is None or (live.rung, live.link) != (last.rung, last.link) or now_m - sent_at >= self._status_s:
                await self._send(
                    ws,
                    Status(
                        ts=self._clock.now(),
                        rung=live.rung,
                        link=live.link,
                        soc=live.soc,
                        grid_w=live.grid_w,
                        plan_version=self._fetcher.accepted_version,
                    ),
                )
                last, sent_at = live, now_m
            await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._fetching is not None:
            self._fetching.cancel()
