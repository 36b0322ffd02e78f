"""A DR event reaches the connected Zaps over the live channel, not only through their next plan fetch.

A real `zapcloud serve` (its planner on: the event is claimed and published by its worker loop) on SQLite
and PostgreSQL, and the Zap's real channel client (cloud_sync.CloudSync with a Store on a real SQLite
file, tests/integration/test_channel.py `zap`). Two sites take part; one is connected on the channel.
POST /v1/fleet/events → both sites are dispatched (new plans); the connected one also gets the signed
DR-window command (cloud/fleet_work.py `_notify`): the Zap applies it (its controller's intent overlay
caps the import in the window at the largest limit its new plan holds there) and acknowledges it; the
other site gets no command (it finds its plan by polling). The time from the POST to the Zap's applying
and to the acknowledgement in the cloud is printed (it includes solving the sites; a test asserts no time:
the channel's latency figures are bench/channel.py's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from sqlalchemy import select

from cloud.db import Database
from cloud.server.channel_hub import CommandAck, channel_commands, command_acks, live_sites
from tests.cloud_server import Cloud, serve
from tests.db_backends import BACKENDS, empty_db_url_async
from tests.integration.test_channel import until, zap
from tests.integration.test_cloud_planning import put_prices, register, send_telemetry, wait_plan
from tests.waiting import wait_until
from zapd.model import Intent, Plan


@pytest.fixture(params=BACKENDS)
def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cloud]:
    url = asyncio.run(empty_db_url_async(request.param, tmp_path))
    with serve(tmp_path, url, "serve") as c:
        yield c


async def test_a_connected_dispatched_site_gets_the_dr_window_and_acknowledges_it(cloud: Cloud, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    keys = {sid: register(cloud, sid) for sid in ("live", "polling")}  # type: ignore[arg-type]
    for i, (sid, key) in enumerate(keys.items()):
        send_telemetry(cloud, sid, key, now, soc=0.6 + 0.2 * i)  # type: ignore[arg-type]
    put_prices(cloud, now)  # type: ignore[arg-type]
    before = {sid: wait_plan(cloud, sid, key).version for sid, key in keys.items()}  # type: ignore[arg-type]
    db = Database(cloud.db_url)
    try:
        # the Zap polls once an hour here: what it learns in time comes over the channel
        async with zap(tmp_path, cloud, keys["live"], "live") as z:
            await until(lambda: z.channel.state == "up")

            async def connected() -> bool:  # the hub writes who is connected every STATUS_FLUSH_S
                site = (await live_sites(db, ["live"])).get("live")
                return site is not None and site.connected

            await until(connected)
            start = (now + timedelta(minutes=45)).replace(second=0, microsecond=0)
            end = start + timedelta(hours=1)
            event = {"start": start.isoformat(), "end": end.isoformat(), "reduction_kw": 500.0}
            loop = asyncio.get_running_loop()
            posted = loop.time()
            r = await asyncio.to_thread(cloud.client.post, "/v1/fleet/events", json=event, headers=cloud.admin())
            assert r.status_code == 202, r.text
            await until(lambda: z.channel.commands_applied >= 1, within=60)
            applied_after = loop.time() - posted

            async with db.engine.connect() as conn:
                commands = (await conn.execute(select(channel_commands.c.command_id, channel_commands.c.site_id))).all()
            # one command, to the connected site only
            assert [site for _cid, site in commands] == ["live"], commands
            cid = commands[0].command_id

            async def acked() -> CommandAck | None:  # the Zap's answer, stored by the worker holding it
                got = (await command_acks(db, [cid]))[cid]
                return got if got.result is not None else None

            ack = await wait_until(acked, 10.0)
            assert ack.result == "applied" and ack.acked_at is not None and ack.kind == "dr"

            # the window is the event's, its import limit the largest the new plan holds in the window
            status = (await asyncio.to_thread(cloud.client.get, r.json()["href"], headers=cloud.admin())).json()
            chosen = {s["site_id"]: s["plan_version"] for s in status["allocation"]["sites"]}
            assert set(chosen) == {"live", "polling"} and chosen["live"] == before["live"] + 1, status
            stored = await db.latest_plan("live")
            assert stored is not None and stored.version == chosen["live"]
            plan = msgspec.json.decode(stored.body, type=Plan)
            limits = [s.intent.grid_import_limit_w for s in plan.slots if start <= s.start < end]
            assert limits and all(x is not None for x in limits)
            window_limit_w = max(x for x in limits if x is not None)
            (window,) = z.sync.demand.windows
            assert (window.start, window.end) == (start, end)
            assert window.import_limit_w == pytest.approx(window_limit_w)
            assert ack.applied["import_limit_w"] == pytest.approx(window_limit_w)
            # in force only inside the window, and only ever tightening
            inside = z.sync.demand.overlay(start + timedelta(minutes=1), Intent(grid_import_limit_w=17_000.0))
            assert inside.grid_import_limit_w == pytest.approx(window_limit_w)
            outside = z.sync.demand.overlay(end, Intent(grid_import_limit_w=17_000.0))
            assert outside.grid_import_limit_w == 17_000.0

            acked_after = loop.time() - posted
            print(
                f"\nDR event POST -> Zap applied {applied_after * 1000:.0f} ms, -> acknowledged in the cloud "
                f"{acked_after * 1000:.0f} ms (both include solving the two sites' curves)"
            )
    finally:
        await db.dispose()
