"""The Notifier speaks systemd's notify protocol to a real AF_UNIX datagram socket we own."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from zapd.sdnotify import Notifier


def _receive_all(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """systemd hands out either a filesystem path or an abstract name written with a leading '@'."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
        env_value = address
    else:
        name = f"zapd-test-{os.getpid()}-{id(sock)}"
        sock.bind(b"\0" + name.encode())
        env_value = "@" + name
    sock.setblocking(False)
    try:
        yield sock, env_value
    finally:
        sock.close()


def test_ready_watchdog_stopping_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, address = listener
    notifier = Notifier(env={"NOTIFY_SOCKET": address})
    assert notifier.enabled
    notifier.ready(status="controlling")
    notifier.ready(status="again")  # READY is sent once per process
    notifier.watchdog()
    notifier.watchdog()
    notifier.status("3 devices")
    notifier.stopping()
    assert _receive_all(sock) == [
        "READY=1\nSTATUS=controlling",
        "WATCHDOG=1",
        "WATCHDOG=1",
        "STATUS=3 devices",
        "STOPPING=1",
    ]


def test_nothing_happens_without_notify_socket(listener: tuple[socket.socket, str]) -> None:
    sock, _ = listener
    notifier = Notifier(env={})
    assert not notifier.enabled
    notifier.ready()
    notifier.watchdog()
    notifier.stopping()
    assert _receive_all(sock) == []


def test_a_vanished_socket_is_not_an_error(tmp_path: Path) -> None:
    notifier = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    notifier.ready()
    notifier.watchdog()
    notifier.stopping()


@pytest.mark.parametrize(
    ("usec", "expected"),
    [("30000000", 30.0), ("500000", 0.5), ("", None), ("0", None), ("garbage", None), ("-5", None)],
)
def test_watchdog_interval_from_watchdog_usec(usec: str, expected: float | None) -> None:
    assert Notifier(env={"WATCHDOG_USEC": usec}).watchdog_s == expected
