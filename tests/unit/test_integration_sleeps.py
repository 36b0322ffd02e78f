"""Integration tests wait on conditions, not on the wall clock (issue 15, item 3).

A fixed sleep that waits for something (a server up, a counter reaching N) is either too long (a slow
suite) or too short on a loaded machine (a flaky one): such waits go through tests/waiting.py
(`wait_until`, `wait_until_sync`, `stays`). A sleep that IS the behaviour under test (a pause inside a
telegram, a control cycle's period, a timer that must run out) stays, with a `# wall-clock:` comment on its
line or the line above saying why. This test finds any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
MARKER = "# wall-clock:"
SLEEP_MODULES = {"asyncio", "time", "anyio", "trio"}


def bare_sleeps(source: str) -> list[int]:
    """Line numbers of real-time sleep calls in `source` without the marker on their line or the one above."""
    tree = ast.parse(source)
    # `from asyncio import sleep` (or `... as nap`): calls by that name are real-time sleeps too.
    aliases = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module in SLEEP_MODULES
        for alias in node.names
        if alias.name == "sleep"
    }
    lines = source.splitlines()
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        is_sleep = (
            isinstance(func, ast.Attribute)
            and func.attr == "sleep"
            and isinstance(func.value, ast.Name)
            and func.value.id in SLEEP_MODULES
        ) or (isinstance(func, ast.Name) and func.id in aliases)
        if not is_sleep:
            continue
        around = lines[node.lineno - 2 : node.end_lineno or node.lineno] if node.lineno > 1 else lines[:1]
        if not any(MARKER in line for line in around):
            found.append(node.lineno)
    return sorted(found)


def test_integration_tests_have_no_unmarked_sleeps() -> None:
    files = sorted(INTEGRATION.rglob("*.py"))
    assert len(files) > 20  # the folder is where this test thinks it is
    offenders = [f"{f.relative_to(INTEGRATION.parent)}:{n}" for f in files for n in bare_sleeps(f.read_text())]
    assert offenders == [], (
        "real-time sleeps in integration tests: wait on a condition (tests/waiting.py wait_until, "
        f"wait_until_sync, stays), or say why the time itself is the behaviour with {MARKER!r}: {offenders}"
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import asyncio\nasync def f():\n    await asyncio.sleep(0.5)\n", [3]),
        ("import time\ntime.sleep(1)\n", [2]),
        ("from asyncio import sleep as nap\nasync def f():\n    await nap(1)\n", [3]),
        ("import asyncio\nasync def f():\n    await asyncio.sleep(0.5)  # wall-clock: a pause in a frame\n", []),
        ("import asyncio\nasync def f():\n    # wall-clock: a cycle period\n    await asyncio.sleep(0.05)\n", []),
        ("import asyncio\nasync def f():\n    await asyncio.sleep(0.5)  # still silent: no second line\n", [3]),
        ("async def f(clock):\n    await clock.sleep(5)\n", []),  # a test clock's sleep is not the wall clock
    ],
)
def test_the_check_finds_bare_sleeps_and_accepts_marked_ones(source: str, expected: list[int]) -> None:
    assert bare_sleeps(source) == expected
