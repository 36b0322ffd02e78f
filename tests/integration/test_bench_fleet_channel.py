"""bench/fleet_channel.py at a tiny size, so the `make bench` row cannot rot unnoticed.

A real `zapcloud serve` on PostgreSQL, bench/channel.py's light Zaps connected, the 2 DR worker processes of
bench/fleet.py: every dispatched site's Zap verifies its signed DR-window command and acknowledges it. No time is
asserted (the figures are the bench's); that every command arrives and is acked is.
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.fleet_channel import measure
from tests.db_backends import empty_db_url_async


async def test_every_connected_zap_acks_the_dr_command_of_a_published_event(tmp_path: Path) -> None:
    url = await empty_db_url_async("postgresql", tmp_path)  # skipped without ZAPCLOUD_TEST_DB_URL
    m = await measure(4, tmp_path, url)
    assert m["sent"] == 4 and m["acked"] == 4, m
    assert 0 < m["first_s"] <= m["p50_s"] <= m["max_s"] == m["total_s"] < math.inf
