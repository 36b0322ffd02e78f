"""The read model (zapd/siteview.py) and the site aggregates on the Snapshot: what the local API,
Home Assistant and the metrics all read, computed one way."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fallback.policy import Rung
from zapd.metrics import DaemonCollector
from zapd.siteview import ControlView, SiteView, SyncGauges
from zapd.state import BatteryView, Snapshot

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


def test_rung_is_a_str_enum_shown_by_its_value_with_a_ladder_level() -> None:
    assert [str(r) for r in Rung] == ["plan", "cached_plan", "self_consumption", "safe_hold"]
    assert f"{Rung.SAFE_HOLD}: stale" == "safe_hold: stale"
    assert [r.level for r in Rung] == [1, 2, 3, 4]
    assert Rung("self_consumption") is Rung.SELF_CONSUMPTION


def test_site_soc_is_weighted_by_capacity_and_unknown_when_any_battery_is() -> None:
    snap = Snapshot(T0, 0.0, None, None, {"a": BatteryView("a", 0.2, 0.0), "b": BatteryView("b", 0.8, 0.0)})
    # 10 kWh at 20 % and 5 kWh at 80 %: 2 + 4 = 6 kWh of 15 kWh.
    assert snap.battery_soc({"a": 10_000.0, "b": 5_000.0}) == pytest.approx(0.4)
    assert snap.battery_soc({"a": 10_000.0}) == pytest.approx(0.5)  # a capacity missing: plain mean
    unknown = Snapshot(T0, 0.0, None, None, {"a": BatteryView("a", None, 0.0), "b": BatteryView("b", 0.8, 0.0)})
    assert unknown.battery_soc({"a": 10_000.0, "b": 5_000.0}) is None
    assert Snapshot(T0, 0.0, None, None).battery_soc({}) is None


def test_ev_total_is_unknown_when_any_charger_is() -> None:
    assert Snapshot(T0, 0.0, None, None, ev_w={"a": 1000.0, "b": 2000.0}).ev_total_w() == 3000.0
    assert Snapshot(T0, 0.0, None, None, ev_w={"a": 1000.0, "b": None}).ev_total_w() is None
    assert Snapshot(T0, 0.0, None, None).ev_total_w() is None


def test_metrics_read_one_view_per_scrape() -> None:
    calls: list[int] = []

    def view() -> SiteView:
        calls.append(1)
        return SiteView(
            now=T0,
            site_id="s1",
            snapshot=Snapshot(T0, None, None, None),
            control=ControlView(cycles=7, last_cycle_ms=2.5, writes=3, write_failures=1, rung=Rung.SAFE_HOLD),
            override=None,
            plan=None,
            kinds={},
            drivers=(),
            capacities_wh={},
            plans_rejected={"bad_signature": 2},
            sync=SyncGauges(outbox_depth=12),
            readings_in=99,
            energy_kwh={},
        )

    families = {f.name: f for f in DaemonCollector(view).collect()}
    assert len(calls) == 1
    assert families["zapd_fallback_rung"].samples[0].value == 4
    assert families["zapd_control_cycles"].samples[0].value == 7
    assert families["zapd_outbox_depth"].samples[0].value == 12
    assert families["zapd_readings"].samples[0].value == 99
    assert [(s.labels["reason"], s.value) for s in families["zapd_plans_rejected"].samples] == [("bad_signature", 2)]
