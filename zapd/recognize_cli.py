"""`zapd devices scan --host H[:PORT]`: which profile fits the device there, and a config snippet.

Read-only and rate-limited (drivers/modbus/recognize.py). Exit 0 when something was recognised at
some unit id, 1 when nothing was.
"""

from __future__ import annotations

import json

from drivers.modbus.bus import close_all_buses, get_tcp_bus
from drivers.modbus.recognize import Match, recognize

DEFAULT_PORT = 502
PROBES_PER_S = 10.0  # a gentle pace for devices that share their Modbus link with a vendor cloud


def parse_host(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:  # no port given (or a bare IPv6 address)
        return text, DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port {port!r} is not 1..65535")
    return host.strip("[]"), int(port)


async def scan_host(address: str, *, unit_ids: list[int], as_json: bool = False) -> int:
    host, port = parse_host(address)
    bus = get_tcp_bus(host, port, timeout_s=2.0, max_requests_per_s=PROBES_PER_S)
    found: list[Match] = []
    try:
        for unit in unit_ids:
            found += await recognize(bus, unit)
    finally:
        await close_all_buses()
    rows = [
        {
            "driver": m.driver,
            "profile": m.profile,
            "device": m.description,
            "unit_id": m.unit_id,
            "capabilities": m.capabilities,
            "evidence": m.evidence,
            "config": m.snippet(host, port),
        }
        for m in found
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"nothing recognised at {host}:{port} unit(s) {', '.join(map(str, unit_ids))}")
    for row in [] if as_json else rows:
        print(f"{row['profile'] or row['driver']}: {row['device']} (unit {row['unit_id']}; {row['evidence']})")
        print(f"  capabilities: {', '.join(row['capabilities']) or 'none'}")  # type: ignore[arg-type]
        print("  " + str(row["config"]).replace("\n", "\n  "))
    return 0 if rows else 1
