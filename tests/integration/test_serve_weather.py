"""Weather-driven PV forecasts in a real `zapcloud serve` (SQLite file, 127.0.0.1) against a real HTTP server on
loopback that answers like Open-Meteo (tests/fixtures/openmeteo, shaped after https://open-meteo.com/en/docs).

A site that registers `weather` gets its PV forecast dimmed by the served cloud cover (or, with `use: ghi`, the
served irradiance): the overcast day at a quarter of the clear day (Kasten & Czeplak 1980: 1 − 0.75 at full
cover), a site without `weather` is not
(and never makes the cloud ask). A weather service that is slow, down, answers HTTP 500, NaN, out-of-range
numbers, arrays of the wrong length or no JSON at all is logged and counted on /metrics, and the site is
still planned, from the forecast without weather (the nowcast path) exactly as a site without `weather`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
from nacl.signing import SigningKey

from cloud.db import Database
from cloud.db import planning as store
from cloud.planner import PlannerOptions, prepare
from cloud.server.service import register_site
from cloud_sync.keys import public_key_b64
from tests.integration.test_cloud_planning import serve
from tests.integration.test_planner import ingest, readings
from tests.waiting import wait_until_sync
from zapd.clock import SIM_CLOCK_ENV, sim_clock_env

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "openmeteo"
GOOD = (FIX / "forecast_clear_overcast_debilt_2026-06-01.json").read_bytes()
T0 = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)  # the fixture's first hour: the plan's first slot
DAY = 96  # 15-minute slots

ASSETS: dict[str, Any] = {
    "location": {"lat": 52.1, "lon": 5.18, "altitude_m": 2},
    "grid": {"max_import_kw": 17.0, "max_export_kw": 10.0},
    "battery": {"capacity_kwh": 10.0, "max_charge_kw": 5.0, "max_discharge_kw": 5.0},
    "pv": [{"kwp": 5.0, "tilt_deg": 35, "azimuth_deg": 180}],
}
WEATHER = {**ASSETS, "weather": {"provider": "open-meteo", "use": "cloud_cover"}}
TARIFF = {"energy": {"kind": "fixed", "price": 0.25}, "vat": 0.21, "export": {"kind": "fixed", "price": 0.07}}


def _body(**hourly: Any) -> bytes:
    doc = json.loads(GOOD)
    doc["hourly"].update(hourly)
    return json.dumps(doc).encode()


def _cover(values: list[Any]) -> bytes:
    return _body(cloud_cover=values)


HOURS = 72
# mode -> (status, body, seconds to wait before answering)
ANSWERS: dict[str, tuple[int, bytes, float]] = {
    "good": (200, GOOD, 0.0),
    "slow": (200, GOOD, 3.0),  # the serve flag allows 0.5 s
    "http500": (500, b"Internal Server Error", 0.0),
    "nan": (200, GOOD.replace(b'"cloud_cover":[0,', b'"cloud_cover":[NaN,'), 0.0),
    "huge": (200, _cover([0] * 12 + [1e300] + [0] * (HOURS - 13)), 0.0),
    "negative": (200, _cover([-40] * HOURS), 0.0),
    "wrong_length": (200, _cover([0] * (HOURS - 5)), 0.0),
    "not_json": (200, b"<html>maintenance</html>", 0.0),
    # a valid answer for the first 30 hours only: dimmed there, the forecast without weather after
    "partial": (
        200,
        _body(
            time=json.loads(GOOD)["hourly"]["time"][:30],
            cloud_cover=json.loads(GOOD)["hourly"]["cloud_cover"][:30],
            shortwave_radiation=json.loads(GOOD)["hourly"]["shortwave_radiation"][:30],
        ),
        0.0,
    ),
}
INVALID = ("nan", "huge", "negative", "wrong_length", "not_json")
UNAVAILABLE = ("slow", "http500")


LATS = {"good": 52.1, "partial": 52.11, **{m: round(52.12 + 0.01 * i, 2) for i, m in enumerate(INVALID + UNAVAILABLE)}}
BY_LAT = {str(lat): mode for mode, lat in LATS.items()}


class Weather:
    """An Open-Meteo look-alike on 127.0.0.1: answers by the asked latitude (LATS), records each query."""

    def __init__(self) -> None:
        self.stopped = False
        self.queries: list[dict[str, list[str]]] = []
        weather = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                weather.queries.append(query)
                status, body, delay = ANSWERS[BY_LAT.get(query.get("latitude", [""])[0], "not_json")]
                # wall-clock: the slow service's late answer is the behaviour (past the serve flag's timeout)
                time.sleep(delay)
                with contextlib.suppress(OSError):  # the slow case: the client has hung up
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the served requests are recorded in `queries`, not on stderr."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/forecast"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.server.shutdown()
            self.server.server_close()


@contextlib.contextmanager
def weather_server() -> Iterator[Weather]:
    w = Weather()
    try:
        yield w
    finally:
        w.stop()


def _assets(lat: float, weather: bool) -> dict[str, Any]:
    return {**(WEATHER if weather else ASSETS), "location": {"lat": lat, "lon": 5.18, "altitude_m": 2}}


async def _sites(db_url: str, sites: dict[str, dict[str, Any]]) -> None:
    """Registered with two weeks of telemetry (the PV factor is learned from it) before the cloud starts, so
    each site's first plan already has it."""
    db = Database(db_url)
    await db.create_schema()
    try:
        for site_id, assets in sites.items():
            await register_site(db, site_id, public_key_b64(SigningKey.generate()), assets=assets, tariff=TARIFF,
                                now=T0)  # fmt: skip
            await ingest(db, site_id, readings(T0 - timedelta(days=14), T0, 1))
    finally:
        await db.dispose()


async def _plans(db_url: str, sites: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each site's planned PV (from the serve worker) and the same site's PV forecast without weather."""
    db = Database(db_url)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        for site_id in sites:
            flows = await store.latest_flows(db, site_id)
            assert flows is not None, site_id
            assert flows.start == T0 and len(flows.flows["pv_kw"]) == 2 * DAY  # the fixed tariff is known 48 h
            without = await prepare(db, site_id, T0, PlannerOptions())  # no weather client: the nowcast path
            out[site_id] = (np.asarray(flows.flows["pv_kw"]), np.asarray(without.problem.pv_kw))
    finally:
        await db.dispose()
    return out


def _wait_planned(db_url: str, sites: list[str]) -> None:
    async def count() -> int:
        db = Database(db_url)
        try:
            return sum([await store.latest_flows(db, s) is not None for s in sites])
        finally:
            await db.dispose()

    wait_until_sync(lambda: asyncio.run(count()) == len(sites), 120, "every site planned", every_s=0.5)


def _day_energy(pv: np.ndarray, day: int) -> float:
    return float(pv[day * DAY : (day + 1) * DAY].sum() / 4)


FLAGS = ("--weather-timeout-s", "0.5", "--weather-cache-s", "0", "--planner-idle-s", "0.2")


def test_weather_dims_the_pv_forecast_and_a_failing_service_falls_back(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'cloud.sqlite'}"
    failing = [*INVALID, "slow", "http500"]
    ghi = {**_assets(LATS["good"], True), "weather": {"provider": "open-meteo", "use": "ghi"}}
    sites = {"plain": _assets(LATS["good"], False), "weather": _assets(LATS["good"], True), "weather-ghi": ghi,
             "partial": _assets(LATS["partial"], True),
             **{f"w-{m}": _assets(LATS[m], True) for m in failing}}  # fmt: skip
    asyncio.run(_sites(db_url, sites))
    env = {SIM_CLOCK_ENV: sim_clock_env(T0, 1.0)}
    with weather_server() as wx, serve(tmp_path, "--weather-url", wx.url, *FLAGS, env=env) as srv:
        bad = {"site_id": "bad", "public_key": public_key_b64(SigningKey.generate()),
               "assets": {**WEATHER, "planning": {"pv_model": "magic"}}, "tariff": TARIFF}  # fmt: skip
        refused = srv.client.post("/v1/sites", json=bad, headers=srv.admin())
        assert refused.status_code == 422 and "assets.planning.pv_model" in refused.text, refused.text
        _wait_planned(db_url, list(sites))
        metrics = srv.client.get("/metrics", headers=srv.admin()).text
        log = srv.log.read_text()
    plans = asyncio.run(_plans(db_url, list(sites)))

    # one query per site with `weather`, none for the site without
    asked = sorted(float(q["latitude"][0]) for q in wx.queries)
    assert asked == sorted(LATS[m] for m in ("good", "good", "partial", *failing))
    assert all(q["hourly"] == ["cloud_cover,shortwave_radiation"] and q["longitude"] == ["5.18"] for q in wx.queries)

    # clear (0 %) on day 1, overcast (100 %) on day 2: Kasten-Czeplak says a quarter of the clear output
    sunny, _ = plans["weather"]
    assert _day_energy(sunny, 0) > 10.0
    ratio = _day_energy(sunny, 1) / _day_energy(sunny, 0)
    assert abs(ratio - 0.25) < 0.01, ratio
    # the same day dimmed by the served irradiance (`use: ghi`), which the fixture made with the same rule
    by_ghi, _ = plans["weather-ghi"]
    ratio = _day_energy(by_ghi, 1) / _day_energy(by_ghi, 0)
    assert abs(ratio - 0.25) < 0.02, ratio
    # without weather both days are alike (the clear sky of 1 and 2 June differs by well under 1 %)
    plain, plain_without = plans["plain"]
    assert abs(_day_energy(plain, 1) / _day_energy(plain, 0) - 1.0) < 0.01
    assert np.array_equal(plain, plain_without)

    # a forecast for the first 30 hours: dimmed there, the forecast without weather after
    partial, partial_without = plans["partial"]
    covered = 30 * 4
    # 2 June 00:00-05:00 UTC, overcast, the sun up from ~03:20 (cloud cover is taken from the nearest hour:
    # from 05:30 that is 06:00, past the answer)
    dawn = slice(DAY, covered - 4)
    assert partial[dawn].sum() > 0 and partial[dawn].sum() < 0.3 * partial_without[dawn].sum()
    assert np.array_equal(partial[covered:], partial_without[covered:])

    for mode in failing:  # planned all the same, from the forecast without weather
        got, without = plans[f"w-{mode}"]
        assert np.array_equal(got, without), mode

    counted = dict(re.findall(r'zapcloud_weather_failures_total\{reason="(\w+)"\} (\d+)', metrics))
    assert counted == {"invalid": str(len(INVALID)), "unavailable": "2"}
    for mode in failing:
        line = next(li for li in log.splitlines() if "planner.weather_unavailable" in li and f"w-{mode}" in li)
        assert ("invalid" if mode in INVALID else "unavailable") in line, line


def test_weather_service_down(tmp_path: Path) -> None:
    """Nothing listens at --weather-url: logged, counted, planned without weather."""
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'cloud.sqlite'}"
    asyncio.run(_sites(db_url, {"w-down": _assets(LATS["good"], True)}))
    with socket.socket() as s:  # a port that nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1/forecast"
        env = {SIM_CLOCK_ENV: sim_clock_env(T0, 1.0)}
        with serve(tmp_path, "--weather-url", url, *FLAGS, env=env) as srv:
            _wait_planned(db_url, ["w-down"])
            metrics = srv.client.get("/metrics", headers=srv.admin()).text
            log = srv.log.read_text()
    got, without = asyncio.run(_plans(db_url, ["w-down"]))["w-down"]
    assert np.array_equal(got, without)
    assert 'zapcloud_weather_failures_total{reason="unavailable"} 1' in metrics
    assert any(
        "planner.weather_unavailable" in li and "w-down" in li and "unavailable" in li for li in log.splitlines()
    )
