"""OpenMetrics from a running daemon, scraped over HTTP: the counters move with what happens."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from drivers.sim.p1_pty import SimP1Tcp
from drivers.sim.physics import SimSite
from tests.ports import free_port
from tests.waiting import wait_until
from zapd.clock import ScaledClock
from zapd.config import validate_config
from zapd.daemon import Daemon

# Prometheus wants base units in names (seconds, bytes, ...): https://prometheus.io/docs/practices/naming/
NON_BASE_UNITS = re.compile(r"_(ms|milliseconds|us|microseconds|minutes|hours|days|kb|mb|kilobytes|megabytes|kwh)(_|$)")


def lint(text: str) -> list[str]:
    """`promtool check metrics` (Prometheus's own linter) when installed, and our base-unit rule always."""
    problems = [
        f"{f.name}: not in base units" for f in text_string_to_metric_families(text) if NON_BASE_UNITS.search(f.name)
    ]
    promtool = shutil.which("promtool")
    if promtool is not None:
        res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        problems += [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    return problems


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_follow_the_daemon(tmp_path: Path) -> None:
    start = datetime(2026, 6, 21, 12, tzinfo=UTC)
    site = SimSite()
    site.step(start)
    meter = SimP1Tcp(site)
    p1_port = await meter.start()
    clock = ScaledClock(start, 1.0)
    metrics_port = free_port()
    config = validate_config(
        {
            "site": {"id": "m", "fuse_a": 25},
            "control": {"tick_s": 0.2},
            "store": {"state_dir": str(tmp_path / "state")},
            "api": {"socket": str(tmp_path / "zapd.sock")},
            "metrics": {"port": metrics_port},
            "devices": [{"driver": "p1_tcp", "id": "meter", "host": "127.0.0.1", "port": p1_port, "poll_s": 0.2}],
        },
        "test",
    )
    daemon = Daemon(config, clock)
    feeder = asyncio.create_task(meter.run(clock, 0.1))
    run = asyncio.create_task(daemon.run())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{metrics_port}", timeout=5) as client:
            texts: list[str] = []

            async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
                resp = await client.get("/metrics")
                assert resp.status_code == 200
                texts.append(resp.text)
                return samples(resp.text)

            bad_crc = ("zapd_telegrams_rejected_total", (("device", "meter"), ("reason", "bad_crc")))

            async def scraped(key: tuple[str, tuple[tuple[str, str], ...]], at_least: float) -> Samples | None:
                try:
                    m = await scrape()
                except httpx.TransportError:  # the server is not up yet
                    return None
                return m if m.get(key, 0) >= at_least else None

            await wait_until(lambda: scraped(("zapd_readings_total", ()), 3), 10, "three readings", every_s=0.1)
            meter.inject_bad_crc(2)
            m = await wait_until(lambda: scraped(bad_crc, 2), 10, "two bad CRCs counted", every_s=0.1)
            assert m[bad_crc] == 2
            assert m[("zapd_readings_total", ())] >= 3
            assert m[("zapd_control_cycles_total", ())] >= 1
            assert m[("zapd_fallback_rung", ())] == 3  # a fresh meter, no battery, no plan: self-consumption
            assert ("zapd_outbox_depth", ()) in m and ("zapd_sync_lag_seconds", ()) in m
            assert 0 <= m[("zapd_control_loop_duration_seconds", ())] < 5
            assert lint(texts[-1]) == []
    finally:
        daemon.stop()
        await asyncio.wait_for(run, 20)
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        await meter.stop()
