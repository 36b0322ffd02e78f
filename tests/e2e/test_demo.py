"""`zapd demo` over a short simulated window, through the real CLI: the summary's energy balance
closes within 1 %, and what zapd metered through the P1 pty matches the simulator's truth."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def value(summary: str, label: str, pattern: str = r"([-\d.]+)") -> float:
    line = next(line for line in summary.splitlines() if line.startswith(label))
    m = re.search(pattern, line[len(label) :])
    assert m, line
    return float(m.group(1))


def test_demo_short_window(tmp_path: Path) -> None:
    zapd = Path(sys.executable).parent / "zapd"
    res = subprocess.run(
        [str(zapd), "demo", "--hours", "3", "--speed", "540", "--out", str(tmp_path), "--quiet"],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert res.returncode == 0, res.stderr
    summary = res.stdout
    assert value(summary, "energy balance error", r"([\d.]+)%") < 1.0
    assert value(summary, "metered by zapd (P1)", r"error vs\. truth ([\d.]+)%") < 1.0
    assert value(summary, "load consumed") > 0.0
    assert value(summary, "commands written") > 0
    assert value(summary, "simulated hours") == pytest.approx(3.0, abs=0.05)
    png = tmp_path / "demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "state" / "zapd.sqlite").exists()
