"""Every number in the config is finite and bounded, in the models and in the daemon's structs.

TOML has `inf` and `nan`. Before this, `[devices.battery] max_charge_w = inf` passed `zapd config
check` ("ok") and the envelope took the limit as unknown (the battery was never dispatched), an MQTT
reading's `scale` took nan, and `site.max_export_w`, `store.retention_mb` and a command's
`safe_value` had no upper bound. The walk below covers every number field of every config model
(the site's and every driver family's in the registry), so a field added later without a bound
fails here until it gets one or a written reason.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import annotated_types as at
import msgspec
import pytest
from pydantic import BaseModel

import drivers.config_structs
import zapd.config_structs
from drivers.config_base import BatteryLimits
from drivers.registry import kinds
from tests.unit.test_config_check import INVERTER
from zapd.config import ZapdConfig
from zapd.config_check import check_data
from zapd.config_gen import _models

SRC = "z.toml"

# (model, field) -> why it needs no upper bound. Empty: every number has one.
UNBOUNDED_OK: dict[tuple[str, str], str] = {}


def _all_models() -> list[type[BaseModel]]:
    out: list[type[BaseModel]] = []
    for root in [ZapdConfig, *(k.model for k in kinds())]:
        out += [m for m in _models(root) if m not in out]
    return out


def _numeric(tp: Any) -> bool:
    """A number field: int or float, alone or in a union (bool and Literal[1, 3] are not numbers here)."""
    if tp in (int, float):
        return True
    if get_origin(tp) in (Union, types.UnionType):
        return any(_numeric(a) for a in get_args(tp))
    return False


def _numbers_inside(tp: Any) -> bool:
    """A container (list, dict, tuple) of numbers: its bounds would sit on the items, which the walk does not read."""
    return get_origin(tp) in (list, dict, tuple) and any(a in (int, float) or _numbers_inside(a) for a in get_args(tp))


NUMBER_FIELDS = [
    (model, name, info)
    for model in _all_models()
    for name, info in model.model_fields.items()
    if _numeric(info.annotation)
]


def _struct(name: str) -> type[msgspec.Struct]:
    for module in (zapd.config_structs, drivers.config_structs):
        if hasattr(module, name):
            cls = getattr(module, name)
            assert isinstance(cls, type) and issubclass(cls, msgspec.Struct)
            return cls
    raise AssertionError(f"no generated struct {name}")


def test_the_walk_sees_every_family_and_the_known_unbounded_fields() -> None:
    names = {(m.__name__, n) for m, n, _ in NUMBER_FIELDS}
    # The fields the audit found unbounded are in the walk (so the checks below cover them).
    for key in [
        ("BatteryLimits", "max_charge_w"),
        ("BatteryLimits", "capacity_wh"),
        ("SiteConfig", "max_export_w"),
        ("StoreConfig", "retention_mb"),
        ("MqttReadingConfig", "scale"),
        ("MqttCommandConfig", "safe_value"),
    ]:
        assert key in names
    assert len(NUMBER_FIELDS) > 40


@pytest.mark.parametrize("model", _all_models(), ids=lambda m: m.__name__)
def test_every_model_refuses_inf_and_nan(model: type[BaseModel]) -> None:
    assert model.model_config.get("allow_inf_nan") is False, f"{model.__name__} accepts inf/nan"
    for name, info in model.model_fields.items():
        assert not _numbers_inside(info.annotation), f"{model.__name__}.{name}: numbers in a container; bound items"


@pytest.mark.parametrize(
    ("model", "name", "info"), [pytest.param(*f, id=f"{f[0].__name__}.{f[1]}") for f in NUMBER_FIELDS]
)
def test_every_number_field_is_bounded_above_in_model_and_struct(model: type[BaseModel], name: str, info: Any) -> None:
    if (model.__name__, name) in UNBOUNDED_OK:
        return
    upper = [m for m in info.metadata if isinstance(m, at.Le | at.Lt)]
    assert upper, f"{model.__name__}.{name} has no upper bound"
    # The daemon's struct (generated) carries the same bound: msgspec refuses what the model refuses.
    field = next(f for f in msgspec.inspect.type_info(_struct(model.__name__)).fields if f.name == name)
    arms = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
    numbers = [a for a in arms if isinstance(a, msgspec.inspect.FloatType | msgspec.inspect.IntType)]
    assert numbers and all(a.le is not None or a.lt is not None for a in numbers), (model.__name__, name, field)


MQTT: dict[str, Any] = {
    "driver": "mqtt",
    "id": "mq",
    "host": "127.0.0.1",
    "ders": [
        {"id": "grid", "kind": "meter", "readings": [{"topic": "m/p", "key": "power_w"}]},
        {
            "id": "ev",
            "kind": "ev_charger",
            "readings": [{"topic": "e/p", "key": "power_w"}],
            "ev": {"max_current_a": 16},
        },
    ],
    "commands": [{"der": "ev", "topic": "e/set"}],
}
BASE: dict[str, Any] = {"site": {"id": "home", "fuse_a": 25, "max_export_w": 3000}, "devices": [INVERTER, MQTT]}


def _with(dotted: str, value: object) -> dict[str, Any]:
    out = copy.deepcopy(BASE)
    node: Any = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[last] = value
    return out


def test_the_base_is_clean() -> None:
    result = check_data(copy.deepcopy(BASE), SRC)
    assert result.errors == [], result.errors


INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    ("dotted", "value", "expected"),
    [
        (
            "devices.0.battery.max_charge_w",
            INF,
            "devices.inverter.battery.max_charge_w: must be a finite number, not inf",
        ),
        ("devices.0.battery.max_discharge_w", INF, "devices.inverter.battery.max_discharge_w: must be a finite number"),
        ("devices.0.battery.capacity_wh", INF, "devices.inverter.battery.capacity_wh: must be a finite number"),
        (
            "devices.0.battery.max_charge_w",
            NAN,
            "devices.inverter.battery.max_charge_w: must be a finite number, not nan",
        ),
        (
            "devices.0.battery.max_charge_w",
            2e7,
            "devices.inverter.battery.max_charge_w: input should be less than or equal to 10000000",
        ),
        (
            "devices.0.battery.capacity_wh",
            1e9,
            "devices.inverter.battery.capacity_wh: input should be less than or equal to 100000000",
        ),
        (
            "devices.1.ders.0.readings.0.scale",
            NAN,
            "devices.mq.ders.grid.readings[0].scale: must be a finite number, not nan",
        ),
        (
            "devices.1.ders.0.readings.0.scale",
            -INF,
            "devices.mq.ders.grid.readings[0].scale: must be a finite number, not -inf",
        ),
        (
            "devices.1.ders.0.readings.0.scale",
            1e9,
            "devices.mq.ders.grid.readings[0].scale: input should be less than or equal to 1000000",
        ),
        (
            "devices.1.commands.0.safe_value",
            500,
            "devices.mq.commands[0].safe_value: input should be less than or equal to 80",
        ),
        ("devices.1.commands.0.safe_value", INF, "devices.mq.commands[0].safe_value: must be a finite number"),
        ("site.max_export_w", 1e12, "site.max_export_w: input should be less than or equal to 10000000"),
        ("site.max_export_w", INF, "site.max_export_w: must be a finite number, not inf"),
        ("store.retention_mb", 1e9, "store.retention_mb: input should be less than or equal to 65536"),
        ("store.retention_mb", INF, "store.retention_mb: must be a finite number"),
        ("site.fuse_a", NAN, "site.fuse_a: must be a finite number, not nan"),
    ],
)
def test_inf_nan_and_over_bound_values_name_the_key(dotted: str, value: float, expected: str) -> None:
    result = check_data(_with(dotted, value), SRC)
    assert any(line.startswith(f"{SRC}: {expected}") for line in result.errors), result.errors
    assert result.config is None


@pytest.mark.parametrize(("toml_value", "shown"), [("inf", "inf"), ("nan", "nan"), ("+inf", "inf"), ("20000000", None)])
def test_config_check_cli_refuses_an_infinite_battery_limit(tmp_path: Path, toml_value: str, shown: str | None) -> None:
    path = tmp_path / "zapd.toml"
    path.write_text(
        '[site]\nid = "home"\nfuse_a = 25\n[[devices]]\ndriver = "modbus_tcp"\nid = "inverter"\n'
        f'host = "127.0.0.1"\nport = 1502\nmap = "sim_hybrid"\n[devices.battery]\nmax_charge_w = {toml_value}\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "zapd.cli", "config", "check", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    reason = f"must be a finite number, not {shown}" if shown else "input should be less than or equal to 10000000"
    assert f"{path}: devices.inverter.battery.max_charge_w: {reason}" in done.stderr, done.stderr


@pytest.mark.parametrize("cls", [BatteryLimits, drivers.config_structs.BatteryLimits], ids=["model", "struct"])
@pytest.mark.parametrize("garbled", [INF, NAN, -INF, 2e7, 0.0, -5.0])
def test_a_garbled_nameplate_says_nothing_in_model_and_struct(cls: Any, garbled: float) -> None:
    """A device's reported limit that the config itself could not hold (inf, nan, above 10 MW) is "not said":
    the config's own limit stands, and the pydantic model does not raise where the struct would not."""
    plate = cls.nameplate(capacity_wh=garbled * 10, max_charge_w=garbled, max_discharge_w=garbled)
    assert (plate.capacity_wh, plate.max_charge_w, plate.max_discharge_w) == (None, None, None)
    mine = cls(max_charge_w=3000.0, max_discharge_w=4000.0, capacity_wh=10_000.0)
    kept = mine.within(plate)
    assert (kept.max_charge_w, kept.max_discharge_w, kept.capacity_wh) == (3000.0, 4000.0, 10_000.0)
    sane = cls.nameplate(capacity_wh=9000.0, max_charge_w=2500.0, max_discharge_w=5000.0)
    assert mine.within(sane).max_charge_w == 2500.0 and mine.within(sane).capacity_wh == 9000.0
