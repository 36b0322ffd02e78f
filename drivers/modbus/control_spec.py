"""The control vocabulary of a register map's `[control]` table: how a battery takes a power command.

Vendors expose battery control in a few shapes, and a profile names its shape instead of code:

- `signed_setpoint`: one register, + charge / - discharge (SMA SBS, zapd's simulator);
- `direction_magnitude`: a direction register (charge / discharge / stop values) plus unsigned
  power register(s) (Huawei forcible charge/discharge, Sungrow SH forced mode). The magnitude is
  written first, then the direction; `direction_first = true` turns that round for a device that
  takes a power only once its mode is set (Solis "RC force charge/discharge" 43135, whose power
  registers latch only when written after it). The magnitude is rounded towards zero to the
  register's step (Solis counts in 10 W), so a command never becomes more than was asked for;
- `grid_setpoint`: the device regulates the grid connection point to a setpoint (Victron ESS);
  zapd turns its battery command into a grid setpoint from the grid and battery power it reads.
- `tou_slot`: the device follows its own time-of-use program (Deye / Sunsynk "System work mode":
  six slots, each with a power, a SoC target and a grid-charge flag); zapd takes one slot over
  (its `enter` writes make that slot span the day) and writes the slot's power, SoC target and
  grid-charge flag. Charge P: power P, target = the battery's max SoC, grid charge on. Discharge P:
  power |P|, target = the reserve SoC, grid charge off. Idle: power 0, target = reserve, grid
  charge off. The SoC targets come from the battery's configured reserve / max SoC, rounded
  towards the safe side (never below the reserve, never above the max), so no command can move
  the device's own program past them.
- `dispatch`: the device takes a dispatch command of a power, a SoC target and a duration (AlphaESS
  "Dispatch": 0x0881 power, 0x0886 SoC, 0x0887 time, then 0x0885 mode). Every command writes, in
  order, `setpoint` (the signed power, + charge, through its field's offset, scale and sign),
  `duration` (`duration_s`, so the device drops the command on its own when zapd stops writing),
  `soc_target` (charge: the battery's max SoC, rounded down; discharge and idle: the reserve SoC,
  rounded up, as `tou_slot` does) and last the `activate` writes (the dispatch mode that makes the
  device act on those values). A held command is written again after `keepalive_s` (default: half
  the duration), which must be shorter than the duration.
- `rate_slot`: the device charges and discharges in its own time slots at a power *rate* in % of
  its rated power (Growatt SPH "Battery first" 1090-1102 / "Grid first" 1070-1082); the `enter`
  writes make one slot of each kind span the day. Charge P: `charge_rate` = P as % of
  `rate_reference` (the rated power, read before every command), rounded down; `charge_soc` = the
  battery's max SoC, rounded down; then the `charge_writes` (that slot on, the other off, grid
  charging on). Discharge P: `discharge_rate` likewise, `discharge_soc` = the reserve SoC, rounded
  up (and the same floor in each of `discharge_soc_also`: a firmware that keeps its on-grid floor in
  another register, Growatt TL-XH 3067), then the `discharge_writes`. Idle: only the
  `idle_writes` (both slots off: the device's own mode; the rates are left as they are). A rated
  power that is missing, zero or not a number refuses the command, and so does a command above
  it (or a zapd limit above it): rounding the % down
  against the device's own rated power never asks for more than the command, whatever lower
  limit zapd.toml sets.

Around any of them, a *mode sequence*: `enter` writes (forced / remote mode, enable registers,
written in order before the first command and again whenever `mode_field` shows that the device
left that mode), `release` writes (the revert on safe mode when `revert = "release"`), an optional
command-timeout register written on entering (the device's own deadman) and a keepalive period
after which a command the device already holds is written again. Every value here is a raw
register value; every power goes through its field's scale, sign and unit.

`readback = false` is for devices whose control registers are write-only (SMA's "device control
objects" read as NaN): a command is then not read back. It needs `keepalive_s` (the device holds a
command only while it keeps being written) and no `mode_field` (there is nothing to read), and every
write of a command writes the `enter` sequence again first, since zapd cannot see whether the device
is still in that mode.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

ControlStyle = Literal["signed_setpoint", "direction_magnitude", "grid_setpoint", "tou_slot", "dispatch", "rate_slot"]
RevertRule = Literal["idle", "release"]
STYLES: tuple[ControlStyle, ...] = (
    "signed_setpoint",
    "direction_magnitude",
    "grid_setpoint",
    "tou_slot",
    "dispatch",
    "rate_slot",
)
_KEEPALIVE_MAX_S = 3600.0
_TIMEOUT_MAX_S = 86_400.0
_KEYS = {
    "style",
    "enter",
    "release",
    "revert",
    "mode_field",
    "setpoint",
    "direction",
    "charge_value",
    "discharge_value",
    "idle_value",
    "charge_power",
    "discharge_power",
    "grid_power",
    "grid_idle_w",
    "timeout_field",
    "timeout_s",
    "keepalive_s",
    "slot_power",
    "slot_soc",
    "slot_charge",
    "slot_charge_on",
    "slot_charge_off",
    "remote_control_on",
    "remote_control_off",
    "readback",
    "soc_target",
    "duration",
    "duration_s",
    "activate",
    "direction_first",
    "rate_reference",
    "charge_rate",
    "discharge_rate",
    "charge_soc",
    "discharge_soc",
    "discharge_soc_also",
    "charge_writes",
    "discharge_writes",
    "idle_writes",
}
_RATE_SLOT_KEYS = ("rate_reference", "charge_rate", "discharge_rate", "charge_soc", "discharge_soc")


class ControlSpecError(ValueError):
    """The `[control]` table is inconsistent; the message names the key."""


@dataclass(frozen=True)
class RawWrite:
    """One register write of a raw integer (a mode, a direction, an enable flag)."""

    field: str
    value: int


@dataclass(frozen=True, kw_only=True)
class ControlSpec:
    style: ControlStyle
    enter: tuple[RawWrite, ...] = ()
    release: tuple[RawWrite, ...] = ()
    revert: RevertRule = "idle"
    # Read before each command: a value other than its `enter` value means the device left the mode.
    mode_field: str | None = None
    setpoint: str | None = None  # signed_setpoint / grid_setpoint
    direction: str | None = None  # direction_magnitude
    charge_value: int = 0
    discharge_value: int = 0
    idle_value: int = 0
    charge_power: str | None = None
    discharge_power: str | None = None
    direction_first: bool = False  # direction_magnitude: write the direction before the magnitude
    grid_power: tuple[str, ...] = ()  # grid_setpoint: fields summed to the grid power, + import
    grid_idle_w: float = 0.0  # grid_setpoint: what the release hands back (Victron's default 30 W)
    timeout_field: str | None = None
    timeout_s: float | None = None
    keepalive_s: float | None = None
    # tou_slot: the slot's power (W), SoC target (%) and grid-charge flag (raw on / off values).
    slot_power: str | None = None
    slot_soc: str | None = None
    slot_charge: str | None = None
    slot_charge_on: int = 1
    slot_charge_off: int = 0
    readback: bool = True  # false: write-only control registers (see the module docstring)
    # dispatch: the command's SoC target (%) and duration (s) fields, and the writes that start it.
    soc_target: str | None = None
    duration: str | None = None
    duration_s: float | None = None
    activate: tuple[RawWrite, ...] = ()
    # rate_slot: the rated power (W) the rates are % of, the rate (%) and stop-SoC (%) fields of each
    # direction, and the mode writes that follow them.
    rate_reference: str | None = None
    charge_rate: str | None = None
    discharge_rate: str | None = None
    charge_soc: str | None = None
    discharge_soc: str | None = None
    discharge_soc_also: tuple[str, ...] = ()
    charge_writes: tuple[RawWrite, ...] = ()
    discharge_writes: tuple[RawWrite, ...] = ()
    idle_writes: tuple[RawWrite, ...] = ()

    @property
    def mode_value(self) -> int | None:
        for w in self.enter:
            if w.field == self.mode_field:
                return w.value
        return None

    def written_fields(self) -> set[str]:
        modes = (*self.charge_writes, *self.discharge_writes, *self.idle_writes)
        names = {w.field for w in (*self.enter, *self.release, *self.activate, *modes)} | set(self.discharge_soc_also)
        for name in (
            self.setpoint,
            self.direction,
            self.charge_power,
            self.discharge_power,
            self.timeout_field,
            self.slot_power,
            self.slot_soc,
            self.slot_charge,
            self.soc_target,
            self.duration,
            self.charge_rate,
            self.discharge_rate,
            self.charge_soc,
            self.discharge_soc,
        ):
            if name is not None:
                names.add(name)
        return names

    def read_fields(self) -> set[str]:
        names = set(self.grid_power)
        if self.rate_reference is not None:
            names.add(self.rate_reference)
        if self.mode_field is not None:
            names.add(self.mode_field)
        return names


def _int(doc: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = doc.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFF_FFFF:
        raise ControlSpecError(f"control.{key} must be a raw register value 0..4294967295, got {value!r}")
    return value


def _name(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ControlSpecError(f"control.{key} must name a field, got {value!r}")
    return value


def _names(doc: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """A list of field names (empty when absent)."""
    raw = doc.get(key, [])
    if not isinstance(raw, list) or not all(isinstance(n, str) and n for n in raw):
        raise ControlSpecError(f"control.{key} must be a list of field names")
    return tuple(raw)


def _writes(doc: Mapping[str, Any], key: str) -> tuple[RawWrite, ...]:
    """`enter = [{field = "ems_mode", value = 2}, ...]`: a list keeps the order the vendor asks for."""
    raw = doc.get(key, [])
    if not isinstance(raw, list):
        raise ControlSpecError(f"control.{key} must be a list of {{field = ..., value = ...}} tables")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"field", "value"}:
            raise ControlSpecError(f"control.{key}[{i}] must be {{field = NAME, value = RAW}}")
        out.append(RawWrite(field=str(_name(item, "field")), value=_int(item, "value")))
    return tuple(out)


def _seconds(doc: Mapping[str, Any], key: str, limit: float) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ControlSpecError(f"control.{key} must be a number of seconds, got {value!r}")
    if not 0 < value <= limit:
        raise ControlSpecError(f"control.{key} must be in (0, {limit:g}] s, got {value!r}")
    return float(value)


def parse_control(doc: Mapping[str, Any], fields: Mapping[str, Any]) -> ControlSpec | None:
    """`[control]` -> ControlSpec; None for a monitoring-only map. `fields` are the map's declared fields.

    A map of the older form (`remote_control` and `battery_setpoint` fields, `remote_control_on/off`
    values) is read as a signed setpoint entered by writing `remote_control_on`.
    """
    unknown = set(doc) - _KEYS
    if unknown:
        raise ControlSpecError(f"control: unknown key(s) {', '.join(sorted(unknown))}")
    style = doc.get("style")
    if style is None:
        if "battery_setpoint" not in fields:
            return None
        on, off = doc.get("remote_control_on", 1), doc.get("remote_control_off", 0)
        if not (isinstance(on, int) and isinstance(off, int)) or on == off:
            raise ControlSpecError("control.remote_control_on/off must be two different integers")
        spec = ControlSpec(
            style="signed_setpoint",
            setpoint="battery_setpoint",
            enter=(RawWrite("remote_control", on),),
            release=(RawWrite("remote_control", off),),
            mode_field="remote_control",
            timeout_field="command_timeout" if getattr(fields.get("command_timeout"), "writable", False) else None,
        )
    else:
        spec = _parse_styled(doc, style)
    _check_fields(spec, fields)
    return spec


def _parse_styled(doc: Mapping[str, Any], style: Any) -> ControlSpec:
    if style not in STYLES:
        raise ControlSpecError(f"control.style must be one of {', '.join(STYLES)}, got {style!r}")
    revert = doc.get("revert", "idle")
    if revert not in ("idle", "release"):
        raise ControlSpecError(f"control.revert must be 'idle' or 'release', got {revert!r}")
    grid = doc.get("grid_power", [])
    grid = [grid] if isinstance(grid, str) else grid
    if not isinstance(grid, list) or not all(isinstance(g, str) and g for g in grid):
        raise ControlSpecError("control.grid_power must name a field or a list of fields (summed)")
    readback = doc.get("readback", True)
    if not isinstance(readback, bool):
        raise ControlSpecError(f"control.readback must be true or false, got {readback!r}")
    duration_s = _seconds(doc, "duration_s", _TIMEOUT_MAX_S)
    keepalive_s = _seconds(doc, "keepalive_s", _KEEPALIVE_MAX_S)
    if style == "dispatch" and duration_s is not None:
        if keepalive_s is None:
            keepalive_s = duration_s / 2
        elif keepalive_s >= duration_s:
            # the device would drop the command between two writes of it
            raise ControlSpecError(
                f"control.keepalive_s {keepalive_s:g} must be shorter than duration_s {duration_s:g}"
            )
    direction_first = doc.get("direction_first", False)
    if not isinstance(direction_first, bool):
        raise ControlSpecError(f"control.direction_first must be true or false, got {direction_first!r}")
    if direction_first and style != "direction_magnitude":
        raise ControlSpecError("control.direction_first applies to style 'direction_magnitude' only")
    grid_idle = doc.get("grid_idle_w", 0.0)
    if isinstance(grid_idle, bool) or not isinstance(grid_idle, int | float) or not math.isfinite(grid_idle):
        raise ControlSpecError(f"control.grid_idle_w must be a number of W, got {grid_idle!r}")
    spec = ControlSpec(
        style=style,
        enter=_writes(doc, "enter"),
        release=_writes(doc, "release"),
        revert=revert,
        mode_field=_name(doc, "mode_field"),
        setpoint=_name(doc, "setpoint"),
        direction=_name(doc, "direction"),
        charge_value=_int(doc, "charge_value", 0),
        discharge_value=_int(doc, "discharge_value", 0),
        idle_value=_int(doc, "idle_value", 0),
        charge_power=_name(doc, "charge_power"),
        discharge_power=_name(doc, "discharge_power"),
        direction_first=direction_first,
        grid_power=tuple(grid),
        grid_idle_w=float(grid_idle),
        timeout_field=_name(doc, "timeout_field"),
        timeout_s=_seconds(doc, "timeout_s", _TIMEOUT_MAX_S),
        keepalive_s=keepalive_s,
        slot_power=_name(doc, "slot_power"),
        slot_soc=_name(doc, "slot_soc"),
        slot_charge=_name(doc, "slot_charge"),
        slot_charge_on=_int(doc, "slot_charge_on", 1),
        slot_charge_off=_int(doc, "slot_charge_off", 0),
        readback=readback,
        soc_target=_name(doc, "soc_target"),
        duration=_name(doc, "duration"),
        duration_s=duration_s,
        activate=_writes(doc, "activate"),
        rate_reference=_name(doc, "rate_reference"),
        charge_rate=_name(doc, "charge_rate"),
        discharge_rate=_name(doc, "discharge_rate"),
        charge_soc=_name(doc, "charge_soc"),
        discharge_soc=_name(doc, "discharge_soc"),
        discharge_soc_also=_names(doc, "discharge_soc_also"),
        charge_writes=_writes(doc, "charge_writes"),
        discharge_writes=_writes(doc, "discharge_writes"),
        idle_writes=_writes(doc, "idle_writes"),
    )
    need = {
        "signed_setpoint": ("setpoint",),
        "direction_magnitude": ("direction", "charge_power", "discharge_power"),
        "grid_setpoint": ("setpoint",),
        "tou_slot": ("slot_power", "slot_soc", "slot_charge"),
        "dispatch": ("setpoint", "soc_target", "duration", "duration_s"),
        "rate_slot": _RATE_SLOT_KEYS,
    }[style]
    for key in need:
        if getattr(spec, key) is None:
            raise ControlSpecError(f"control.style {style!r} needs control.{key}")
    if style == "direction_magnitude" and len({spec.charge_value, spec.discharge_value, spec.idle_value}) != 3:
        raise ControlSpecError("control.charge_value, discharge_value and idle_value must differ")
    if style == "dispatch" and not spec.activate:
        raise ControlSpecError("control.style 'dispatch' needs control.activate (the write that starts the dispatch)")
    if style != "dispatch" and (spec.activate or spec.soc_target or spec.duration or spec.duration_s is not None):
        raise ControlSpecError("control.activate, soc_target, duration and duration_s belong to style 'dispatch'")
    modes = (spec.charge_writes, spec.discharge_writes, spec.idle_writes)
    if style == "rate_slot" and not (spec.charge_writes and spec.discharge_writes):
        raise ControlSpecError("control.style 'rate_slot' needs control.charge_writes and discharge_writes")
    if style != "rate_slot" and (
        any(getattr(spec, k) for k in _RATE_SLOT_KEYS) or any(modes) or spec.discharge_soc_also
    ):
        raise ControlSpecError(
            "control.rate_reference, charge_rate, discharge_rate, charge_soc, discharge_soc and the "
            "charge / discharge / idle writes belong to style 'rate_slot'"
        )
    if style == "tou_slot" and spec.slot_charge_on == spec.slot_charge_off:
        raise ControlSpecError("control.slot_charge_on and slot_charge_off must differ")
    if style == "grid_setpoint" and not spec.grid_power:
        raise ControlSpecError("control.style 'grid_setpoint' needs control.grid_power (the grid meter's fields)")
    if spec.mode_field is not None and spec.mode_value is None:
        raise ControlSpecError(f"control.mode_field {spec.mode_field!r} must be one of the `enter` writes")
    if spec.revert == "release" and not spec.release and style != "grid_setpoint":
        # (a grid setpoint's release is the setpoint itself, back to grid_idle_w)
        raise ControlSpecError("control.revert = 'release' needs control.release writes")
    if not spec.readback and spec.mode_field is not None:
        raise ControlSpecError("control.readback = false: a write-only device has no mode_field to read")
    if not spec.readback and spec.keepalive_s is None:
        raise ControlSpecError("control.readback = false needs control.keepalive_s: a command holds only while written")
    if (spec.timeout_field is None) != (spec.timeout_s is None):
        raise ControlSpecError("control.timeout_field and control.timeout_s go together")
    return spec


def _check_fields(spec: ControlSpec, fields: Mapping[str, Any]) -> None:
    for name in sorted(spec.written_fields() | spec.read_fields()):
        if name not in fields:
            raise ControlSpecError(f"control names field {name!r}, which is not declared")
    for name in sorted(spec.written_fields()):
        if not getattr(fields[name], "writable", False):
            raise ControlSpecError(f"control writes field {name!r}: it must be writable")
    modes = (*spec.charge_writes, *spec.discharge_writes, *spec.idle_writes)
    for w in (*spec.enter, *spec.release, *spec.activate, *modes):
        # a coil (an enable bit) takes 0 or 1; the bus writes it with function 0x05
        if getattr(getattr(fields[w.field], "dtype", None), "value", None) == "bool" and w.value not in (0, 1):
            raise ControlSpecError(f"control writes coil {w.field!r} = {w.value}: a coil takes 0 or 1")
    keys = ("slot_soc", "soc_target", "charge_soc", "discharge_soc", "charge_rate", "discharge_rate")
    targets = [(k, getattr(spec, k)) for k in keys] + [("discharge_soc_also", n) for n in spec.discharge_soc_also]
    for key, name in targets:
        if name is None:
            continue
        target = fields[name]
        if getattr(target, "scale_factor", None) is not None or getattr(target, "offset", 0) != 0:
            # its target is rounded to a raw step on the safe side, which needs a fixed scale from raw 0
            raise ControlSpecError(f"control.{key} {name!r} must have a fixed scale and no offset")
