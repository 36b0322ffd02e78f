"""The demo's local cloud: a real `zapcloud serve` process on loopback, on the demo's fast clock.

The daemon talks to it exactly as to a fleet endpoint: signed telemetry up, signed plans down,
planned by the cloud's planner from the prices the demo publishes and the telemetry it received.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from cloud_sync.keys import generate_keypair, public_key_b64
from drivers.sim.physics import SimSite
from zapd.clock import SIM_CLOCK_ENV

DEMO_AREA = "DEMO"
# A location whose clear-sky sun matches the simulator's (solar noon near 13:00 UTC, ~14 h of daylight).
DEMO_LOCATION = {"lat": 40.0, "lon": -15.0, "altitude_m": 0.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalCloud:
    out: Path
    clock_env: str
    site_id: str
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    public_key: str = ""
    admin_token: str = ""

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = _free_port()
        db = self.out / "cloud.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        zapcloud = Path(sys.executable).parent / "zapcloud"
        cmd = [
            str(zapcloud) if zapcloud.exists() else sys.executable,
            *([] if zapcloud.exists() else ["-m", "cloud.cli"]),
            "serve", "--port", str(self.port), "--db", f"sqlite+aiosqlite:///{db}",
            "--key", str(self.out / "cloud.key"), "--planner-idle-s", "0.05",
        ]  # fmt: skip
        # The cloud has no open mode: the demo makes its own admin token for this run.
        self.admin_token = secrets.token_urlsafe(32)
        env = {**os.environ, SIM_CLOCK_ENV: self.clock_env, "ZAPCLOUD_ADMIN_TOKEN": self.admin_token}
        log = (self.out / "cloud.log").open("wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"zapcloud exited: {(self.out / 'cloud.log').read_text()[-2000:]}")
            m = re.search(r"cloud public key (\S+)", (self.out / "cloud.log").read_text(errors="replace"))
            if m:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                        self.public_key = m.group(1)
                        return
            time.sleep(0.1)
        raise RuntimeError("zapcloud did not come up in 30 s")

    def register(self, state_dir: Path, site: SimSite) -> None:
        """Create the Zap's key pair and register the site with its assets and tariff."""
        verify_key = generate_keypair(state_dir, force=True)
        b = site.battery
        assets = {
            "location": DEMO_LOCATION,
            "timezone": "UTC",
            "grid": {"max_import_kw": 17.0, "max_export_kw": 10.0},
            "battery": {
                "capacity_kwh": b.capacity_wh / 1000,
                "max_charge_kw": b.max_charge_w / 1000,
                "max_discharge_kw": b.max_discharge_w / 1000,
                "soc_min": 0.12,
                "soc_max": 0.98,
                "charge_efficiency": b.charge_efficiency,
                "discharge_efficiency": b.discharge_efficiency,
                "cycle_cost_per_kwh": 0.02,
            },
            "pv": [{"kwp": site.pv_peak_w / 1000, "tilt_deg": 30.0, "azimuth_deg": 180.0}],
        }
        tariff = {
            "timezone": "UTC",
            "spot_area": DEMO_AREA,
            "energy": {"kind": "spot", "markup": 0.0},
            "grid_fee": {"default": 0.0},
            "energy_tax": 0.0,
            "vat": 0.0,
            "export": {"kind": "fixed", "price": 0.07},
        }
        body = {"site_id": self.site_id, "public_key": public_key_b64(verify_key), "assets": assets, "tariff": tariff}
        resp = httpx.post(f"{self.url}/v1/sites", json=body, headers=self.admin_headers(), timeout=10)
        if resp.status_code not in (200, 201):
            raise RuntimeError(f"site registration failed: {resp.status_code} {resp.text}")

    def publish_prices(self, start: datetime, hourly: list[float], days: int) -> None:
        body = {"start": start.isoformat(), "step_minutes": 60, "prices": hourly * days}
        resp = httpx.put(f"{self.url}/v1/prices/{DEMO_AREA}", json=body, headers=self.admin_headers(), timeout=10)
        if resp.status_code not in (200, 201, 204):
            raise RuntimeError(f"price upload failed: {resp.status_code} {resp.text}")

    def stats(self) -> dict[str, int]:
        """What the cloud holds for the site, read from its SQLite file."""
        db = self.out / "cloud.sqlite"
        with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
            readings = conn.execute("SELECT COUNT(*) FROM telemetry WHERE site_id = ?", (self.site_id,)).fetchone()
            plans = conn.execute(
                "SELECT COUNT(*), MAX(version) FROM plans WHERE site_id = ?", (self.site_id,)
            ).fetchone()
        return {"readings": int(readings[0]), "plans": int(plans[0]), "last_version": int(plans[1] or 0)}

    def meter_counters(self) -> list[tuple[int, datetime, dict[str, float]]]:
        """(seq, ts, values) of every meter reading the cloud stored, in sequence order."""
        with contextlib.closing(sqlite3.connect(self.out / "cloud.sqlite", timeout=10)) as conn:
            rows = conn.execute(
                "SELECT seq, ts, \"values\" FROM telemetry WHERE site_id = ? AND kind = 'meter' ORDER BY seq",
                (self.site_id,),
            ).fetchall()
        return [(int(seq), _utc(ts), dict(json.loads(values))) for seq, ts, values in rows]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _utc(ts: str) -> datetime:
    """The cloud stores UTC timestamps without their zone (SQLite DATETIME)."""
    parsed = datetime.fromisoformat(ts)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def cloud_config(cloud: LocalCloud) -> dict[str, object]:
    return {
        "url": cloud.url,
        "public_key": cloud.public_key,
        "upload_interval_s": 60.0,
        "plan_interval_s": 300.0,
        "timeout_s": 5.0,
    }
