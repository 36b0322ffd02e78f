"""The edge never imports the cloud: zapd runs on a gateway without the [cloud] extra.

The demo (which starts a local zapcloud) lives in zapd_demo, started by `zapd demo` as its own
process; a static walk over every import statement of the edge packages keeps it that way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EDGE_PACKAGES = ("zapd", "drivers", "fallback", "cloud_sync")
CLOUD_SIDE = ("cloud", "zapd_demo")


def _imported(path: Path) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("package", EDGE_PACKAGES)
def test_edge_package_never_imports_the_cloud(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    bad = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in files
        for line, name in _imported(path)
        if name.split(".")[0] in CLOUD_SIDE
    ]
    assert bad == []
