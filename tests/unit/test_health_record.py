"""The one health record every driver keeps: states, since, reasons, staleness, logged once per outage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from structlog.testing import capture_logs

from drivers.health import DeviceHealth, HealthState, describe_os_error
from zapd.clock import ManualClock

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


def test_a_new_record_is_connecting_not_ok() -> None:
    h = DeviceHealth("inv", ManualClock(T0))
    v = h.view()
    assert v.state is HealthState.CONNECTING and not v.ok and v.since == T0 and v.last_ok is None


def test_an_outage_is_logged_once_and_keeps_its_start() -> None:
    clock = ManualClock(T0)
    h = DeviceHealth("inv", clock, event_prefix="modbus", unit=3)
    h.ok()
    with capture_logs() as logs:
        for i in range(5):
            clock.advance(10)
            h.failed(f"connection refused at 127.0.0.1:1502 (try {i})")
        clock.advance(10)
        h.ok()
    v = h.view()
    assert [e["event"] for e in logs] == ["modbus.device_error", "modbus.device_recovered"]
    assert logs[0]["state"] == "unreachable" and logs[0]["unit"] == 3
    assert v.state is HealthState.OK and v.since == T0 + timedelta(seconds=60) and v.reason == ""
    assert v.errors == 5 and v.last_error.endswith("(try 4)") and v.last_error_at == T0 + timedelta(seconds=50)


def test_since_is_the_start_of_the_state_and_a_new_kind_of_failure_is_logged() -> None:
    clock = ManualClock(T0)
    h = DeviceHealth("inv", clock)
    h.failed("timeout")
    clock.advance(30)
    h.failed("timeout again")
    assert h.view().since == T0
    with capture_logs() as logs:
        clock.advance(5)
        h.failed("device answered exception 4", HealthState.DEGRADED)
        h.failed("device answered exception 4", HealthState.DEGRADED)
        h.failed("illegal data address @100", HealthState.UNUSABLE)
        h.failed("illegal data address @200", HealthState.UNUSABLE)  # a configuration error that changed
    assert [e["state"] for e in logs] == ["degraded", "unusable", "unusable"]
    v = h.view()
    assert v.state is HealthState.UNUSABLE and v.since == T0 + timedelta(seconds=35)
    assert v.reason == "illegal data address @200"


def test_quiet_device_turns_stale_when_read() -> None:
    clock = ManualClock(T0)
    h = DeviceHealth("mqtt", clock, stale_after_s=60)
    h.connecting("connected to the broker, no message yet")
    clock.advance(61)
    v = h.view()
    assert v.state is HealthState.STALE and v.since == T0 + timedelta(seconds=60)
    assert v.reason.startswith("no data for 61 s")
    h.ok()
    assert h.view().state is HealthState.OK
    clock.advance(120)
    v = h.view()
    assert v.state is HealthState.STALE and v.reason.startswith("no new data for 120 s")
    assert v.since == T0 + timedelta(seconds=61 + 60)


def test_a_link_coming_up_does_not_end_the_outage() -> None:
    clock = ManualClock(T0)
    h = DeviceHealth("p1", clock)
    h.failed("link lost")
    clock.advance(5)
    h.connecting()
    assert h.view().state is HealthState.CONNECTING and h.errors == 1
    h.ok()
    h.connecting()  # a reconnect while it was fine changes nothing
    assert h.view().state is HealthState.OK


def test_noted_errors_count_without_changing_the_state() -> None:
    h = DeviceHealth("p1", ManualClock(T0))
    h.ok()
    h.note_error("telegram dropped (bad_crc)")
    v = h.view()
    assert v.state is HealthState.OK and v.errors == 1 and v.last_error == "telegram dropped (bad_crc)"
    assert v.to_json()["state"] == "ok" and v.to_json()["last_error_at"] == T0.isoformat()


def test_os_errors_read_like_an_operator_would_say_them() -> None:
    assert describe_os_error(ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1502)")) == (
        "connection refused"
    )
    assert describe_os_error(TimeoutError()) == "timed out"
    assert describe_os_error(OSError("Multiple exceptions: a, b")) == "Multiple exceptions: a, b"


def test_ocpp_listener_is_ok_only_while_every_charge_point_is_connected() -> None:
    from drivers.ocpp.server import OcppServer
    from zapd.config import validate_config

    config = validate_config(
        {
            "site": {"id": "s", "fuse_a": 25},
            "devices": [{"driver": "ocpp", "id": "csms", "host": "127.0.0.1", "port": 9000, "charge_points": [
                {"id": "wb1", "max_current_a": 16}, {"id": "wb2", "max_current_a": 16}]}],
        },
        "test",
    )  # fmt: skip
    server = OcppServer(config.devices[0], ManualClock(T0))  # type: ignore[arg-type]
    server.port = 9000
    server._update_health()
    assert server.health.view().state is HealthState.CONNECTING
    assert server.health.view().reason == "listening on port 9000; not connected: wb1, wb2"
    for cp in ("wb1", "wb2"):
        server.sessions[cp].link = object()  # type: ignore[assignment]  # connected is "has a link"
    server._update_health()
    assert server.health.view().ok
    server.sessions["wb2"].link = None
    server._update_health()
    assert server.health.view().reason.endswith("not connected: wb2")
