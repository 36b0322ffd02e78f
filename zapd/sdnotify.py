"""systemd's notify protocol (sd_notify): READY, WATCHDOG, STOPPING, STATUS.

A datagram to $NOTIFY_SOCKET; nothing at all happens outside systemd. Written here rather
than taken from the unmaintained `sdnotify` package: it is a dozen lines and we need the
abstract-namespace socket support and the watchdog interval from $WATCHDOG_USEC.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if path.startswith("@"):
            self._address = b"\0" + path[1:].encode()
        elif path:
            self._address = path
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_s: float | None = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None
        self._ready_sent = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            # systemd gone (shutdown) or socket not ours: nothing useful to do.
            with contextlib.suppress(OSError):
                sock.sendto(message.encode(), self._address)

    def ready(self, status: str = "") -> None:
        if not self._ready_sent:
            self._ready_sent = True
            self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")
