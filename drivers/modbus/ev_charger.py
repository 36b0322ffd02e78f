"""An EV charger over Modbus TCP or RTU, laid out by a register map file (e.g. maps/alfen_eve.toml).

The charger is told a per-phase current (IEC 61851: 0 = pause, else at least 6 A) and
optionally 1 or 3 phases. Chargers that take an EMS setpoint forget it after a validity time
and fall back to their own safe current; the driver says so in its capabilities
(`keepalive_s`) and the controller, the only writer, re-writes the command in time (issue 15:
the driver used to re-write on its own, a second writer the controller did not know about).
It refuses commands
beyond the configured limits: the envelope clamps at site level, this keeps a bad command
off the wire. Device problems never escape `run()` or `apply()`.
"""

from __future__ import annotations

import asyncio
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import structlog

from drivers.api import DriverError, ReadingSink
from drivers.config_structs import EvLimits
from drivers.ev_command import ev_current_refusal
from drivers.health import DeviceHealth
from drivers.modbus.bus import ModbusBus, Priority
from drivers.modbus.device_loop import poll_forever
from drivers.modbus.field_io import FieldReader
from drivers.modbus.register_map import DataType, Field, RegisterMap, RegisterMapError
from zapd.clock import Clock
from zapd.model import (
    CHARGING,
    CONNECTED,
    POWER_W,
    SESSION_WH,
    Command,
    CommandResult,
    DerCapabilities,
    DerKind,
    EvCurrent,
    Quality,
    Reading,
)

log = structlog.get_logger(__name__)

IEC_MIN_CURRENT_A = 6.0
CURRENT_A = "current_a"  # Reading value: the current the charger offers now, per phase
_REQUIRED = ("ev_power", "ev_state", "ev_current_setpoint")
SafeMode = Literal["minimum", "pause"]
Transport = Literal["tcp", "rtu"]
_IEC_LETTERS = frozenset("ABCDEF")
_TRANSPORTS = frozenset(("tcp", "rtu"))


@dataclass(frozen=True, slots=True)
class EvState:
    connected: bool
    charging: bool
    fault: bool = False


def _letter_state(letter: str) -> EvState:
    """IEC 61851 state letter: 'A' unplugged, 'B' plugged, 'C'/'D' charging, anything else ('E'/'F') fault."""
    if letter == "A":
        return EvState(connected=False, charging=False)
    if letter == "B":
        return EvState(connected=True, charging=False)
    if letter in ("C", "D"):
        return EvState(connected=True, charging=True)
    return EvState(connected=False, charging=False, fault=True)


def decode_ascii_state(raw: int) -> EvState:
    """First register of an IEC 61851 state string: 'A' unplugged, 'B' plugged, 'C'/'D' charging, 'E'/'F' fault."""
    return _letter_state(chr((raw >> 8) & 0xFF))


@dataclass(frozen=True)
class EvProfile:
    """The map's `[ev]` table: how the state register reads and whether the setpoint reads back.

    `state_encoding = "ascii"`: the state register's high byte is the IEC 61851 letter (Alfen).
    `state_encoding = "codes"`: `(raw >> state_shift) & state_mask` is a vendor code that
    `state_codes` turns into a letter (ABB Terra AC, Mennekes); an unknown code is a fault.
    `readback = false`: the setpoint register is write-only (ABB 4100h), so a write that the
    device acknowledged is taken as held.
    `enable = FIELD`: a coil that allows charging (Phoenix Contact EV-CC coil 400). Its rule:
    a current of at least 6 A writes the setpoint, then the coil on; 0 A (pause) writes only the
    coil off (the setpoint register keeps its last value, as the controller refuses < 6 A); the
    keep-alive writes both again; safe mode "minimum" is the minimum current with the coil on,
    "pause" the coil off.
    `heartbeat = FIELD` (+ `heartbeat_value`): a life bit the charger clears on its own and falls
    back to its degraded current when nobody sets it again (Schneider EVlink 4000). It is written,
    not read back, after every setpoint write and keep-alive, so the keep-alive period must stay
    below the charger's life-bit timeout; when zapd stops writing, the charger falls back by itself.
    `transports = ["tcp", "rtu"]`: the Modbus transports the vendor document offers (Modbus-TCP on
    Ethernet, Modbus RTU on RS-485); not set: `["tcp"]`. `driver = "modbus_ev_rtu"` needs `rtu` in
    it; `modbus_ev` (TCP) is always allowed, since an RS-485 charger may sit behind a TCP gateway.
    """

    encoding: Literal["ascii", "codes"] = "ascii"
    codes: Mapping[int, str] = field(default_factory=dict)
    shift: int = 0
    mask: int = 0xFFFF
    readback: bool = True
    enable: str | None = None
    heartbeat: str | None = None
    heartbeat_value: int = 1
    transports: frozenset[Transport] = frozenset({"tcp"})

    def state(self, raw: int) -> EvState:
        if self.encoding == "ascii":
            return decode_ascii_state(raw)
        return _letter_state(self.codes.get((raw >> self.shift) & self.mask, "?"))


def ev_profile(rmap: RegisterMap) -> EvProfile:
    """The map's [ev] table is ours; register_map.py does not need to know about it."""
    with rmap.path.open("rb") as f:
        ev = tomllib.load(f).get("ev", {})
    if not isinstance(ev, dict):
        raise RegisterMapError(f"{rmap.path}: [ev] must be a table")
    encoding = ev.get("state_encoding", "ascii")
    if encoding not in ("ascii", "codes"):
        raise RegisterMapError(f"{rmap.path}: ev.state_encoding must be 'ascii' or 'codes', got {encoding!r}")
    codes: dict[int, str] = {}
    for key, letter in ev.get("state_codes", {}).items():
        if not (str(key).isdigit() and isinstance(letter, str) and letter in _IEC_LETTERS):
            raise RegisterMapError(f"{rmap.path}: ev.state_codes: {key!r} = {letter!r} is not code = IEC letter")
        codes[int(key)] = letter
    if encoding == "codes" and not codes:
        raise RegisterMapError(f"{rmap.path}: ev.state_encoding = 'codes' needs ev.state_codes")
    shift, mask, readback = ev.get("state_shift", 0), ev.get("state_mask", 0xFFFF), ev.get("readback", True)
    if not (isinstance(shift, int) and 0 <= shift < 16 and isinstance(mask, int) and 0 < mask <= 0xFFFF):
        raise RegisterMapError(f"{rmap.path}: ev.state_shift must be 0..15 and ev.state_mask 1..0xFFFF")
    if not isinstance(readback, bool):
        raise RegisterMapError(f"{rmap.path}: ev.readback must be true or false")
    enable = ev.get("enable")
    if enable is not None:
        coil = rmap.get(enable) if isinstance(enable, str) else None
        if coil is None or coil.dtype is not DataType.BOOL or not coil.writable:
            raise RegisterMapError(f"{rmap.path}: ev.enable must name a writable coil field, got {enable!r}")
    heartbeat, beat = ev.get("heartbeat"), ev.get("heartbeat_value", 1)
    if heartbeat is not None:
        beat_field = rmap.get(heartbeat) if isinstance(heartbeat, str) else None
        if beat_field is None or not beat_field.writable or beat_field.dtype is DataType.BOOL:
            raise RegisterMapError(f"{rmap.path}: ev.heartbeat must name a writable register field, got {heartbeat!r}")
        if not isinstance(beat, int) or isinstance(beat, bool) or not 0 <= beat <= 0xFFFF:
            raise RegisterMapError(f"{rmap.path}: ev.heartbeat_value must be a raw register value, got {beat!r}")
    transports = ev.get("transports", ["tcp"])
    if not (isinstance(transports, list) and transports and set(transports) <= _TRANSPORTS):
        raise RegisterMapError(f"{rmap.path}: ev.transports must be a list of 'tcp' and/or 'rtu', got {transports!r}")
    return EvProfile(
        encoding=encoding,
        codes=codes,
        shift=shift,
        mask=mask,
        readback=readback,
        enable=enable,
        heartbeat=heartbeat,
        heartbeat_value=beat,
        transports=frozenset(transports),
    )


class ModbusEvCharger:
    """Driver + Controllable for one charger socket (one unit id) behind a shared `ModbusBus`."""

    def __init__(
        self,
        *,
        device_id: str,
        bus: ModbusBus,
        unit_id: int,
        register_map: RegisterMap,
        poll_s: float,
        clock: Clock,
        limits: EvLimits,
        safe_mode: SafeMode = "minimum",
        keepalive_s: float = 30.0,
        backoff_max_s: float = 60.0,
        apply_timeout_s: float = 10.0,
        transport: Transport = "tcp",
    ) -> None:
        if poll_s <= 0 or keepalive_s <= 0:
            raise ValueError("poll_s and keepalive_s must be > 0")
        if not IEC_MIN_CURRENT_A <= limits.min_current_a <= limits.max_current_a:
            raise ValueError(f"need {IEC_MIN_CURRENT_A:g} A <= min_current_a <= max_current_a")
        register_map.require(*_REQUIRED, writable=("ev_current_setpoint",))
        self._profile = ev_profile(register_map)
        if transport == "rtu" and "rtu" not in self._profile.transports:
            raise RegisterMapError(
                f"{register_map.path}: {register_map.name} offers Modbus-TCP only by its vendor document (the "
                'profile\'s [ev] transports), not Modbus RTU on RS-485: use driver = "modbus_ev" with its host'
            )
        self._id = device_id
        self._bus = bus
        self._unit = unit_id
        self._map = register_map
        self._fields = FieldReader(device_id, bus, unit_id, register_map)
        self._poll_s = poll_s
        self._clock = clock
        self.limits = limits
        self._safe_mode = safe_mode
        self._keepalive_s = keepalive_s
        self._backoff_max_s = max(backoff_max_s, poll_s)
        self._apply_timeout_s = apply_timeout_s
        self._can_switch_phases = (f := register_map.get("ev_phases")) is not None and f.writable
        self._session_start_wh: float | None = None
        self._was_connected = False
        self._health = DeviceHealth(device_id, clock, event_prefix="ev", unit=unit_id)
        self.counters: dict[str, int] = dict.fromkeys(
            ("polls", "poll_errors", "config_errors", "commands", "commands_refused", "command_errors"),
            0,
        )

    @property
    def name(self) -> str:
        return self._id

    @property
    def ev_id(self) -> str:
        return f"{self._id}.ev"

    @property
    def health(self) -> DeviceHealth:
        return self._health

    @property
    def healthy(self) -> bool:
        return self._health.healthy

    def capabilities(self) -> list[DerCapabilities]:
        return [
            DerCapabilities(
                der_id=self.ev_id,
                kind=DerKind.EV_CHARGER,
                controllable=True,
                model=self._map.name,
                max_power_w=self.limits.max_current_a * self.limits.w_per_a,
                min_current_a=self.limits.min_current_a,
                max_current_a=self.limits.max_current_a,
                phases=self.limits.phases,
                voltage_v=self.limits.voltage_v,
                keepalive_s=self._keepalive_s,
            )
        ]

    # ---- register access ----

    async def _read_regs(self, f: Field, priority: Priority) -> list[int]:
        return await self._fields.regs(f, priority)

    async def _read(self, name: str, priority: Priority = Priority.POLL, *, measured: bool = False) -> float:
        """A field in zapd units. A measurement (`measured`) that is not a number is returned as it is: the
        reading carries it to the drivers' guard (drivers/api.py), which makes the DER unknown at once and
        counts it; anything else (nameplate) that is not a number is a device error."""
        f = self._map.field(name)
        try:
            value = f.decode(await self._read_regs(f, priority))
        except ValueError as exc:
            raise DriverError(f"{self._id}: {name}: {exc}") from exc
        if not measured and not math.isfinite(value):
            raise DriverError(f"{self._id}: {name} read as {value}")
        return value

    async def _write(self, name: str, value: float) -> str | None:
        """Write and read back; None when the device holds the value, else why not."""
        f = self._map.field(name)
        regs = f.encode(value)
        await self._fields.write(f, regs)
        if not self._profile.readback:
            return None  # write-only register: the device's acknowledgement is all there is
        back = await self._read_regs(f, Priority.CONTROL)
        if back != regs:
            return f"{name}: read back {f.decode(back):g}, wrote {value:g}"
        return None

    # ---- poll ----

    async def poll_once(self, sink: ReadingSink) -> None:
        state_field = self._map.field("ev_state")
        state = self._profile.state(state_field.decode_raw_int(await self._read_regs(state_field, Priority.POLL)))
        power_w = await self._read("ev_power", measured=True)
        values = {
            POWER_W: power_w,
            CONNECTED: 1.0 if state.connected else 0.0,
            CHARGING: 1.0 if state.charging else 0.0,
        }
        if self._map.get("ev_applied_current") is not None:
            values[CURRENT_A] = await self._read("ev_applied_current", measured=True)
        if self._map.get("ev_energy_total") is not None:
            total_wh = await self._read("ev_energy_total", measured=True)
            if not math.isfinite(total_wh):
                values[SESSION_WH] = total_wh  # the guard refuses the reading; the session start is kept
            else:
                # The meter counts for ever; a session starts when a car is plugged in.
                if state.connected and (not self._was_connected or self._session_start_wh is None):
                    self._session_start_wh = total_wh
                if state.connected and self._session_start_wh is not None:
                    values[SESSION_WH] = max(0.0, total_wh - self._session_start_wh)
        if not state.connected:
            self._session_start_wh = None
        self._was_connected = state.connected
        quality = Quality.SUSPECT if state.fault or power_w < 0 else Quality.GOOD
        sink(Reading(der_id=self.ev_id, kind=DerKind.EV_CHARGER, ts=self._clock.now(), values=values, quality=quality))
        self.counters["polls"] += 1

    async def run(self, sink: ReadingSink) -> None:
        """Poll forever; device trouble means a pause, never an exit."""

        async def step() -> None:
            await self.poll_once(sink)

        await poll_forever(
            step,
            health=self._health,
            counters=self.counters,
            clock=self._clock,
            poll_s=self._poll_s,
            backoff_max_s=self._backoff_max_s,
        )

    # ---- control ----

    def _refusal(self, command: Command) -> str | None:
        if not isinstance(command, EvCurrent):
            return f"{type(command).__name__} is not supported by {self._id}"
        if command.der_id != self.ev_id:
            return f"unknown DER {command.der_id!r} (this driver controls {self.ev_id!r})"
        return ev_current_refusal(
            command,
            self.limits,
            can_switch_phases=self._can_switch_phases,
            no_switch_reason=f"register map {self._map.name!r} cannot switch phases",
        )

    async def apply(self, command: Command) -> CommandResult:
        self.counters["commands"] += 1
        refusal = self._refusal(command)
        if refusal is not None:
            self.counters["commands_refused"] += 1
            log.warning("ev.command_refused", device=self._id, reason=refusal)
            return CommandResult(command=command, ok=False, detail=refusal)
        assert isinstance(command, EvCurrent)  # _refusal checked it
        try:
            async with asyncio.timeout(self._apply_timeout_s):
                detail = await self._write_command(command)
        except TimeoutError:
            detail = f"no completion within {self._apply_timeout_s:g} s"
        except (DriverError, ValueError) as exc:
            detail = str(exc)
        else:
            if detail is None:
                return CommandResult(command=command, ok=True, detail=f"{command.current_a:g} A read back")
        self.counters["command_errors"] += 1
        log.warning("ev.command_failed", device=self._id, current_a=command.current_a, error=detail)
        return CommandResult(command=command, ok=False, detail=detail)

    async def _write_command(self, command: EvCurrent) -> str | None:
        if self._can_switch_phases:
            f = self._map.field("ev_phases")
            now = f.decode(await self._read_regs(f, Priority.CONTROL))
            if int(now) != command.phases:
                problem = await self._write("ev_phases", command.phases)
                if problem is not None:
                    return problem
        return await self._write_current(command.current_a)

    async def _write_current(self, current_a: float) -> str | None:
        """The setpoint, with an enable coil its rule (EvProfile): pause = coil off only; then the life bit."""
        enable = self._profile.enable
        if enable is None:
            problem = await self._write("ev_current_setpoint", current_a)
        elif current_a <= 0.0:
            problem = await self._write(enable, 0.0)
        else:
            problem = await self._write("ev_current_setpoint", current_a) or await self._write(enable, 1.0)
        if problem is None and self._profile.heartbeat is not None:
            f = self._map.field(self._profile.heartbeat)
            await self._fields.write(f, f.encode_raw_int(self._profile.heartbeat_value))  # cleared by the charger
        return problem

    async def safe_mode(self) -> None:
        """Minimum current (or pause, per config). Logs instead of raising: it runs on the way out."""
        current = self.limits.min_current_a if self._safe_mode == "minimum" else 0.0
        try:
            async with asyncio.timeout(self._apply_timeout_s):
                problem = await self._write_current(current)
        except (DriverError, TimeoutError, ValueError) as exc:
            problem = str(exc) or type(exc).__name__
        if problem is not None:
            log.error("ev.safe_mode_failed", device=self._id, error=problem)
            return
        log.info("ev.safe_mode", device=self._id, current_a=current)
