"""`SiteView`: one read of the site, built once per API request, Home Assistant publish or metrics
scrape, and handed to that consumer instead of the daemon.

Before (issue 15) the daemon object went whole to the local API, Home Assistant and the metrics,
each declaring its own Protocol of it, and the metrics had six `Daemon.metric_*` methods of their
own. Now the daemon builds this frozen value (`Daemon.view()`), and a consumer reads numbers that
belong to one instant: the rung, the snapshot and the energy totals cannot disagree within one
publish. Site aggregates (total EV power, capacity-weighted SoC) are the snapshot's
(zapd/state.py), so every consumer computes them the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from drivers.api import Driver
from fallback.policy import Rung
from zapd.model import DerKind, Plan, Reading
from zapd.override import Override
from zapd.state import Snapshot
from zapd.supervisor import TaskHealth

if TYPE_CHECKING:
    from zapd.controller import ControllerStats
    from zapd.envelope import Setpoint


@dataclass
class SyncGauges:
    """Refreshed by the daemon every few seconds (they need the database); read by the metrics."""

    outbox_depth: int = 0
    sync_lag_s: float = 0.0  # age of the oldest reading not yet acknowledged by the cloud
    acks_rejected: dict[str, int] = field(default_factory=dict)  # cloud answers refused, by reason
    channel_up: bool = False  # the live channel (cloud_sync/channel.py) is connected
    channel_refused: dict[str, int] = field(default_factory=dict)  # channel messages refused, by reason


@dataclass(frozen=True, slots=True)
class ControlView:
    """The controller's counters and rung as of this view (all zero / None before it exists)."""

    cycles: int = 0
    last_cycle_ms: float = 0.0
    writes: int = 0
    write_failures: int = 0
    rung: Rung | None = None
    rung_since: datetime | None = None
    rung_reason: str = ""
    setpoints: Mapping[str, Setpoint] | None = None  # the last battery setpoints; None: no controller yet

    @classmethod
    def of(cls, stats: ControllerStats | None) -> ControlView:
        if stats is None:
            return cls()
        s = stats
        return cls(
            s.cycles, s.last_cycle_ms, s.writes, s.write_failures, s.rung, s.rung_since, s.rung_reason,
            dict(s.last_setpoints),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class SiteView:
    now: datetime
    site_id: str
    snapshot: Snapshot
    control: ControlView
    override: Override | None
    plan: Plan | None
    kinds: Mapping[str, DerKind]  # every configured DER, reading or not
    drivers: tuple[Driver, ...]
    capacities_wh: Mapping[str, float]
    plans_rejected: Mapping[str, int]
    sync: SyncGauges
    readings_in: int
    energy_kwh: Mapping[str, float | None]
    latest: Mapping[str, Reading] = field(default_factory=dict)  # newest reading per DER, stale or not
    fresh: frozenset[str] = frozenset()  # the DERs whose newest reading is fresh now
    tasks: Mapping[str, TaskHealth] = field(default_factory=dict)  # supervised tasks, copied
    readings_written: int = 0  # readings in the store's outbox so far

    @property
    def battery_soc(self) -> float | None:
        return self.snapshot.battery_soc(self.capacities_wh)
