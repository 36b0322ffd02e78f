"""Every kind of config error names the file, the key path and the reason; a good config loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from zapd.config import ConfigError, load_config

GOOD = """
[site]
id = "home-1"
fuse_a = 25

[[devices]]
driver = "modbus_tcp"
id = "inverter"
host = "127.0.0.1"
port = 5020
map = "sim_hybrid"

[devices.battery]
reserve_soc = 0.15

[[devices]]
driver = "p1_serial"
id = "meter"
port = "/dev/ttyUSB0"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "zapd.toml"
    path.write_text(text)
    return path


def errors(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert all(line.startswith(f"{path}: ") for line in info.value.lines)
    return [line.removeprefix(f"{path}: ") for line in info.value.lines]


def test_good_config_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.site.id == "home-1"
    assert config.site.fuse_limit_w == pytest.approx(25 * 230 * 3)
    assert [d.id for d in config.devices] == ["inverter", "meter"]
    assert config.devices[0].battery.reserve_soc == 0.15  # type: ignore[union-attr]


def test_example_config_is_valid() -> None:
    example = Path(__file__).parents[2] / "config" / "zapd.example.toml"
    config = load_config(example)
    assert config.devices, "the example should show at least one device"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace('id = "home-1"', 'id = "home-1"\ncolour = "red"'), "site.colour: unknown key"),
        (GOOD.replace("fuse_a = 25", 'fuse_a = "big"'), "site.fuse_a: input should be a valid number"),
        (GOOD.replace("fuse_a = 25", "fuse_a = -1"), "site.fuse_a: input should be greater than 0"),
        (
            GOOD.replace("port = 5020", "port = 70000"),
            "devices.inverter.port: input should be less than or equal to 65535",
        ),
        (GOOD.replace("fuse_a = 25", ""), "site.fuse_a: missing required key"),
        (GOOD.replace('driver = "p1_serial"', 'driver = "zigbee"'), "devices.meter.driver: unknown driver 'zigbee'"),
        (GOOD.replace('id = "meter"', 'id = "inverter"'), "devices[1].id: duplicate device id 'inverter'"),
        (
            GOOD.replace("reserve_soc = 0.15", "reserve_soc = 1.5"),
            "devices.inverter.battery.reserve_soc: input should be less than or equal to 1",
        ),
        (GOOD + "\n[cloud]\nurl = 'ftp://x'\npublic_key = 'k'\n", "cloud.url: string should match pattern"),
    ],
)
def test_each_error_kind_is_named(tmp_path: Path, text: str, expected: str) -> None:
    lines = errors(tmp_path, text)
    assert any(line.startswith(expected) for line in lines), lines


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("fuse_a = 25", "fuse_a = -1\nextra = 1").replace("port = 5020", "port = 0")
    lines = errors(tmp_path, text)
    assert len(lines) == 3, lines


def test_syntax_error_names_file(tmp_path: Path) -> None:
    lines = errors(tmp_path, "[site\nid=")
    assert lines[0].startswith("(syntax):")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert "cannot read" in info.value.lines[0]


def test_config_check_cli_exit_codes(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD)
    ok = subprocess.run(
        [sys.executable, "-m", "zapd.cli", "config", "check", str(good)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("fuse_a = 25", "fuse_a = 0"))
    res = subprocess.run(
        [sys.executable, "-m", "zapd.cli", "config", "check", str(bad)], capture_output=True, text=True
    )
    assert res.returncode == 2
    assert res.stderr.strip() == f"{bad}: site.fuse_a: input should be greater than 0"
