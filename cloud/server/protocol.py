"""uvicorn's h11 protocol with the two limits it lacks: a header deadline and a hard connection cap.

uvicorn times out an idle keep-alive connection, but a connection that trickles its request line and
headers (slowloris) is never timed out, and `limit_concurrency` only answers 503 once a request has
arrived, so idle connections still pile up file descriptors. This subclass closes a connection whose
headers are not complete `header_timeout_s` after it opened (or after the first byte of a later
request on a kept-alive connection), and
closes a new connection at once while `max_connections` are open. The body deadline is enforced in the
app (cloud/server/app.py), which knows when it has started reading.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from cloud.server.limits import Limits
from cloud.server.metrics import Metrics


def bounded_protocol(limits: Limits, metrics: Metrics) -> type[H11Protocol]:
    """An H11Protocol class bound to `limits`, counting what it refuses in `metrics`."""

    # HTTP connections only: uvicorn's own set also holds the live channels (WebSockets), which have
    # their own cap (limits.max_channels, enforced by cloud/server/channel.py).
    http_open: set[H11Protocol] = set()

    class BoundedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            http_open.add(self)
            if len(http_open) > limits.max_connections:
                metrics.connection_refused("connection_cap")
                transport.abort()
                return
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._cancel_header_timer()  # the request line and headers are in
            elif self._header_timer is None and not self.transport.is_closing():
                # The next request on a kept-alive connection has begun (the idle time before it is
                # uvicorn's keep-alive timeout): its headers get the same deadline.
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            http_open.discard(self)
            super().connection_lost(exc)

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            self._cancel_header_timer()
            http_open.discard(self)
            super().handle_websocket_upgrade(event)

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                metrics.connection_refused("header_timeout")
                self.transport.close()

    return BoundedH11Protocol


def uvicorn_options(limits: Limits, metrics: Metrics) -> dict[str, Any]:
    """The uvicorn.Config arguments that apply `limits`."""
    from cloud_sync.channel_wire import MAX_MESSAGE_BYTES

    return {
        "http": bounded_protocol(limits, metrics),
        # uvicorn answers 503 once this many connections or tasks (the current one included, live channels
        # too) are open, so +1: up to max_connections HTTP connections are served next to max_channels
        # channels; an HTTP connection beyond its cap is closed on arrival (BoundedH11Protocol).
        "limit_concurrency": limits.max_connections + limits.max_channels + 1,
        # The live channel: websockets' sans-I/O protocol; a frame over twice the channel's cap closes the
        # connection (1009) before it is buffered; the app refuses and counts anything over the cap itself.
        # No per-message deflate: its zlib state would cost each idle channel ~ 300 kB.
        "ws": "websockets-sansio",
        "ws_max_size": 2 * MAX_MESSAGE_BYTES,
        "ws_per_message_deflate": False,
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        # request line + headers: 16 KiB is h11's default; stated so that it stays bounded.
        "h11_max_incomplete_event_size": 16 * 1024,
        "timeout_keep_alive": 5,
    }
