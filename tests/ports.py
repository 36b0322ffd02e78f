"""Free loopback TCP ports for the tests' servers, one share of the port range per pytest-xdist worker.

A test asks for a free port, then starts a server on it a moment (a process start) later. In between, the port
is free again, so a test on another worker that asks for a port can be handed the same one, and one of the two
servers fails to start. `make test` runs several workers, so each worker takes only the ports whose number
modulo the worker count is its own index: two workers never get the same port. Within a worker, tests run one
at a time, as they always did.

The ports are drawn below the kernel's ephemeral range, not by binding port 0: Linux hands bind(0) odd ports
only (it keeps the even ones for connect()), so with an even worker count the even shares never got a port
(`TEST_WORKERS=2` failed every server test of worker 0). Below the ephemeral range the kernel never picks a
port for anyone's client connection either, so a test's outgoing connections cannot take a server's port.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

_ATTEMPTS = 10_000
_LOWEST = 10_000  # above the well-known and registered services a test machine may run
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_rng = random.Random()


def _share() -> tuple[int, int]:
    """(this worker's index, the number of workers); (0, 1) outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    if count < 1 or not 0 <= index < count:
        raise RuntimeError(f"unexpected xdist worker {worker!r} of {count}")
    return index, count


def _below_ephemeral() -> int:
    """The first port of the kernel's ephemeral range (Linux's default 32768 where it cannot be read)."""
    try:
        first = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32_768
    return first if first - _LOWEST >= 1_000 else 65_536  # a range starting low: draw from all of them


def free_port() -> int:
    """A port nothing listens on now, from this worker's share (a bind to it succeeds, then it is closed)."""
    index, count = _share()
    first = _LOWEST + (index - _LOWEST) % count  # the lowest port of this worker's share
    slots = (_below_ephemeral() - first + count - 1) // count
    for _ in range(_ATTEMPTS):
        port = first + count * _rng.randrange(slots)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free loopback port in worker {index}'s share of {count} after {_ATTEMPTS} tries")
