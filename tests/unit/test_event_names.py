"""Every structlog event name, edge and cloud, is `area.event` (issue 15: three styles were
in use: `modbus.link_down`, `telemetry_store_failed`, `p1 link down`). One style lets an
operator filter by area (`zapctl logs -g modbus.`) and a test match on names without guessing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("zapd", "drivers", "fallback", "cloud_sync", "cloud")
NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def _event_names() -> list[tuple[str, str]]:
    """(where, literal event name) of each log call, plus each FailureLatch's event arguments."""
    found: list[tuple[str, str]] = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr in LEVELS and "log" in ast.unparse(func.value):
                    args = node.args[:1]
                elif isinstance(func, ast.Name) and func.id == "FailureLatch":
                    args = node.args[1:3] + [k.value for k in node.keywords if k.arg == "first_ok_event"]
                else:
                    continue
                found += [(where, a.value) for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return found


def test_there_are_event_names_to_check() -> None:
    assert len(_event_names()) > 100


@pytest.mark.parametrize(("where", "name"), _event_names())
def test_event_name_is_area_dot_event(where: str, name: str) -> None:
    assert NAME.match(name), f"{where}: event {name!r} is not `area.event`"
