"""The data API's live subscription against a live daemon (issue 16): a real `zapd run` reading the
simulated site and uploading to a real `zapcloud serve`; a graphql-transport-ws subscriber gets those
readings, in order, as the cloud stored them. The latency figure is bench/live.py's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

from tests.e2e.live import live_site, subscribe


def test_a_subscriber_receives_the_live_daemons_readings(tmp_path: Path) -> None:
    site = live_site(tmp_path)
    try:
        got = asyncio.run(subscribe(site, seconds=6.0))
    finally:
        site.stop_all()
    # zapd reads the meter and the inverter's DERs every second: several readings a second reach the cloud
    assert len(got) >= 12, got
    seqs = [r.seq for r in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # pushed once each, in seq order
    assert {r.der_id.split(".")[0] for r in got} >= {"meter", "inverter"}
    # every reading pushed is the one the cloud stored under that seq, value for value
    with contextlib.closing(sqlite3.connect(site.cloud_db)) as db:
        stored = {
            int(s): (d, json.loads(v))
            for s, d, v in db.execute('SELECT seq, der_id, "values" FROM telemetry WHERE site_id = ?', (site.site_id,))
        }
    for r in got:
        assert stored[r.seq] == (r.der_id, r.values), r
    # readings arrive after they were taken, not before (the clocks are one time line)
    assert all(r.latency_s > -0.05 for r in got), [r.latency_s for r in got if r.latency_s <= -0.05]
