"""Fakes shared by unit and integration tests: a site with the parts `Daemon.view()` reads, so a
consumer (Home Assistant, the local API, the metrics) can be tested without a daemon."""

from __future__ import annotations

from dataclasses import dataclass, field

from zapd.clock import ManualClock
from zapd.config import ZapdConfig
from zapd.controller import Controller
from zapd.devices import DeviceSet
from zapd.energy import TOTALS, EnergyTotals
from zapd.model import Plan
from zapd.override import OperatorOverride
from zapd.siteview import ControlView, SiteView, SyncGauges
from zapd.state import SiteState
from zapd.store import Store


@dataclass
class FakeSite:
    """The daemon's parts a SiteView is built from, and nothing else."""

    config: ZapdConfig
    clock: ManualClock
    state: SiteState
    devices: DeviceSet
    override: OperatorOverride
    energy: EnergyTotals = field(default_factory=EnergyTotals)
    controller: Controller | None = None
    store: Store | None = None
    plan: Plan | None = None

    def current_plan(self) -> Plan | None:
        return self.plan

    def view(self) -> SiteView:
        """What Daemon.view() builds, from the fake's parts."""
        now = self.clock.now()
        return SiteView(
            now=now,
            site_id=self.config.site.id,
            snapshot=self.state.snapshot(now),
            control=ControlView.of(self.controller.stats if self.controller is not None else None),
            override=self.override.active(),
            plan=self.plan,
            kinds=dict(self.devices.kinds),
            drivers=tuple(self.devices.drivers),
            capacities_wh={},
            plans_rejected={},
            sync=SyncGauges(),
            readings_in=0,
            energy_kwh={total: self.energy.kwh(total) for total in TOTALS},
        )
