"""`zapd config check` catches what would break (issue 10, item 4).

Each case is a mistake an installer made in the issue: a map typo that passed the check and then
killed `zapd run` with a traceback, unit mix-ups, a URL for a host, a 60 s tick against the 30 s
watchdog, a 32 A charger on a 25 A fuse, a bad decryption key, a missing serial port, the example's
placeholder key, `reserve_soc = 10`, and devices named by index.
"""

from __future__ import annotations

import asyncio
import configparser
import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from zapd.clock import SystemClock
from zapd.config import ConfigError, validate_config
from zapd.config_check import WATCHDOG_S, CheckResult, check_data, check_file, host_problem
from zapd.devices import build_devices

ROOT = Path(__file__).resolve().parents[2]
SRC = "z.toml"
INVERTER: dict[str, Any] = {
    "driver": "modbus_tcp",
    "id": "inverter",
    "host": "192.168.1.50",
    "map": "sim_hybrid",
    "battery": {"reserve_soc": 0.1, "capacity_wh": 10000, "max_charge_w": 5000},
}
METER: dict[str, Any] = {"driver": "p1_tcp", "id": "meter", "host": "192.168.1.60", "port": 2000}
BASE: dict[str, Any] = {"site": {"id": "home", "fuse_a": 25, "max_export_w": 3000}, "devices": [INVERTER, METER]}


def doc(**changes: Any) -> dict[str, Any]:
    """BASE with dotted keys set, e.g. doc(**{"devices.0.map": "x"}); a value of ... deletes the key."""
    out = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node: Any = out
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return out


def check(**changes: Any) -> CheckResult:
    return check_data(doc(**changes), SRC)


def error(**changes: Any) -> str:
    result = check(**changes)
    assert len(result.errors) == 1, result.errors
    return result.errors[0]


def warning(**changes: Any) -> str:
    result = check(**changes)
    assert result.errors == [] and len(result.warnings) == 1, (result.errors, result.warnings)
    return result.warnings[0]


def test_the_base_is_clean() -> None:
    result = check()
    assert result.errors == [] and result.warnings == []


# --- names resolved, devices named by id, did you mean -------------------------------------------------


def test_a_map_typo_fails_the_check_with_a_suggestion() -> None:
    line = error(**{"devices.0.map": "sim_hybird"})
    assert line.startswith(
        f"{SRC}: devices.inverter.map: unknown register map 'sim_hybird'; did you mean 'sim_hybrid'?"
    )


def test_an_ev_map_typo_and_a_missing_map_file() -> None:
    ev = {
        "driver": "modbus_ev",
        "id": "wallbox",
        "host": "192.168.1.70",
        "map": "alfen_eeve",
        "ev": {"max_current_a": 16},
    }
    result = check_data({**BASE, "devices": [*BASE["devices"], ev]}, SRC)
    assert result.errors == [f"{SRC}: devices.wallbox.map: " + result.errors[0].split(".map: ", 1)[1]]
    assert "did you mean 'alfen_eve'?" in result.errors[0]
    assert error(**{"devices.0.map": "/nonexistent/my.toml"}).endswith(
        "register map file /nonexistent/my.toml not found"
    )


def test_a_map_that_does_not_fit_the_device_fails_as_zapd_run_would() -> None:
    # alfen_eve is a real map, of a charger: the inverter driver needs battery_soc / battery_power.
    line = error(**{"devices.0.map": "alfen_eve"})
    assert line.startswith(f"{SRC}: devices.inverter.map: cannot be used:"), line
    assert "battery_soc" in line


@pytest.mark.parametrize("cmd", [["config", "check"], ["devices", "scan", "--config"]])
def test_cli_reports_a_map_typo_without_a_traceback(tmp_path: Path, cmd: list[str]) -> None:
    path = tmp_path / "zapd.toml"
    path.write_text(
        '[site]\nid = "home"\nfuse_a = 25\n[[devices]]\ndriver = "modbus_tcp"\nid = "inverter"\n'
        'host = "127.0.0.1"\nport = 9\nmap = "sim_hybird"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "zapd.cli", *cmd, str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{path}: devices.inverter.map: unknown register map 'sim_hybird'; did you mean 'sim_hybrid'?" in done.stderr


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"devices.0.battery.reserv_soc": 0.2},
            "devices.inverter.battery.reserv_soc: unknown key; did you mean 'reserve_soc'?",
        ),
        ({"devices.1.dsmr_verison": "4"}, "devices.meter.dsmr_verison: unknown key; did you mean 'dsmr_version'?"),
        ({"site.fuse_a": ..., "site.fuse_amps": 25}, "site.fuse_amps: unknown key; did you mean 'fuse_a'?"),
        ({"control.tik_s": 5}, "control.tik_s: unknown key; did you mean 'tick_s'?"),
        (
            {"devices.1.dsmr_version": "5l"},
            "devices.meter.dsmr_version: input should be '2.2', '4', '5', '5B', '5L', '5S' or 'Q3D'; "
            "did you mean '5L'?",
        ),
        ({"devices.0.driver": "modbus_tpc"}, "devices.inverter.driver: unknown driver 'modbus_tpc'"),
        (
            {"log.level": "warn"},
            "log.level: input should be 'debug', 'info', 'warning' or 'error'; did you mean 'warning'?",
        ),
        ({"devices.0.port": 0}, "devices.inverter.port: input should be greater than or equal to 1"),
    ],
)
def test_errors_name_devices_by_id_and_suggest(changes: dict[str, Any], expected: str) -> None:
    lines = check(**changes).errors
    assert any(line.startswith(f"{SRC}: {expected}") for line in lines), lines


def test_an_unknown_driver_gets_a_suggestion() -> None:
    lines = check(**{"devices.0.driver": "modbus_tpc"}).errors
    assert any(line.endswith("did you mean 'modbus_tcp'?") for line in lines), lines


def test_devices_without_a_usable_id_fall_back_to_their_index() -> None:
    lines = check(**{"devices.1.id": "inverter"}).errors
    assert f"{SRC}: devices[1].id: duplicate device id 'inverter' (first at devices[0])" in lines


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"devices.0.battery.reserve_soc": 10},
            "devices.inverter.battery.reserve_soc: input should be less than or equal to 1: "
            "a fraction 0..1, 0.1 for 10 %",
        ),
        (
            {"devices.0.battery.max_soc": 95},
            "devices.inverter.battery.max_soc: input should be less than or equal to 1: a fraction 0..1, 0.95 for 95 %",
        ),
        (
            {"control.fuse_margin": 90},
            "control.fuse_margin: input should be less than or equal to 1: a fraction 0..1, 0.9 for 90 %",
        ),
    ],
)
def test_a_percentage_for_a_fraction_says_so(changes: dict[str, Any], expected: str) -> None:
    assert f"{SRC}: {expected}" in check(**changes).errors


# --- plausibility -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"devices.0.battery.capacity_wh": 10},
            "devices.inverter.battery.capacity_wh: warning: 10 Wh — did you mean 10 kWh (10000)?",
        ),
        (
            {"devices.0.battery.max_charge_w": 5},
            "devices.inverter.battery.max_charge_w: warning: 5 W — did you mean 5 kW (5000)?",
        ),
        (
            {"devices.0.battery.max_discharge_w": 3.3},
            "devices.inverter.battery.max_discharge_w: warning: 3.3 W — did you mean 3.3 kW (3300)?",
        ),
        ({"site.max_export_w": 10}, "site.max_export_w: warning: 10 W — did you mean 10 kW (10000)?"),
    ],
)
def test_kilo_units_typed_as_base_units_warn_with_the_unit(changes: dict[str, Any], expected: str) -> None:
    assert warning(**changes).startswith(f"{SRC}: {expected}")


def test_zero_export_and_zero_charge_are_real_settings() -> None:
    result = check(**{"site.max_export_w": 0, "devices.0.battery.max_charge_w": 0})
    assert result.errors == [] and result.warnings == []


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("http://192.168.1.55/", "a host name or address, not a URL: write '192.168.1.55'"),
        ("modbus://inverter.local:502", "a host name or address, not a URL: write 'inverter.local'"),
        ("192.168.1.55:502", "a host name or address without the port: write '192.168.1.55' and port = 502"),
        ("192.168.1.55/24", "a host name or address, not a URL: write '192.168.1.55'"),
        ("my inverter", "not a host name or IP address"),
        ("192.168.1.300", "not a valid IP address (four numbers 0..255, e.g. 192.168.1.50)"),
    ],
)
def test_a_url_or_port_for_a_host_is_an_error(host: str, expected: str) -> None:
    assert error(**{"devices.0.host": host}) == f"{SRC}: devices.inverter.host: {expected}"


@pytest.mark.parametrize(
    "host", ["192.168.1.55", "fe80::1", "[fe80::1]", "inverter", "inverter.local", "gw-2.example.net.", "mqtt_broker"]
)
def test_real_hosts_pass(host: str) -> None:
    assert host_problem(host) is None


def test_home_assistant_and_metrics_hosts_are_checked_too() -> None:
    lines = check_data(
        {**BASE, "home_assistant": {"host": "mqtt://broker"}, "metrics": {"host": "127.0.0.1:9464"}}, SRC
    ).errors
    assert [line.split(": ")[1] for line in lines] == ["home_assistant.host", "metrics.host"]


@pytest.mark.parametrize(
    ("version", "interval"),
    # Telegram intervals from the DSMR P1 Companion Standards (4.x: 10 s, 5.0.2: 1 s; 2.2: 10 s) and the
    # Luxembourg / Swedish P1 documents cited in docs/decisions.md.
    [("2.2", 10.0), ("4", 10.0), ("5", 1.0), ("5B", 1.0), ("5L", 10.0), ("5S", 10.0)],
)
def test_p1_poll_defaults_from_the_dsmr_version(version: str, interval: float) -> None:
    changes = {"devices.1.dsmr_version": version}
    if version == "5L":
        changes["devices.1.decryption_key"] = "0F1E2D3C4B5A69788796A5B4C3D2E1F0"
    cfg = validate_config(doc(**changes), SRC)
    devices = build_devices(cfg, SystemClock())
    assert devices.poll_s["meter"] == interval
    (meter,) = [d for d in devices.drivers if getattr(d, "device_id", None) == "meter"]
    assert meter.poll_s == interval  # type: ignore[attr-defined]


def test_a_p1_poll_faster_than_the_meter_sends_warns() -> None:
    line = warning(**{"devices.1.dsmr_version": "4", "devices.1.poll_s": 1})
    assert line.startswith(f"{SRC}: devices.meter.poll_s: warning: DSMR 4 meters send a telegram every 10 s")
    assert check(**{"devices.1.poll_s": 1}).warnings == []  # DSMR 5 (the default) does send every second


def test_tick_against_the_watchdog_warns() -> None:
    line = warning(**{"control.tick_s": 60})
    assert line.startswith(f"{SRC}: control.tick_s: warning: 60 s: the systemd watchdog (WatchdogSec=30")
    assert "killed and restarted" in line
    assert "no margin" in warning(**{"control.tick_s": 20})
    assert check(**{"control.tick_s": 10}).warnings == []


def test_the_watchdog_figure_is_the_shipped_units() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "systemd" / "zapd.service")
    assert float(unit["Service"]["WatchdogSec"]) == WATCHDOG_S


def test_a_charger_above_the_fuse_warns_and_three_phases_on_one_is_an_error() -> None:
    ev = {"driver": "modbus_ev", "id": "wallbox", "host": "192.168.1.70", "ev": {"max_current_a": 32}}
    result = check_data({**BASE, "devices": [*BASE["devices"], ev]}, SRC)
    assert result.errors == []
    assert result.warnings == [
        f"{SRC}: devices.wallbox.ev.max_current_a: warning: 32 A is above the site's 25 A fuse: zapd keeps the "
        "site under its fuse, but a charger circuit cannot be rated above the main fuse; check the value"
    ]
    one_phase = {
        **BASE,
        "site": {**BASE["site"], "phases": 1},
        "devices": [*BASE["devices"], {**ev, "ev": {"max_current_a": 16}}],
    }
    assert check_data(one_phase, SRC).errors == [
        f"{SRC}: devices.wallbox.ev.phases: a 3-phase charger on a 1-phase grid connection (site.phases)"
    ]


def test_an_ocpp_charge_point_above_the_fuse_warns() -> None:
    ocpp = {"driver": "ocpp", "id": "ocpp", "host": "0.0.0.0", "charge_points": [{"id": "garage", "max_current_a": 32}]}
    result = check_data({**BASE, "devices": [*BASE["devices"], ocpp]}, SRC)
    assert result.errors == []
    assert [w.split(": warning: ")[0] for w in result.warnings] == [
        f"{SRC}: devices.ocpp.charge_points.garage.max_current_a"
    ]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("00112233445566778899AABBCCDDEEGG", "not hex ('G' is not a hex digit)"),
        ("0011223344556677", "32 hex digits (16 bytes, AES-128), this has 16"),
        ("0x00112233445566778899AABBCCDDEEFF", "not hex ('x' is not a hex digit)"),
    ],
)
def test_a_bad_decryption_key_is_an_error(key: str, expected: str) -> None:
    result = check(**{"devices.1.dsmr_version": "5L", "devices.1.decryption_key": key})
    assert result.errors == [f"{SRC}: devices.meter.decryption_key: {expected}"]


def test_decryption_key_placeholder_and_unused_key_warn() -> None:
    placeholder = warning(
        **{"devices.1.dsmr_version": "5L", "devices.1.decryption_key": "00112233445566778899AABBCCDDEEFF"}
    )
    assert "the example key" in placeholder
    unused = warning(**{"devices.1.decryption_key": "0F1E2D3C4B5A69788796A5B4C3D2E1F0"})
    assert "only Luxembourg meters (dsmr_version = '5L') encrypt" in unused


def test_a_missing_serial_port_warns_an_existing_one_does_not(tmp_path: Path) -> None:
    serial = {"driver": "p1_serial", "id": "meter", "port": str(tmp_path / "ttyUSB7")}
    result = check_data({**BASE, "devices": [INVERTER, serial]}, SRC)
    assert result.errors == []
    assert result.warnings == [
        f"{SRC}: devices.meter.port: warning: serial port {tmp_path / 'ttyUSB7'} does not exist (not plugged in?); "
        "zapd keeps retrying until it appears"
    ]
    (tmp_path / "ttyUSB7").touch()
    assert check_data({**BASE, "devices": [INVERTER, serial]}, SRC).warnings == []


def test_the_example_configs_placeholders_warn() -> None:
    result = check_file(ROOT / "config" / "zapd.example.toml")
    assert result.errors == [] and result.config is not None
    keys = {line.split(": ")[1] for line in result.warnings}
    assert {"cloud.public_key", "cloud.url"} <= keys, result.warnings
    assert "devices" not in keys  # the example names its grid meter


def test_warnings_exit_0_and_strict_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "zapd.toml"
    path.write_text(
        '[site]\nid = "home"\nfuse_a = 25\nmax_export_w = 10\n[[devices]]\ndriver = "p1_tcp"\nid = "meter"\n'
        'host = "127.0.0.1"\nport = 2000\n'
    )
    cmd = [sys.executable, "-m", "zapd.cli", "config", "check"]
    ok = subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0
    expected = f"{path}: site.max_export_w: warning: 10 W — did you mean 10 kW (10000)? zapd works in W"
    assert ok.stderr.strip() == expected
    assert ok.stdout.strip() == f"{path}: ok (1 devices, site home)"
    strict = subprocess.run([*cmd, "--strict", str(path)], capture_output=True, text=True, timeout=60)
    assert strict.returncode == 2 and strict.stderr.strip() == expected


def test_load_config_raises_only_on_errors() -> None:
    assert validate_config(doc(**{"site.max_export_w": 10}), SRC).site.max_export_w == 10
    with pytest.raises(ConfigError):
        validate_config(doc(**{"devices.0.map": "nope"}), SRC)


def test_zapd_run_under_systemd_refuses_a_tick_the_watchdog_would_kill(tmp_path: Path) -> None:
    from zapd.daemon import Daemon, StartupError
    from zapd.sdnotify import Notifier

    systemd = Notifier(env={"WATCHDOG_USEC": "30000000"})  # what WatchdogSec=30 hands the service
    slow = validate_config(doc(**{"control.tick_s": 60, "store.state_dir": str(tmp_path)}), SRC)
    with pytest.raises(StartupError, match=r"tick_s = 60 s is not below the systemd watchdog \(30 s"):
        asyncio.run(Daemon(slow, SystemClock(), notifier=systemd).run())
    assert not (tmp_path / "zapd.sqlite").exists()  # refused before touching anything
    Daemon(validate_config(doc(), SRC), SystemClock(), notifier=systemd)._check_watchdog()
    Daemon(slow, SystemClock(), notifier=Notifier(env={}))._check_watchdog()  # not under systemd: no watchdog
