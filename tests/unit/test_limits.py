"""One limit type per kind (issue 15): the config's battery and EV limits are what the envelope holds a DER to.

The battery's: the config may lower a device's nameplate, never raise it, and a limit neither gives means
"cannot move". The expected numbers follow from the config reference (docs/config.md: "the lower of this
and the device's nameplate is used"), not from the code under test.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from pydantic import ValidationError

from drivers import config_base
from drivers.config_structs import BatteryLimits, EvLimits
from zapd.devices import DeviceSet
from zapd.envelope import SiteLimits, clamp_batteries
from zapd.model import DerCapabilities, DerKind
from zapd.state import BatteryView, Snapshot

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
OPEN_SITE = SiteLimits(fuse_limit_w=1e9, fuse_a=1e9, voltage_v=230, phases=3, max_export_w=None)
NAMEPLATE = BatteryLimits.nameplate(capacity_wh=10_000.0, max_charge_w=5_000.0, max_discharge_w=4_000.0)


def test_config_lowers_a_nameplate_never_raises_it() -> None:
    held = BatteryLimits(capacity_wh=20_000, max_charge_w=3_000, max_discharge_w=6_000, reserve_soc=0.2).within(
        NAMEPLATE
    )
    assert (held.capacity_wh, held.max_charge_w, held.max_discharge_w) == (10_000, 3_000, 4_000)
    assert (held.reserve_soc, held.max_soc) == (0.2, 1.0)  # the SoC bounds are the config's


def test_what_the_config_leaves_unset_comes_from_the_nameplate() -> None:
    held = BatteryLimits().within(NAMEPLATE)
    assert (held.capacity_wh, held.max_charge_w, held.max_discharge_w) == (10_000, 5_000, 4_000)


def test_a_nameplate_of_zero_says_nothing() -> None:
    silent = BatteryLimits.nameplate(capacity_wh=0.0, max_charge_w=-1.0, max_discharge_w=0.0)
    assert BatteryLimits(max_charge_w=2_000).within(silent).max_charge_w == 2_000
    assert BatteryLimits().within(silent).max_discharge_w is None


def test_a_limit_nobody_gives_means_the_battery_cannot_move() -> None:
    snap = Snapshot(NOW, 0.0, None, None, {"b": BatteryView("b", 0.5, 0.0)})
    for limits in (BatteryLimits(capacity_wh=10_000), BatteryLimits(max_charge_w=5_000, max_discharge_w=5_000)):
        for request in (3_000.0, -3_000.0):
            (sp,) = clamp_batteries(request, snap, {"b": limits}, OPEN_SITE, 10.0)
            assert sp.power_w == 0.0, (limits, request)


def test_the_daemon_holds_each_battery_to_its_config_within_what_its_driver_reports() -> None:
    from zapd.daemon import battery_limits

    class Driver:
        def capabilities(self) -> list[DerCapabilities]:
            return [
                DerCapabilities(
                    der_id="inv.battery",
                    kind=DerKind.BATTERY,
                    max_charge_w=5_000,
                    max_discharge_w=4_000,
                    capacity_wh=10_000,
                )
            ]

    devices = DeviceSet(drivers=[Driver()])  # type: ignore[list-item]
    devices.battery_limits["inv.battery"] = BatteryLimits(max_charge_w=3_000, reserve_soc=0.3)
    devices.battery_limits["unscanned.battery"] = BatteryLimits(max_discharge_w=2_500)  # no capabilities yet
    held = battery_limits(devices)
    assert held["inv.battery"] == BatteryLimits(
        capacity_wh=10_000, max_charge_w=3_000, max_discharge_w=4_000, reserve_soc=0.3
    )
    assert held["unscanned.battery"] == BatteryLimits(max_discharge_w=2_500)


def test_the_config_model_and_the_daemons_struct_are_one_type_with_one_behaviour() -> None:
    """The pydantic model checks the file (every problem in one pass); the daemon decodes the checked result
    into the struct: same fields, same methods (drivers/config_types.py), so no copy between them."""
    checked = config_base.BatteryLimits(max_charge_w=3_000, reserve_soc=0.2)
    assert msgspec.convert(checked.model_dump(), BatteryLimits) == BatteryLimits(max_charge_w=3_000, reserve_soc=0.2)
    assert checked.within(NAMEPLATE).max_charge_w == BatteryLimits(max_charge_w=3_000).within(NAMEPLATE).max_charge_w
    assert config_base.EvLimits(max_current_a=16, phases=1).w_per_a == EvLimits(max_current_a=16, phases=1).w_per_a
    assert EvLimits(max_current_a=16, phases=1).w_per_a == 230.0
    with pytest.raises(ValidationError):
        config_base.EvLimits(max_current_a=10, min_current_a=12)
    with pytest.raises(ValidationError):
        config_base.BatteryLimits(reserve_soc=0.9, max_soc=0.8)
