"""Which profile fits the device at an address: read-only, rate-limited identification probes.

First SunSpec (the 'SunS' marker and its model chain: a SunSpec device needs no profile), then
every profile (shipped, and a site's own in `$ZAPD_MAPS_DIR`) with an `[identify]` table: reads of
the vendor's identification register(s). Nothing here names a device: a profile file that carries
an `[identify]` table is recognised the moment it is dropped into the maps folder.

    [identify]
    table = "input"          # or "holding"
    address = 4999           # wire address
    count = 1                # registers to read
    high_byte = [0x0D, 0x0E] # match: first register's high byte is one of these (a type-code family)
    # or: equals = [..]      first register is one of these values
    # or: in_range = [lo, hi]  first register is within lo..hi (a documented family of codes)
    # or: ascii_prefix = "SUN2000" (or a list)  the registers as ASCII start with this / one of these
    # or: float32_range = [180.0, 280.0]  the two registers as a float32 are inside (a plausibility probe)
    unit_id = 100            # optional: probe another unit id than the one scanned

`[[identify]]` (an array of such tables) means every probe must match. A plausibility probe
(`float32_range`) is weak: when a profile matched by an identification code, weak matches of others
at the same unit are dropped, so a meter with a meter-code register is not also "a plausible SDM630".

Only reads are sent (function 0x03 / 0x04); the bus's own rate limit spaces them. A probe that
the device refuses (illegal address) or does not answer simply does not match.
"""

from __future__ import annotations

import math
import struct
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from drivers.api import ConfigurationError, DriverError
from drivers.modbus.bus import ModbusBus, Priority
from drivers.modbus.register_map import RegisterMapError, load_register_map, profile_paths
from drivers.modbus.sunspec import METER_MODELS, device_capabilities, scan_sunspec
from drivers.modbus.sunspec_models import SunSpecError

_MAX_COUNT = 32
_RULES = ("high_byte", "equals", "in_range", "ascii_prefix", "float32_range")
_WEAK_RULES = ("float32_range",)
Transport = Literal["tcp", "rtu"]
Family = Literal["sunspec", "battery", "meter", "ev"]


@dataclass(frozen=True)
class Match:
    """One thing found at the address, with what zapd can do with it and a config snippet to paste."""

    driver: str  # the config's `driver`, for the transport scanned ("sunspec_tcp", "modbus_meter_rtu", ...)
    profile: str  # profile name ("" for SunSpec)
    description: str
    unit_id: int
    capabilities: list[str] = field(default_factory=list)
    evidence: str = ""
    strong: bool = True  # matched by an identification code, not only a plausibility probe
    settings: Mapping[str, bool] = field(default_factory=dict)  # keys the snippet needs (SunSpec has_battery)

    def snippet(
        self, endpoint: Mapping[str, str | int] | str, port: int | None = None, device_id: str | None = None
    ) -> str:
        """The `[[devices]]` table to paste: `endpoint` is {host, port} or {port, baudrate, parity, stopbits}
        (or a host, with `port`)."""
        if isinstance(endpoint, str):
            endpoint = {"host": endpoint, "port": port or 502}
        dev_id = device_id or _default_id(self)
        lines = ["[[devices]]", f'driver = "{self.driver}"', f'id = "{dev_id}"']
        lines += [f"{k} = {_toml(v)}" for k, v in endpoint.items()]
        lines.append(f"unit_id = {self.unit_id}")
        if self.profile:
            lines.append(f'map = "{self.profile}"')
        lines += [f"{k} = {_toml(v)}" for k, v in self.settings.items()]
        if self.driver.startswith("modbus_ev"):
            lines += ["", "[devices.ev]", "max_current_a = 16  # the lowest of charger, cable and breaker: check yours"]
        return "\n".join(lines)


def _toml(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def _default_id(match: Match) -> str:
    if match.driver.startswith("modbus_meter"):
        return "meter"
    return "charger" if match.driver.startswith("modbus_ev") else "inverter"


@dataclass(frozen=True)
class _Probe:
    """One identification read and its rule."""

    table: str
    address: int
    count: int
    unit_id: int | None
    doc: dict[str, Any]

    @property
    def strong(self) -> bool:
        return not set(self.doc) & set(_WEAK_RULES)

    def matches(self, regs: list[int]) -> str | None:
        """Why these registers identify the profile, or None."""
        if "high_byte" in self.doc and regs[0] >> 8 in self.doc["high_byte"]:
            return f"type code 0x{regs[0]:04X}"
        if "equals" in self.doc and regs[0] in self.doc["equals"]:
            return f"register {self.address} = {regs[0]}"
        bounds = self.doc.get("in_range")
        if isinstance(bounds, list) and bounds[0] <= regs[0] <= bounds[1]:
            return f"register {self.address} = {regs[0]} (codes {bounds[0]}..{bounds[1]})"
        prefix = self.doc.get("ascii_prefix")
        if prefix is not None:
            text = b"".join(r.to_bytes(2, "big") for r in regs).split(b"\0", 1)[0].decode("ascii", "replace")
            prefixes = [prefix] if isinstance(prefix, str) else prefix
            if any(text.strip().startswith(p) for p in prefixes):
                return f"model {text.strip()!r}"
        bounds = self.doc.get("float32_range")
        if isinstance(bounds, list) and len(regs) >= 2:
            value = struct.unpack(">f", struct.pack(">HH", regs[0], regs[1]))[0]
            if math.isfinite(value) and bounds[0] <= value <= bounds[1]:
                return f"register {self.address} reads {value:g} (plausible)"
        return None


@dataclass(frozen=True)
class ProfileProbe:
    """A profile's identification: every probe must match."""

    profile: str
    path: Path
    probes: tuple[_Probe, ...]

    @property
    def strong(self) -> bool:
        return any(p.strong for p in self.probes)


def _parse_probe(where: str, ident: Any) -> _Probe:
    if not isinstance(ident, dict):
        raise RegisterMapError(f"{where}: must be a table")
    table, address, count = ident.get("table"), ident.get("address"), ident.get("count", 1)
    if table not in ("holding", "input") or not isinstance(address, int) or not 0 <= address <= 0xFFFF:
        raise RegisterMapError(f"{where}: needs table = holding|input and an address 0..65535")
    if not isinstance(count, int) or not 1 <= count <= _MAX_COUNT:
        raise RegisterMapError(f"{where}: count must be 1..{_MAX_COUNT}")
    rules = set(_RULES) & set(ident)
    if len(rules) != 1:
        raise RegisterMapError(f"{where}: needs exactly one of {', '.join(_RULES)}")
    for key in ("in_range", "float32_range"):
        bounds = ident.get(key)
        if bounds is not None and not (isinstance(bounds, list) and len(bounds) == 2 and bounds[0] <= bounds[1]):
            raise RegisterMapError(f"{where}: {key} must be [low, high]")
    if "float32_range" in ident and count < 2:
        raise RegisterMapError(f"{where}: float32_range needs count = 2")
    unit = ident.get("unit_id")
    if unit is not None and (not isinstance(unit, int) or not 0 <= unit <= 255):
        raise RegisterMapError(f"{where}: unit_id must be 0..255")
    return _Probe(table, address, count, unit, ident)


def identification_probes(paths: Mapping[str, Path] | None = None) -> list[ProfileProbe]:
    """Every profile's `[identify]`, checked so that a bad one fails loudly, not silently."""
    out = []
    for name, path in (profile_paths() if paths is None else paths).items():
        ident = tomllib.loads(path.read_text()).get("identify")
        if ident is None:
            continue
        where = f"{path}: [identify]"
        items = ident if isinstance(ident, list) else [ident]
        if not items:
            raise RegisterMapError(f"{where}: empty")
        out.append(ProfileProbe(name, path, tuple(_parse_probe(f"{where}[{i}]", x) for i, x in enumerate(items))))
    return out


_ReadCache = dict[tuple[int, str, int, int], list[int] | None]


async def _read(bus: ModbusBus, unit: int, probe: _Probe, cache: _ReadCache) -> list[int] | None:
    """One identification read, each (unit, table, address, count) sent once per recognition."""
    key = (unit, probe.table, probe.address, probe.count)
    if key not in cache:
        try:
            if probe.table == "input":
                cache[key] = await bus.read_input(unit, probe.address, probe.count, priority=Priority.POLL)
            else:
                cache[key] = await bus.read_holding(unit, probe.address, probe.count, priority=Priority.POLL)
        except (ConfigurationError, DriverError):
            cache[key] = None
    return cache[key]


def _profile_facts(path: Path) -> tuple[str, list[str], Family]:
    """(name, capabilities, family) of a profile: family is battery | meter | ev."""
    rmap = load_register_map(path)
    is_ev = "ev" in tomllib.loads(path.read_text())
    caps = []
    if rmap.get("battery_soc") is not None:
        ctl = rmap.control
        caps.append(f"battery (controllable: {ctl.style})" if ctl is not None else "battery (monitoring only)")
    if rmap.get("pv_power") is not None:
        caps.append("pv")
    if rmap.get("meter_power") is not None or rmap.get("meter_l1_power") is not None:
        caps.append("meter")
    if is_ev:
        caps.append("ev_charger (controllable: current)")
        return rmap.name, caps, "ev"
    meter_only = rmap.get("battery_soc") is None and "meter" in caps
    return rmap.name, caps, "meter" if meter_only else "battery"


_DRIVERS: dict[tuple[Family, Transport], str] = {
    ("sunspec", "tcp"): "sunspec_tcp",
    ("sunspec", "rtu"): "sunspec_rtu",
    ("battery", "tcp"): "modbus_tcp",
    ("battery", "rtu"): "modbus_rtu",
    ("meter", "tcp"): "modbus_meter_tcp",
    ("meter", "rtu"): "modbus_meter_rtu",
    ("ev", "tcp"): "modbus_ev",
    ("ev", "rtu"): "modbus_ev_rtu",
}


async def recognize(
    bus: ModbusBus, unit_id: int, *, transport: Transport = "tcp", paths: Mapping[str, Path] | None = None
) -> list[Match]:
    """What answers at `unit_id` on `bus`: SunSpec first, then each profile's identification probes."""
    found: list[Match] = []
    try:
        device = await scan_sunspec(bus, unit_id)
    except (ConfigurationError, DriverError, SunSpecError):
        device = None
    if device is not None:
        caps = [
            f"{c.kind.value}{' (controllable)' if c.controllable else ''}" for c in device_capabilities(device, "x")
        ]
        if device.no_control_reason is not None:  # 704 on a hybrid, or a device that does not say: tell why now
            caps = [f"{c} (monitoring only: {device.no_control_reason})" if c == "battery" else c for c in caps]
        found.append(
            Match(
                driver=_DRIVERS["sunspec", transport],
                profile="",
                description=device.description,
                unit_id=unit_id,
                capabilities=caps,
                evidence="SunSpec models " + " ".join(str(m.id) for m in device.models),
                settings={"has_battery": device.has_storage, "has_meter": device.model(*METER_MODELS) is not None},
            )
        )
    cache: _ReadCache = {}
    for ident in identification_probes(paths):
        reasons = []
        for probe in ident.probes:
            regs = await _read(bus, unit_id if probe.unit_id is None else probe.unit_id, probe, cache)
            why = None if regs is None else probe.matches(regs)
            if why is None:
                break
            reasons.append(why)
        else:
            name, caps, family = _profile_facts(ident.path)
            found.append(
                Match(
                    driver=_DRIVERS[family, transport],
                    profile=ident.profile,
                    description=name,
                    unit_id=unit_id,
                    capabilities=caps,
                    evidence="; ".join(reasons),
                    strong=ident.strong,
                )
            )
    if any(m.strong for m in found):
        found = [m for m in found if m.strong]  # an identification code beats a plausibility probe
    return found
