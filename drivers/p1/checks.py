"""What `zapd config check` asks of a P1 meter beyond its model: the telegram interval, the Smarty key.

Registered as the p1 family's `checks` (drivers/p1/family.py) and imported by the check only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from drivers.p1.config import DSMR_TELEGRAM_INTERVAL_S, P1SerialDevice, P1TcpDevice
from zapd.config import ZapdConfig
from zapd.config_check import Problem

# What zapd.example.toml and the DSMR docs show: a copy that was never filled in.
PLACEHOLDER_P1_KEYS = frozenset({"00112233445566778899AABBCCDDEEFF"})
SMARTY_KEY_HEX_DIGITS = 32  # AES-128-GCM (Luxembourg Smarty P1 specification; ESPHome: "32 characters")


def check(dev: P1SerialDevice | P1TcpDevice, config: ZapdConfig) -> Iterator[Problem]:
    del config  # a P1 meter's problems are its own
    base = f"devices.{dev.id}"
    interval = DSMR_TELEGRAM_INTERVAL_S[dev.dsmr_version]
    if dev.poll_s is not None and dev.poll_s < interval:
        yield Problem(
            f"{base}.poll_s",
            f"DSMR {dev.dsmr_version} meters send a telegram every {interval:g} s: with poll_s = "
            f"{dev.poll_s:g} a reading is stale after {3 * dev.poll_s:g} s and the site drops into safe "
            "hold between telegrams; leave poll_s out to use the DSMR interval",
            warning=True,
        )
    key = dev.decryption_key
    if key is None:
        return
    if not re.fullmatch(r"[0-9A-Fa-f]*", key):
        bad = next(c for c in key if c not in "0123456789abcdefABCDEF")
        yield Problem(f"{base}.decryption_key", f"not hex ({bad!r} is not a hex digit)")
    elif len(key) != SMARTY_KEY_HEX_DIGITS:
        yield Problem(
            f"{base}.decryption_key",
            f"{SMARTY_KEY_HEX_DIGITS} hex digits (16 bytes, AES-128), this has {len(key)}",
        )
    elif key.upper() in PLACEHOLDER_P1_KEYS:
        yield Problem(f"{base}.decryption_key", "the example key: use your grid operator's", warning=True)
    if dev.dsmr_version != "5L":
        yield Problem(
            f"{base}.decryption_key",
            f"only Luxembourg meters (dsmr_version = '5L') encrypt; with {dev.dsmr_version!r} it is ignored",
            warning=True,
        )
