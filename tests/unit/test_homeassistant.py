"""Home Assistant publisher without a broker: texts, discovery payloads and the select's rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from fallback.policy import Rung
from tests.fakes import FakeSite
from zapd.api import redact
from zapd.clock import ManualClock
from zapd.config import HomeAssistantConfig, validate_config
from zapd.devices import DeviceSet
from zapd.homeassistant import HomeAssistant, default_node_id, describe_intent, next_action
from zapd.model import DerKind, Intent, IntentMode, Plan, PlanSlot
from zapd.override import OperatorOverride
from zapd.state import SiteState

T0 = datetime(2026, 6, 1, 10, 30, tzinfo=UTC)


def _site(kinds: dict[str, DerKind] | None = None, site_id: str = "home.1") -> FakeSite:
    clock = ManualClock(T0)
    state = SiteState()
    config = validate_config({"site": {"id": site_id, "fuse_a": 25}}, "test")
    devices = DeviceSet(kinds=dict(kinds or {"meter": DerKind.METER}))
    return FakeSite(config, clock, state, devices, OperatorOverride(clock, state))


def _ha(site: FakeSite, **cfg: object) -> HomeAssistant:
    return HomeAssistant(site.view, site.override, HomeAssistantConfig(enabled=True, **cfg), tz=UTC)


def _slot(hour: int, intent: Intent) -> PlanSlot:
    start = T0.replace(hour=0, minute=0) + timedelta(hours=hour)
    return PlanSlot(start=start, end=start + timedelta(hours=1), intent=intent)


def _plan(*slots: PlanSlot, valid_h: int = 48) -> Plan:
    return Plan(
        site_id="home.1",
        version=9,
        issued_at=T0,
        valid_until=T0.replace(hour=0) + timedelta(hours=valid_h),
        slots=slots,
    )


@pytest.mark.parametrize(
    ("intent", "text"),
    [
        (Intent(battery_w=2500.0), "charge 2.5 kW"),
        (Intent(battery_w=-1234.0), "discharge 1.2 kW"),
        (Intent(battery_w=0.0), "battery idle"),
        (Intent(target_soc=0.8), "battery to 80 %"),
        (Intent(battery_w=1000.0, ev_w=7400.0), "charge 1.0 kW, EV 7.4 kW"),
        (Intent(), "follow plan"),
        (Intent(mode=IntentMode.SELF_CONSUMPTION), "self-consumption"),
        (Intent(mode=IntentMode.HOLD, battery_w=0.0), "hold"),
    ],
)
def test_describe_intent(intent: Intent, text: str) -> None:
    assert describe_intent(intent) == text


def test_next_action_is_the_next_change() -> None:
    charge = Intent(battery_w=2500.0)
    plan = _plan(
        _slot(10, charge),  # now
        _slot(11, charge),  # same: skipped
        _slot(12, charge),
        _slot(14, Intent(battery_w=-3000.0)),
        _slot(26, Intent(mode=IntentMode.SELF_CONSUMPTION)),
    )
    text, attrs = next_action(plan, T0, UTC)
    assert text == "discharge 3.0 kW at 14:00"
    assert attrs["battery_w"] == -3000.0 and attrs["plan_version"] == 9
    assert next_action(plan, T0 + timedelta(hours=4), UTC)[0] == "self-consumption tomorrow at 02:00"
    assert next_action(plan, T0 + timedelta(hours=17), UTC)[0] == "nothing planned"
    assert next_action(None, T0)[0] == "no plan"
    assert next_action(_plan(_slot(10, charge), valid_h=1), T0)[0] == "plan expired"


def test_node_id_and_topics() -> None:
    assert default_node_id("home.1") == "home_1"
    ha = _ha(_site())
    assert ha.node_id == "home_1"
    assert ha.config_topic("sensor", "grid_power") == "homeassistant/sensor/home_1/grid_power/config"
    assert ha.command_topic == "zapd/home_1/mode/set"
    other = _ha(_site(), node_id="garage", discovery_prefix="ha", base_topic="energy")
    assert other.config_topic("select", "mode") == "ha/select/garage/mode/config"
    assert other.availability_topic == "energy/garage/availability"


def test_discovery_announces_only_what_the_site_has() -> None:
    ha = _ha(_site({"meter": DerKind.METER, "inv.battery": DerKind.BATTERY}))
    configs = ha.discovery()
    present = {t.split("/")[3] for t, p in configs.items() if p}
    removed = {t.split("/")[3] for t, p in configs.items() if not p}
    assert present == {
        "grid_power",
        "grid_import_energy",
        "grid_export_energy",
        "battery_soc",
        "battery_power",
        "battery_charge_energy",
        "battery_discharge_energy",
        "fallback_rung",
        "next_action",
        "mode",
    }
    # An empty retained config deletes a stale entity.
    assert removed == {"pv_power", "ev_power", "pv_energy", "ev_energy"}
    # What Home Assistant's Energy dashboard asks of a battery's sensors (developers.home-assistant.io,
    # "Energy" / sensor entity docs): energy device class, total_increasing, an energy unit.
    for object_id in ("battery_charge_energy", "battery_discharge_energy", "grid_import_energy"):
        cfg = json.loads(configs[f"homeassistant/sensor/home_1/{object_id}/config"])
        assert (cfg["device_class"], cfg["state_class"], cfg["unit_of_measurement"]) == (
            "energy",
            "total_increasing",
            "kWh",
        )
        assert "entity_category" not in cfg
    rung = json.loads(configs["homeassistant/sensor/home_1/fallback_rung/config"])
    assert rung["entity_category"] == "diagnostic"
    soc = json.loads(configs["homeassistant/sensor/home_1/battery_soc/config"])
    assert soc["device_class"] == "battery" and soc["unit_of_measurement"] == "%"
    assert soc["expire_after"] == 30


def test_stale_values_are_unknown() -> None:
    site = _site()
    states = _ha(site).states()
    assert states["zapd/home_1/grid_power/state"] == ("None", True)
    assert states["zapd/home_1/fallback_rung/state"][0] == "None"  # no controller cycle yet
    assert states["zapd/home_1/mode/state"][0] == "auto"
    assert states["zapd/home_1/next_action/state"][0] == "no plan"


async def test_select_forces_and_releases_without_a_store() -> None:
    site = _site()
    ha = _ha(site, override_minutes=15)
    await ha.on_command("Self_Consumption\n")
    ov = site.override.active()
    assert ov is not None and ov.rung is Rung.SELF_CONSUMPTION and ov.until == T0 + timedelta(minutes=15)
    assert ha.states()["zapd/home_1/mode/state"][0] == "self_consumption"
    await ha.on_command("auto")
    assert site.override.active() is None
    await ha.on_command("safe_hold")
    site.clock.advance(15 * 60)  # the override expires by itself: the select shows auto again
    assert ha.states()["zapd/home_1/mode/state"][0] == "auto"


async def test_bad_and_retained_commands_change_nothing() -> None:
    site = _site()
    ha = _ha(site)
    for payload in ("turbo", "", None, "plan"):
        await ha.on_command(payload)
    await ha.on_command("safe_hold", retained=True)
    assert site.override.active() is None
    assert ha.counters["invalid_commands"] == 4 and ha.counters["ignored_retained"] == 1


def test_password_is_redacted_in_diag() -> None:
    cfg = HomeAssistantConfig(enabled=True, username="zapd", password="s3cret")
    shown = redact(cfg.model_dump(mode="json"))
    assert isinstance(shown, dict) and shown["password"] == "<redacted>" and shown["username"] == "zapd"
