"""Free loopback TCP ports for the tests' servers, one share of the port range per pytest-xdist worker.

A test asks for a free port, then starts a server on it a moment (a process start) later. In between, the port
is free again, so a test on another worker that asks for a port can be handed the same one, and one of the two
servers fails to start. `make test` runs several workers, so each worker takes only the ports whose number
modulo the worker count is its own index: two workers never get the same port. Within a worker, tests run one
at a time, as they always did.
"""

from __future__ import annotations

import os
import socket

_ATTEMPTS = 10_000


def _share() -> tuple[int, int]:
    """(this worker's index, the number of workers); (0, 1) outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    if count < 1 or not 0 <= index < count:
        raise RuntimeError(f"unexpected xdist worker {worker!r} of {count}")
    return index, count


def free_port() -> int:
    """A port nothing listens on now, from this worker's share (bind to port 0, read the number, close)."""
    index, count = _share()
    for _ in range(_ATTEMPTS):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port % count == index:
            return port
    raise RuntimeError(f"no free loopback port in worker {index}'s share of {count} after {_ATTEMPTS} tries")
