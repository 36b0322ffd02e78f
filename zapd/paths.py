"""Where zapd looks by default: constants the CLI needs before it may import the config's schema.

`zapd run` keeps pydantic out of its process until it has set the daemon's import policy
(zapd.cli.lean_daemon_process), so its argument parser cannot import zapd.config for a default.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CONFIG_PATH = Path("/etc/zapd/zapd.toml")
# systemd's StateDirectory=zapd and ReadWritePaths= in systemd/zapd.service
DEFAULT_STATE_DIR = Path("/var/lib/zapd")
# The drop-in `zapd systemd-dropin --write` writes (zapd/systemd_paths.py)
SYSTEMD_DROPIN_DIR = Path("/etc/systemd/system/zapd.service.d")
