"""The driver registry: the config union, the driver names and the builders all come from it, and a
family's heavy libraries load only when a config uses that family."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal, get_args

import pytest

from drivers.config_base import DeviceModel
from drivers.registry import DriverKind, RegistryError, device_models, kinds, register
from zapd.config import DRIVER_NAMES, ZapdConfig


def test_the_config_union_is_the_registry() -> None:
    union = ZapdConfig.model_fields["devices"].annotation
    (annotated,) = get_args(union)
    models = set(get_args(get_args(annotated)[0]))
    assert models == set(device_models())
    assert tuple(k.name for k in kinds()) == DRIVER_NAMES
    # every family the brief names registered itself, from its own module
    assert {k.family for k in kinds()} >= {"modbus", "sunspec", "modbus_ev", "p1", "mqtt", "ocpp"}
    for k in kinds():
        assert k.model.__module__.startswith("drivers."), k
        assert callable(k.build()), k.factory


def test_a_registration_must_match_its_model() -> None:
    class Odd(DeviceModel):
        driver: Literal["odd"]
        id: str

    with pytest.raises(RegistryError, match="Literal"):
        register(DriverKind("not_odd", "test", Odd, "x:y"))
    taken = kinds()[0]
    other = type("Other", (taken.model,), {})
    with pytest.raises(RegistryError, match="registered by"):
        register(DriverKind(taken.name, "test", other, "x:y"))


def _imported_after_build(toml: str) -> set[str]:
    """Top-level modules a fresh interpreter has loaded after building this config's devices."""
    code = textwrap.dedent(
        f"""
        import sys, tomllib
        from zapd.clock import SystemClock
        from zapd.config import validate_config
        from zapd.devices import build_devices
        build_devices(validate_config(tomllib.loads({toml!r}), "t"), SystemClock())
        print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}})))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(out.stdout.split())


SITE = '[site]\nid = "s"\nfuse_a = 25\n'


def test_a_modbus_site_does_not_load_dsmr_ocpp_or_mqtt() -> None:
    loaded = _imported_after_build(
        SITE + '[[devices]]\ndriver = "modbus_meter_tcp"\nid = "m"\nhost = "127.0.0.1"\nmap = "eastron_sdm630"\n'
    )
    assert "pymodbus" in loaded
    assert not loaded & {"dsmr_parser", "ocpp", "websockets", "aiomqtt", "paho"}, loaded


def test_a_p1_site_loads_dsmr_but_not_modbus_or_ocpp() -> None:
    p1 = '[[devices]]\ndriver = "p1_tcp"\nid = "p1"\nhost = "127.0.0.1"\nport = 2000\n'
    loaded = _imported_after_build(SITE + p1)
    assert "dsmr_parser" in loaded
    assert not loaded & {"pymodbus", "ocpp", "websockets", "aiomqtt"}, loaded


def test_the_shared_modules_name_no_device_kind() -> None:
    """zapd/devices.py and zapd/config_check.py loop over the registry: a new protocol edits neither."""
    import zapd

    root = Path(zapd.__file__).parent
    for module in ("devices.py", "config_check.py"):
        text = (root / module).read_text()
        for k in kinds():
            assert k.model.__name__ not in text, f"zapd/{module} names {k.model.__name__}"


def test_a_family_contributes_its_own_config_checks() -> None:
    """The P1 family's checks (drivers/p1/checks.py) run through the registry in `zapd config check`."""
    from zapd.config_check import check_data

    doc = {
        "site": {"id": "s", "fuse_a": 25},
        "devices": [{"driver": "p1_tcp", "id": "p1", "host": "127.0.0.1", "port": 2000, "decryption_key": "zz"}],
    }
    result = check_data(doc, "t")
    assert any("devices.p1.decryption_key" in line and "not hex" in line for line in result.errors), result.errors


TOY_FAMILY = '''
"""A protocol zapd has never heard of, as one module: its config model, its factory, its registration."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from drivers.config_base import DeviceId, DeviceModel, MeterDer
from drivers.registry import DriverKind, register
from zapd.model import DerKind


class ToyMeter:  # behaviour in a pydantic-free mixin, so the daemon's generated struct has it too
    __slots__ = ()

    def meter_ders(self) -> list[MeterDer]:
        return [MeterDer(self.id, "grid", f"devices.{self.id}")]


class ToyDevice(ToyMeter, DeviceModel):
    driver: Literal["toy"] = Field(description="A toy meter on a made-up protocol. Its DER is `<id>`.")
    id: DeviceId
    host: str = Field(min_length=1, description="Where the toy is.")


def build(out, dev, clock):
    out.kinds[dev.id] = DerKind.METER
    out.poll_s[dev.id] = 1.0


register(DriverKind("toy", "toy", ToyDevice, f"{__name__}:build"))
'''


def test_a_new_protocol_is_one_module_registering_itself(tmp_path: Path) -> None:
    """A package dropped next to drivers/*, with only a family.py, is in the config union, the docs,
    `zapd config check` (its meter counts as the site's grid meter) and the daemon's generated structs
    (once `make docs` has written them: until then the check says so instead of building it)."""
    root = tmp_path
    (root / "toyproto").mkdir()
    (root / "toyproto" / "__init__.py").write_text("")
    (root / "toyproto" / "family.py").write_text(TOY_FAMILY)
    code = textwrap.dedent(
        f"""
        import drivers
        drivers.__path__.append({str(root)!r})  # as if drivers/toyproto/ had been added
        from zapd.clock import SystemClock
        from zapd.config import DRIVER_NAMES
        from zapd.config_check import check_data
        from zapd.config_doc import render_reference
        from zapd.config_gen import render
        from zapd.devices import DeviceSet
        assert "toy" in DRIVER_NAMES, DRIVER_NAMES
        doc = {{"site": {{"id": "s", "fuse_a": 25}}, "devices": [{{"driver": "toy", "id": "t", "host": "h"}}]}}
        result = check_data(doc, "t")
        assert result.errors == ["t: devices.t.driver: driver 'toy' is registered but the daemon's config structs "
                                 "(drivers/config_structs.py) do not have it: run `make docs`"], result.errors
        assert result.config.grid_meter == "t"
        structs = "\\n".join(render().values())
        assert "class ToyDevice(\\n    ToyMeter,\\n    DeviceBehaviour,\\n    msgspec.Struct," in structs, structs
        assert '"toy": "drivers.toyproto.family:build"' in structs, structs
        import importlib, pathlib, sys
        device_side = next(text for path, text in render().items() if path.parent.name == "drivers")
        pathlib.Path({str(root)!r}, "toy_structs.py").write_text(device_side)
        sys.path.insert(0, {str(root)!r})
        toy = importlib.import_module("toy_structs").ToyDevice(id="t", host="h")
        out = DeviceSet()
        __import__("drivers.toyproto.family", fromlist=["build"]).build(out, toy, SystemClock())
        assert toy.meter_ders()[0].der_id == "t" and out.kinds == {{"t": "meter"}}
        assert 'A toy meter on a made-up protocol' in render_reference()
        bad = check_data({{"site": {{"id": "s", "fuse_a": 25}}, "devices": [{{"driver": "toy", "id": "t"}}]}}, "t")
        assert any("devices.t.host" in line for line in bad.errors), bad.errors
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
