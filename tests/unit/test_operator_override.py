"""One owner of the operator override (zapd/override.py OperatorOverride), used by the local API
and by Home Assistant's select alike: it applies, persists (bounded, errors survived) and wakes
the controller. Issue 15: a failed store write made `zapctl fallback force` report `internal`
although the force was already active."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from fallback.policy import Rung
from tests.fakes import FakeSite
from zapd.api import ApiContext, LocalApi, Request
from zapd.clock import ManualClock
from zapd.config import HomeAssistantConfig, ZapdConfig, validate_config
from zapd.devices import DeviceSet
from zapd.energy import EnergyTotals
from zapd.homeassistant import HomeAssistant
from zapd.model import DerKind
from zapd.override import KV_KEY, OperatorOverride
from zapd.state import SiteState
from zapd.store import Store

T0 = datetime(2026, 6, 1, 10, 30, tzinfo=UTC)


class DiskFullStore(Store):
    """A real SQLite store whose writes fail the way a full disk makes them fail."""

    fail = True

    async def kv_set(self, key: str, value: str) -> None:
        if self.fail:
            raise sqlite3.OperationalError("database or disk is full")
        await super().kv_set(key, value)


@dataclass
class Wakes:
    count: int = 0

    def __call__(self) -> None:
        self.count += 1


@dataclass
class FakeDaemon:
    """What LocalApi and HomeAssistant read; the override is the daemon's one owner."""

    config: ZapdConfig
    clock: ManualClock
    state: SiteState
    override: OperatorOverride
    store: Store | None
    devices: DeviceSet = field(default_factory=lambda: DeviceSet(kinds={"meter": DerKind.METER}))
    controller: None = None
    energy: EnergyTotals = field(default_factory=EnergyTotals)

    def current_plan(self) -> None:
        return None


async def _daemon(tmp_path: Path, store_cls: type[Store] = DiskFullStore) -> tuple[FakeDaemon, Wakes]:
    clock = ManualClock(T0)
    state = SiteState()
    store = await store_cls.open(tmp_path / "zapd.sqlite")
    override = OperatorOverride(clock, state, store)
    wakes = Wakes()
    override.wake = wakes
    config = validate_config({"site": {"id": "home.1", "fuse_a": 25}, "api": {"socket": str(tmp_path / "s")}}, "t")
    return FakeDaemon(config, clock, state, override, store), wakes


def _api(d: FakeDaemon) -> LocalApi:
    site = FakeSite(d.config, d.clock, d.state, d.devices, d.override)
    return LocalApi(ApiContext(d.config, site.view, d.override, store=lambda: d.store))


async def test_api_force_with_a_full_disk_is_ok_in_force_and_says_not_stored(tmp_path: Path) -> None:
    d, wakes = await _daemon(tmp_path)
    api = _api(d)
    with capture_logs() as logs:
        answer = await api._dispatch(Request(cmd="fallback_force", rung="safe_hold", minutes=5, reason="swap"))
        again = await api._dispatch(Request(cmd="fallback_force", rung="safe_hold", minutes=6))
    assert answer["ok"] is True, answer  # was {"ok": false, "code": "internal"} before
    data = answer["data"]
    assert isinstance(data, dict) and data["stored"] is False and data["forced"]["rung"] == "safe_hold"
    ov = d.override.active()
    assert ov is not None and ov.rung is Rung.SAFE_HOLD
    assert again["ok"] is True and wakes.count == 2
    assert d.override.store_failures == 2
    assert [e["event"] for e in logs if e["event"].startswith("override.")] == ["override.store_failed"]
    assert d.store is not None
    await d.store.close()


async def test_home_assistant_select_with_a_full_disk_keeps_the_force(tmp_path: Path) -> None:
    d, wakes = await _daemon(tmp_path)
    site = FakeSite(d.config, d.clock, d.state, d.devices, d.override)
    ha = HomeAssistant(site.view, d.override, HomeAssistantConfig(enabled=True, override_minutes=15), tz=UTC)
    await ha.on_command("self_consumption")
    ov = d.override.active()
    assert ov is not None and ov.rung is Rung.SELF_CONSUMPTION and wakes.count == 1
    assert d.override.store_failures == 1
    assert ha.states()["zapd/home_1/mode/state"][0] == "self_consumption"
    await ha.on_command("auto")
    assert d.override.active() is None and wakes.count == 2
    assert d.store is not None
    await d.store.close()


async def test_stored_force_survives_a_restart_and_the_store_recovering_is_logged(tmp_path: Path) -> None:
    d, _ = await _daemon(tmp_path)
    store = d.store
    assert isinstance(store, DiskFullStore)
    assert not (await d.override.force("safe_hold", 30, source="api")).stored
    store.fail = False
    with capture_logs() as logs:
        change = await d.override.force("safe_hold", 30, "battery swap", source="home_assistant")
    assert change.stored and [e["event"] for e in logs if e["event"].startswith("override.")] == [
        "override.store_recovered"
    ]
    assert await store.kv_get(KV_KEY)
    events = await store.events("operator", limit=5)
    assert events[0].detail.endswith("(home assistant)")
    # A restart: a new owner on the same file puts the override back in force.
    restarted = OperatorOverride(d.clock, d.state, store)
    restored = await restarted.restore()
    assert restored is not None and restored.reason == "battery swap" and restarted.active() == restored
    await store.close()


async def test_bad_request_changes_nothing_and_wakes_nobody(tmp_path: Path) -> None:
    d, wakes = await _daemon(tmp_path)
    api = _api(d)
    answer = await api._dispatch(Request(cmd="fallback_force", rung="plan", minutes=5))
    assert answer["ok"] is False and answer["code"] == "bad_request"
    assert d.override.active() is None and wakes.count == 0
    assert d.store is not None
    await d.store.close()


@pytest.mark.parametrize("minutes", [0.0, -1.0, 24 * 60 + 1])
async def test_minutes_are_bounded(tmp_path: Path, minutes: float) -> None:
    d, _ = await _daemon(tmp_path)
    api = _api(d)
    answer = await api._dispatch(Request(cmd="fallback_force", rung="safe_hold", minutes=minutes))
    assert answer["ok"] is False and "minutes must be" in str(answer["error"])
    assert d.store is not None
    await d.store.close()
