"""A real `zapcloud serve` subprocess on loopback for the integration tests (each run makes its own token)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from nacl.signing import VerifyKey

from cloud_sync.keys import load_verify_key_b64
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[1]
ADMIN = secrets.token_urlsafe(24)


@dataclass
class Cloud:
    db_url: str
    tmp: Path
    cloud_key: VerifyKey
    client: httpx.Client
    port: int
    log: Path
    proc: subprocess.Popen[bytes]
    admin_token: str = ADMIN

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}


def cloud_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "ZAPCLOUD_ADMIN_TOKEN": ADMIN, "PYTHONPATH": path, **extra}
    env.pop("ZAPCLOUD_ENTSOE_TOKEN", None)  # no network at test time
    return env


def serve_cmd(port: int, db_url: str, key: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cloud.cli", "serve", "--port", str(port), "--db", db_url,
            "--key", str(key), *extra]  # fmt: skip


@contextlib.contextmanager
def serve(
    tmp: Path, db_url: str, name: str, *extra: str, env: dict[str, str] | None = None, admin: str = ADMIN
) -> Iterator[Cloud]:
    """Start `zapcloud serve`; retried on another port if the probed one was taken meanwhile."""
    for _attempt in range(3):
        port = free_port()
        out = tmp / f"{name}-{port}.log"
        with out.open("wb") as out_f:
            proc = subprocess.Popen(
                serve_cmd(port, db_url, tmp / "cloud.key", *extra),
                stdout=out_f,
                stderr=subprocess.STDOUT,
                env=env if env is not None else cloud_env(),
                cwd=REPO,
            )
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0)
            with client:
                if not _wait_healthy(proc, client, out):
                    continue  # port stolen: try another
                m = re.search(r"cloud public key (\S+)", out.read_text())
                assert m, out.read_text()
                key = load_verify_key_b64(m.group(1))
                yield Cloud(db_url, tmp, key, client, port, out, proc, admin)
                return
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    pytest.fail("zapcloud could not bind a port")


def _wait_healthy(proc: subprocess.Popen[bytes], client: httpx.Client, out: Path) -> bool:
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            if "address already in use" in out.read_text().lower():
                return False
            pytest.fail(f"zapcloud exited {proc.returncode}:\n{out.read_text()}")
        try:
            if client.get("/healthz").status_code == 200:
                return True
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"zapcloud did not come up:\n{out.read_text()}")
        time.sleep(0.1)


def accepted_connections(proc: subprocess.Popen[bytes], port: int) -> int:
    """TCP connections on `port` the server process has accepted and not yet closed (Linux /proc).

    A client's connect() returns once the kernel has queued the connection; this says the server took it,
    so a test can wait for that instead of sleeping.
    """
    inodes: set[str] = set()
    for fd in Path(f"/proc/{proc.pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                local_port, state, inode = int(cols[1].rsplit(":", 1)[1], 16), cols[3], cols[9]
                if local_port == port and state in ("01", "08") and inode in inodes:  # ESTABLISHED, CLOSE_WAIT
                    count += 1
    return count
