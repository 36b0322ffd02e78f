"""The daemon's local control API, transport side: newline-delimited JSON on a unix socket
(docs/local-api.md). What each command answers is in zapd/api_views.py.

Why a unix socket and NDJSON rather than HTTP: the gateway needs no extra dependency, file
permissions (0660, group zapd) are the access control, and `socat`/`nc -U` can talk to it
when zapctl is unavailable. One request per line, one response per line; only `telemetry`
with `follow` keeps streaming. The API reads one `SiteView` per request; its only writes are
the operator override (`fallback_force` / `fallback_release`), through `OperatorOverride`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path

import msgspec
import structlog

from zapd.api_views import (
    REDACTED,
    ApiContext,
    ApiViews,
    Request,
    RequestError,
    TransportStats,
    redact,
)
from zapd.model import Reading

log = structlog.get_logger(__name__)

__all__ = ["REDACTED", "ApiContext", "LocalApi", "Request", "RequestError", "redact"]

MAX_LINE = 64 * 1024
MAX_CLIENTS = 16
IDLE_TIMEOUT_S = 60.0
HANDLER_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 5.0
HEARTBEAT_S = 15.0
FOLLOW_QUEUE = 1000
SOCKET_MODE = 0o660

_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(Request)


class LocalApi:
    def __init__(self, ctx: ApiContext) -> None:
        self._ctx = ctx
        self.override = ctx.override
        self.socket_path = Path(ctx.config.api.socket)
        self.stats = TransportStats(started_at=ctx.view().now)
        self._followers: set[asyncio.Queue[Reading]] = set()
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._handlers = ApiViews(ctx, self.stats).handlers()

    @property
    def recent(self) -> list[Reading]:
        return list(self.stats.recent)

    # --- hooks for the daemon -------------------------------------------------------------

    def publish(self, reading: Reading) -> None:
        """Called from the daemon's sink for every reading; never blocks and never raises."""
        self.stats.recent.append(reading)
        for queue in self._followers:
            try:
                queue.put_nowait(reading)
            except asyncio.QueueFull:
                self.stats.follow_dropped += 1

    async def serve(self) -> None:
        """Supervised task: listen until cancelled, then remove the socket file."""
        await self.override.restore()
        self._prepare_path()
        server = await asyncio.start_unix_server(self._on_client, path=str(self.socket_path), limit=MAX_LINE)
        try:
            os.chmod(self.socket_path, SOCKET_MODE)
            log.info("api.listening", socket=str(self.socket_path))
            await server.serve_forever()
        finally:
            server.close()
            await self._close_clients()
            with contextlib.suppress(OSError):
                self.socket_path.unlink()

    def _prepare_path(self) -> None:
        """Create the parent dir; remove a stale socket, but never steal a live daemon's."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if not self.socket_path.exists() and not self.socket_path.is_symlink():
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.socket_path))
            except OSError:
                self.socket_path.unlink()  # nobody listening: a leftover from a crash
                return
        raise RuntimeError(f"{self.socket_path}: another process is listening on the API socket")

    # --- connections -----------------------------------------------------------------------

    async def _close_clients(self) -> None:
        """Hang up on clients so their handlers end by themselves: on Python 3.11 a handler task
        cancelled at loop shutdown makes asyncio log a spurious traceback."""
        for writer in self._clients.values():
            writer.close()
        if self._clients:
            await asyncio.wait(set(self._clients), timeout=WRITE_TIMEOUT_S)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        try:
            if len(self._clients) > MAX_CLIENTS:
                await self._send(writer, _error("busy", f"too many clients (max {MAX_CLIENTS})"))
                return
            await self._serve_client(reader, writer)
        except (ConnectionError, TimeoutError, OSError):
            pass  # the client went away or stalled: its problem, not the daemon's
        finally:
            self._clients.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError, OSError):
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await writer.wait_closed()

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():  # last request without a newline (`echo -n ... | nc -U`)
                    response, request = self._answer_line(exc.partial)
                    await self._send(writer, await self._dispatch(request) if request else response)
                return
            except asyncio.LimitOverrunError:
                self.stats.errors += 1
                await self._send(writer, _error("bad_request", f"request line longer than {MAX_LINE} bytes"))
                return
            if not line.strip():
                continue
            response, request = self._answer_line(line)
            if request is not None:
                response = await self._dispatch(request)
            await self._send(writer, response)
            if request is not None and request.cmd == "telemetry" and request.follow and response.get("ok"):
                await self._follow(reader, writer, request)
                return

    def _answer_line(self, line: bytes) -> tuple[dict[str, object], Request | None]:
        """Decode one request line; a bad one gets an error response, never an exception."""
        self.stats.requests += 1
        try:
            return {}, _request_decoder.decode(line)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self.stats.errors += 1
            return _error("bad_request", f"malformed request: {exc}"), None

    async def _dispatch(self, request: Request) -> dict[str, object]:
        handler = self._handlers.get(request.cmd)
        if handler is None:
            self.stats.errors += 1
            return _error("unknown_command", f"unknown cmd {request.cmd!r} (known: {', '.join(self._handlers)})")
        try:
            async with asyncio.timeout(HANDLER_TIMEOUT_S):
                data = await handler(request, self._ctx.view())  # one read of the site per request
        except RequestError as exc:
            self.stats.errors += 1
            return _error(exc.code, str(exc))
        except TimeoutError:
            self.stats.errors += 1
            return _error("timeout", f"{request.cmd} took longer than {HANDLER_TIMEOUT_S:.0f} s")
        except Exception as exc:  # a bug in one handler must not take the API down
            self.stats.errors += 1
            log.exception("api.handler_failed", cmd=request.cmd)
            return _error("internal", f"{type(exc).__name__}: {exc}")
        return {"ok": True, "cmd": request.cmd, "data": data}

    async def _send(self, writer: asyncio.StreamWriter, message: dict[str, object]) -> None:
        writer.write(_encoder.encode(message) + b"\n")
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.drain()

    async def _follow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request) -> None:
        """Stream new readings until the client hangs up; heartbeats let it detect a stuck daemon."""
        queue: asyncio.Queue[Reading] = asyncio.Queue(maxsize=FOLLOW_QUEUE)
        self._followers.add(queue)
        self.stats.followers = len(self._followers)
        hangup = asyncio.ensure_future(reader.read(1))  # any byte or EOF ends the stream
        dropped_seen = self.stats.follow_dropped
        try:
            while not hangup.done():
                getter = asyncio.ensure_future(queue.get())
                try:
                    done, _ = await asyncio.wait(
                        {getter, hangup}, timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    getter.cancel()
                if getter in done and not getter.cancelled():
                    reading = getter.result()
                    if request.der_id is None or reading.der_id == request.der_id:
                        await self._send(writer, {"event": "reading", "data": reading})
                elif not done:
                    await self._send(writer, {"event": "heartbeat", "ts": self._ctx.view().now.isoformat()})
                if self.stats.follow_dropped != dropped_seen:
                    await self._send(writer, {"event": "dropped", "total": self.stats.follow_dropped})
                    dropped_seen = self.stats.follow_dropped
        finally:
            self._followers.discard(queue)
            self.stats.followers = len(self._followers)
            hangup.cancel()


def _error(code: str, message: str) -> dict[str, object]:
    return {"ok": False, "code": code, "error": message}
