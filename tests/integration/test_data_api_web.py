"""The cloud's web pages (issue 16) against a real `zapcloud serve`: an owner signs in through the OAuth flow
and sees their site's day drawn; the operator sees the fleet; another owner's site shows nothing.

The browser test drives Debian's headless Chromium over the DevTools protocol (no Playwright download):
it fills the real sign-in form, follows the real redirects, and counts what the page drew.
The day's readings are synthetic (a PV bell, a flat load, a battery that charges at noon and discharges
in the evening): the test checks the drawing pipeline, not energy figures.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import websockets
from nacl.signing import SigningKey

from cloud_sync.keys import public_key_b64
from cloud_sync.wire import DiscoveryReport, WireReading, encode, encode_plan, make_batch, sign_body
from tests.integration.test_cloud_api import ADMIN, Cloud, _serve
from tests.ports import free_port
from tests.waiting import wait_until, wait_until_sync
from zapd.model import DerCapabilities, DerKind, Intent, Plan, PlanSlot

PASSWORD = "correct horse battery"
# Yesterday: a whole day of readings, none in the future (the cloud refuses those).
TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
DAY_Q = {"day": TODAY.date().isoformat()}
ADMIN_H = {"Authorization": f"Bearer {ADMIN}"}
SCREENSHOT_DIR = Path(os.environ.get("ZAPCLOUD_SCREENSHOT_DIR", tempfile.gettempdir()))


def _day_readings() -> list[WireReading]:
    out: list[WireReading] = []
    soc = 0.4  # a fraction, as zapd/bounds.py has it
    seq = 1
    for m in range(0, 1440, 2):
        ts = TODAY + timedelta(minutes=m)
        h = m / 60
        pv = max(0.0, 4000 * math.sin(math.pi * (h - 6) / 14)) if 6 < h < 20 else 0.0
        load = 600 + (1500 if 18 <= h < 21 else 0)
        bat = 1500.0 if 10 <= h < 14 else (-1500.0 if 18 <= h < 21 else 0.0)  # + charging
        soc = min(1.0, max(0.0, soc + bat * (2 / 60) / 10_000))
        grid = load - pv + bat
        for der, kind, values in (
            ("meter1", DerKind.METER, {"power_w": grid}),
            ("pv1", DerKind.PV, {"power_w": pv}),
            ("bat1", DerKind.BATTERY, {"power_w": bat, "soc": soc}),
        ):
            out.append(WireReading(seq=seq, der_id=der, kind=kind, ts=ts, values=values))  # type: ignore[arg-type]
            seq += 1
    return out


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    tmp = tmp_path_factory.mktemp("web")
    with _serve(tmp, f"sqlite+aiosqlite:///{tmp / 'w.sqlite'}", "w") as c:
        tariff = {"energy": {"kind": "fixed", "price": 0.25}, "vat": 0.21,
                  "export": {"kind": "fixed", "price": 0.07}}  # fmt: skip
        for site in ("site-w", "site-x"):
            key = SigningKey.generate()
            r = c.client.post("/v1/sites", json={"site_id": site, "public_key": public_key_b64(key),
                                                 "tariff": tariff}, headers=ADMIN_H)  # fmt: skip
            assert r.status_code == 201, r.text
            report = encode(DiscoveryReport(site_id=site, ders=[
                DerCapabilities(der_id="meter1", kind=DerKind.METER),
                DerCapabilities(der_id="pv1", kind=DerKind.PV, max_power_w=5000.0),
                DerCapabilities(der_id="bat1", kind=DerKind.BATTERY, controllable=True, capacity_wh=10_000.0,
                                max_charge_w=5000.0, max_discharge_w=4000.0),
            ]))  # fmt: skip
            assert c.client.post(f"/v1/sites/{site}/discovery", content=report, headers=sign_body(key, report))
            body = encode(make_batch(site, _day_readings()))
            r = c.client.post(f"/v1/sites/{site}/telemetry", content=body, headers=sign_body(key, body))
            assert r.status_code == 200, r.text
            slots = tuple(
                PlanSlot(start=TODAY + timedelta(hours=h), end=TODAY + timedelta(hours=h + 1),
                         intent=Intent(battery_w=1500.0 if 10 <= h < 14 else (-1500.0 if 18 <= h < 21 else 0.0)))
                for h in range(24)
            )  # fmt: skip
            now = datetime.now(UTC).replace(microsecond=0)
            plan = Plan(site_id=site, version=1, issued_at=now, valid_until=now + timedelta(days=1), slots=slots)
            r = c.client.put(f"/v1/sites/{site}/plan", content=encode_plan(plan), headers=ADMIN_H)
            assert r.status_code == 200, r.text
        for owner, site in (("wendy", "site-w"), ("xavier", "site-x")):
            r = c.client.post("/v1/owners", json={"owner_id": owner, "password": PASSWORD, "sites": [site]},
                              headers=ADMIN_H)  # fmt: skip
            assert r.status_code == 201, r.text
        yield c


@contextlib.contextmanager
def _sign_in(cloud: Cloud, path: str, user: str) -> Iterator[httpx.Client]:
    """Follow the page's own redirects through the OAuth sign-in, as a browser would; yields the session."""
    with httpx.Client(base_url=cloud.client.base_url, timeout=10.0) as s:
        yield _follow_sign_in(s, path, user)


def _follow_sign_in(s: httpx.Client, path: str, user: str) -> httpx.Client:
    r = s.get(path)
    assert r.status_code == 303 and r.headers["location"].startswith("/web/login"), r.text
    r = s.get(r.headers["location"])
    assert r.status_code == 303 and r.headers["location"].startswith("/oauth/authorize")
    form_url = r.headers["location"]
    page = s.get(form_url)
    assert page.status_code == 200 and "zapcloud web view" in page.text
    r = s.post(form_url, data={"username": user, "password": PASSWORD, "decision": "allow"})
    assert r.status_code == 302 and r.headers["location"].startswith("/web/callback?"), r.text
    r = s.get(r.headers["location"])
    assert r.status_code == 303 and r.headers["location"] == path, r.text
    return s


def _drawn(page: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for name, n in re.findall(r'data-series="([^"]+)" data-points="(\d+)"', page):
        out.setdefault(name, []).append(int(n))
    return out


def test_site_page_after_oauth_sign_in_draws_the_day(cloud: Cloud) -> None:
    with _sign_in(cloud, "/web/site/site-w", "wendy") as s:
        r = s.get("/web/site/site-w", params=DAY_Q)
        assert r.status_code == 200
        drawn = _drawn(r.text)
        # 15-minute means of a whole day: 96 points per power series; the plan has 24 hourly slots.
        assert drawn["load"] == [96] and drawn["pv"] == [96] and drawn["grid"] == [96]
        assert drawn["battery"] == [96, 96] and drawn["soc"] == [96]
        assert drawn["plan"] == [24]
        assert drawn["import"] == [96] and drawn["export"] == [96]
        # Another owner's site: refused, and nothing of it is drawn.
        other = s.get("/web/site/site-x", params=DAY_Q)
        assert other.status_code == 403 and "data-series" not in other.text
        # A day without data still renders, saying so.
        empty = s.get("/web/site/site-w", params={"day": "2020-01-01"})
        assert empty.status_code == 200 and "(no data)" in empty.text


def test_sign_in_never_redirects_off_site(cloud: Cloud) -> None:
    for target in ("https://evil.example/", "//evil.example/web/", "/web/\\evil"):
        r = cloud.client.get("/web/login", params={"next": target})
        assert r.status_code == 303
        stash = r.cookies["zc_pkce"].strip('"')
        assert unquote(stash.split(".", 2)[2]) == "/web/", stash


def test_fleet_page_is_for_the_operator(cloud: Cloud) -> None:
    with httpx.Client(base_url=cloud.client.base_url, timeout=10.0) as s:
        r = s.get("/web/fleet")
        assert r.status_code == 303 and r.headers["location"] == "/web/fleet/login"
        assert s.post("/web/fleet/login", data={"token": "wrong"}).status_code == 401
        r = s.post("/web/fleet/login", data={"token": ADMIN})
        assert r.status_code == 303
        page = s.get("/web/fleet")
        assert page.status_code == 200
        assert re.findall(r"data-site='([^']+)'", page.text) == ["site-w", "site-x"]
    # An owner's cookie does not open the fleet page.
    with _sign_in(cloud, "/web/site/site-w", "wendy") as owner:
        assert owner.get("/web/fleet").status_code == 303


# --- a real browser ---------------------------------------------------------------------------


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def _browser(tmp: Path) -> Iterator[str]:
    exe = _chromium()
    assert exe is not None
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
         f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1", "--window-size=960,1200",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def page_url() -> str | None:
            if proc.poll() is not None:
                pytest.fail("chromium exited before its DevTools endpoint was up")
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                page = next(t for t in targets if t["type"] == "page")
            except (httpx.TransportError, StopIteration, ValueError):
                return None
            return str(page["webSocketDebuggerUrl"])

        yield wait_until_sync(page_url, 30, "chromium's DevTools endpoint", every_s=0.1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


class _Cdp:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.n = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.n += 1
        await self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 20))
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                result: dict[str, Any] = msg["result"]
                return result

    async def js(self, expr: str) -> Any:
        return (await self.call("Runtime.evaluate", expression=expr, returnByValue=True))["result"].get("value")

    async def wait_for(self, expr: str, within_s: float = 15) -> Any:
        async def holds() -> Any:
            with contextlib.suppress(AssertionError):  # a CDP error (call() asserts): not yet
                return await self.js(expr)
            return None

        try:
            return await wait_until(holds, within_s, expr, every_s=0.05)
        except AssertionError:
            pytest.fail(f"page never satisfied {expr!r}; at {await self.js('location.href')}")


@pytest.mark.skipif(_chromium() is None, reason="Debian chromium not installed (apt-get install chromium)")
def test_browser_signs_in_and_sees_the_charts(cloud: Cloud, tmp_path: Path) -> None:
    base = str(cloud.client.base_url)

    async def run(ws_url: str) -> dict[str, Any]:
        async with websockets.connect(ws_url, max_size=2**25) as ws:
            cdp = _Cdp(ws)
            await cdp.call("Page.enable")
            await cdp.call("Page.navigate", url=f"{base}/web/site/site-w")
            await cdp.wait_for("!!document.querySelector('input[name=password]')")
            await cdp.js(
                "document.querySelector('input[name=username]').value='wendy';"
                f"document.querySelector('input[name=password]').value={json.dumps(PASSWORD)};"
                "document.querySelector('button[value=allow]').click()"
            )
            await cdp.wait_for("document.querySelectorAll('svg.chart').length == 4")
            await cdp.call("Page.navigate", url=f"{base}/web/site/site-w?day={TODAY.date().isoformat()}")
            await cdp.wait_for("location.search.includes('day=') && document.querySelectorAll('svg.chart').length == 4")
            drawn = await cdp.js(
                "JSON.stringify({url: location.pathname, series: [...document.querySelectorAll('polyline.series')]"
                ".map(p => [p.dataset.series, p.points.length, p.getBoundingClientRect().width])})"
            )
            shot = await cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            (SCREENSHOT_DIR / "zapcloud-web-site.png").write_bytes(base64.b64decode(shot["data"]))
            out: dict[str, Any] = json.loads(drawn)
            return out

    with _browser(tmp_path) as ws_url:
        got = asyncio.run(run(ws_url))
    assert got["url"] == "/web/site/site-w"
    series = {name: (n, w) for name, n, w in got["series"]}
    for name in ("load", "pv", "grid", "soc", "plan", "import", "export"):
        assert name in series, got
        # Drawn means laid out with a real width by the browser, not just present in the HTML.
        assert series[name][0] > 0 and series[name][1] > 100, (name, series[name])


def _last_soc() -> float:
    return next(r.values["soc"] for r in reversed(_day_readings()) if r.kind == DerKind.BATTERY)  # type: ignore[return-value]


@pytest.mark.skipif(_chromium() is None, reason="Debian chromium not installed (apt-get install chromium)")
def test_browser_fleet_page_shows_rung_and_flexibility(cloud: Cloud, tmp_path: Path) -> None:
    """The operator signs in in the browser; each site's row shows its rung (the channel's stored live status)
    and its battery flexibility (discovery report limits, last uploaded SoC, the default 10 % reserve)."""
    import sqlite3

    # site-w's Zap said over its channel that it runs on its cached plan (the row the channel hub writes).
    with contextlib.closing(sqlite3.connect(cloud.db_url.split(":///", 1)[1])) as conn, conn:
        conn.execute(
            "INSERT INTO channel_sites (site_id, status, status_at) VALUES (?, ?, ?)",
            ("site-w", json.dumps({"rung": "cached_plan", "link": "down", "soc": None}),
             datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")),
        )  # fmt: skip
    base = str(cloud.client.base_url)

    async def run(ws_url: str) -> list[dict[str, str]]:
        async with websockets.connect(ws_url, max_size=2**25) as ws:
            cdp = _Cdp(ws)
            await cdp.call("Page.enable")
            await cdp.call("Page.navigate", url=f"{base}/web/fleet")
            await cdp.wait_for("!!document.querySelector('input[name=token]')")
            await cdp.js(f"document.querySelector('input[name=token]').value={json.dumps(ADMIN)};"
                         "document.querySelector('form').submit()")  # fmt: skip
            await cdp.wait_for("document.querySelectorAll('tr[data-site]').length == 2")
            rows = await cdp.js(
                "JSON.stringify([...document.querySelectorAll('tr[data-site]')].map(r => {"
                " const g = r.querySelector('td.rung'), f = r.querySelector('td.flex');"
                " return {site: r.dataset.site, rung: g.dataset.rung, rungText: g.innerText,"
                " kwh: f.dataset.availableKwh, up: f.dataset.chargeKw, down: f.dataset.dischargeKw,"
                " flex: f.innerText, width: f.getBoundingClientRect().width}; }))"
            )
            shot = await cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            (SCREENSHOT_DIR / "zapcloud-web-fleet.png").write_bytes(base64.b64decode(shot["data"]))
            out: list[dict[str, str]] = json.loads(rows)
            return out

    with _browser(tmp_path) as ws_url:
        rows = {r["site"]: r for r in asyncio.run(run(ws_url))}
    assert rows["site-w"]["rung"] == "cached_plan" and "cached_plan" in rows["site-w"]["rungText"]
    assert rows["site-x"]["rung"] == "" and rows["site-x"]["rungText"] == "—"  # no channel, no rung
    expected = round((_last_soc() - 0.1) * 10.0, 3)  # 10 kWh from the discovery report, 10 % reserve
    for site in ("site-w", "site-x"):
        r = rows[site]
        assert float(r["kwh"]) == pytest.approx(expected), r
        assert (float(r["up"]), float(r["down"])) == (5.0, 4.0), r
        assert f"{expected:.1f} kWh above 10% reserve" in r["flex"] and float(r["width"]) > 50, r
