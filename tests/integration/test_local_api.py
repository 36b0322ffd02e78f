"""zapctl against a real `zapd run` process: a simulated P1 meter on loopback TCP, a plan file,
and the local API on a unix socket in a temp dir. Everything runs as real processes, so the
test also covers the console entry points, argument parsing and exit codes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.waiting import wait_until_sync
from zapd.model import Intent, IntentMode, Plan, PlanSlot

WAIT_S = 15.0
SITE = "apitest"

SIM_METER = """
import asyncio
from drivers.sim.p1_pty import SimP1Tcp
from drivers.sim.physics import SimSite
from zapd.clock import SystemClock

async def main() -> None:
    sim = SimP1Tcp(SimSite(), step_site=True)
    print(await sim.start(), flush=True)
    await sim.run(SystemClock(), interval_s=0.5)

asyncio.run(main())
"""


@dataclass
class Site:
    socket: Path
    daemon: subprocess.Popen[bytes]
    tmp: Path


def _wait(cond: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    wait_until_sync(cond, timeout, what, every_s=0.05)


def _plan(now: datetime) -> Plan:
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    slots = tuple(
        PlanSlot(
            start=start + timedelta(hours=i),
            end=start + timedelta(hours=i + 1),
            intent=Intent(mode=IntentMode.SETPOINT, battery_w=float((i % 5 - 2) * 1000)),
        )
        for i in range(26)
    )
    return Plan(site_id=SITE, version=7, issued_at=start, valid_until=start + timedelta(hours=26), slots=slots)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("api")
    meter = subprocess.Popen(
        [sys.executable, "-c", SIM_METER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=os.getcwd()
    )
    try:
        assert meter.stdout is not None
        port = int(meter.stdout.readline())
        plan_file = tmp / "plan.json"
        plan_file.write_bytes(msgspec.json.encode(_plan(datetime.now(UTC))))
        sock = tmp / "run" / "zapd.sock"
        (tmp / "zapd.toml").write_text(
            f"""
[site]
id = "{SITE}"
fuse_a = 25.0
[control]
tick_s = 0.5
[store]
state_dir = "{tmp / "state"}"
[plan]
file = "{plan_file}"
[api]
socket = "{sock}"
[log]
level = "warning"
[[devices]]
driver = "p1_tcp"
id = "meter"
host = "127.0.0.1"
port = {port}
poll_s = 0.5
"""
        )
        log = (tmp / "zapd.log").open("wb")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "zapd.cli", "run", "--config", str(tmp / "zapd.toml")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait(sock.exists, "the API socket")
            yield Site(sock, daemon, tmp)
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(5)
            log.close()
    finally:
        meter.terminate()
        meter.wait(5)


def zapctl(*args: str, env: dict[str, str] | None = None, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zapd.zapctl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def zapctl_json(site: Site, *args: str) -> Any:
    proc = zapctl(*args, "--json", "--socket", str(site.socket))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _meter_fresh(site: Site) -> bool:
    rows = zapctl_json(site, "devices")["devices"]
    return any(r["der_id"] == "meter" and r["fresh"] for r in rows)


def test_status_json(site: Site) -> None:
    _wait(lambda: zapctl_json(site, "status")["control"]["cycles"] > 0, "a control cycle")
    data = zapctl_json(site, "status")
    assert data["site_id"] == SITE
    assert data["pid"] == site.daemon.pid
    assert data["uptime_s"] >= 0
    assert data["fallback"]["rung"] in {"plan", "cached_plan", "self_consumption", "safe_hold"}
    assert data["link"]["state"] == "not_configured"
    assert isinstance(data["link"]["outbox_depth"], int)
    assert data["plan"]["version"] == 7
    assert data["plan"]["expired"] is False
    assert {t["name"] for t in data["tasks"]} >= {"controller", "api", "driver:meter"}


def test_devices_show_the_simulated_meter(site: Site) -> None:
    _wait(lambda: _meter_fresh(site), "a fresh meter reading")
    (row,) = [r for r in zapctl_json(site, "devices")["devices"] if r["der_id"] == "meter"]
    assert row["kind"] == "meter"
    assert row["quality"] == "good"
    assert 0 <= row["age_s"] < 5
    assert "power_w" in row["values"]
    human = zapctl("devices", "--socket", str(site.socket))
    assert human.returncode == 0
    assert human.stdout.splitlines()[0].split()[:5] == ["DER", "KIND", "AGE", "QUALITY", "STATE"]


def test_plan_rung_and_plan_output(site: Site) -> None:
    _wait(lambda: _meter_fresh(site), "a fresh meter reading")
    _wait(lambda: zapctl_json(site, "status")["fallback"]["rung"] == "plan", "the plan rung")
    data = zapctl_json(site, "plan")
    assert data["plan"]["version"] == 7
    assert len(data["slots"]) == 26
    assert sum(1 for s in data["slots"] if s["active"]) == 1
    human = zapctl("plan", "--chart", "ascii", "--socket", str(site.socket))
    assert human.returncode == 0, human.stderr
    assert "plan v7" in human.stdout
    assert "battery kW" in human.stdout and "|" in human.stdout


def test_fallback_force_and_release(site: Site) -> None:
    _wait(lambda: _meter_fresh(site), "a fresh meter reading")
    forced = zapctl_json(site, "fallback", "force", "safe_hold", "--for", "5", "--reason", "battery swap")
    assert forced["forced"]["rung"] == "safe_hold"
    _wait(lambda: zapctl_json(site, "fallback")["rung"] == "safe_hold", "the forced rung")
    data = zapctl_json(site, "fallback")
    assert data["forced"]["reason"] == "battery swap"
    assert "forced by operator" in data["reason"]
    assert data["transitions"][0]["rung"] == "safe_hold"
    assert "forced by operator" in data["transitions"][0]["reason"]

    released = zapctl_json(site, "fallback", "release")
    assert released["released"]["rung"] == "safe_hold"
    _wait(lambda: zapctl_json(site, "fallback")["rung"] != "safe_hold", "leaving the forced rung")
    assert zapctl_json(site, "status")["fallback"]["forced"] is None
    assert zapctl_json(site, "fallback", "release")["released"] is None


def test_fallback_force_rejects_bad_requests(site: Site) -> None:
    bad_rung = zapctl("fallback", "force", "plan", "--for", "5", "--socket", str(site.socket))
    assert bad_rung.returncode == 1
    assert bad_rung.stderr.count("\n") == 1 and "cannot force rung" in bad_rung.stderr
    too_long = zapctl("fallback", "force", "safe_hold", "--for", "100000", "--socket", str(site.socket))
    assert too_long.returncode == 1 and "minutes must be" in too_long.stderr
    no_minutes = zapctl("fallback", "force", "safe_hold", "--socket", str(site.socket))
    assert no_minutes.returncode == 1 and "usage" in no_minutes.stderr


def test_telemetry_recent_and_follow(site: Site) -> None:
    _wait(lambda: _meter_fresh(site), "a fresh meter reading")
    data = zapctl_json(site, "telemetry", "--limit", "3")
    assert 1 <= len(data["readings"]) <= 3
    assert data["readings"][-1]["der_id"] == "meter"
    follow = subprocess.Popen(
        [sys.executable, "-m", "zapd.zapctl", "telemetry", "--follow", "--limit", "0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "ZAPD_SOCKET": str(site.socket)},
    )
    try:
        assert follow.stdout is not None
        lines = [json.loads(follow.stdout.readline()) for _ in range(2)]
    finally:
        follow.terminate()
        follow.wait(5)
    assert all(r["der_id"] == "meter" and "power_w" in r["values"] for r in lines)
    assert lines[0]["ts"] < lines[1]["ts"]


def test_diag_bundle(site: Site) -> None:
    data = zapctl_json(site, "diag")
    assert set(data["versions"]) >= {"python", "zapd", "pymodbus", "dsmr_parser"}
    assert data["versions"]["pymodbus"] != "not installed"
    assert data["config"]["site"]["id"] == SITE
    assert data["counters"]["readings_in"] >= 1
    assert data["counters"]["api_requests"] >= 1
    assert {h["name"] for h in data["health"]} >= {"controller", "api"}


def test_malformed_requests_get_errors_and_the_server_lives_on(site: Site) -> None:
    def ask(raw: bytes) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(site.socket))
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            answer: dict[str, Any] = json.loads(s.makefile("rb").readline())
            return answer

    bad = ask(b"not json\n")
    assert bad["ok"] is False and bad["code"] == "bad_request" and "malformed" in bad["error"]
    assert ask(b"[1, 2]\n")["code"] == "bad_request"
    assert ask(b'{"cmd": 5}\n')["code"] == "bad_request"
    assert ask(b'{"cmd": "reboot"}\n')["code"] == "unknown_command"
    assert ask(b'{"cmd": "telemetry", "limit": -1}\n')["code"] == "bad_request"
    assert ask(b"x" * 70_000 + b"\n")["code"] == "bad_request"
    assert ask(b'{"cmd": "status"}')["ok"] is True  # no trailing newline: still answered
    assert ask(b'{"cmd": "status"}\n')["data"]["site_id"] == SITE


def test_missing_socket_is_one_line_and_exit_1(tmp_path: Path) -> None:
    proc = zapctl("status", "--socket", str(tmp_path / "nope.sock"))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("zapctl: cannot reach zapd") and "not found" in proc.stderr
    env_proc = zapctl("devices", "--json", env={"ZAPD_SOCKET": str(tmp_path / "nope.sock")})
    assert env_proc.returncode == 1 and "nope.sock" in env_proc.stderr


def test_refused_socket_is_one_line_and_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))  # bound but never listening: what a crashed daemon leaves behind
        proc = zapctl("fallback", "--socket", str(path))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "connection refused" in proc.stderr


def test_logs_runs_journalctl_with_passthrough_args(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "journalctl"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "journalctl $*"\n')
    fake.chmod(0o755)
    proc = zapctl("logs", "--since", "today", "-o", "cat", env={"PATH": str(fake.parent)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "journalctl -u zapd -n 200 --no-pager --since today -o cat"
    missing = zapctl("logs", env={"PATH": str(tmp_path / "empty")})
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "journalctl not found" in missing.stderr
