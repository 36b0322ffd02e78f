"""How much telemetry the outbox keeps: unsent readings for a cloud, or a short local history without one.

With a `[cloud]` the outbox holds what is not yet acknowledged: bounded by `store.retention_days`
and `retention_mb`, and what that bound drops is lost data (`sync.dropped_by_retention`, a warning).
Without a cloud nobody will ever upload it: the outbox is only the local history (`zapctl telemetry`,
the demo's metering check), so it keeps `store.history_without_cloud_h` hours and at most
`HISTORY_WITHOUT_CLOUD_MB`, and what ages out is counted apart (`telemetry.expired_without_cloud`),
not as loss. Either way the file stops growing: a gateway's SD card is not written full for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from zapd.config_structs import StoreConfig
from zapd.store import DROPPED_KEY

BYTES_PER_READING = 150  # measured average of a stored reading (row + index)
HISTORY_WITHOUT_CLOUD_MB = 16.0
EXPIRED_WITHOUT_CLOUD_KEY = "telemetry.expired_without_cloud"


@dataclass(frozen=True)
class RetentionBounds:
    older_than: datetime  # readings stamped before this go
    max_rows: int  # and beyond this many, the oldest
    counter_key: str  # the kv counter that counts them
    lost: bool  # True: they were never uploaded and never will be (a warning), False: local history aged out


def retention_bounds(store: StoreConfig, *, has_cloud: bool, now: datetime) -> RetentionBounds:
    if has_cloud:
        days, mb, key = store.retention_days, store.retention_mb, DROPPED_KEY
    else:
        days = min(store.retention_days, store.history_without_cloud_h / 24)
        mb, key = min(store.retention_mb, HISTORY_WITHOUT_CLOUD_MB), EXPIRED_WITHOUT_CLOUD_KEY
    return RetentionBounds(
        older_than=now - timedelta(days=days),
        max_rows=max(1, int(mb * 1024 * 1024 / BYTES_PER_READING)),
        counter_key=key,
        lost=has_cloud,
    )
