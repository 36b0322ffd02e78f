"""Which profile fits the device at an address: read-only, rate-limited identification probes.

First SunSpec (the 'SunS' marker and its model chain: a SunSpec device needs no profile), then
every shipped profile with an `[identify]` table, a probe of the vendor's identification
register(s):

    [identify]
    table = "input"          # or "holding"
    address = 4999           # wire address
    count = 1                # registers to read
    high_byte = [0x0D, 0x0E] # match: first register's high byte is one of these (a type-code family)
    # or: equals = [..]      first register is one of these values
    # or: ascii_prefix = "SUN2000"   the registers as ASCII start with this
    # or: float32_range = [180.0, 280.0]  the two registers as a float32 are inside (a plausibility probe)
    unit_id = 100            # optional: probe another unit id than the one scanned

Only reads are sent (function 0x03 / 0x04); the bus's own rate limit spaces them. A probe that
the device refuses (illegal address) or does not answer simply does not match.
"""

from __future__ import annotations

import math
import struct
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.api import ConfigurationError, DriverError
from drivers.modbus.bus import ModbusBus, Priority
from drivers.modbus.register_map import MAPS_DIR, RegisterMapError, load_register_map
from drivers.modbus.sunspec import device_capabilities, scan_sunspec
from drivers.modbus.sunspec_models import SunSpecError

_MAX_COUNT = 32


@dataclass(frozen=True)
class Match:
    """One thing found at the address, with what zapd can do with it and a config snippet to paste."""

    driver: str  # "sunspec_tcp", "modbus_tcp" or "modbus_meter_tcp"
    profile: str  # profile name ("" for SunSpec)
    description: str
    unit_id: int
    capabilities: list[str] = field(default_factory=list)
    evidence: str = ""

    def snippet(self, host: str, port: int, device_id: str = "inverter") -> str:
        lines = [
            "[[devices]]",
            f'driver = "{self.driver}"',
            f'id = "{device_id}"',
            f'host = "{host}"',
            f"port = {port}",
            f"unit_id = {self.unit_id}",
        ]
        if self.profile:
            lines.append(f'map = "{self.profile}"')
        return "\n".join(lines)


@dataclass(frozen=True)
class _Probe:
    profile: str
    table: str
    address: int
    count: int
    unit_id: int | None
    doc: dict[str, Any]

    def matches(self, regs: list[int]) -> str | None:
        """Why these registers identify the profile, or None."""
        if "high_byte" in self.doc and regs[0] >> 8 in self.doc["high_byte"]:
            return f"type code 0x{regs[0]:04X}"
        if "equals" in self.doc and regs[0] in self.doc["equals"]:
            return f"register {self.address} = {regs[0]}"
        prefix = self.doc.get("ascii_prefix")
        if isinstance(prefix, str):
            text = b"".join(r.to_bytes(2, "big") for r in regs).split(b"\0", 1)[0].decode("ascii", "replace")
            if text.strip().startswith(prefix):
                return f"model {text.strip()!r}"
        bounds = self.doc.get("float32_range")
        if isinstance(bounds, list) and len(regs) >= 2:
            value = struct.unpack(">f", struct.pack(">HH", regs[0], regs[1]))[0]
            if math.isfinite(value) and bounds[0] <= value <= bounds[1]:
                return f"register {self.address} reads {value:g} (plausible)"
        return None


def identification_probes(maps_dir: Path = MAPS_DIR) -> list[_Probe]:
    """Every shipped profile's `[identify]` table, checked so that a bad one fails loudly, not silently."""
    probes = []
    for path in sorted(maps_dir.glob("*.toml")):
        doc = tomllib.loads(path.read_text())
        ident = doc.get("identify")
        if ident is None:
            continue
        where = f"{path}: [identify]"
        table, address, count = ident.get("table"), ident.get("address"), ident.get("count", 1)
        if table not in ("holding", "input") or not isinstance(address, int) or not 0 <= address <= 0xFFFF:
            raise RegisterMapError(f"{where}: needs table = holding|input and an address 0..65535")
        if not isinstance(count, int) or not 1 <= count <= _MAX_COUNT:
            raise RegisterMapError(f"{where}: count must be 1..{_MAX_COUNT}")
        if not {"high_byte", "equals", "ascii_prefix", "float32_range"} & set(ident):
            raise RegisterMapError(f"{where}: needs one of high_byte, equals, ascii_prefix, float32_range")
        probes.append(_Probe(path.stem, table, address, count, ident.get("unit_id"), ident))
    return probes


async def _read(bus: ModbusBus, unit: int, probe: _Probe) -> list[int] | None:
    try:
        if probe.table == "input":
            return await bus.read_input(unit, probe.address, probe.count, priority=Priority.POLL)
        return await bus.read_holding(unit, probe.address, probe.count, priority=Priority.POLL)
    except (ConfigurationError, DriverError):
        return None


def _profile_capabilities(profile: str) -> list[str]:
    rmap = load_register_map(profile)
    caps = []
    if rmap.get("battery_soc") is not None:
        ctl = rmap.control
        caps.append(f"battery (controllable: {ctl.style})" if ctl is not None else "battery (monitoring only)")
    if rmap.get("pv_power") is not None:
        caps.append("pv")
    if rmap.get("meter_power") is not None or rmap.get("meter_l1_power") is not None:
        caps.append("meter")
    return caps


async def recognize(bus: ModbusBus, unit_id: int) -> list[Match]:
    """What answers at `unit_id` on `bus`: SunSpec first, then each profile's identification probe."""
    found: list[Match] = []
    try:
        device = await scan_sunspec(bus, unit_id)
    except (ConfigurationError, DriverError, SunSpecError):
        device = None
    if device is not None:
        caps = [
            f"{c.kind.value}{' (controllable)' if c.controllable else ''}" for c in device_capabilities(device, "x")
        ]
        found.append(
            Match(
                driver="sunspec_tcp",
                profile="",
                description=device.description,
                unit_id=unit_id,
                capabilities=caps,
                evidence="SunSpec models " + " ".join(str(m.id) for m in device.models),
            )
        )
    for probe in identification_probes():
        unit = unit_id if probe.unit_id is None else probe.unit_id
        regs = await _read(bus, unit, probe)
        why = None if regs is None else probe.matches(regs)
        if why is not None:
            rmap = load_register_map(probe.profile)
            meter_only = rmap.get("battery_soc") is None and rmap.get("meter_power") is not None
            found.append(
                Match(
                    driver="modbus_meter_tcp" if meter_only else "modbus_tcp",
                    profile=probe.profile,
                    description=rmap.name,
                    unit_id=unit_id,
                    capabilities=_profile_capabilities(probe.profile),
                    evidence=why,
                )
            )
    return found
