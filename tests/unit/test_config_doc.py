"""The config reference in docs/ is generated from the schema, so it cannot drift from what zapd accepts.

`make test` runs in CI, which makes the first test the CI check: a schema change without `make docs`
fails here with the command that fixes it.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

import zapd.config
from zapd.config import load_config
from zapd.config_doc import iter_keys, main, render_reference

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "config-reference.md"
EXAMPLE = ROOT / "config" / "zapd.example.toml"


def test_committed_reference_is_up_to_date() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == render_reference(), (
        "docs/config-reference.md is out of date: run `make docs`"
    )


def test_rendering_is_deterministic() -> None:
    assert render_reference() == render_reference()


def _config_models() -> list[type[BaseModel]]:
    """Every model in zapd.config, found independently of the walk the reference uses."""
    return [
        cls
        for _, cls in inspect.getmembers(zapd.config, inspect.isclass)
        if issubclass(cls, BaseModel) and cls.__module__ == zapd.config.__name__ and cls.model_fields
    ]


def test_every_field_has_a_description() -> None:
    missing = [
        f"{model.__name__}.{name}"
        for model in _config_models()
        for name, info in model.model_fields.items()
        if not (info.description and info.description.strip())
    ]
    assert missing == []


def test_every_config_model_is_in_the_reference() -> None:
    reached = {(key.owner, key.path[-1]) for key in iter_keys()}
    unreached = [
        f"{model.__name__}.{name}"
        for model in _config_models()
        for name in model.model_fields
        if (model, name) not in reached
    ]
    assert unreached == []


def _example_keys(node: object, path: tuple[str, ...], driver: str | None) -> Iterator[tuple[str | None, str]]:
    """(driver, dotted key) for every key in the parsed example; array-of-table indexes are dropped."""
    if isinstance(node, list) and node and all(isinstance(item, dict) for item in node):
        for item in node:
            item_driver = item.get("driver", driver) if path == ("devices",) else driver
            yield from _example_keys(item, path, item_driver)
        return
    if isinstance(node, dict):
        for name, value in node.items():
            yield driver, ".".join((*path, name))
            yield from _example_keys(value, (*path, name), driver)


def test_every_key_of_the_example_config_is_documented() -> None:
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    documented = {(key.variant, ".".join(key.path)) for key in iter_keys()}
    used = set(_example_keys(example, (), None))
    assert {driver for driver, _ in used} >= {None, "modbus_tcp", "p1_serial"}  # the walk saw the devices
    assert sorted(used - documented, key=str) == []
    reference = render_reference()
    for _, dotted in used:
        assert f"| `{dotted.rsplit('.', 1)[-1]}` |" in reference


def test_the_example_config_validates() -> None:
    config = load_config(EXAMPLE)
    assert config.devices


def test_check_passes_on_the_committed_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", str(REFERENCE)]) == 0
    assert capsys.readouterr().err == ""


def test_check_fails_on_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "config-reference.md"
    stale.write_text(render_reference().replace("Modbus", "Modbuss", 1), encoding="utf-8")
    assert main(["--check", str(stale)]) == 1
    assert capsys.readouterr().err == f"{stale} is out of date: run `make docs`\n"
    assert main(["--check", str(tmp_path / "missing.md")]) == 1
    assert "run `make docs`" in capsys.readouterr().err


def test_module_prints_the_reference() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "zapd.config_doc"], capture_output=True, check=True, cwd=ROOT, timeout=60
    )
    assert done.stdout.decode("utf-8") == render_reference()
