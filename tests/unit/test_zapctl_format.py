"""zapctl's human output: aligned tables, readable durations, a chart that works without plotext."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from zapd import zapctl
from zapd.zapctl import ascii_chart, duration, format_devices, format_plan, format_status, table

NOW = datetime(2026, 6, 1, 12, 10, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _utc_display() -> Iterator[None]:
    """These tests read UTC times (`--utc`); the host-zone tests below set their own zone."""
    zapctl.set_display_zone(utc=True)
    yield
    zapctl.set_display_zone(utc=False)


def _slots(n: int, minutes: int, start: datetime) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        st = start + timedelta(minutes=minutes * i)
        out.append(
            {
                "start": st.isoformat(),
                "end": (st + timedelta(minutes=minutes)).isoformat(),
                "active": st <= NOW < st + timedelta(minutes=minutes),
                "mode": "setpoint" if i % 7 else "self_consumption",
                "battery_w": None if i % 7 == 0 else float((i % 5 - 2) * 1000),
                "ev_w": None,
                "grid_import_limit_w": None,
                "grid_export_limit_w": None,
                "target_soc": None,
            }
        )
    return out


def _plan(slots: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "now": NOW.isoformat(),
        "plan": {
            "version": 3,
            "issued_at": NOW.isoformat(),
            "valid_until": (NOW + timedelta(hours=30)).isoformat(),
            "expires_in_s": 30 * 3600.0,
            "expired": False,
            "slots": len(slots),
        },
        "slots": slots,
    }


def test_table_aligns_columns_and_shows_missing_as_dash() -> None:
    out = table(["A", "LONGER"], [("x", None), ("yyyy", 1500.4), ("z", True)]).splitlines()
    assert out == ["A     LONGER", "x     -", "yyyy  1500", "z     yes"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.4, "0.4s"), (75, "1m15s"), (3 * 3600 + 60, "3h01m"), (90000, "1d01h"), (-30, "-30.0s")],
)
def test_duration(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def test_ascii_chart_bars_point_the_right_way() -> None:
    lines = ascii_chart(_slots(4, 60, NOW.replace(minute=0)), half_width=4).splitlines()
    assert lines[0].startswith("battery kW")
    assert lines[1].endswith("|  (self_consumption)")  # no setpoint: local rules decide
    assert lines[2] == "13:00  -1.00 ####|"
    assert lines[3] == "14:00  +0.00     |"
    assert lines[4] == "15:00  +1.00     |####"


def test_ascii_chart_folds_quarter_hours_into_hours() -> None:
    lines = ascii_chart(_slots(96, 15, NOW.replace(minute=0))).splitlines()
    assert len(lines) == 1 + 24
    assert len({line[:5] for line in lines[1:]}) == 24


def test_plan_shows_only_the_next_24_hours_and_marks_the_active_slot() -> None:
    out = format_plan(_plan(_slots(30, 60, NOW.replace(hour=11, minute=0))), chart="none")
    rows = [line for line in out.splitlines() if line.startswith(("> ", "  2026"))]
    assert len(rows) == 25  # the running slot plus the next 24 h
    assert rows[0].startswith("> 2026-06-01 12:00 UTC")


def test_plan_without_plotext_falls_back_to_ascii(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> object:
        raise ImportError(name)

    monkeypatch.setattr(zapctl.importlib, "import_module", missing)
    out = format_plan(_plan(_slots(3, 60, NOW.replace(minute=0))), chart="auto")
    assert "battery kW (+ charge, - discharge)" in out


def test_no_plan_says_what_happens_instead() -> None:
    assert "fallback" in format_plan({"plan": None, "slots": []})


def test_status_and_devices_render_api_payloads() -> None:
    status = {
        "site_id": "s1",
        "version": "0.1.0",
        "pid": 42,
        "now": NOW.isoformat(),
        "uptime_s": 3700.0,
        "fallback": {"rung": "plan", "since": (NOW - timedelta(minutes=5)).isoformat(), "reason": "plan v3"},
        "link": {"state": "up", "last_upload": NOW.isoformat(), "outbox_depth": 12},
        "plan": {"version": 3, "slots": 96, "expired": False, "expires_in_s": 7200.0},
        "control": {"cycles": 10, "last_cycle_ms": 1.5, "writes": 2, "write_failures": 0, "setpoints": {}},
        "tasks": [{"name": "controller", "ok": True, "restarts": 0, "last_error": ""}],
        "readings_in": 99,
    }
    out = format_status(status)
    assert "plan since 2026-06-01 12:05:00 UTC (5m00s ago)" in out
    assert "outbox 12 readings" in out and "v3, 96 slots, expires in 2h00m" in out
    devices = {
        "devices": [
            {
                "der_id": "meter",
                "kind": "meter",
                "age_s": 1.2,
                "quality": "good",
                "fresh": True,
                "driver_ok": True,
                "values": {"power_w": 512.0},
            },
            {
                "der_id": "inv.battery",
                "kind": "battery",
                "age_s": None,
                "quality": None,
                "fresh": False,
                "driver_ok": False,
                "values": {},
            },
        ]
    }
    lines = format_devices(devices).splitlines()
    assert lines[1].split() == ["meter", "meter", "1.2s", "good", "fresh", "ok", "power_w=512"]
    assert lines[2].split() == ["inv.battery", "battery", "-", "-", "STALE", "FAILING"]


def test_devices_show_the_device_health_not_the_task() -> None:
    now = NOW.isoformat()
    refused = {
        "device": "inv",
        "state": "unreachable",
        "since": (NOW - timedelta(minutes=3)).isoformat(),
        "reason": "connection refused at 127.0.0.1:1502",
        "last_error": "connection refused at 127.0.0.1:1502",
        "errors": 7,
        "task_ok": True,
        "restarts": 0,
    }
    data = {
        "now": now,
        "devices": [
            {
                "der_id": "inv.battery",
                "kind": "battery",
                "age_s": None,
                "quality": None,
                "fresh": False,
                "driver_ok": True,  # the task runs: that alone used to print "ok"
                "health": {k: refused[k] for k in ("state", "since", "reason", "last_error", "errors")},
                "values": {},
            }
        ],
        "device_health": [refused],
    }
    der_table, device_table = format_devices(data).split("\n\n")
    assert der_table.splitlines()[1].split() == ["inv.battery", "battery", "-", "-", "STALE", "UNREACHABLE"]
    header, row = device_table.splitlines()
    assert header.split() == ["DEVICE", "HEALTH", "SINCE", "ERRORS", "RESTARTS", "REASON"]
    assert row.startswith("inv ") and "UNREACHABLE" in row and "(3m00s ago)" in row
    assert row.split()[-6:-3] == ["7", "0", "connection"] and row.endswith("connection refused at 127.0.0.1:1502")


def test_a_bad_reading_shouts_in_devices() -> None:
    """A reading the drivers' guard refused (NaN, ±Inf, out of range) is fresh but not to be trusted."""
    row = {"der_id": "gm.meter", "kind": "meter", "age_s": 0.4, "quality": "bad", "fresh": True, "driver_ok": True,
           "values": {"import_wh": 1234.0}}  # fmt: skip
    lines = format_devices({"devices": [row]}).splitlines()
    assert lines[1].split()[:5] == ["gm.meter", "meter", "0.4s", "BAD", "fresh"]


@pytest.fixture
def amsterdam(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The host's zone as TZ sets it (what /etc/localtime does on a gateway)."""
    monkeypatch.setenv("TZ", "Europe/Amsterdam")
    time.tzset()
    zapctl.set_display_zone(utc=False)
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("amsterdam")
def test_times_follow_the_host_zone_and_name_it() -> None:
    # 12:05 UTC on 1 June is 14:05 summer time in Amsterdam (CEST, UTC+2); in January, CET (UTC+1).
    out = format_status({"site_id": "s1", "fallback": {"rung": "plan", "since": "2026-06-01T12:05:00+00:00"}})
    assert "plan since 2026-06-01 14:05:00 CEST" in out
    assert zapctl._clock("2026-01-15T12:00:00Z") == "2026-01-15 13:00:00 CET"
    plan = format_plan(_plan(_slots(30, 60, NOW.replace(hour=11, minute=0))), chart="ascii")
    assert "> 2026-06-01 14:00 CEST" in plan
    assert "scale ±2.0 kW, CEST" in plan


@pytest.mark.usefixtures("amsterdam")
def test_utc_flag_overrides_the_host_zone(capsys: pytest.CaptureFixture[str]) -> None:
    parser = zapctl.build_parser()
    for argv in (["--utc", "status"], ["status", "--utc"]):
        args = parser.parse_args(argv)
        assert args.utc is True
    assert zapctl.main(["status", "--utc", "--socket", "/nonexistent/zapd.sock"]) == 1  # no daemon here
    assert "zapctl:" in capsys.readouterr().err
    assert zapctl._clock("2026-06-01T12:05:00+00:00") == "2026-06-01 12:05:00 UTC"
