"""`zapd devices scan --host H[:PORT]` / `--serial /dev/ttyX`: which profile fits, and a config snippet.

Read-only and rate-limited (drivers/modbus/recognize.py): at most PROBES_PER_S requests, on TCP and
on an RS-485 line alike, so a scan cannot crowd out a vendor's own logger on the same link. Exit 0
when something was recognised at some unit id, 1 when nothing was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Literal

from drivers.modbus.bus import ModbusBus, Parity, close_all_buses, get_serial_bus, get_tcp_bus
from drivers.modbus.recognize import Match, Transport, recognize

DEFAULT_PORT = 502
PROBES_PER_S = 10.0  # a gentle pace for devices that share their Modbus link with a vendor cloud
SERIAL_TIMEOUT_S = 1.0  # an RTU device answers within ms; a silent unit id must not stall the scan
BAUDRATES = (1200, 2400, 4800, 9600, 19_200, 38_400, 57_600, 115_200)


def parse_host(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:  # no port given (or a bare IPv6 address)
        return text, DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"port {port!r} is not 1..65535")
    return host.strip("[]"), int(port)


def check_units(unit_ids: list[int], highest: int = 247) -> list[int]:
    """Unit ids to probe: 0..247 on an RS-485 line; on TCP up to 255 (the Modbus-TCP chargers of
    Mennekes, Phoenix Contact / Wallbe and Schneider answer on unit 255)."""
    bad = [u for u in unit_ids if not 0 <= u <= highest]
    if bad:
        raise ValueError(f"unit id {bad[0]} is not 0..{highest}")
    return unit_ids


async def scan_host(address: str, *, unit_ids: list[int], as_json: bool = False) -> int:
    host, port = parse_host(address)
    bus = get_tcp_bus(host, port, timeout_s=2.0, max_requests_per_s=PROBES_PER_S)
    return await _scan(bus, "tcp", {"host": host, "port": port}, f"{host}:{port}", check_units(unit_ids, 255), as_json)


async def scan_serial(
    port: str,
    *,
    unit_ids: list[int],
    baudrate: int = 9600,
    parity: Parity = "N",
    stopbits: Literal[1, 2] = 1,
    as_json: bool = False,
    timeout_s: float = SERIAL_TIMEOUT_S,
) -> int:
    """The same recognition over Modbus RTU on a serial port (one line setting per scan)."""
    if baudrate not in BAUDRATES:
        raise ValueError(f"baud rate {baudrate} is not one of {', '.join(map(str, BAUDRATES))}")
    if parity not in ("N", "E", "O") or stopbits not in (1, 2):
        raise ValueError("parity must be N, E or O and stopbits 1 or 2")
    if "://" not in port and not os.path.exists(port):  # noqa: ASYNC240 - one stat before any I/O
        raise ValueError(f"serial port {port} does not exist (not plugged in?)")
    bus = get_serial_bus(
        port,
        baudrate=baudrate,
        parity=parity,
        stopbits=stopbits,
        bytesize=8,
        timeout_s=timeout_s,
        max_requests_per_s=PROBES_PER_S,
    )
    endpoint: dict[str, str | int] = {"port": port, "baudrate": baudrate, "parity": parity, "stopbits": stopbits}
    where = f"{port} ({baudrate} 8{parity}{stopbits})"
    return await _scan(bus, "rtu", endpoint, where, check_units(unit_ids), as_json)


async def _scan(
    bus: ModbusBus,
    transport: Transport,
    endpoint: Mapping[str, str | int],
    where: str,
    unit_ids: list[int],
    as_json: bool,
) -> int:
    found: list[Match] = []
    try:
        for unit in unit_ids:
            found += await recognize(bus, unit, transport=transport)
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
            "config": m.snippet(endpoint),
        }
        for m in found
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"nothing recognised at {where} unit(s) {', '.join(map(str, unit_ids))}")
    for row in [] if as_json else rows:
        print(f"{row['profile'] or row['driver']}: {row['device']} (unit {row['unit_id']}; {row['evidence']})")
        print(f"  capabilities: {', '.join(row['capabilities']) or 'none'}")  # type: ignore[arg-type]
        print("  " + str(row["config"]).replace("\n", "\n  "))
    return 0 if rows else 1
