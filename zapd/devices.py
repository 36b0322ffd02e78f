"""Build drivers from the validated config: one loop over the driver registry (drivers/registry.py).

Which class serves which `driver` is each family's business (its factory); this module only keeps
what the daemon needs from all of them together, the DeviceSet.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from drivers.api import Controllable, Driver
from drivers.config_structs import FACTORIES, BatteryLimits, EvLimits
from zapd.clock import Clock
from zapd.config_structs import ZapdConfig
from zapd.model import DerKind


@dataclass
class DeviceSet:
    drivers: list[Driver] = field(default_factory=list)
    actuators: dict[str, Controllable] = field(default_factory=dict)  # battery der_id → driver
    battery_limits: dict[str, BatteryLimits] = field(default_factory=dict)  # battery der_id → config
    poll_s: dict[str, float] = field(default_factory=dict)  # der_id → poll period
    kinds: dict[str, DerKind] = field(default_factory=dict)
    ev_limits: dict[str, EvLimits] = field(default_factory=dict)  # controllable EV charger der_id → its limits
    grid_meter: str | None = None  # DER id of the site's one grid meter (the config check refuses two)

    def add_ev(self, der_id: str, limits: EvLimits) -> None:
        self.ev_limits[der_id] = limits


def build_devices(config: ZapdConfig, clock: Clock) -> DeviceSet:
    """Each device through its family's factory, imported on first use (so unused protocols never load)."""
    out = DeviceSet(grid_meter=config.grid_meter)
    for dev in config.devices:
        module, _, function = FACTORIES[dev.driver].partition(":")
        getattr(importlib.import_module(module), function)(out, dev, clock)
    return out
