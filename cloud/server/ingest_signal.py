"""In-process "site S has new telemetry" signal, so a live subscription on this worker wakes at once.

The ingest handler (cloud/server/app.py) calls `stored(site_id)` after a batch is committed; the GraphQL
telemetry subscription (cloud/dataapi/graphql.py) waits on `wait(site_id, within_s)` instead of sleeping out
its whole poll interval. Only a wake-up: the subscription still reads what is new from the database, and a
batch stored by another worker is seen by the next poll (within_s) as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

_waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)


def stored(site_id: str) -> None:
    for event in _waiters.get(site_id, ()):
        event.set()


async def wait(site_id: str, within_s: float) -> None:
    """Return when the site's next batch is stored in this process, or after `within_s` seconds."""
    event = asyncio.Event()
    _waiters[site_id].add(event)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), within_s)
    finally:
        _waiters[site_id].discard(event)
        if not _waiters[site_id]:
            del _waiters[site_id]


__all__ = ["stored", "wait"]
