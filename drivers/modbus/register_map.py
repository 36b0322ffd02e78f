"""Vendor register maps as data files: a map says where a value lives and how to read it.

Keeping the layout in TOML (drivers/modbus/maps/*.toml) means a new inverter model is a
reviewed data file, not new code. Values crossing this module's API are in zapd units
(W, Wh, SoC fraction 0..1, seconds, zapd sign conventions); the map's `unit`, `scale`,
`scale_factor` and `invert` describe how the device differs.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, cast

from drivers.modbus.bus import RegisterType, decode_registers, encode_registers
from drivers.modbus.control_spec import ControlSpec, ControlSpecError, parse_control

MAPS_DIR = Path(__file__).parent / "maps"
# A site's own profiles (e.g. /etc/zapd/maps): searched before the shipped ones, recognised the same way.
MAPS_DIR_ENV = "ZAPD_MAPS_DIR"
AUTO_MAP = "auto"  # config `map = "auto"`: the profile is recognised at start (drivers/modbus/auto_profile.py)

WordOrder = Literal["big", "little"]
# How a holding register is written: "single" = function 0x06 (Write Single Register, one register),
# "multiple" = 0x10 (Write Multiple Registers). Many devices take only one of them, or only 0x06 on
# some registers (Fox ESS H3 remote control), so a profile says which its document gives.
WriteFunction = Literal["single", "multiple"]
WRITE_FUNCTIONS: tuple[WriteFunction, ...] = ("single", "multiple")
DEFAULT_WRITE_FUNCTION: WriteFunction = "multiple"  # what the bus did for every register before


class RegisterMapError(ValueError):
    """A map file is unreadable or inconsistent; the message names the file and the field."""


class Table(StrEnum):
    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"  # one bit (function 0x01 / 0x05), e.g. a charger's enable; its type is "bool"


class DataType(StrEnum):
    U16 = "u16"
    S16 = "s16"
    U32 = "u32"
    S32 = "s32"
    U64 = "u64"  # e.g. ABB B-series energy counters
    FLOAT32 = "float32"
    FLOAT64 = "float64"  # e.g. Alfen's energy counters
    BOOL = "bool"  # a coil: 0 or 1


_REGISTER_TYPE = {
    DataType.U16: RegisterType.UINT16,
    DataType.S16: RegisterType.INT16,
    DataType.U32: RegisterType.UINT32,
    DataType.S32: RegisterType.INT32,
    DataType.U64: RegisterType.UINT64,
    DataType.FLOAT32: RegisterType.FLOAT32,
    DataType.FLOAT64: RegisterType.FLOAT64,
}
SCALE_FACTOR_LIMIT = 10  # SunSpec scale factors are -10..10; beyond is a garbled register
_WIDTH = {
    DataType.BOOL: 1,
    DataType.U16: 1,
    DataType.S16: 1,
    DataType.U32: 2,
    DataType.S32: 2,
    DataType.U64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
}
_INT_RANGE = {
    DataType.BOOL: (0, 1),
    DataType.U16: (0, 0xFFFF),
    DataType.S16: (-0x8000, 0x7FFF),
    DataType.U32: (0, 0xFFFF_FFFF),
    DataType.S32: (-0x8000_0000, 0x7FFF_FFFF),
    DataType.U64: (0, 0xFFFF_FFFF_FFFF_FFFF),
}
# Device unit -> factor to zapd's unit. "%" becomes a fraction because SoC is 0..1 everywhere in zapd.
_UNIT_TO_ZAPD = {
    "": 1.0,
    "W": 1.0,
    "kW": 1000.0,
    "Wh": 1.0,
    "kWh": 1000.0,
    "%": 0.01,
    "s": 1.0,
    "min": 60.0,  # e.g. Huawei's forcible charge period
    "A": 1.0,
    "V": 1.0,
}

_FIELD_KEYS = {
    "address",
    "table",
    "type",
    "scale",
    "scale_factor",
    "unit",
    "writable",
    "invert",
    "word_order",
    "description",
    "unit_id",
    "sign_field",
    "sign_mask",
    "offset",
    "write_function",
}


@dataclass(frozen=True, kw_only=True)
class Field:
    name: str
    address: int
    table: Table
    dtype: DataType
    scale: float = 1.0
    # Name of another field holding a power-of-ten exponent (SunSpec *_SF style), read alongside.
    scale_factor: str | None = None
    unit: str = ""
    writable: bool = False
    # The device counts the other way round from zapd (e.g. + = discharging).
    invert: bool = False
    word_order: WordOrder = "big"
    description: str = ""
    # Unit id of this register when it is not the device's own (Victron GX: settings on unit 100).
    unit_id: int | None = None
    # An unsigned magnitude whose direction is a status bit elsewhere (Sungrow SH battery power):
    # the value is negated while `sign_field`'s raw value has any bit of `sign_mask` set.
    sign_field: str | None = None
    sign_mask: int = 0
    # Raw value that means 0 (AlphaESS dispatch power: 32000 = 0 W, < 32000 charge, > 32000 discharge):
    # value = (raw - offset) * scale. Applied before `invert`, so the sign stays the device's.
    offset: int = 0
    # How a writable holding register goes on the wire (0x06 or 0x10); a coil is always 0x05.
    write_function: WriteFunction = DEFAULT_WRITE_FUNCTION

    @property
    def count(self) -> int:
        return _WIDTH[self.dtype]

    def _factor(self, sf: int | None) -> float:
        if self.scale_factor is not None and sf is None:
            raise ValueError(f"field {self.name!r} needs the value of scale factor {self.scale_factor!r}")
        if sf is not None and not -SCALE_FACTOR_LIMIT <= sf <= SCALE_FACTOR_LIMIT:
            # SunSpec scale factors are -10..10; anything far outside is a garbled register, not a value.
            raise ValueError(f"field {self.name!r}: scale factor {sf} is out of range")
        f = self.scale * _UNIT_TO_ZAPD[self.unit] * (10.0 ** (sf or 0))
        return -f if self.invert else f

    def decode(self, registers: list[int], sf: int | None = None) -> float:
        """Raw registers -> value in zapd units."""
        if len(registers) != self.count:
            raise ValueError(f"field {self.name!r} is {self.count} register(s), got {len(registers)}")
        return float(self._raw_value(registers) - self.offset) * self._factor(sf)

    def _raw_value(self, registers: list[int]) -> int | float:
        if self.dtype is DataType.BOOL:
            return 1 if registers[0] else 0
        return decode_registers(registers, _REGISTER_TYPE[self.dtype], self.word_order)

    def decode_raw_int(self, registers: list[int]) -> int:
        """For scale-factor and mode registers, which are plain integers with no scaling."""
        return int(self._raw_value(registers))

    def encode(self, value: float, sf: int | None = None) -> list[int]:
        """Value in zapd units -> registers; ValueError when the device type cannot hold it."""
        if not math.isfinite(value):
            raise ValueError(f"field {self.name!r}: {value} is not a finite number")
        raw = value / self._factor(sf) + self.offset + 0.0  # + 0.0: an inverted 0 is 0.0, not -0.0 (0x80000000)
        if not math.isfinite(raw):  # a finite value over a tiny scale: no register holds it
            raise ValueError(f"field {self.name!r}: {value} does not fit {self.dtype.value}")
        if self.dtype in (DataType.FLOAT32, DataType.FLOAT64):
            try:
                return encode_registers(raw, _REGISTER_TYPE[self.dtype], self.word_order)
            except OverflowError:  # beyond float32's range: struct raises this, callers expect ValueError
                raise ValueError(f"field {self.name!r}: {value} does not fit {self.dtype.value}") from None
        return self.encode_raw_int(round(raw))

    def encode_raw_int(self, raw: int) -> list[int]:
        lo, hi = _INT_RANGE.get(self.dtype, (-(2**31), 2**31 - 1))
        if not lo <= raw <= hi:
            raise ValueError(f"field {self.name!r}: raw value {raw} does not fit {self.dtype.value}")
        if self.dtype is DataType.BOOL:
            return [raw]
        return encode_registers(raw, _REGISTER_TYPE[self.dtype], self.word_order)


@dataclass(frozen=True, kw_only=True)
class RegisterMap:
    name: str
    path: Path
    source: str
    fields: Mapping[str, Field]
    # The second, independent public source the addresses were checked against (a vendor map's header).
    cross_check: str = ""
    # Values of the remote-control register that hand the battery to zapd or give it back.
    remote_control_on: int = 1
    remote_control_off: int = 0
    # How the battery takes a power command; None = monitoring only (drivers/modbus/control_spec.py).
    control: ControlSpec | None = None

    def get(self, name: str) -> Field | None:
        return self.fields.get(name)

    def field(self, name: str) -> Field:
        try:
            return self.fields[name]
        except KeyError:
            raise RegisterMapError(f"{self.path}: field {name!r} is not declared") from None

    def require(self, *names: str, writable: tuple[str, ...] = ()) -> None:
        """Fail at construction, not at the first poll, when a driver needs what the map lacks."""
        for name in names:
            self.field(name)
        for name in writable:
            if not self.field(name).writable:
                raise RegisterMapError(f"{self.path}: field {name!r} must be writable")


def load_register_map(name_or_path: str | Path) -> RegisterMap:
    """A bare name (no suffix, no slash) is looked up in the package's maps folder."""
    path = _resolve(name_or_path)
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise RegisterMapError(f"{path}: register map file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise RegisterMapError(f"{path}: not valid TOML: {exc}") from None
    return _parse(path, doc)


def profile_dirs() -> list[Path]:
    """Where profiles named by a bare name live: `$ZAPD_MAPS_DIR` (a site's own), then the shipped ones."""
    extra = os.environ.get(MAPS_DIR_ENV)
    return [Path(extra), MAPS_DIR] if extra else [MAPS_DIR]


def profile_paths() -> dict[str, Path]:
    """Every profile by name (the file's stem); a site's own file shadows a shipped one of the same name."""
    found: dict[str, Path] = {}
    for folder in profile_dirs():
        for path in sorted(folder.glob("*.toml")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))


def _resolve(name_or_path: str | Path) -> Path:
    if isinstance(name_or_path, Path):
        return name_or_path
    if "/" in name_or_path or name_or_path.endswith(".toml"):
        return Path(name_or_path)
    for folder in profile_dirs():
        if (folder / f"{name_or_path}.toml").is_file():
            return folder / f"{name_or_path}.toml"
    return MAPS_DIR / f"{name_or_path}.toml"


def _parse(path: Path, doc: dict[str, Any]) -> RegisterMap:
    device = doc.get("device", {})
    if not isinstance(device, dict):
        raise RegisterMapError(f"{path}: [device] must be a table")
    word_order = device.get("word_order", "big")
    if word_order not in ("big", "little"):
        raise RegisterMapError(f"{path}: device.word_order must be 'big' or 'little', got {word_order!r}")
    write_function = device.get("write_function", DEFAULT_WRITE_FUNCTION)
    if write_function not in WRITE_FUNCTIONS:
        raise RegisterMapError(
            f"{path}: device.write_function must be 'single' (0x06) or 'multiple' (0x10), got {write_function!r}"
        )
    raw_fields = doc.get("fields")
    if not isinstance(raw_fields, dict) or not raw_fields:
        raise RegisterMapError(f"{path}: no [fields.*] tables")
    fields = {name: _parse_field(path, name, spec, word_order, write_function) for name, spec in raw_fields.items()}
    _check_consistency(path, fields)
    control = doc.get("control", {})
    if not isinstance(control, dict):
        raise RegisterMapError(f"{path}: [control] must be a table")
    on, off = control.get("remote_control_on", 1), control.get("remote_control_off", 0)
    if not (isinstance(on, int) and isinstance(off, int)) or on == off:
        raise RegisterMapError(f"{path}: control.remote_control_on/off must be two different integers")
    try:
        spec = parse_control(control, fields)
    except ControlSpecError as exc:
        raise RegisterMapError(f"{path}: {exc}") from None
    return RegisterMap(
        name=str(device.get("name", path.stem)),
        path=path,
        source=str(device.get("source", "")),
        cross_check=str(device.get("cross_check", "")),
        fields=fields,
        remote_control_on=on,
        remote_control_off=off,
        control=spec,
    )


def _parse_field(path: Path, name: str, spec: Any, word_order: WordOrder, write_default: WriteFunction) -> Field:
    where = f"{path}: field {name!r}"
    if not isinstance(spec, dict):
        raise RegisterMapError(f"{where}: must be a table")
    unknown = set(spec) - _FIELD_KEYS
    if unknown:
        raise RegisterMapError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    address = spec.get("address")
    if not isinstance(address, int) or isinstance(address, bool) or not 0 <= address <= 0xFFFF:
        raise RegisterMapError(f"{where}: address must be an integer 0..65535, got {address!r}")
    try:
        table = Table(spec.get("table", ""))
    except ValueError:
        raise RegisterMapError(
            f"{where}: table must be 'holding', 'input' or 'coil', got {spec.get('table')!r}"
        ) from None
    try:
        dtype = DataType(spec.get("type", ""))
    except ValueError:
        choices = ", ".join(t.value for t in DataType)
        raise RegisterMapError(f"{where}: type must be one of {choices}, got {spec.get('type')!r}") from None
    scale = spec.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or scale == 0 or not math.isfinite(scale):
        raise RegisterMapError(f"{where}: scale must be a non-zero number, got {scale!r}")
    unit = spec.get("unit", "")
    if unit not in _UNIT_TO_ZAPD:
        raise RegisterMapError(f"{where}: unit must be one of {sorted(_UNIT_TO_ZAPD)}, got {unit!r}")
    field_order = spec.get("word_order", word_order)
    if field_order not in ("big", "little"):
        raise RegisterMapError(f"{where}: word_order must be 'big' or 'little', got {field_order!r}")
    for key in ("writable", "invert"):
        if not isinstance(spec.get(key, False), bool):
            raise RegisterMapError(f"{where}: {key} must be true or false")
    sf = spec.get("scale_factor")
    if sf is not None and not isinstance(sf, str):
        raise RegisterMapError(f"{where}: scale_factor must name another field")
    unit_id = spec.get("unit_id")
    if unit_id is not None and (not isinstance(unit_id, int) or isinstance(unit_id, bool) or not 0 <= unit_id <= 255):
        raise RegisterMapError(f"{where}: unit_id must be an integer 0..255, got {unit_id!r}")
    sign_field, sign_mask = spec.get("sign_field"), spec.get("sign_mask", 0)
    paired = (sign_field is None) == ("sign_mask" not in spec)
    if not paired or (sign_field is not None and not isinstance(sign_field, str)):
        raise RegisterMapError(f"{where}: sign_field (a field name) and sign_mask go together")
    if not isinstance(sign_mask, int) or isinstance(sign_mask, bool) or not 0 <= sign_mask <= 0xFFFF_FFFF:
        raise RegisterMapError(f"{where}: sign_mask must be a bit mask, got {sign_mask!r}")
    offset = spec.get("offset", 0)
    lo, hi = (0, 0) if dtype is DataType.BOOL else _INT_RANGE.get(dtype, (0, 0))
    if not isinstance(offset, int) or isinstance(offset, bool) or not lo <= offset <= hi:
        raise RegisterMapError(f"{where}: offset must be a raw {dtype.value} value (an integer type), got {offset!r}")
    if (table is Table.COIL) != (dtype is DataType.BOOL):
        raise RegisterMapError(f"{where}: a coil is type 'bool', and type 'bool' is a coil")
    if address + _WIDTH[dtype] - 1 > 0xFFFF:
        raise RegisterMapError(f"{where}: {dtype.value} at {address} runs past register 65535")
    write_function = _write_function(where, spec, table, dtype, write_default)
    return Field(
        name=name,
        address=address,
        table=table,
        dtype=dtype,
        scale=float(scale),
        scale_factor=sf,
        unit=unit,
        writable=spec.get("writable", False),
        invert=spec.get("invert", False),
        word_order=field_order,
        description=str(spec.get("description", "")),
        unit_id=unit_id,
        sign_field=sign_field,
        sign_mask=sign_mask,
        offset=offset,
        write_function=write_function,
    )


def _write_function(
    where: str, spec: Mapping[str, Any], table: Table, dtype: DataType, default: WriteFunction
) -> WriteFunction:
    """The field's own `write_function`, else the device's; "single" (0x06) carries one register only."""
    if "write_function" not in spec:
        if default == "single" and spec.get("writable", False) and table is Table.HOLDING and _WIDTH[dtype] > 1:
            # 0x06 cannot carry it, and splitting it into two writes would let the device act on half a value
            raise RegisterMapError(
                f"{where}: device.write_function = 'single' (0x06) writes one register, this field is "
                f"{dtype.value} ({_WIDTH[dtype]} registers): set write_function = 'multiple' on it "
                "if the device document allows 0x10 there"
            )
        return default if table is Table.HOLDING and _WIDTH[dtype] == 1 else "multiple"
    value = spec["write_function"]
    if value not in WRITE_FUNCTIONS:
        raise RegisterMapError(f"{where}: write_function must be 'single' (0x06) or 'multiple' (0x10), got {value!r}")
    if not spec.get("writable", False) or table is not Table.HOLDING:
        raise RegisterMapError(f"{where}: write_function applies to writable holding registers only (a coil is 0x05)")
    if value == "single" and _WIDTH[dtype] > 1:
        raise RegisterMapError(
            f"{where}: write_function = 'single' (0x06) writes one register, this field is "
            f"{dtype.value} ({_WIDTH[dtype]} registers)"
        )
    return cast(WriteFunction, value)


def _check_consistency(path: Path, fields: Mapping[str, Field]) -> None:
    for f in fields.values():
        if f.sign_field is not None:
            sign = fields.get(f.sign_field)
            if sign is None or sign.dtype not in (DataType.U16, DataType.U32) or sign.unit_id != f.unit_id:
                raise RegisterMapError(
                    f"{path}: field {f.name!r}: sign_field {f.sign_field!r} must be a declared u16/u32 on the same unit"
                )
        if f.scale_factor is None:
            continue
        sf = fields.get(f.scale_factor)
        if sf is None:
            raise RegisterMapError(f"{path}: field {f.name!r}: scale_factor {f.scale_factor!r} is not declared")
        if sf.dtype not in (DataType.S16, DataType.U16) or sf.scale_factor is not None:
            raise RegisterMapError(f"{path}: field {f.name!r}: scale factor field {sf.name!r} must be a plain s16/u16")
    for table, unit in {(f.table, f.unit_id) for f in fields.values()}:
        used: dict[int, str] = {}
        same = (f for f in fields.values() if f.table is table and f.unit_id == unit)
        for f in sorted(same, key=lambda f: f.address):
            for reg in range(f.address, f.address + f.count):
                if reg in used:
                    where = f"{table.value} register {reg}"
                    other = used[reg]
                    raise RegisterMapError(f"{path}: field {f.name!r} overlaps field {other!r} at {where}")
                used[reg] = f.name
