"""Non-finite input is bad input everywhere (issue 10 item 2), at the boundaries between the parts.

The drivers' guard turns an implausible value into a bad reading (counted, logged once per streak),
the snapshot reads a bad reading as "DER unknown", the telemetry writer stores nothing the cloud's
ingest refuses (the same rule, cloud_sync/wire.py), and plan verification refuses a plan whose
numbers are not numbers. Expected values are the physical facts (NaN is not a power; SoC is 0..1),
not numbers taken from the code under test.
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from structlog.testing import capture_logs

from cloud_sync.uploader import batch_body
from cloud_sync.wire import (
    HEADER_SIGNATURE,
    DiscoveryReport,
    PlanRejected,
    WireError,
    check_plan,
    decode_batch,
    decode_discovery,
    sign_body,
    sign_plan,
    verify_plan,
    wire_safe,
    wire_safe_capabilities,
)
from drivers.api import ReadingGuard
from fallback.policy import Rung, choose, resolve_battery_w
from zapd.bounds import MAX_ENERGY_WH, MAX_POWER_W
from zapd.metrics import DaemonCollector, SyncGauges
from zapd.model import (
    IMPORT_WH,
    PHASE_CURRENT_A,
    POWER_W,
    SOC,
    DerCapabilities,
    DerKind,
    Intent,
    Plan,
    PlanSlot,
    Quality,
    Reading,
)
from zapd.plan_source import LocalPlanFile
from zapd.siteview import ControlView, SiteView
from zapd.state import SiteState, Snapshot
from zapd.store import OutboxRow
from zapd.telemetry_writer import TelemetryWriter

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
KEYS = [POWER_W, SOC, IMPORT_WH, *PHASE_CURRENT_A, "session_wh", "connected", "current_a", "energy_wh", "freq_hz"]
any_float = st.floats(allow_nan=True, allow_infinity=True)


def meter(values: dict[str, float], ts: datetime = NOW) -> Reading:
    return Reading(der_id="grid", kind=DerKind.METER, ts=ts, values=values)


# --- the guard every driver's readings pass -------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({POWER_W: math.inf}, "nonfinite"),
        ({POWER_W: -math.inf}, "nonfinite"),
        ({POWER_W: math.nan, IMPORT_WH: 1000.0}, "nonfinite"),
        ({POWER_W: 200.0, "l1_a": math.inf}, "nonfinite"),
        ({POWER_W: 3.4e38}, "out_of_range"),  # float32 max: a register full of 0x7F7F
        ({POWER_W: 200.0, IMPORT_WH: -5.0}, "out_of_range"),  # an energy counter never runs negative
        ({SOC: 1.5}, "out_of_range"),  # SoC is a fraction
    ],
)
def test_guard_refuses_and_counts(values: dict[str, float], reason: str) -> None:
    seen: list[Reading] = []
    counters: dict[str, int] = {"polls": 3}
    guard = ReadingGuard("p1", seen.append, counters)
    with capture_logs() as logs:
        guard(meter(values))
        guard(meter(values))
        guard(meter({POWER_W: 200.0}))
    assert [r.quality for r in seen] == [Quality.BAD, Quality.BAD, Quality.GOOD]
    assert all(math.isfinite(v) for r in seen for v in r.values.values())
    assert counters[f"rejected_{reason}"] == 2 and counters["polls"] == 3
    events = [e["event"] for e in logs]
    assert events == ["reading.rejected", "reading.valid_again"]  # once per streak, and its end


def test_a_flapping_value_is_counted_every_time_and_logged_once_a_minute() -> None:
    counters: dict[str, int] = {}
    guard = ReadingGuard("p1", lambda r: None, counters)
    with capture_logs() as logs:
        for _ in range(5):
            guard(meter({POWER_W: math.nan}))
            guard(meter({POWER_W: 200.0}))
    assert counters["rejected_nonfinite"] == 5
    assert [e["event"] for e in logs] == ["reading.rejected", "reading.valid_again"]


def test_bad_reading_makes_the_der_unknown_at_once() -> None:
    state = SiteState()
    state.register("grid", DerKind.METER, 5.0)
    guard = ReadingGuard("p1", lambda r: state.update(r, now=NOW))
    guard(meter({POWER_W: 200.0, "l1_a": 1.0}))
    assert state.snapshot(NOW).grid_w == 200.0
    guard(meter({POWER_W: math.inf, "l1_a": 1.0}, NOW + timedelta(seconds=1)))
    snap = state.snapshot(NOW + timedelta(seconds=1))
    assert snap.grid_w is None and snap.phase_currents_a is None  # not the previous 200 W, not +Inf


def test_snapshot_never_holds_a_non_finite_value_even_without_the_guard() -> None:
    state = SiteState()
    state.register("b", DerKind.BATTERY, 5.0)
    state.update(Reading(der_id="b", kind=DerKind.BATTERY, ts=NOW, values={SOC: math.nan, POWER_W: 0.0}), now=NOW)
    view = state.snapshot(NOW).batteries["b"]
    assert view.soc is None and view.power_w is None


# --- the outbox holds only what the cloud accepts -------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), any_float, max_size=6),
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
)
def test_whatever_the_writer_keeps_the_cloud_accepts(values: dict[str, float], ts: datetime) -> None:
    writer = TelemetryWriter(store=None)  # type: ignore[arg-type]  # add() only queues
    writer.add(Reading(der_id="d", kind=DerKind.METER, ts=ts, values=values))
    if not writer._pending:
        assert writer.refused == 1
        return
    (kept,) = writer._pending
    body = msgspec.json.encode(kept)  # exactly what Store.append_readings stores
    batch = decode_batch(batch_body("site-1", [OutboxRow(7, body)], [], None))  # the cloud's ingest check
    assert batch.readings[0].values == {k: v for k, v in values.items() if k in kept.values}
    if kept.values != values:
        assert kept.quality is Quality.BAD


def test_cloud_refuses_what_the_zap_never_stores() -> None:
    for values, ts in (
        ({POWER_W: 1e308}, NOW),
        ({SOC: -0.5}, NOW),
        ({POWER_W: 1.0}, datetime(1970, 1, 1, tzinfo=UTC)),
        ({POWER_W: 1.0}, datetime(2099, 12, 31, tzinfo=UTC) + timedelta(days=1)),
    ):
        row = OutboxRow(1, msgspec.json.encode(meter(values, ts)))
        with pytest.raises(WireError):
            decode_batch(batch_body("site-1", [row], [], None))
        assert wire_safe(meter(values, ts)) != meter(values, ts)
    # +Inf as msgspec writes it (null) is refused too: the stall of issue 10.
    row = OutboxRow(1, msgspec.json.encode(meter({POWER_W: math.inf})))
    assert b"null" in row.body
    with pytest.raises(WireError):
        decode_batch(batch_body("site-1", [row], [], None))


# --- plans whose numbers are not numbers ----------------------------------------------------------

CLOUD = SigningKey.generate()


def plan_with(intent: Intent) -> Plan:
    slot = PlanSlot(start=NOW, end=NOW + timedelta(hours=1), intent=intent)
    return Plan(site_id="s1", version=2, issued_at=NOW, valid_until=NOW + timedelta(hours=6), slots=(slot,))


@pytest.mark.parametrize(
    "intent",
    [
        Intent(battery_w=math.nan),
        Intent(battery_w=-math.inf),
        Intent(battery_w=-1e300),
        Intent(ev_w=math.inf),
        Intent(grid_import_limit_w=math.nan),
        Intent(grid_export_limit_w=1e12),
        Intent(target_soc=1.5),
    ],
)
def test_plan_with_numbers_that_are_not_numbers_is_refused(intent: Intent) -> None:
    with pytest.raises(WireError):
        check_plan(plan_with(intent))  # the cloud refuses to sign it


def test_signed_plan_with_huge_numbers_is_malformed() -> None:
    good = msgspec.json.decode(sign_plan(CLOUD, plan_with(Intent(battery_w=1000.0))).body)
    for raw in ("1e400", "-1e400", "1e30"):
        doc = json.dumps(good).replace('"battery_w": 1000.0', f'"battery_w": {raw}').encode()
        assert raw.encode() in doc
        sig = sign_body(CLOUD, doc)[HEADER_SIGNATURE]
        with pytest.raises(PlanRejected) as err:
            verify_plan(doc, sig, CLOUD.verify_key, site_id="s1", min_version_exclusive=None, now=NOW)
        assert err.value.reason in ("malformed", "out_of_range")  # 1e400 does not decode; 1e30 W is out of range


# --- discovery reports and metrics ----------------------------------------------------------------


def test_discovery_with_limits_that_are_not_numbers() -> None:
    bad = DerCapabilities(der_id="b", kind=DerKind.BATTERY, max_charge_w=math.inf, capacity_wh=1e300)
    body = msgspec.json.encode(DiscoveryReport(site_id="s1", ders=[bad]))
    with pytest.raises(WireError):
        decode_discovery(body)  # Inf is encoded as null, and 1e300 Wh is no battery
    safe = wire_safe_capabilities(bad)
    assert (safe.max_charge_w, safe.capacity_wh) == (0.0, 0.0)  # 0 = unknown, which the envelope reads as "cannot move"
    assert decode_discovery(msgspec.json.encode(DiscoveryReport(site_id="s1", ders=[safe]))).ders == [safe]


def test_rejections_are_in_the_driver_metrics() -> None:
    class FakeDriver:
        def __init__(self) -> None:
            self.name = "p1"
            self.counters = {"telegrams": 2}

    driver = FakeDriver()
    guard = ReadingGuard(driver.name, lambda r: None, driver.counters)
    guard(meter({POWER_W: math.inf}))
    guard(meter({POWER_W: 1e9}))

    now = datetime(2026, 1, 1, tzinfo=UTC)
    view = SiteView(
        now=now, site_id="s1", snapshot=Snapshot(now, None, None, None), control=ControlView(), override=None,
        plan=None, kinds={}, drivers=(driver,), capacities_wh={}, plans_rejected={}, sync=SyncGauges(), readings_in=0,
        energy_kwh={},
    )  # type: ignore[arg-type]  # fmt: skip

    samples = {
        (s.labels.get("device"), s.labels.get("event")): s.value
        for family in DaemonCollector(lambda: view).collect()
        if family.name == "zapd_driver_events"
        for s in family.samples
    }
    assert samples[("p1", "rejected_nonfinite")] == 1 and samples[("p1", "rejected_out_of_range")] == 1


def test_local_plan_file_with_numbers_that_are_not_numbers_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    good = plan_with(Intent(battery_w=1000.0))
    path.write_bytes(msgspec.json.encode(good))
    plans = LocalPlanFile(path)
    assert plans.poll() == good
    for raw in ("1e30", "-1e400", "NaN"):
        doc = msgspec.json.encode(msgspec.structs.replace(good, version=good.version + 1)).decode()
        path.write_text(doc.replace('"battery_w":1000.0', f'"battery_w":{raw}'))
        os.utime(path, ns=(time.time_ns(), time.time_ns() + len(raw)))  # a new mtime for each version
        assert plans.poll() == good  # the old plan stays
    assert plans.rejected == 3


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from([POWER_W, *PHASE_CURRENT_A, IMPORT_WH]), any_float, min_size=1, max_size=5),
    st.dictionaries(st.sampled_from([POWER_W, SOC]), any_float, min_size=2, max_size=2),
)
def test_snapshot_holds_only_plausible_numbers(meter_values: dict[str, float], battery: dict[str, float]) -> None:
    state = SiteState(grid_meter="grid")
    state.register("grid", DerKind.METER, 5.0)
    state.register("b", DerKind.BATTERY, 5.0)
    guard = ReadingGuard("dev", lambda r: state.update(r, now=NOW))
    guard(meter(meter_values))
    guard(Reading(der_id="b", kind=DerKind.BATTERY, ts=NOW, values=battery))
    snap = state.snapshot(NOW)
    numbers = [snap.grid_w, *(snap.phase_currents_a or ()), snap.batteries["b"].soc, snap.batteries["b"].power_w]
    assert all(x is None or (math.isfinite(x) and abs(x) <= 1e7) for x in numbers)
    # the guard's own bounds: a cumulative counter is bounded by MAX_ENERGY_WH (a 10 MWh counter is a normal meter)
    meter_ok = all(
        math.isfinite(v)
        and abs(v) <= (1e4 if k.endswith("_a") else MAX_ENERGY_WH if k.endswith("_wh") else MAX_POWER_W)
        for k, v in meter_values.items()
    )
    meter_ok = meter_ok and meter_values.get(IMPORT_WH, 0.0) >= 0 and POWER_W in meter_values
    assert (snap.grid_w is not None) is meter_ok
    decision = choose(NOW, None, True, snap)
    if not meter_ok:
        assert decision.rung is Rung.SAFE_HOLD and resolve_battery_w(decision.intent, snap) == 0.0
