"""`zapctl --json logs` prints JSON: journalctl's JSON output, one object per entry, through the real binary."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ZAPCTL = Path(sys.executable).parent / "zapctl"

pytestmark = pytest.mark.skipif(shutil.which("journalctl") is None, reason="needs journalctl (systemd)")


def _zapctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ZAPCTL), *args], capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("argv", [["--json", "logs"], ["logs", "--json"], ["logs", "--json", "-n", "5"]])
def test_json_logs_are_json_lines(argv: list[str]) -> None:
    res = _zapctl(*argv)
    assert res.returncode == 0, res.stderr
    for line in res.stdout.splitlines():
        entry = json.loads(line)  # with no journal at all, journalctl prints nothing in JSON mode
        assert isinstance(entry, dict) and "MESSAGE" in entry


def test_text_logs_are_journalctl_text() -> None:
    # The same call without --json is journalctl's text: on a host without zapd entries its
    # "-- No entries --" line, which is not JSON (what `--json logs` printed before).
    res = _zapctl("logs")
    assert res.returncode == 0, res.stderr
    if res.stdout.strip():
        with pytest.raises(json.JSONDecodeError):
            json.loads(res.stdout.splitlines()[0])
