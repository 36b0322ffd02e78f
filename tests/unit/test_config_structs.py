"""The daemon's config structs are the pydantic models' twins, generated, never written by hand (issue 15).

`zapd run` checks the file with the models in a child and runs on msgspec Structs generated from
them (zapd/config_gen.py, zapd/config_load.py), so pydantic stays out of its process. These tests
hold the two to one model: the generated files are current, a validated config has the same keys
and values in both, the behaviour (meter DERs, the fuse limit, serial lines) answers alike, a
model that grows a method of its own cannot be generated, and `zapd run` reports a bad file as
`zapd config check` does.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Literal

import msgspec
import pytest
from pydantic import Field

from drivers.config_base import DeviceModel
from drivers.config_types import ChargerLimit
from zapd import config_gen
from zapd.config import ZapdConfig
from zapd.config_load import as_builtins, decode_config, to_structs

REPO = Path(__file__).resolve().parents[2]

# One of each kind of table: RTU and TCP Modbus, SunSpec with a meter, an EV charger, MQTT with a
# charger, OCPP, both P1 kinds, a cloud and Home Assistant (public key: 32 zero bytes in base64).
RICH = textwrap.dedent(
    """
    [site]
    id = "rich-site"
    fuse_a = 35
    phases = 3
    max_export_w = 4000
    [control]
    tick_s = 5
    [store]
    state_dir = "/var/lib/zapd"
    [cloud]
    url = "https://cloud.example"
    public_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    [home_assistant]
    enabled = true
    [[devices]]
    driver = "modbus_rtu"
    id = "inv"
    port = "/dev/ttyUSB0"
    map = "sim_hybrid"
    unit_id = 2
    [devices.battery]
    reserve_soc = 0.2
    [[devices]]
    driver = "sunspec_tcp"
    id = "ss"
    host = "10.0.0.5"
    has_meter = true
    meter_role = "pv"
    [[devices]]
    driver = "modbus_ev"
    id = "eve"
    host = "10.0.0.6"
    [devices.ev]
    max_current_a = 16
    [[devices]]
    driver = "mqtt"
    id = "broker"
    host = "127.0.0.1"
    [[devices.ders]]
    id = "car"
    kind = "ev_charger"
    readings = [{ key = "power_w", topic = "car/power" }]
    [devices.ders.ev]
    max_current_a = 32
    phases = 1
    [[devices.commands]]
    der = "car"
    topic = "car/set"
    [[devices]]
    driver = "ocpp"
    id = "cs"
    host = "0.0.0.0"
    [[devices.charge_points]]
    id = "CP1"
    max_current_a = 16
    [[devices]]
    driver = "p1_tcp"
    id = "grid"
    host = "10.0.0.7"
    port = 2001
    [[devices]]
    driver = "p1_serial"
    id = "sub"
    port = "/dev/ttyUSB1"
    role = "submeter"
    """
)


def _model(text: str) -> ZapdConfig:
    return ZapdConfig.model_validate(tomllib.loads(text))


def test_the_generated_structs_are_current() -> None:
    assert config_gen.main(["--check"]) == 0, "zapd/config_structs.py or drivers/config_structs.py is stale"


@pytest.mark.parametrize("source", ["rich", "example"])
def test_a_validated_config_has_the_same_keys_and_values_as_struct_and_model(source: str) -> None:
    text = RICH if source == "rich" else (REPO / "config" / "zapd.example.toml").read_text()
    model = _model(text)
    structs = to_structs(model)
    assert as_builtins(structs) == model.model_dump(mode="json")
    # every table, nested ones included, is a struct: no dict slipped through
    assert all(isinstance(dev, msgspec.Struct) for dev in structs.devices)


def _chargers(limits: list[ChargerLimit]) -> list[tuple[str, float, float, int, float, float]]:
    """A device's charger limits as plain numbers (the model's and the struct's are different classes)."""
    return [(k, e.max_current_a, e.min_current_a, e.phases, e.voltage_v, e.w_per_a) for k, e in limits]


def test_the_behaviour_answers_alike_on_struct_and_model() -> None:
    model = _model(RICH)
    structs = to_structs(model)
    assert structs.site.fuse_limit_w == model.site.fuse_limit_w == 35 * 230 * 3
    assert structs.grid_meter == model.grid_meter == "grid"
    for dev_s, dev_m in zip(structs.devices, model.devices, strict=True):
        assert dev_s.driver == dev_m.driver
        assert dev_s.meter_ders() == dev_m.meter_ders()
        assert dev_s.serial_port() == dev_m.serial_port()
        assert dev_s.serial_line() == dev_m.serial_line()
        assert _chargers(dev_s.charger_limits()) == _chargers(dev_m.charger_limits())
    cp = structs.devices[4].charge_points[0]  # type: ignore[union-attr]
    assert cp.fallback_current_a == model.devices[4].charge_points[0].fallback_current_a  # type: ignore[attr-defined]


def test_the_structs_recheck_bounds_and_unknown_keys() -> None:
    """The child's JSON is decoded strictly: a value out of the models' bounds or a stray key is refused."""
    good = to_structs(_model(RICH))
    data = as_builtins(good)
    data["site"]["fuse_a"] = -1
    with pytest.raises(msgspec.ValidationError, match=r"site.fuse_a"):
        decode_config(msgspec.json.encode(data))
    data = as_builtins(good)
    data["control"]["tick"] = 5
    with pytest.raises(msgspec.ValidationError, match="unknown field `tick`"):
        decode_config(msgspec.json.encode(data))


def test_a_model_with_a_method_of_its_own_cannot_be_generated() -> None:
    """Behaviour written on the model would be missing from the struct: the generator refuses it."""

    class Drifting(DeviceModel):
        driver: Literal["drifting"] = Field(description="x")
        id: str

        def meter_ders(self) -> list:  # type: ignore[type-arg]
            return []

    with pytest.raises(TypeError, match="Drifting defines meter_ders itself"):
        config_gen._class(Drifting)


def _zapd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zapd.cli", *args], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )


def test_zapd_run_reports_a_bad_file_as_the_check_does(tmp_path: Path) -> None:
    """The check runs in a child now: its `file: key: reason` lines still reach the operator, and exit 2."""
    path = tmp_path / "zapd.toml"
    path.write_text(
        textwrap.dedent(
            """
            [site]
            id = "s"
            fuse_a = 2000
            [control]
            tick = 5
            [[devices]]
            driver = "p1_tcp"
            id = "grid"
            host = ""
            port = 99999
            """
        )
    )
    run = _zapd("run", "--config", str(path))
    check = _zapd("config", "check", str(path))
    assert run.returncode == check.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.startswith(str(path))]
    assert lines == [line for line in check.stderr.splitlines() if line.startswith(str(path))]
    assert f"{path}: site.fuse_a: input should be less than or equal to 1000" in lines
    assert any(line.startswith(f"{path}: control.tick:") for line in lines), lines
    assert f"{path}: devices.grid.port: input should be less than or equal to 65535" in lines


def test_what_the_check_prints_goes_to_stderr_and_stdout_holds_only_the_config(
    monkeypatch: pytest.MonkeyPatch, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    """A log line printed during the check (a driver's factory, say) must not corrupt the JSON the daemon reads."""
    from zapd import cli, config_load

    def noisy(path: Path, *, allow_insecure: bool = False) -> ZapdConfig:
        print("modbus.bus created host=10.0.0.5")  # to sys.stdout, as structlog's default logger writes
        return _model(RICH)

    monkeypatch.setattr(cli, "load_or_report", noisy)
    assert config_load.main(["zapd.toml"]) == 0
    out, err = capfdbinary.readouterr()
    assert decode_config(out) == to_structs(_model(RICH))
    assert b"modbus.bus created" in err
