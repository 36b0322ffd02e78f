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


def _unit_values(key: str) -> list[str]:
    return [
        line.split("=", 1)[1].strip()
        for line in (SYSTEMD / "zapd.service").read_text().splitlines()
        if line.startswith(f"{key}=")
    ]


def test_what_zapd_thinks_the_unit_grants_is_what_it_grants() -> None:
    from zapd.systemd_paths import UNIT_WRITABLE

    granted = {Path(p) for p in _unit_values("ReadWritePaths")}
    granted |= {Path("/var/lib") / p for p in _unit_values("StateDirectory")}
    granted |= {Path("/run") / p for p in _unit_values("RuntimeDirectory")}
    assert set(UNIT_WRITABLE) == granted


def _config(tmp_path: Path, state_dir: str, socket: str = "/run/zapd/zapd.sock") -> Path:
    path = tmp_path / "zapd.toml"
    path.write_text(
        f'[site]\nid = "s"\nfuse_a = 25\n[store]\nstate_dir = "{state_dir}"\n[api]\nsocket = "{socket}"\n'
        '[[devices]]\nid = "meter"\ndriver = "p1_tcp"\nhost = "127.0.0.1"\nport = 2000\n'
    )
    return path


def _zapd(*args: str) -> subprocess.CompletedProcess[str]:
    zapd = str(Path(sys.executable).with_name("zapd"))
    return subprocess.run([zapd, *args], capture_output=True, text=True, timeout=60, check=False)


def test_config_check_warns_about_a_state_dir_the_unit_cannot_write(tmp_path: Path) -> None:
    res = _zapd("config", "check", str(_config(tmp_path, "/srv/zapd")))
    assert res.returncode == 0
    assert "store.state_dir: warning: /srv/zapd is outside what the shipped systemd unit may write" in res.stderr
    assert "zapd systemd-dropin" in res.stderr
    quiet = _zapd("config", "check", "--strict", str(_config(tmp_path, "/var/lib/zapd")))
    assert quiet.returncode == 0, quiet.stderr
    assert "systemd" not in quiet.stderr


def test_the_dropin_grants_the_paths_and_systemd_accepts_it(tmp_path: Path) -> None:
    config = _config(tmp_path, "/srv/zapd/state", socket="/srv/zapd/api/zapd.sock")
    units = tmp_path / "units"
    res = _zapd("systemd-dropin", "--config", str(config), "--write", "--dir", str(units / "zapd.service.d"))
    assert res.returncode == 0, res.stderr
    assert "install -d -o zapd -g zapd -m 0750 /srv/zapd/state /srv/zapd/api" in res.stdout
    dropin = (units / "zapd.service.d" / "paths.conf").read_text()
    assert "ReadWritePaths=/srv/zapd/state\n" in dropin and "ReadWritePaths=/srv/zapd/api\n" in dropin
    # systemd reads it the way it reads the site's own drop-ins: next to the unit, in zapd.service.d/
    analyze = _tool("systemd-analyze")
    zapd = shutil.which("zapd") or str(Path(sys.executable).with_name("zapd"))
    (units / "zapd.service").write_text((SYSTEMD / "zapd.service").read_text().replace("/usr/bin/zapd", zapd))
    proc = subprocess.run([analyze, "verify", str(units / "zapd.service")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not [line for line in proc.stderr.splitlines() if "paths.conf" in line or "zapd.service" in line]
    # nothing to add for a default config: printed, not written
    plain = _zapd("systemd-dropin", "--config", str(_config(tmp_path, "/var/lib/zapd")))
    assert plain.returncode == 0 and "ReadWritePaths" not in plain.stdout
