"""What the shipped systemd unit lets zapd write, and the drop-in a site needs when its config writes elsewhere.

systemd/zapd.service runs zapd under `ProtectSystem=strict`: the whole file system is read-only
but its `StateDirectory=`/`ReadWritePaths=` (/var/lib/zapd) and `RuntimeDirectory=` (/run/zapd).
A config whose `store.state_dir` or `api.socket` lies elsewhere validates, then fails under systemd
("readonly database", "cannot bind socket"). `zapd config check` warns about it, and
`zapd systemd-dropin` writes the drop-in that grants those paths (tests/integration/test_systemd_files.py
checks these constants against the unit file).
"""

from __future__ import annotations

from pathlib import Path

from zapd.config import ZapdConfig
from zapd.paths import SYSTEMD_DROPIN_DIR as SYSTEMD_DROPIN_DIR

UNIT_WRITABLE = (Path("/var/lib/zapd"), Path("/run/zapd"))  # StateDirectory/ReadWritePaths, RuntimeDirectory
DROPIN_NAME = "paths.conf"


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def paths_outside_the_unit(config: ZapdConfig) -> list[tuple[str, Path]]:
    """(config key, directory) for each place zapd writes that the shipped unit does not grant."""
    wanted = [("store.state_dir", config.store.state_dir), ("api.socket", config.api.socket.parent)]
    out: list[tuple[str, Path]] = []
    for key, path in wanted:
        path = Path(path).absolute()
        if not _inside(path, UNIT_WRITABLE) and path not in [p for _, p in out]:
            out.append((key, path))
    return out


def dropin_text(config: ZapdConfig, source: str) -> str:
    """The drop-in granting `paths_outside_the_unit` (only a comment when nothing is needed)."""
    paths = paths_outside_the_unit(config)
    head = f"# zapd: written by `zapd systemd-dropin` for {source}\n"
    if not paths:
        return head + "# nothing to add: every path the config writes is inside the unit's own directories\n"
    lines = [head, "[Service]\n"]
    for key, path in paths:
        lines.append(f"# {key}\nReadWritePaths={path}\n")
    return "".join(lines)


def create_hint(config: ZapdConfig) -> str:
    dirs = " ".join(str(p) for _, p in paths_outside_the_unit(config))
    return f"install -d -o zapd -g zapd -m 0750 {dirs}" if dirs else ""
