"""Shared fixtures for integration tests (real peers). Each fixture is self-contained; add yours below."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.waiting import wait_until_sync

# ---- mosquitto: a real MQTT broker on a free loopback port ----


def _mosquitto_exe() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


@dataclass
class MosquittoBroker:
    """A broker process the test can stop and start again on the same port (a broker restart)."""

    exe: str
    conf: Path
    log: Path
    host: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout_s: float = 5.0) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT)
        proc = self.proc

        def listening() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {proc.returncode}: {self.log.read_text()[-500:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        try:
            wait_until_sync(listening, timeout_s, f"mosquitto to listen on {self.host}:{self.port}")
        except AssertionError as exc:
            self.stop()
            raise RuntimeError(str(exc)) from None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    exe = _mosquitto_exe()
    if exe is None:
        pytest.skip("mosquitto is not installed (`make test` installs it; or: apt-get install mosquitto)")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stdout\n")
    broker = MosquittoBroker(exe=exe, conf=conf, log=tmp_path / "mosquitto.log", port=port)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
