"""The live channel with real processes: `zapcloud serve` + simulated site + `zapd run` (channel on by default).

A plan published in the cloud is in zapd's store within a second (its poll interval is 30 site seconds,
yet polling alone would take up to that: the channel is what makes it immediate); a DR command posted to the
cloud is applied by the running daemon (its controller keeps the site's grid flow under the command's limit with
the battery) and acknowledged with what was applied; the refusal counters are in zapd's status.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from datetime import timedelta
from typing import Any

import pytest

from tests.e2e.harness import ADMIN, Site, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def zapd_plan_versions(site: Site) -> list[int]:
    with contextlib.closing(sqlite3.connect(site.state_dir / "zapd.sqlite", timeout=10)) as db:
        return [int(r[0]) for r in db.execute("SELECT version FROM plans")]


def grid_power(site: Site) -> float | None:
    for row in site.zapctl("devices")["devices"]:
        if row["der_id"] == "meter" and row["fresh"]:
            return float(row["values"]["power_w"])
    return None


def channel(site: Site) -> dict[str, Any]:
    return site.zapctl("status")["link"]["channel"]  # type: ignore[no-any-return]


def test_plan_notice_and_dr_command_reach_a_running_zapd(site: Site) -> None:
    # Poll rarely (10 site minutes = 2.5 real s at 240x), so a prompt fetch can only be the channel's doing.
    site.zapd_overrides["plan_interval_s"] = 600
    site.start_cloud()
    site.keygen()
    site.register()
    site.start_sim()
    site.start_zapd()
    wait_for(lambda: channel(site)["state"] == "up", 30, "channel up")
    time.sleep(0.5)  # past the first poll after start

    site.put_plan(1, battery_w=0.0, hours=2.0)
    t0 = time.monotonic()
    wait_for(lambda: 1 in zapd_plan_versions(site), 5, "plan v1 in zapd's store", every_s=0.01)
    assert time.monotonic() - t0 < 1.0, "plan notice → fetched by zapd"

    # The plan holds the battery idle, so any move is the DR window's: cap whichever way the site flows now.
    (grid,) = wait_for(lambda: (g := grid_power(site)) is not None and (g,), 30, "a fresh meter reading")
    exporting = grid < 0
    limit = "export_limit_kw" if exporting else "import_limit_kw"
    now = site.clock.now()
    action = {"kind": "dr", "start": now.isoformat(), "end": (now + timedelta(hours=1)).isoformat(), limit: 0.0}
    with site.http() as client:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        r = client.post(f"/v1/sites/{site.site_id}/commands", json={"action": action, "ttl_s": 3600}, headers=admin)
        assert r.status_code == 202, r.text
        cid = r.json()["command_id"]
        t1 = time.monotonic()
        got = wait_for(lambda: (a := client.get(f"/v1/commands/{cid}", headers=admin).json())["result"] and a,
                       10, "DR command acknowledged", every_s=0.01)  # fmt: skip
        ack_s = time.monotonic() - t1
    assert got["result"] == "applied", got
    assert got["applied"][limit.replace("_kw", "_w")] == 0.0
    assert ack_s < 1.0, f"command → acknowledged took {ack_s:.2f} s"
    status = site.zapctl("status")["link"]
    assert status["dr_windows"] and status["dr_windows"][0][limit.replace("_kw", "_w")] == 0.0
    assert status["channel"]["commands_applied"] == 1
    # Export capped at 0: the battery takes the surplus (charges); import capped at 0: it covers the load.
    if exporting:
        wait_for(lambda: (p := site.battery_power()) is not None and p > 100.0, 30, "battery charging under DR")
    else:
        wait_for(lambda: (p := site.battery_power()) is not None and p < -100.0, 30, "battery discharging under DR")
