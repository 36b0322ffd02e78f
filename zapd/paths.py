"""Where zapd looks by default: constants the CLI needs before it may import the config's schema.

`zapd run` never loads pydantic in its process (the config is checked in a child, zapd/config_load.py),
so its argument parser cannot import zapd.config for a default.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CONFIG_PATH = Path("/etc/zapd/zapd.toml")
# systemd's StateDirectory=zapd and ReadWritePaths= in systemd/zapd.service
DEFAULT_STATE_DIR = Path("/var/lib/zapd")
# The drop-in `zapd systemd-dropin --write` writes (zapd/systemd_paths.py)
SYSTEMD_DROPIN_DIR = Path("/etc/systemd/system/zapd.service.d")
