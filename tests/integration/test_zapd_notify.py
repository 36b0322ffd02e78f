"""`zapd run` under a pretend systemd: READY after the first control cycle, WATCHDOG from the
loop, STOPPING on SIGTERM, exit 0. The notify socket is a datagram socket the test owns."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

WAIT_S = 15.0


def _config(tmp: Path) -> Path:
    path = tmp / "zapd.toml"
    path.write_text(
        f"""
[site]
id = "notifytest"
fuse_a = 25.0
[control]
tick_s = 0.2
[store]
state_dir = "{tmp / "state"}"
[api]
socket = "{tmp / "run" / "zapd.sock"}"
[log]
level = "warning"
"""
    )
    return path


def _recv(sock: socket.socket, deadline: float) -> str | None:
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        return sock.recv(4096).decode()
    except TimeoutError:
        return None


def _fallback_events(db_path: Path) -> int:
    """The first control cycle stores its rung before it notifies: proof READY followed a cycle."""
    with sqlite3.connect(db_path, timeout=5) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM events WHERE kind = 'fallback'").fetchone()
    return int(count)


def test_zapd_run_notifies_ready_watchdog_stopping(tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        daemon = subprocess.Popen(
            [sys.executable, "-m", "zapd.cli", "run", "--config", str(_config(tmp_path))],
            env={**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            messages: list[str] = []
            events_at_ready = 0
            deadline = time.monotonic() + WAIT_S
            while sum(m == "WATCHDOG=1" for m in messages) < 3 and time.monotonic() < deadline:
                msg = _recv(sock, deadline)
                if msg is None:
                    continue
                if not messages:
                    events_at_ready = _fallback_events(tmp_path / "state" / "zapd.sqlite")
                messages.append(msg)
            assert messages, "zapd sent nothing to NOTIFY_SOCKET"
            # The first cycle sends READY (with a status), then pings the watchdog every cycle.
            assert messages[0].split("\n")[0] == "READY=1"
            assert events_at_ready >= 1, "READY before the first control cycle stored its rung"
            assert sum(m.startswith("READY=1") for m in messages) == 1
            assert sum(m == "WATCHDOG=1" for m in messages) >= 3

            daemon.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + WAIT_S
            after: list[str] = []
            while "STOPPING=1" not in after and time.monotonic() < deadline:
                msg = _recv(sock, deadline)
                if msg is not None:
                    after.append(msg)
            assert "STOPPING=1" in after
            assert daemon.wait(WAIT_S) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(5)
            assert daemon.stderr is not None
            stderr = daemon.stderr.read().decode()
            daemon.stderr.close()
    assert "Traceback" not in stderr
