"""Real processes on loopback for end-to-end tests: zapcloud serve, the simulated site, zapd run.

All three share one fast simulated clock through ZAPD_SIM_CLOCK, so an hour of site time
passes in seconds while every byte still crosses a real socket, pty and SQLite file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
from nacl.signing import SigningKey

from cloud_sync.keys import public_key_b64
from cloud_sync.wire import encode_plan
from drivers.sim.physics import HYBRID_INVERTER
from tests.ports import free_port
from zapd.clock import SIM_CLOCK_ENV, ScaledClock, sim_clock_env
from zapd.model import Intent, Plan, PlanSlot
from zapd.zapctl import ApiClient, ZapctlError

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ADMIN = secrets.token_urlsafe(24)  # each run makes its own admin token
SIM_START = datetime(2026, 6, 21, 8, 0, tzinfo=UTC)
# The simulator's inverter is a hardware-like one by default (drivers/sim/physics.py HYBRID_INVERTER): it keeps a
# setpoint in 10 W steps and reports its power in 10 W steps with 10 W (one sigma) of noise. A battery that
# follows a setpoint reads within both roundings and 5 sigma of it (one reading in ~2 million is further off).
BATTERY_TOLERANCE_W = HYBRID_INVERTER.setpoint_step_w + HYBRID_INVERTER.reading_step_w + 5 * HYBRID_INVERTER.noise_w
# zapctl commands whose --json output is the daemon's answer as it came (zapd/zapctl.py cmd_status, ...: _emit).
IN_PROCESS_ZAPCTL = frozenset({"status", "devices", "plan", "diag"})


def wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the thing we wait for may not be up yet
            last_exc = exc
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last error: {last_exc})")


@dataclass
class Proc:
    name: str
    cmd: list[str]
    log: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(sig)

    def stop(self, timeout_s: float = 15) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        return self.popen.returncode

    def kill9(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Site:
    """One simulated site with its cloud, simulator and daemon; all processes on loopback."""

    tmp: Path
    speed: float = 120.0
    site_id: str = "e2e-site"
    clock_env: str = ""
    cloud_port: int = 0
    cloud_key_b64: str = ""
    zap_key: SigningKey | None = None
    procs: dict[str, Proc] = field(default_factory=dict)
    sim_info: dict[str, Any] = field(default_factory=dict)
    zapd_overrides: dict[str, Any] = field(default_factory=dict)
    # The cloud's planning loop (cloud/planner.py) plans sites that have assets; these sites have none, their
    # plans are put by the test. Starting it costs each `zapcloud serve` ~1.3 s of CPU before /healthz answers
    # (it loads pvlib, pandas and scipy): the e2e tests turn it off, the benches keep the production default.
    cloud_planner: bool = True

    def __post_init__(self) -> None:
        self.clock_env = sim_clock_env(SIM_START, self.speed)
        self.clock = ScaledClock(SIM_START, self.speed, wall_ref=float(self.clock_env.split("@")[2]))
        self.state_dir = self.tmp / "state"
        self.cloud_db = self.tmp / "cloud.sqlite"
        self.socket = self.tmp / "zapd.sock"

    def env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        return {**os.environ, SIM_CLOCK_ENV: self.clock_env, "PYTHONPATH": path, "ZAPCLOUD_ADMIN_TOKEN": ADMIN}

    def sim_seconds_to_real(self, seconds: float) -> float:
        return seconds / self.speed

    # --- cloud ------------------------------------------------------------------------------

    def start_cloud(self) -> None:
        if not self.cloud_port:
            self.cloud_port = free_port()
        cmd = [str(BIN / "zapcloud"), "serve", "--port", str(self.cloud_port),
               "--db", f"sqlite+aiosqlite:///{self.cloud_db}", "--key", str(self.tmp / "cloud.key"),
               *([] if self.cloud_planner else ["--no-planner"])]  # fmt: skip
        proc = Proc("cloud", cmd, self.tmp / "cloud.log", self.env()).start()
        self.procs["cloud"] = proc
        wait_for(lambda: self.http().get("/healthz").status_code == 200, 30, "zapcloud /healthz")
        m = re.search(r"cloud public key (\S+)", proc.output())
        assert m, proc.output()
        self.cloud_key_b64 = m.group(1)

    def stop_cloud(self) -> None:
        self.procs["cloud"].stop()

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.cloud_port}", timeout=5.0)

    def register(self) -> None:
        assert self.zap_key is not None
        with self.http() as client:
            resp = client.post(
                "/v1/sites",
                json={"site_id": self.site_id, "public_key": public_key_b64(self.zap_key)},
                headers={"Authorization": f"Bearer {ADMIN}"},
            )
        assert resp.status_code in (200, 201), resp.text

    def put_plan(self, version: int, battery_w: float, hours: float, *, slot_min: int = 15) -> Plan:
        """A plan from the site clock's now for `hours` of site time.

        Put it once zapd runs: at 4320x a daemon's start-up (seconds of wall time) is hours of site
        time, and a plan put before it may have ended before zapd first asks for it.
        """
        now = self.clock.now()
        start = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % slot_min)
        slots = []
        t = start
        while t < now + timedelta(hours=hours):
            slots.append(PlanSlot(start=t, end=t + timedelta(minutes=slot_min), intent=Intent(battery_w=battery_w)))
            t += timedelta(minutes=slot_min)
        plan = Plan(
            site_id=self.site_id,
            version=version,
            issued_at=now,
            valid_until=slots[-1].end,
            slots=tuple(slots),
        )
        with self.http() as client:
            resp = client.put(
                f"/v1/sites/{self.site_id}/plan",
                content=encode_plan(plan),
                headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
            )
        assert resp.status_code in (200, 201), resp.text
        return plan

    def cloud_seqs(self) -> list[int]:
        """Sequence numbers stored in the cloud, straight from its SQLite file."""
        with contextlib.closing(sqlite3.connect(self.cloud_db, timeout=10)) as db:
            rows = db.execute("SELECT seq FROM telemetry WHERE site_id = ? ORDER BY seq", (self.site_id,))
            return [int(r[0]) for r in rows]

    def cloud_rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Any query against the cloud's SQLite file (the tests read what the cloud really stored)."""
        with contextlib.closing(sqlite3.connect(self.cloud_db, timeout=10)) as db:
            return list(db.execute(sql, ()))

    # --- simulator ----------------------------------------------------------------------------

    @property
    def sim_control_path(self) -> Path:
        return self.tmp / "sim.ctl"

    def start_sim(
        self, *, p1: str = "pty", p1_interval_s: float = 10.0, step_s: float = 5.0, extra_units: int = 0
    ) -> None:
        """The simulated site; `extra_units` more inverters at unit ids 2.. for many-device runs."""
        log = self.tmp / "sim.log"
        cmd = [sys.executable, "-m", "drivers.sim", "--p1", p1, "--p1-interval-s", str(p1_interval_s),
               "--step-s", str(step_s), "--extra-units", str(extra_units),
               "--control", str(self.sim_control_path)]  # fmt: skip
        if self.sim_info.get("modbus_port"):
            cmd += ["--modbus-port", str(self.sim_info["modbus_port"])]  # a restarted sim keeps its port
        proc = Proc("sim", cmd, log, self.env()).start()
        self.procs["sim"] = proc

        def info() -> dict[str, Any] | None:
            for line in proc.output().splitlines():
                if line.startswith("{") and "modbus_port" in line:
                    return dict(json.loads(line))
            return None

        self.sim_info = {**wait_for(info, 20, "simulator endpoints"), "extra_units": extra_units}
        wait_for(self.sim_control_path.exists, 10, "simulator control socket")

    def sim_control(self, cmd: str, **args: Any) -> dict[str, Any]:
        """One request to the simulator's control socket (drivers/sim/control.py)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.sim_control_path))
            s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        answer = dict(json.loads(buf))
        assert answer.get("ok"), answer
        return answer

    # --- daemon -------------------------------------------------------------------------------

    def keygen(self) -> None:
        subprocess.run([str(BIN / "zapd"), "keygen", "--state-dir", str(self.state_dir)], check=True,
                       capture_output=True)  # fmt: skip
        from cloud_sync.keys import load_signing_key, zap_key_path

        self.zap_key = load_signing_key(zap_key_path(self.state_dir))

    def write_config(self) -> Path:
        meter = (
            f'driver = "p1_serial"\nport = "{self.sim_info["p1_endpoint"]}"'
            if self.sim_info["p1"] == "pty"
            else f'driver = "p1_tcp"\nhost = "127.0.0.1"\nport = {self.sim_info["p1_endpoint"]}'
        )
        o = {
            "upload_interval_s": 10,
            "plan_interval_s": 30,
            "batch_max": 5000,
            "poll_s": 10,
            "meter_poll_s": 10,
            "tick_s": 10,
            "refresh_s": 60,
            "retention_mb": 512,
            "cloud": True,
            "channel": True,
            "log_level": "info",
            **self.zapd_overrides,
        }
        cloud = f"""
[cloud]
url = "http://127.0.0.1:{self.cloud_port}"
public_key = "{self.cloud_key_b64}"
upload_interval_s = {o["upload_interval_s"]}
plan_interval_s = {o["plan_interval_s"]}
timeout_s = 2
batch_max = {o["batch_max"]}
channel = {str(o["channel"]).lower()}
"""
        extra = "".join(
            f"""
[[devices]]
driver = "modbus_tcp"
id = "inverter{uid}"
host = "127.0.0.1"
port = {self.sim_info["modbus_port"]}
unit_id = {uid}
map = "sim_hybrid"
poll_s = {o["poll_s"]}
timeout_s = 1
"""
            for uid in range(2, 2 + int(self.sim_info.get("extra_units", 0)))
        )
        text = f"""
[site]
id = "{self.site_id}"
fuse_a = 25
[control]
tick_s = {o["tick_s"]}
refresh_s = {o["refresh_s"]}
[store]
state_dir = "{self.state_dir}"
retention_mb = {o["retention_mb"]}
[api]
socket = "{self.socket}"
[log]
level = "{o["log_level"]}"
{cloud if o["cloud"] else ""}
[[devices]]
driver = "modbus_tcp"
id = "inverter"
host = "127.0.0.1"
port = {self.sim_info["modbus_port"]}
map = "sim_hybrid"
poll_s = {o["poll_s"]}
timeout_s = 1
[devices.battery]
reserve_soc = 0.1
[[devices]]
id = "meter"
{meter}
poll_s = {o["meter_poll_s"]}
{extra}"""
        path = self.tmp / "zapd.toml"
        path.write_text(text)
        return path

    def start_zapd(self) -> Proc:
        cmd = [str(BIN / "zapd"), "run", "--config", str(self.write_config())]
        proc = Proc("zapd", cmd, self.tmp / "zapd.log", {**self.env(), "NOTIFY_SOCKET": ""}).start()
        self.procs["zapd"] = proc
        wait_for(lambda: self.zapctl("status"), 30, "zapd local API")
        return proc

    def zapctl(self, *args: str) -> dict[str, Any]:
        """What `zapctl ARGS --json` prints, as a dict; a failed request raises RuntimeError.

        The read-only looks the tests poll (status, devices, plan, diag) go through zapctl's own client
        (zapd/zapctl.py ApiClient: the same request on the same socket, the same JSON) in this process. A
        zapctl process per look spent ~0.2 s starting Python, and the tests look up to ten times a second: that
        CPU was taken from the daemons under test and delayed every condition seen. The zapctl command line
        itself runs against a real `zapd run` in tests/integration/test_local_api.py; other commands here still
        run it.
        """
        if len(args) == 1 and args[0] in IN_PROCESS_ZAPCTL:
            try:
                return ApiClient(str(self.socket)).request({"cmd": args[0]})
            except ZapctlError as exc:
                raise RuntimeError(f"zapctl {args[0]}: zapctl: {exc}") from None
        res = subprocess.run(
            [str(BIN / "zapctl"), *args, "--json", "--socket", str(self.socket)],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if res.returncode != 0:
            raise RuntimeError(f"zapctl {' '.join(args)}: {res.stderr.strip()}")
        return dict(json.loads(res.stdout))

    def battery_row(self) -> dict[str, Any]:
        """zapctl's row for the battery (age_s, fresh, health, values): what a failed check should show."""
        rows = [r for r in self.zapctl("devices")["devices"] if r["der_id"] == "inverter.battery"]
        return dict(rows[0]) if rows else {}

    def battery_power(self) -> float | None:
        """The battery's power as zapd last read it; None while that reading is not fresh."""
        for row in self.zapctl("devices")["devices"]:
            if row["der_id"] == "inverter.battery" and row["fresh"]:
                return float(row["values"]["power_w"])
        return None

    def battery_near(self, watts: float) -> bool:
        """The battery, read fresh, is at `watts` within what the simulated inverter's readings are accurate to."""
        power = self.battery_power()
        return power is not None and abs(power - watts) <= BATTERY_TOLERANCE_W

    def outbox(self) -> tuple[int, int]:
        """(last stored seq, acked seq) from the daemon's SQLite file."""
        with contextlib.closing(sqlite3.connect(self.state_dir / "zapd.sqlite", timeout=10)) as db:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            acked = db.execute("SELECT value FROM kv WHERE key = 'sync.acked_seq'").fetchone()
        return (int(row[0]) if row else 0, int(acked[0]) if acked else 0)

    def unsent_seqs(self) -> list[int]:
        """Sequence numbers still in the daemon's outbox past the acknowledged position."""
        _, acked = self.outbox()
        with contextlib.closing(sqlite3.connect(self.state_dir / "zapd.sqlite", timeout=10)) as db:
            rows = db.execute("SELECT seq FROM outbox WHERE seq > ? ORDER BY seq", (acked,)).fetchall()
        return [int(r[0]) for r in rows]

    def rung_events(self) -> list[tuple[datetime, str]]:
        """(site time, rung) of every fallback transition zapd stored, oldest first."""
        with contextlib.closing(sqlite3.connect(self.state_dir / "zapd.sqlite", timeout=10)) as db:
            rows = db.execute("SELECT ts, detail FROM events WHERE kind = 'fallback' ORDER BY id").fetchall()
        return [(datetime.fromisoformat(ts), detail.split(":", 1)[0]) for ts, detail in rows]

    def sim_s_until(self, rung: str, since: datetime) -> float:
        """Site-time seconds from `since` to zapd's first transition to `rung` after it."""
        for ts, name in self.rung_events():
            if name == rung and ts >= since:
                return (ts - since).total_seconds()
        raise AssertionError(f"no transition to {rung} after {since}")

    def integrity(self) -> str:
        with contextlib.closing(sqlite3.connect(self.state_dir / "zapd.sqlite", timeout=10)) as db:
            return str(db.execute("PRAGMA integrity_check").fetchone()[0])

    def dropped_by_retention(self) -> int:
        with contextlib.closing(sqlite3.connect(self.state_dir / "zapd.sqlite", timeout=10)) as db:
            row = db.execute("SELECT value FROM kv WHERE key = 'sync.dropped_by_retention'").fetchone()
        return int(row[0]) if row else 0

    def cloud_readings(self) -> list[tuple[int, str, str]]:
        """(seq, der_id, ts) of every reading the cloud holds for the site, in seq order."""
        with contextlib.closing(sqlite3.connect(self.cloud_db, timeout=10)) as db:
            rows = db.execute("SELECT seq, der_id, ts FROM telemetry WHERE site_id = ? ORDER BY seq", (self.site_id,))
            return [(int(a), str(b), str(c)) for a, b, c in rows]

    def cloud_lost_readings(self) -> int:
        with contextlib.closing(sqlite3.connect(self.cloud_db, timeout=10)) as db:
            row = db.execute("SELECT lost_readings FROM sites WHERE site_id = ?", (self.site_id,)).fetchone()
        return int(row[0]) if row else 0

    def stop_all(self) -> None:
        for name in ("zapd", "sim", "cloud"):
            if name in self.procs:
                self.procs[name].stop()


@dataclass(frozen=True)
class ProcSample:
    """One look at a process in /proc: resident memory and CPU time used so far (no psutil needed)."""

    at: float  # time.monotonic()
    rss_kb: int
    cpu_s: float


def proc_sample(pid: int) -> ProcSample:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    rss = int(m.group(1)) if m else 0
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; utime, stime are fields 14, 15
    ticks = os.sysconf("SC_CLK_TCK")
    return ProcSample(time.monotonic(), rss, (int(fields[11]) + int(fields[12])) / ticks)


def plan_json(plan: Plan) -> bytes:
    return msgspec.json.encode(plan)
