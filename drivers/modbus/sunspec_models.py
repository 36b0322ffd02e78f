"""SunSpec model definitions (from pysunspec2's JSON files) and the register codec for their points.

The SunSpec Alliance publishes every model as JSON; pysunspec2 ships those files. Reading
offsets, types and scale-factor links from them (instead of hand-typing hundreds of offsets)
means a point's address is the standard's, not our transcription of it. Only the top-level
group of a model is decoded: repeating groups (curves, per-string data) are not needed to
meter or control a site.

Addresses here are offsets from a model's `ID` register (ID = 0, L = 1, first point = 2).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, TypeAlias

Value: TypeAlias = int | float | str

# "Not implemented" markers per SunSpec type (SunSpec Information Model Specification §6).
_NOT_IMPLEMENTED: dict[str, int] = {
    "int16": 0x8000,
    "sunssf": 0x8000,
    "uint16": 0xFFFF,
    "enum16": 0xFFFF,
    "bitfield16": 0xFFFF,
    "count": 0,
    "acc16": 0,
    "int32": 0x8000_0000,
    "uint32": 0xFFFF_FFFF,
    "enum32": 0xFFFF_FFFF,
    "bitfield32": 0xFFFF_FFFF,
    "acc32": 0,
    "int64": 0x8000_0000_0000_0000,
    "uint64": 0xFFFF_FFFF_FFFF_FFFF,
    "acc64": 0,
    "ipaddr": 0,
}
_SIGNED = {"int16", "sunssf", "int32", "int64"}
_STRING_TYPES = {"string", "ipv6addr", "eui48"}
_MAX_SF = 10


class SunSpecError(ValueError):
    """A model that does not fit its definition (too short, a value of the wrong type)."""


@dataclass(frozen=True)
class PointDef:
    name: str
    type: str
    size: int
    offset: int  # from the model's ID register
    sf: str | int | None
    units: str
    writable: bool


@dataclass(frozen=True)
class ModelDef:
    id: int
    name: str
    points: dict[str, PointDef]
    length: int  # registers after ID and L in the top-level group

    def point(self, name: str) -> PointDef:
        try:
            return self.points[name]
        except KeyError:
            raise SunSpecError(f"model {self.id} ({self.name}) has no point {name!r}") from None


def _model_json(model_id: int) -> dict[str, Any] | None:
    ref = resources.files("sunspec2") / "models" / "json" / f"model_{model_id}.json"
    try:
        doc: dict[str, Any] = json.loads(ref.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return doc


def _points(raw: list[dict[str, Any]]) -> tuple[dict[str, PointDef], int]:
    """A group's points with their offsets from the group's first register, and the group's size."""
    points: dict[str, PointDef] = {}
    offset = 0
    for p in raw:
        size = int(p.get("size", 1))
        points[p["name"]] = PointDef(
            name=p["name"],
            type=p["type"],
            size=size,
            offset=offset,
            sf=p.get("sf"),
            units=p.get("units", ""),
            writable=p.get("access", "R") == "RW",
        )
        offset += size
    return points, offset


@cache
def model_def(model_id: int) -> ModelDef | None:
    """The standard's definition of a model, or None for one pysunspec2 does not know (vendor models)."""
    doc = _model_json(model_id)
    if doc is None:
        return None
    points, size = _points(doc["group"]["points"])
    return ModelDef(id=model_id, name=doc["group"]["name"], points=points, length=size - 2)


@cache
def repeating_group(model_id: int) -> ModelDef | None:
    """A model's repeating group (model 160's `module`), offsets from each instance's first register.

    Its points' scale factors name points of the model's top-level group (160: DCW_SF), so they are
    resolved against the model's registers, not the instance's. None when the model has no group.
    """
    doc = _model_json(model_id)
    groups = (doc or {}).get("group", {}).get("groups") or []
    if not groups:
        return None
    points, size = _points(groups[0]["points"])
    return ModelDef(id=model_id, name=groups[0]["name"], points=points, length=size)


def _as_int(regs: list[int]) -> int:
    value = 0
    for r in regs:
        value = (value << 16) | (r & 0xFFFF)
    return value


def decode_raw(p: PointDef, regs: list[int]) -> Value | None:
    """One point's registers -> its unscaled value; None when the device marks it not implemented."""
    if len(regs) != p.size:
        raise SunSpecError(f"point {p.name}: {p.size} register(s) expected, got {len(regs)}")
    if p.type in _STRING_TYPES:
        text = b"".join(r.to_bytes(2, "big") for r in regs).split(b"\0", 1)[0]
        return text.decode("utf-8", errors="replace").strip() or None
    if p.type in ("float32", "float64"):
        fmt = ">f" if p.type == "float32" else ">d"
        value = struct.unpack(fmt, b"".join(r.to_bytes(2, "big") for r in regs))[0]
        return None if math.isnan(value) else float(value)
    if p.type == "pad":
        return None
    raw = _as_int(regs)
    if p.type in _NOT_IMPLEMENTED and raw == _NOT_IMPLEMENTED[p.type]:
        return None
    if p.type in _SIGNED and raw >= 1 << (16 * p.size - 1):
        raw -= 1 << (16 * p.size)
    return raw


def encode_raw(p: PointDef, value: Value | None) -> list[int]:
    """A point's unscaled value -> registers; None writes the not-implemented marker."""
    if p.type in _STRING_TYPES:
        data = str(value or "").encode("utf-8")[: 2 * p.size].ljust(2 * p.size, b"\0")
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if p.type in ("float32", "float64"):
        fmt = ">f" if p.type == "float32" else ">d"
        data = struct.pack(fmt, math.nan if value is None else float(value))
        return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if value is None:
        raw = _NOT_IMPLEMENTED.get(p.type, 0)
    else:
        if not isinstance(value, int) or isinstance(value, bool):
            raise SunSpecError(f"point {p.name} ({p.type}) needs an integer, got {value!r}")
        bits = 16 * p.size
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if p.type in _SIGNED else (0, (1 << bits) - 1)
        if not lo <= value <= hi:
            raise SunSpecError(f"point {p.name}: {value} does not fit {p.type}")
        raw = value & ((1 << bits) - 1)
    return [(raw >> (16 * (p.size - 1 - i))) & 0xFFFF for i in range(p.size)]


def point_regs(p: PointDef, model_regs: list[int]) -> list[int] | None:
    """The point's slice of a model's registers (from ID), or None when the device's model is shorter."""
    end = p.offset + p.size
    return model_regs[p.offset : end] if end <= len(model_regs) else None


def scale_factor(mdef: ModelDef, p: PointDef, model_regs: list[int]) -> int | None:
    """The power-of-ten exponent for a point: a literal from the definition or another point's value."""
    if p.sf is None:
        return 0
    if isinstance(p.sf, int):
        return p.sf
    sf_point = mdef.points.get(p.sf)
    regs = None if sf_point is None else point_regs(sf_point, model_regs)
    if sf_point is None or regs is None:
        return None
    sf = decode_raw(sf_point, regs)
    if not isinstance(sf, int) or not -_MAX_SF <= sf <= _MAX_SF:
        return None
    return sf


def decode_model(mdef: ModelDef, model_regs: list[int]) -> dict[str, Value]:
    """Every implemented top-level point, scale factors applied; unknown scale means the value is left out."""
    values: dict[str, Value] = {}
    for p in mdef.points.values():
        if p.type in ("sunssf", "pad") or p.name in ("ID", "L"):
            continue
        regs = point_regs(p, model_regs)
        if regs is None:
            continue
        raw = decode_raw(p, regs)
        if raw is None:
            continue
        if isinstance(raw, str) or p.sf is None:
            values[p.name] = raw
            continue
        sf = scale_factor(mdef, p, model_regs)
        if sf is not None:
            values[p.name] = raw * 10.0**sf
    return values


def decode_groups(mdef: ModelDef, gdef: ModelDef, model_regs: list[int]) -> list[dict[str, Value]]:
    """Every whole instance of the repeating group after the top-level block, decoded like decode_model.

    The count is what the model's length holds (L), so a device whose `N` disagrees with L cannot make
    zapd read past the model.
    """
    start = mdef.length + 2
    if gdef.length <= 0 or len(model_regs) <= start:
        return []
    instances: list[dict[str, Value]] = []
    for i in range((len(model_regs) - start) // gdef.length):
        regs = model_regs[start + i * gdef.length : start + (i + 1) * gdef.length]
        values: dict[str, Value] = {}
        for p in gdef.points.values():
            if p.type in ("sunssf", "pad"):
                continue
            raw = decode_raw(p, regs[p.offset : p.offset + p.size])
            if raw is None:
                continue
            if isinstance(raw, str) or p.sf is None:
                values[p.name] = raw
                continue
            sf = scale_factor(mdef, p, model_regs)  # the group's scale factors live in the top-level block
            if sf is not None:
                values[p.name] = raw * 10.0**sf
        instances.append(values)
    return instances


def encode_scaled(mdef: ModelDef, p: PointDef, value: float, model_regs: list[int]) -> list[int]:
    """Engineering value -> registers, using the scale factor currently in `model_regs`."""
    sf = scale_factor(mdef, p, model_regs)
    if sf is None:
        raise SunSpecError(f"point {p.name}: scale factor {p.sf} not implemented")
    if p.type in ("float32", "float64"):
        return encode_raw(p, value)
    return encode_raw(p, round(value / 10.0**sf))
