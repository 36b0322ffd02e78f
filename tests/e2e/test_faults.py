"""Fault injection with real processes (zapcloud serve, python -m drivers.sim, zapd run) on one fast clock.

Each test names the promise of ARCHITECTURE.md ("Reliability promises") it checks. Faults are
real: SIGKILL, a cloud process that is gone, a Modbus server that closes its port, bytes on a
real pty, a full filesystem (a tmpfs, when this runs as root). Clock steps and DST are covered
at integration level in tests/integration/test_clock_steps.py (a ManualClock through the
controller, ladder, plan slots and store).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import random
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e.harness import Site, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[list[Site]]:
    """Sites made by the test (each picks its clock speed); every process is stopped at the end."""
    made: list[Site] = []
    try:
        yield made
    finally:
        for s in made:
            s.stop_all()
            for name, proc in s.procs.items():
                if "Traceback" in proc.output():
                    print(f"--- {name} log (has a traceback) ---\n{proc.output()[-4000:]}")


def new_site(sites: list[Site], tmp: Path, speed: float) -> Site:
    tmp.mkdir(parents=True, exist_ok=True)
    site = Site(tmp, speed=speed, cloud_planner=False)
    sites.append(site)
    return site


def status(site: Site) -> dict[str, object]:
    return site.zapctl("status")


def rung(site: Site) -> str | None:
    return site.zapctl("status")["fallback"]["rung"]  # type: ignore[no-any-return]


def battery_fresh(site: Site) -> bool:
    return any(r["der_id"] == "inverter.battery" and r["fresh"] for r in site.zapctl("devices")["devices"])


def drained(site: Site) -> bool:
    last, acked = site.outbox()
    return last > 0 and acked == last


def command_log_rows(site: Site) -> int:
    with contextlib.closing(sqlite3.connect(site.state_dir / "zapd.sqlite", timeout=10)) as db:
        return int(db.execute("SELECT COUNT(*) FROM command_log").fetchone()[0])


def finish_and_check_exactly_once(site: Site, *, lost: int = 0) -> list[tuple[int, str, str]]:
    """Silence the devices, drain, stop zapd cleanly; then the cloud holds every stored reading once, in order.

    "Once" is checked twice: by sequence number (1..last, no gap, no repeat) and by content
    (no (der_id, ts) twice, which a re-queued batch stored under new numbers would produce).
    """
    site.procs["sim"].stop()
    time.sleep(1.0)
    wait_for(lambda: drained(site), 90, "outbox drained")
    assert site.procs["zapd"].stop() == 0
    last, acked = site.outbox()
    rows = site.cloud_readings()
    seqs = [r[0] for r in rows]
    # zapd flushes what it still held in memory when it stops (it may have come in after the outbox looked
    # drained): those stay in the outbox for the next start, none is lost.
    assert seqs == list(range(lost + 1, acked + 1)), f"cloud holds {len(seqs)} readings, zapd acknowledged {acked}"
    assert site.unsent_seqs() == list(range(acked + 1, last + 1)), "a stored reading is neither sent nor kept"
    assert last - acked < 100, f"{last - acked} readings flushed at stop: the outbox was not drained"
    keys = [(der, ts) for _, der, ts in rows]
    assert len(set(keys)) == len(keys), "a reading arrived twice under different sequence numbers"
    for der in {der for _, der, _ in rows}:
        stamps = [ts for _, d, ts in rows if d == der]
        assert stamps == sorted(stamps), f"{der}: readings out of order"
    assert "Traceback" not in site.procs["zapd"].output()
    return rows


def test_kill9_at_random_points_while_controlling_and_offline(sites: list[Site], tmp_path: Path) -> None:
    """Promise: no telemetry lost, kill -9 at any moment. zapd is killed at random moments while the
    controller writes setpoints and logs commands and the cloud is down, then during the drain; after every
    kill SQLite's integrity_check is ok and the committed command log never shrinks; in the end every reading
    that was stored arrives exactly once, in order."""
    site = new_site(sites, tmp_path / "site", 240.0)
    # Self-consumption with a 2 s (clock) tick: setpoints move with the load, so commands are written
    # and logged all the time; small upload batches so the drain takes many round trips.
    site.zapd_overrides = {"tick_s": 2, "refresh_s": 20, "upload_interval_s": 5, "batch_max": 11}
    site.start_cloud()
    site.keygen()
    site.register()
    site.start_sim(step_s=2.0)
    site.start_zapd()
    wait_for(lambda: len(site.cloud_seqs()) > 5, 30, "telemetry in the cloud")
    site.stop_cloud()
    rng = random.Random(20261126)
    commands_seen = 0
    for i in range(8):
        if i == 5:
            site.start_cloud()  # the last kills land in the middle of the drain
        time.sleep(rng.uniform(0.2, 2.5))
        site.procs["zapd"].kill9()
        assert site.integrity() == "ok"
        rows = command_log_rows(site)
        assert rows >= commands_seen, "committed command log rows vanished"
        commands_seen = rows
        site.start_zapd()
    assert commands_seen > 0, "the controller never wrote a command"
    finish_and_check_exactly_once(site)


def test_cloud_down_for_48_simulated_hours(sites: list[Site], tmp_path: Path) -> None:
    """Promises: offline for days, the cached plan runs until it ends, then the fallback rules; back online,
    zapd takes the new plan without operator action; every reading stored during the 48 h outage arrives
    exactly once, in order, and nothing was dropped (the outage is within the retention bound)."""
    site = new_site(sites, tmp_path / "site", 4320.0)  # 48 h in 40 s
    site.zapd_overrides = {"poll_s": 300, "meter_poll_s": 300, "tick_s": 300, "refresh_s": 900,
                           "upload_interval_s": 600, "plan_interval_s": 600}  # fmt: skip
    site.start_cloud()
    site.keygen()
    site.register()
    site.start_sim(p1_interval_s=300, step_s=60)
    site.start_zapd()
    # 8 h of site time (6.7 s of wall time from now) leave room to see it in force, cut the link and see it cached.
    site.put_plan(1, battery_w=1000.0, hours=8.0)
    wait_for(lambda: rung(site) == "plan", 30, "plan v1 in force")
    site.stop_cloud()
    down_at = site.clock.now()
    wait_for(lambda: rung(site) == "cached_plan", 30, "cached plan while offline")
    wait_for(lambda: rung(site) == "self_consumption", 30, "fallback rules after the cached plan ended")
    wait_for(lambda: site.clock.now() - down_at >= timedelta(hours=48), 120, "48 simulated hours offline",
             every_s=1.0)  # fmt: skip
    last, acked = site.outbox()
    backlog = last - acked
    assert backlog > 1000, f"only {backlog} readings stored in 48 h"
    assert site.procs["zapd"].alive()

    site.start_cloud()
    site.put_plan(2, battery_w=-500.0, hours=12.0)
    wait_for(lambda: rung(site) == "plan" and status(site)["plan"]["version"] == 2, 60, "plan v2 after the outage")  # type: ignore[index]
    finish_and_check_exactly_once(site)
    assert site.dropped_by_retention() == 0
    assert site.cloud_lost_readings() == 0
    print(f"\n48 h offline: backlog {backlog} readings, delivered in order")


def test_retention_bound_drops_oldest_and_counts_them(sites: list[Site], tmp_path: Path) -> None:
    """Promise: the outbox is bounded by the configured retention, with a counter. A long outage with a tiny
    retention_mb drops the oldest unsent readings; zapd counts them (sync.dropped_by_retention), tells the cloud
    (lost_through), the cloud counts the same number (lost_readings), and the rest arrives exactly once in
    order after the gap."""
    site = new_site(sites, tmp_path / "site", 4320.0)
    # ~140 rows (0.02 MB / 150 B); a 12 h outage stores ~430.
    site.zapd_overrides = {"poll_s": 300, "meter_poll_s": 300, "tick_s": 300, "refresh_s": 900,
                           "upload_interval_s": 600, "plan_interval_s": 600, "retention_mb": 0.02}  # fmt: skip
    site.start_cloud()
    site.keygen()
    site.register()
    site.start_sim(p1_interval_s=300, step_s=60)
    site.start_zapd()
    wait_for(lambda: len(site.cloud_seqs()) > 3, 30, "telemetry in the cloud")
    site.stop_cloud()
    wait_for(lambda: site.dropped_by_retention() > 100, 60, "retention dropping the oldest readings")
    site.start_cloud()
    site.procs["sim"].stop()
    time.sleep(1.0)
    wait_for(lambda: drained(site), 60, "outbox drained")
    assert site.procs["zapd"].stop() == 0
    dropped = site.dropped_by_retention()
    last, _ = site.outbox()
    seqs = site.cloud_seqs()
    assert seqs == sorted(set(seqs)), "out of order or doubled"
    assert len(seqs) + dropped == last, f"cloud {len(seqs)} + dropped {dropped} != stored {last}"
    assert site.cloud_lost_readings() == dropped
    gaps = [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1]
    assert len(gaps) == 1, f"expected one declared gap, got {gaps}"
    assert "telemetry.dropped_by_retention" in site.procs["zapd"].output()


def test_modbus_device_disappears_and_returns(sites: list[Site], tmp_path: Path) -> None:
    """Promises: a Modbus device that goes away is a clear error, logged once (not per poll), the daemon keeps
    running; its stale battery reading puts the site in safe hold (never the last setpoint); when it answers
    again on the same port, polling and the plan resume without operator action."""
    site = new_site(sites, tmp_path / "site", 240.0)
    site.start_cloud()
    site.keygen()
    site.register()
    site.start_sim()
    site.start_zapd()
    site.put_plan(1, battery_w=1500.0, hours=6.0)  # 90 s of wall time: in force through both outages
    wait_for(lambda: rung(site) == "plan" and site.battery_near(1500), 30, "plan followed")
    for outage in range(2):
        site.sim_control("modbus_down")
        wait_for(lambda: rung(site) == "safe_hold", 30, "safe hold with the inverter gone")
        time.sleep(2.0)  # some failing polls and reconnect attempts
        assert site.procs["zapd"].alive()
        site.sim_control("modbus_up")
        wait_for(lambda: battery_fresh(site), 45, "inverter polled again")
        wait_for(lambda: rung(site) == "plan", 30, f"plan again after outage {outage + 1}")
        wait_for(lambda: site.battery_near(1500), 30, "battery following the plan again")
    log = site.procs["zapd"].output()
    # Dozens of polls failed per outage; the log has a line per outage (a stray timeout on a busy CI box may add one).
    assert 2 <= log.count("modbus.link_down") <= 4, "one line per outage, not one per failed poll"
    assert 2 <= log.count("modbus.link_up") <= 4
    assert "Traceback" not in log
    tasks = {t["name"]: t for t in status(site)["tasks"]}  # type: ignore[attr-defined]
    assert tasks["driver:inverter"]["restarts"] == 0, "the driver must ride out the outage, not crash"


def test_p1_garbage_bad_crc_and_truncated_telegrams(sites: list[Site], tmp_path: Path) -> None:
    """Promises: bad input on the P1 line (bad CRC, line noise, a telegram cut off mid-way, a flood with no
    end marker) is dropped, counted and logged (rate-limited), never becomes a reading, never crashes the
    driver or the daemon; good telegrams around it keep the meter fresh."""
    site = new_site(sites, tmp_path / "site", 240.0)
    site.zapd_overrides = {"cloud": False}
    site.start_sim()
    site.start_zapd()
    wait_for(lambda: rung(site) == "self_consumption", 30, "controlling on the meter")
    rng = random.Random(7)
    meter_before = _meter_rows(site)
    sent_before = site.sim_control("stats")["p1_sent"]
    site.sim_control("p1_bad_crc", count=3)
    site.sim_control("p1_garbage", hex=bytes(rng.randrange(256) for _ in range(300)).hex())
    site.sim_control("p1_truncated", fraction=0.6)
    site.sim_control("p1_garbage", hex=b"/ISK5\\2M550T\r\n\r\n1-0:1.7.0(BROKEN*kW)\r\n!ZZZZ\r\n".hex())
    site.sim_control("p1_garbage", hex=bytes(rng.randrange(32, 127) for _ in range(40_000)).hex())  # no '!'
    wait_for(lambda: site.sim_control("stats")["p1_sent"] >= sent_before + 12, 30, "more telegrams sent")
    wait_for(lambda: _meter_rows(site) > meter_before + 3, 30, "good telegrams after the bad ones")
    wait_for(lambda: rung(site) == "self_consumption", 30, "still controlling on the meter")
    assert site.procs["zapd"].alive()
    assert site.procs["zapd"].stop() == 0  # flushes every reading it took
    sent = site.sim_control("stats")["p1_sent"]
    log = site.procs["zapd"].output()
    assert "p1.telegram_dropped" in log and "bad_crc" in log
    assert "Traceback" not in log
    # A bad telegram never becomes a reading: at most one reading per good telegram ever sent.
    assert _meter_rows(site) <= sent - 3
    with contextlib.closing(sqlite3.connect(site.state_dir / "zapd.sqlite")) as db:
        bodies = [r[0] for r in db.execute("SELECT body FROM outbox WHERE der_id = 'meter'")]
    assert all(b'"power_w"' in b for b in bodies)


def _meter_rows(site: Site) -> int:
    with contextlib.closing(sqlite3.connect(site.state_dir / "zapd.sqlite", timeout=10)) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox WHERE der_id = 'meter'").fetchone()[0])


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                         capture_output=True, text=True)  # fmt: skip
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode}); needs root")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(path: Path) -> Path:
    """Write a ballast file until the filesystem says ENOSPC."""
    ballast = path / "ballast"
    with ballast.open("wb") as f:
        chunk = b"\0" * 65536
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return ballast


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_state_dir_disk_full_then_space_returns(sites: list[Site], tmp_path: Path) -> None:
    """Promises: a full disk under the state directory is a clear error in the log, never corruption
    (integrity_check ok); control goes on (cycles and device writes continue); readings that could not be
    stored are kept in memory and stored once space returns, so every reading still reaches the cloud exactly
    once, in order."""
    site = new_site(sites, tmp_path / "site", 240.0)
    with small_tmpfs(site.state_dir, "24m"):
        site.zapd_overrides = {"tick_s": 5, "refresh_s": 20}
        site.start_cloud()
        site.keygen()
        site.register()
        site.start_sim()
        site.start_zapd()
        site.put_plan(1, battery_w=1200.0, hours=6.0)  # 90 s of wall time: in force while the disk is full
        wait_for(lambda: rung(site) == "plan" and drained(site), 30, "plan in force, outbox drained")
        ballast = fill_disk(site.state_dir)
        full_at = datetime.now()
        wait_for(lambda: "disk is full" in site.procs["zapd"].output(), 30, "a clear error in the log")
        cycles = status(site)["control"]["cycles"]  # type: ignore[index]
        time.sleep(3.0)
        st = status(site)
        assert st["control"]["cycles"] > cycles, "control stopped while the disk was full"  # type: ignore[index]
        assert st["fallback"]["rung"] == "plan"  # type: ignore[index]
        assert site.battery_near(1200), site.battery_power()
        assert site.integrity() == "ok"
        ballast.unlink()
        wait_for(lambda: "telemetry.store_recovered" in site.procs["zapd"].output(), 30, "recovery logged")
        print(f"\ndisk full for {(datetime.now() - full_at).total_seconds():.1f} s real")
        finish_and_check_exactly_once(site)
        assert site.integrity() == "ok"
