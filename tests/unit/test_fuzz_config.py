"""Fuzzing config validation: any TOML-shaped document yields a config or ConfigError lines, nothing else.

Why: `zapd config check` and `zapd run` must answer a bad file with `file: key: reason` lines
(exit 2), never a traceback; an installer's typo is the most common input the daemon gets.
Two generators: random documents over the real key vocabulary (so validation goes deep), and
a valid config with one value replaced by something random (the realistic typo).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.modbus.bus import private_bus_registry
from zapd.clock import SystemClock
from zapd.config import ConfigError, ZapdConfig, meter_ders, validate_config
from zapd.config_check import check_data
from zapd.devices import build_devices

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOURCE = "/etc/zapd/zapd.toml"

KEYS = ["site", "control", "store", "plan", "cloud", "log", "api", "devices", "id", "fuse_a", "phases", "voltage_v",
        "max_export_w", "tick_s", "refresh_s", "deadband_w", "fuse_margin", "state_dir", "retention_days",
        "retention_mb", "url", "public_key", "batch_max", "driver", "host", "port", "unit_id", "map", "poll_s",
        "timeout_s", "battery", "reserve_soc", "max_soc", "dsmr_version", "ev", "max_current_a", "ders", "kind",
        "preset", "source", "readings", "topic", "key", "commands", "der", "level", "socket", "bogus", "role",
        "meter_role", "has_meter", "has_battery", "decryption_key", "capacity_wh", "max_charge_w",
        "max_discharge_w", "home_assistant", "metrics", "enabled", "phases", "charge_points"]  # fmt: skip
DRIVERS = ["modbus_tcp", "modbus_ev", "modbus_ev_rtu", "mqtt", "p1_serial", "p1_tcp", "modbus_rtu", "sunspec_tcp",
           "sunspec_rtu", "ocpp", "nope"]  # fmt: skip
# Values the checks look at by name: roles, maps (real, typo, missing path), hosts, keys, DSMR versions.
WORDS = ["grid", "pv", "ev", "submeter", "gird", "sim_hybrid", "sim_hybird", "alfen_eve", "/nope/map.toml",
         "http://192.0.2.1/", "192.0.2.1:502", "fe80::1", "5L", "4", "2.2", "00112233445566778899AABBCCDDEEFF",
         "shelly_em", "meter", "ev_charger", "+GEv0bL4PmjoQotIdAvYyRzNCv3oYdXBAuQsos/ahs0="]  # fmt: skip

# What tomllib can produce: str, int, float (incl. inf/nan), bool, datetimes, lists, tables.
scalars = (
    st.text(max_size=12)
    | st.integers(-(2**64), 2**64)
    | st.floats()
    | st.booleans()
    | st.sampled_from(DRIVERS)
    | st.sampled_from(WORDS)
    | st.datetimes()
)
keys = st.sampled_from(KEYS) | st.text(max_size=6)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)

VALID: dict[str, Any] = {
    "site": {"id": "home", "fuse_a": 25},
    "control": {"tick_s": 10},
    "store": {"state_dir": "/var/lib/zapd", "retention_mb": 64},
    "cloud": {"url": "https://cloud.example", "public_key": "A" * 43 + "="},
    "devices": [
        {"driver": "modbus_tcp", "id": "inverter", "host": "192.0.2.10", "map": "sim_hybrid",
         "battery": {"reserve_soc": 0.1}},
        {"driver": "p1_serial", "id": "meter", "port": "/dev/ttyUSB0"},
        {"driver": "modbus_ev", "id": "ev", "host": "192.0.2.11", "ev": {"max_current_a": 16}},
    ],
}  # fmt: skip


def check(doc: dict[str, Any]) -> None:
    try:
        config = validate_config(doc, SOURCE)
    except ConfigError as exc:
        assert exc.lines, "a ConfigError must say what is wrong"
        assert all(line.startswith(f"{SOURCE}: ") and len(line) > len(SOURCE) + 2 for line in exc.lines)
        return
    assert isinstance(config, ZapdConfig)
    # Whatever validates is usable: no NaN/inf reaches the controller's limits.
    site, control = config.site, config.control
    for x in (site.fuse_a, site.voltage_v, control.tick_s, control.refresh_s, control.deadband_w):
        assert math.isfinite(x), x
    # ... at most one grid meter, and `zapd run` can build every driver from it (no traceback later).
    assert sum(1 for m in meter_ders(config.devices) if m.role == "grid") <= 1
    with private_bus_registry():
        build_devices(config, SystemClock())
    result = check_data(doc, SOURCE)
    assert all(line.startswith(f"{SOURCE}: ") and ": warning: " in line for line in result.warnings)


def test_the_valid_base_config_validates() -> None:
    validate_config(VALID, SOURCE)


@FUZZ
@given(documents)
def test_random_documents_give_a_config_or_config_error_lines(doc: dict[str, Any]) -> None:
    check(doc)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        return {**node, head: _replace(node[head], rest, value)}
    copy = list(node)
    copy[head] = _replace(copy[head], rest, value)
    return copy


@FUZZ
@given(st.data())
def test_one_value_of_a_valid_config_replaced_by_anything(data: st.DataObject) -> None:
    paths = _paths(VALID)
    path = data.draw(st.sampled_from(paths))
    doc = _replace(VALID, path, data.draw(values | st.floats(allow_nan=True, allow_infinity=True)))
    check(doc)


def _run_check(raw: bytes) -> int:
    """`zapd config check` in process on a file holding `raw`: an exit code, never an exception."""
    from zapd.cli import build_parser

    def main(argv: list[str]) -> int:  # the CLI minus its logging set-up, which would leak into other tests
        args = build_parser().parse_args(argv)
        code: int = args.func(args)
        return code

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "zapd.toml"
        path.write_bytes(raw)
        code = main(["config", "check", str(path)])
        strict = main(["config", "check", "--strict", str(path)])
    assert code in (0, 2) and strict in (0, 2) and (code, strict) != (2, 0)
    return code


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_give_exit_0_or_2(raw: bytes) -> None:
    _run_check(raw)


@FUZZ
@given(documents)
def test_random_documents_as_toml_files_give_exit_0_or_2(doc: dict[str, Any]) -> None:
    _run_check(tomli_w.dumps(doc).encode())


@FUZZ
@given(st.data())
def test_one_value_of_a_valid_file_replaced_by_anything_gives_exit_0_or_2(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(_paths(VALID)))
    doc = _replace(VALID, path, data.draw(values))
    _run_check(tomli_w.dumps(doc).encode())


def test_the_valid_file_passes() -> None:
    assert _run_check(tomli_w.dumps(VALID).encode()) == 0
