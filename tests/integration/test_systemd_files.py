"""systemd's own tools accept the shipped unit, sysusers and tmpfiles snippets.

Skipped (with the reason) on hosts without systemd's tools, e.g. a minimal CI image.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (apt-get install systemd)")
    return path


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    # verify also checks that ExecStart's binary exists: point it at this checkout's zapd.
    zapd = shutil.which("zapd") or str(Path(sys.executable).with_name("zapd"))
    if not Path(zapd).exists():
        pytest.skip("no zapd console script to point ExecStart at (pip install -e .)")
    unit = tmp_path / "zapd.service"
    unit.write_text((SYSTEMD / "zapd.service").read_text().replace("/usr/bin/zapd", zapd))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    complaints = [line for line in proc.stderr.splitlines() if "zapd.service" in line]
    assert not complaints, complaints


def test_sysusers_and_tmpfiles_apply_to_a_scratch_root(tmp_path: Path) -> None:
    sysusers, tmpfiles = _tool("systemd-sysusers"), _tool("systemd-tmpfiles")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\ndialout:x:20:\n")
    for name, folder in (("zapd.sysusers.conf", "sysusers.d"), ("zapd.tmpfiles.conf", "tmpfiles.d")):
        (root / "usr" / "lib" / folder).mkdir(parents=True)
        shutil.copy(SYSTEMD / name, root / "usr" / "lib" / folder / "zapd.conf")
    subprocess.run([sysusers, f"--root={root}"], check=True, capture_output=True, timeout=60)
    passwd = (root / "etc" / "passwd").read_text()
    group = (root / "etc" / "group").read_text()
    (zapd_line,) = [line for line in passwd.splitlines() if line.startswith("zapd:")]
    assert ":/var/lib/zapd:" in zapd_line and zapd_line.endswith("nologin")
    assert "dialout:x:20:zapd" in group
    subprocess.run([tmpfiles, f"--root={root}", "--create"], check=True, capture_output=True, timeout=60)
    assert (root / "var/lib/zapd/keys").stat().st_mode & 0o777 == 0o700
    assert (root / "etc/zapd").stat().st_mode & 0o777 == 0o750
    assert (root / "run/zapd").is_dir()
