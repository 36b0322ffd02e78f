"""tests/ports.py: each xdist worker draws loopback ports from its own share, so two workers never collide."""

from __future__ import annotations

import socket

import pytest

from tests.ports import free_port


@pytest.mark.parametrize(
    ("worker", "count"),
    [("gw0", 3), ("gw1", 3), ("gw2", 3), ("gw0", 2), ("gw1", 2), ("gw0", 4), ("gw2", 4), ("gw3", 4)],
)
def test_a_workers_ports_are_its_share_and_free(monkeypatch: pytest.MonkeyPatch, worker: str, count: int) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(count))
    for _ in range(20):
        port = free_port()
        assert port % count == int(worker[2:])  # even shares too: bind(0) hands out odd ports only
        with socket.socket() as s:  # free: a server can bind it
            s.bind(("127.0.0.1", port))


def test_outside_xdist_any_free_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert 0 < free_port() < 65536


def test_a_worker_outside_its_count_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw5")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    with pytest.raises(RuntimeError, match="gw5"):
        free_port()
