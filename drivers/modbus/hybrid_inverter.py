"""A hybrid inverter (PV + battery) over Modbus TCP, laid out by a register map file.

The driver knows the *meaning* of a few fields (soc, powers, setpoint, remote control,
nameplate); the map knows where they are. It refuses setpoints beyond the device's nameplate
(the controller's envelope does site-level clamping; this is the last line that keeps a bad
command off the wire) and never lets a device problem escape `run()` or `apply()`.
"""

from __future__ import annotations

import asyncio
import math
import re

import structlog

from drivers.api import ConfigurationError, DriverError, ReadingSink
from drivers.health import DeviceHealth, ReportsHealth
from drivers.modbus.bus import ModbusBus, Priority
from drivers.modbus.device_loop import poll_forever
from drivers.modbus.field_io import FieldReader
from drivers.modbus.register_map import DataType, Field, RegisterMap, RegisterMapError
from drivers.modbus.write_budget import BUDGET_EXHAUSTED, WriteBudget, WriteBudgetExhausted
from drivers.resilience import FailureLatch
from zapd.clock import Clock
from zapd.model import (
    POWER_W,
    SOC,
    BatterySetpoint,
    Command,
    CommandResult,
    DerCapabilities,
    DerKind,
    Quality,
    Reading,
)

log = structlog.get_logger(__name__)

_REQUIRED = ("battery_soc",)
# Battery power is one signed field, or two unsigned ones (SMA STP SE 31393 / 31395, Growatt 1011 / 1009):
# zapd's battery power (+ = charging) is then charge - discharge.
_BATTERY_PAIR = ("battery_charge_power", "battery_discharge_power")
_NAMEPLATE = ("max_charge_w", "max_discharge_w", "capacity_wh")
_DEFAULT_COMMAND_TIMEOUT_S = 300  # written when the map has a timeout register: device falls back on its own


_PV_STRING = re.compile(r"pv_power_(\d+)")


def _battery_fields(rmap: RegisterMap) -> tuple[str, ...]:
    """`battery_power`, or `battery_charge_power` and `battery_discharge_power` (charge - discharge)."""
    pair = [rmap.get(n) is not None for n in _BATTERY_PAIR]
    if rmap.get("battery_power") is not None:
        if any(pair):
            raise RegisterMapError(f"{rmap.path}: declare battery_power or {' + '.join(_BATTERY_PAIR)}, not both")
        return ("battery_power",)
    if all(pair):
        return _BATTERY_PAIR
    raise RegisterMapError(f"{rmap.path}: field 'battery_power' (or {' + '.join(_BATTERY_PAIR)}) is not declared")


def _pv_fields(rmap: RegisterMap) -> list[str]:
    """`pv_power`, or `pv_power_1`..`pv_power_N` (one per MPPT string, summed) when the device has no total."""
    strings = sorted((int(m.group(1)), n) for n in rmap.fields if (m := _PV_STRING.fullmatch(n)))
    if rmap.get("pv_power") is not None:
        if strings:
            raise RegisterMapError(f"{rmap.path}: declare pv_power or pv_power_1..N, not both")
        return ["pv_power"]
    return [name for _, name in strings]


class ModbusHybridInverter(ReportsHealth):
    """Driver + Controllable for one unit id behind a shared `ModbusBus`."""

    def __init__(
        self,
        *,
        device_id: str,
        bus: ModbusBus,
        unit_id: int,
        register_map: RegisterMap,
        poll_s: float,
        clock: Clock,
        max_charge_w: float | None = None,
        max_discharge_w: float | None = None,
        capacity_wh: float | None = None,
        backoff_max_s: float = 60.0,
        apply_timeout_s: float = 10.0,
        device_command_timeout_s: int = _DEFAULT_COMMAND_TIMEOUT_S,
        max_writes_per_hour: int | None = None,
        reserve_soc: float = 0.10,
        max_soc: float = 1.0,
    ) -> None:
        if poll_s <= 0:
            raise ValueError("poll_s must be > 0")
        if not (math.isfinite(reserve_soc) and math.isfinite(max_soc) and 0.0 <= reserve_soc < max_soc <= 1.0):
            raise ValueError(f"need 0 <= reserve_soc < max_soc <= 1, got {reserve_soc} / {max_soc}")
        register_map.require(*_REQUIRED)
        self._battery_fields = _battery_fields(register_map)
        # The map's control vocabulary (drivers/modbus/control_spec.py); None = monitoring only.
        self._ctl = register_map.control
        self._can_control = self._ctl is not None
        if self._ctl is not None and self._ctl.style == "grid_setpoint":
            register_map.require(*self._ctl.grid_power)
        # A stand-alone (AC-coupled) battery has no PV of its own.
        self._pv_fields = _pv_fields(register_map)
        self._has_pv = bool(self._pv_fields)
        self._id = device_id
        self._bus = bus
        self._unit = unit_id
        self._map = register_map
        self._fields = FieldReader(device_id, bus, unit_id, register_map)
        self._poll_s = poll_s
        self._clock = clock
        self._override = {
            "max_charge_w": max_charge_w,
            "max_discharge_w": max_discharge_w,
            "capacity_wh": capacity_wh,
        }
        self._nameplate: dict[str, float] = {}
        self._probed = False
        self._backoff_max_s = max(backoff_max_s, poll_s)
        self._apply_timeout_s = apply_timeout_s
        self._device_command_timeout_s = device_command_timeout_s
        self._budget = WriteBudget(device_id, max_writes_per_hour, clock)
        # SoC bounds a time-of-use slot's target is written within (the battery config's reserve / max).
        self._reserve_soc = reserve_soc
        self._max_soc = max_soc
        soc_field = None if self._ctl is None else (self._ctl.slot_soc or self._ctl.soc_target)
        if soc_field is not None:
            f = register_map.field(soc_field)
            floor = f.decode(self._bounded(f.name, reserve_soc, at_least=True)[1])
            if floor > f.decode(self._bounded(f.name, max_soc, at_least=False)[1]):
                raise ValueError(f"no {f.name} step lies between reserve_soc {reserve_soc} and max_soc {max_soc}")
        # Command registers as last read back from the device, and when they were written.
        self._held: tuple[list[tuple[str, list[int]]], float] | None = None
        self._entered = False  # the enter writes went out (for a mode sequence without a mode field)
        self._health = DeviceHealth(device_id, clock, event_prefix="modbus", unit=unit_id)
        # Once per outage: every meter reading would otherwise log one failed command.
        self._commands_latch = FailureLatch(
            log, "modbus.command_failed", "modbus.commands_recovered", level="warning", device=self._id
        )
        self._last_refusal: str | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "polls",
                "poll_errors",
                "config_errors",
                "probe_errors",
                "commands",
                "commands_refused",
                "command_errors",
                "safe_mode_errors",
                "writes_skipped",
                "commands_over_budget",
            ),
            0,
        )

    # ---- identity and capabilities ----

    @property
    def name(self) -> str:
        return self._id

    @property
    def battery_id(self) -> str:
        return f"{self._id}.battery"

    @property
    def pv_id(self) -> str:
        return f"{self._id}.pv"

    def _limit(self, key: str) -> float | None:
        """Config may lower the nameplate, never raise it: the device cannot do more than it says."""
        probed, configured = self._nameplate.get(key), self._override[key]
        if probed is not None and configured is not None:
            return min(probed, configured)
        return configured if configured is not None else probed

    def capabilities(self) -> list[DerCapabilities]:
        charge, discharge = self._limit("max_charge_w"), self._limit("max_discharge_w")
        caps = [
            DerCapabilities(
                der_id=self.battery_id,
                kind=DerKind.BATTERY,
                controllable=self._can_control and charge is not None and discharge is not None,
                model=self._map.name,
                max_charge_w=charge or 0.0,
                max_discharge_w=discharge or 0.0,
                capacity_wh=self._limit("capacity_wh") or 0.0,
                keepalive_s=self._capability_keepalive_s(),
            ),
        ]
        if self._has_pv:
            caps.append(DerCapabilities(der_id=self.pv_id, kind=DerKind.PV, model=self._map.name))
        return caps

    # ---- register access ----

    def _unit_of(self, f: Field) -> int:
        return self._fields.unit_of(f)

    async def _read_regs(self, f: Field, priority: Priority) -> list[int]:
        return await self._fields.regs(f, priority)

    async def _scale_factor(self, f: Field, priority: Priority) -> int | None:
        return await self._fields.scale_factor(f, priority)

    async def _read(self, name: str, priority: Priority = Priority.POLL, *, measured: bool = False) -> float:
        return await self._fields.value(name, priority, measured=measured)

    async def _battery_w(self, priority: Priority = Priority.POLL, *, measured: bool = False) -> float:
        """The battery's power, + = charging: one signed field, or charge - discharge."""
        if len(self._battery_fields) == 1:
            return await self._read(self._battery_fields[0], priority, measured=measured)
        charge, discharge = self._battery_fields
        charge_w = await self._read(charge, priority, measured=measured)
        return charge_w - await self._read(discharge, priority, measured=measured)

    async def _write_regs(self, f: Field, regs: list[int], *, force: bool) -> None:
        """Every write goes through the flash budget; `force` is for the safe mode on the way out."""
        if not force:
            self._budget.spend()
        await self._fields.write(f, regs)

    # ---- probe and poll ----

    async def probe(self) -> None:
        """Read the nameplate. A map without nameplate fields relies on the config overrides."""
        for key in _NAMEPLATE:
            if self._map.get(key) is None:
                continue
            value = await self._read(key, Priority.CONTROL)
            if value <= 0:  # unset on many devices; the config must then supply it
                log.warning("modbus.nameplate_missing", device=self._id, key=key, value=value)
                continue
            self._nameplate[key] = value
        for key in ("max_charge_w", "max_discharge_w"):
            probed, configured = self._nameplate.get(key), self._override[key]
            if probed is not None and configured is not None and configured > probed:
                log.warning(
                    "modbus.override_above_nameplate",
                    device=self._id,
                    key=key,
                    configured=configured,
                    nameplate=probed,
                )
        self._probed = True
        log.info("modbus.probed", device=self._id, unit=self._unit, **self._nameplate)

    async def poll_once(self, sink: ReadingSink) -> None:
        # Stamped when the reads start: a setpoint written while they run is newer than this reading,
        # so the controller takes the written value as the battery's power, not the older one read here.
        ts = self._clock.now()
        soc = await self._read("battery_soc", measured=True)
        battery_w = await self._battery_w(measured=True)
        pv_w = None
        if self._has_pv:  # one register, or one per MPPT string summed (GoodWe, Deye)
            pv_w = 0.0
            for name in self._pv_fields:
                pv_w += await self._read(name, measured=True)
        # Pass implausible values on, flagged: the state layer decides; clamping would hide a bad map.
        battery_q = Quality.GOOD if 0.0 <= soc <= 1.0 else Quality.SUSPECT
        battery = {POWER_W: battery_w, SOC: soc}
        sink(Reading(der_id=self.battery_id, kind=DerKind.BATTERY, ts=ts, values=battery, quality=battery_q))
        if pv_w is not None:
            pv_q = Quality.GOOD if pv_w >= 0.0 else Quality.SUSPECT
            sink(Reading(der_id=self.pv_id, kind=DerKind.PV, ts=ts, values={POWER_W: pv_w}, quality=pv_q))
        self.counters["polls"] += 1

    async def run(self, sink: ReadingSink) -> None:
        """Probe (until it works), then poll forever; device trouble means a pause, never an exit."""

        async def step() -> None:
            if not self._probed:
                await self._probe_step()
            await self.poll_once(sink)

        await poll_forever(
            step,
            health=self._health,
            counters=self.counters,
            clock=self._clock,
            poll_s=self._poll_s,
            backoff_max_s=self._backoff_max_s,
        )

    async def _probe_step(self) -> None:
        try:
            await self.probe()
        except ConfigurationError as exc:
            # Nameplate registers the device does not have: run on the config's limits (if any), keep polling.
            self.counters["probe_errors"] += 1
            log.error("modbus.probe_config_error", device=self._id, error=str(exc))
            self._probed = True
        except DriverError:
            self.counters["probe_errors"] += 1
            raise

    # ---- control ----

    def _refusal(self, command: Command) -> str | None:
        if not isinstance(command, BatterySetpoint):
            return f"{type(command).__name__} is not supported by {self._id}"
        if not self._can_control:
            return f"register map {self._map.name!r} has no [control]: monitoring only"
        if command.der_id != self.battery_id:
            return f"unknown DER {command.der_id!r} (this driver controls {self.battery_id!r})"
        if not math.isfinite(command.power_w):
            return f"setpoint {command.power_w} W is not a number"
        charge, discharge = self._limit("max_charge_w"), self._limit("max_discharge_w")
        if (charge is None or discharge is None) and command.power_w != 0.0:
            # Idle is within any battery's limits: the controller may hold a device it has not probed yet.
            return "nameplate limits unknown (device not probed yet and no config override)"
        if charge is None or discharge is None:
            return None
        if not -discharge <= command.power_w <= charge:
            return f"setpoint {command.power_w:g} W outside nameplate -{discharge:g}..{charge:g} W"
        return None

    async def apply(self, command: Command) -> CommandResult:
        self.counters["commands"] += 1
        refusal = self._refusal(command)
        if refusal is not None:
            self.counters["commands_refused"] += 1
            if refusal != self._last_refusal:  # logged when the reason changes, counted every time
                self._last_refusal = refusal
                log.warning("modbus.command_refused", device=self._id, reason=refusal)
            return CommandResult(command=command, ok=False, detail=refusal)
        self._last_refusal = None
        assert isinstance(command, BatterySetpoint)  # _refusal checked it
        try:
            async with asyncio.timeout(self._apply_timeout_s):
                ok, detail = await self._write_setpoint(command.power_w)
        except TimeoutError:
            detail = f"no completion within {self._apply_timeout_s:g} s"
        except WriteBudgetExhausted:
            self.counters["commands_over_budget"] += 1  # the budget logs once per window, not per refusal
            return CommandResult(command=command, ok=False, detail=BUDGET_EXHAUSTED)
        except (DriverError, ValueError) as exc:  # ValueError: the map's register type cannot hold it
            detail = str(exc)
        else:
            if ok:
                self._commands_latch.ok()
                return CommandResult(command=command, ok=True, detail=detail)
        self._held = None
        self.counters["command_errors"] += 1
        self._commands_latch.failed(setpoint_w=command.power_w, error=detail)
        return CommandResult(command=command, ok=False, detail=detail)

    def _capability_keepalive_s(self) -> float:
        """The write period the controller must keep (0: the device keeps a command until told)."""
        if not self._can_control:
            return 0.0
        period = self._keepalive_s()
        return period if math.isfinite(period) and 0.0 < period <= 86_400.0 else 0.0

    def _keepalive_s(self) -> float:
        """A held command is written again after this long, so the device's own timeout never fires."""
        ctl = self._ctl
        if ctl is not None and ctl.keepalive_s is not None:
            return ctl.keepalive_s
        return self._timeout_s() / 2

    def _timeout_s(self) -> float:
        ctl = self._ctl
        if ctl is not None and ctl.timeout_s is not None:
            return ctl.timeout_s
        return float(self._device_command_timeout_s)

    def _holds(self, writes: list[tuple[str, list[int]]]) -> bool:
        """The device read back these registers recently enough that its command timeout is not near."""
        if self._held is None:
            return False
        held, at = self._held
        return held == writes and self._clock.now().timestamp() - at < self._keepalive_s()

    async def _encoded(self, name: str, value: float) -> tuple[str, list[int]]:
        f = self._map.field(name)
        return name, f.encode(value, await self._scale_factor(f, Priority.CONTROL))

    def _bounded(self, name: str, value: float, *, at_least: bool) -> tuple[str, list[int]]:
        """`value` as the field's nearest raw step on the safe side: never below (at_least) or above it.

        A SoC target of 10.5 % on a whole-percent register is 11 % as a discharge floor and 10 % as
        a charge ceiling: plain rounding could move either past the battery's configured bound.
        """
        f = self._map.field(name)
        step = f.decode(f.encode_raw_int(1))  # one raw unit in zapd units (negative when inverted)
        raw = value / step
        wanted = math.ceil(raw - 1e-9) if (at_least == (step > 0)) else math.floor(raw + 1e-9)
        return name, f.encode_raw_int(wanted)

    async def _magnitude(self, name: str, value_w: float) -> tuple[str, list[int]]:
        """An unsigned power rounded towards zero to the register's step (Solis: 10 W), so the device is
        never asked for more than the command (and so never for more than the nameplate it was checked
        against). Float registers and scale-factor registers take the value as it is."""
        f = self._map.field(name)
        if f.scale_factor is not None or f.dtype in (DataType.FLOAT32, DataType.FLOAT64):
            return await self._encoded(name, value_w)
        return self._bounded(name, value_w, at_least=False)

    def _raw(self, name: str, raw: int) -> tuple[str, list[int]]:
        return name, self._map.field(name).encode_raw_int(raw)

    async def _command_writes(self, power_w: float) -> list[tuple[str, list[int]]]:
        """The register writes, in order, that make the device charge (+) or discharge (-) at power_w."""
        ctl = self._ctl
        assert ctl is not None  # _refusal checked it
        if ctl.style == "signed_setpoint":
            assert ctl.setpoint is not None
            return [await self._encoded(ctl.setpoint, power_w)]
        if ctl.style == "direction_magnitude":
            assert ctl.direction is not None and ctl.charge_power is not None and ctl.discharge_power is not None
            if power_w > 0:
                magnitudes = [await self._magnitude(ctl.charge_power, power_w)]
                direction = self._raw(ctl.direction, ctl.charge_value)
            elif power_w < 0:
                magnitudes = [await self._magnitude(ctl.discharge_power, -power_w)]
                direction = self._raw(ctl.direction, ctl.discharge_value)
            else:
                magnitudes = [await self._magnitude(ctl.charge_power, 0.0)]
                if ctl.discharge_power != ctl.charge_power:
                    magnitudes.append(await self._magnitude(ctl.discharge_power, 0.0))
                direction = self._raw(ctl.direction, ctl.idle_value)
            return [direction, *magnitudes] if ctl.direction_first else [*magnitudes, direction]
        if ctl.style == "tou_slot":
            assert ctl.slot_power is not None and ctl.slot_soc is not None and ctl.slot_charge is not None
            if power_w > 0:  # charge towards the max SoC, from the grid if need be
                soc = self._bounded(ctl.slot_soc, self._max_soc, at_least=False)
                flag = ctl.slot_charge_on
            else:  # discharge (or hold at 0 W) no lower than the reserve, no grid charging
                soc = self._bounded(ctl.slot_soc, self._reserve_soc, at_least=True)
                flag = ctl.slot_charge_off
            return [await self._encoded(ctl.slot_power, abs(power_w)), soc, self._raw(ctl.slot_charge, flag)]
        if ctl.style == "dispatch":
            assert ctl.setpoint is not None and ctl.soc_target is not None and ctl.duration is not None
            assert ctl.duration_s is not None
            # charge towards the max SoC; discharge (or hold at 0 W) no lower than the reserve
            if power_w > 0:
                soc = self._bounded(ctl.soc_target, self._max_soc, at_least=False)
            else:
                soc = self._bounded(ctl.soc_target, self._reserve_soc, at_least=True)
            return [
                await self._encoded(ctl.setpoint, power_w),
                await self._encoded(ctl.duration, ctl.duration_s),
                soc,
                *(self._raw(w.field, w.value) for w in ctl.activate),
            ]
        if ctl.style == "rate_slot":
            return await self._rate_slot_writes(power_w)
        # grid_setpoint: the device holds the grid at its setpoint, so moving the battery by
        # (power_w - battery now) moves the grid by the same amount (+ import, + charging).
        assert ctl.setpoint is not None
        grid_w = 0.0
        for name in ctl.grid_power:
            grid_w += await self._read(name, Priority.CONTROL)
        battery_w = await self._battery_w(Priority.CONTROL)
        target = grid_w + (power_w - battery_w)
        if not math.isfinite(target):
            raise DriverError(f"{self._id}: grid setpoint from grid {grid_w} W and battery {battery_w} W")
        return [await self._encoded(ctl.setpoint, round(target))]

    async def _rate_slot_writes(self, power_w: float) -> list[tuple[str, list[int]]]:
        """Growatt-style slots: a rate in % of the device's own rated power (read now, rounded down),
        the slot's stop SoC on the safe side, then the writes that switch that slot on."""
        ctl = self._ctl
        assert ctl is not None and ctl.rate_reference is not None
        assert ctl.charge_rate and ctl.discharge_rate and ctl.charge_soc and ctl.discharge_soc
        if power_w == 0:  # both slots off; the rates stay as they are (TL-XH documents them as 1-100 %)
            return [self._raw(w.field, w.value) for w in ctl.idle_writes]
        rated_w = await self._read(ctl.rate_reference, Priority.CONTROL)  # a non-number raises DriverError
        if not rated_w > 0:
            raise DriverError(f"{self._id}: rated power {ctl.rate_reference} reads {rated_w:g} W: no rate to write")
        limit = self._limit("max_charge_w" if power_w > 0 else "max_discharge_w")
        if abs(power_w) > rated_w or (limit is not None and limit > rated_w):
            # a rated power below the battery limit is a misread register or a misconfigured limit:
            # either way the % cannot be trusted to stay within what zapd allows
            raise DriverError(
                f"{self._id}: rated power {rated_w:g} W is below the command {abs(power_w):g} W or the limit {limit} W"
            )
        if power_w > 0:  # charge towards the max SoC (rounded down)
            rate, modes = ctl.charge_rate, ctl.charge_writes
            socs = [self._bounded(ctl.charge_soc, self._max_soc, at_least=False)]
        else:  # discharge no lower than the reserve (rounded up), in every register that may hold the floor
            rate, modes = ctl.discharge_rate, ctl.discharge_writes
            floors = (ctl.discharge_soc, *ctl.discharge_soc_also)
            socs = [self._bounded(name, self._reserve_soc, at_least=True) for name in floors]
        share = self._bounded(rate, abs(power_w) / rated_w, at_least=False)  # never more than asked
        return [share, *socs, *(self._raw(w.field, w.value) for w in modes)]

    async def _write_setpoint(self, power_w: float, *, force: bool = False) -> tuple[bool, str]:
        """(True, detail) when the device holds the command, else (False, why not).

        A command the device already holds (by the last read-back) is not written again, except as
        a keep-alive (the map's keepalive_s, else half the device's command timeout).
        """
        if self._ctl is not None and not self._ctl.readback:
            return await self._write_unverified(power_w, force=force)
        # The command first: one that cannot be written (no rated power to take a rate of) writes nothing.
        wanted = await self._command_writes(power_w)
        await self._ensure_mode(force=force)
        if not force and self._holds(wanted):
            self.counters["writes_skipped"] += 1
            return True, f"{power_w:g} W already held"
        self._held = None
        for name, regs in wanted:
            await self._write_regs(self._map.field(name), regs, force=force)
        for name, regs in wanted:
            f = self._map.field(name)
            back = await self._read_regs(f, Priority.CONTROL)
            if back != regs:
                self._entered = False
                return False, f"{name}: read back {back}, wrote {regs} (for {power_w:g} W)"
        self._held = (wanted, self._clock.now().timestamp())
        return True, f"{power_w:g} W read back"

    async def _write_unverified(self, power_w: float, *, force: bool) -> tuple[bool, str]:
        """Write-only control registers (`readback = false`): the enter sequence, then the command, with
        nothing read back; a held command is written again (enter included) after keepalive_s."""
        wanted = await self._command_writes(power_w)
        if not force and self._holds(wanted):
            self.counters["writes_skipped"] += 1
            return True, f"{power_w:g} W already held"
        self._held = None
        self._entered = False  # nothing to read: the device's mode is refreshed with every command write
        await self._ensure_mode(force=force)
        for name, regs in wanted:
            await self._write_regs(self._map.field(name), regs, force=force)
        self._held = (wanted, self._clock.now().timestamp())
        return True, f"{power_w:g} W written (write-only registers: not read back)"

    async def _ensure_mode(self, *, force: bool = False) -> None:
        """Run the map's enter sequence unless the device is (by its mode register) still in it."""
        ctl = self._ctl
        assert ctl is not None
        if ctl.mode_field is not None:
            f = self._map.field(ctl.mode_field)
            if f.decode_raw_int(await self._read_regs(f, Priority.CONTROL)) == ctl.mode_value:
                return
        elif self._entered:
            return
        if not ctl.enter and ctl.timeout_field is None:
            self._entered = True
            return
        self._held = None  # the device left the mode on its own: its command is not ours any more
        if ctl.timeout_field is not None:
            name, regs = await self._encoded(ctl.timeout_field, self._timeout_s())
            await self._write_regs(self._map.field(name), regs, force=force)
        for w in ctl.enter:
            await self._write_raw(w.field, w.value, force=force)
        self._entered = True
        log.info("modbus.remote_control_enabled", device=self._id, unit=self._unit)

    async def _write_raw(self, name: str, raw: int, *, force: bool) -> None:
        f = self._map.field(name)
        await self._write_regs(f, f.encode_raw_int(raw), force=force)

    async def _release(self) -> None:
        """The map's revert: hand the battery back to the device's own operation."""
        ctl = self._ctl
        assert ctl is not None
        if ctl.style == "grid_setpoint" and ctl.setpoint is not None:
            name, regs = await self._encoded(ctl.setpoint, ctl.grid_idle_w)
            await self._write_regs(self._map.field(name), regs, force=True)
        for w in ctl.release:
            await self._write_raw(w.field, w.value, force=True)
        self._entered = False
        self._held = None

    async def safe_mode(self) -> None:
        """Battery idle. Logs instead of raising: this runs on the way out and must not mask the exit."""
        if not self._can_control:
            return  # zapd never took control of it
        try:
            async with asyncio.timeout(self._apply_timeout_s):
                ok, problem = await self._write_setpoint(0.0, force=True)
        except (DriverError, TimeoutError, ValueError) as exc:
            ok, problem = False, str(exc) or type(exc).__name__
        if ok and self._ctl is not None and self._ctl.revert == "release":
            try:
                async with asyncio.timeout(self._apply_timeout_s):
                    await self._release()
            except (DriverError, TimeoutError, ValueError) as exc:
                ok, problem = False, f"release: {exc or type(exc).__name__}"
        if not ok:
            self.counters["safe_mode_errors"] += 1
            log.error("modbus.safe_mode_failed", device=self._id, error=problem)
            return
        log.info("modbus.safe_mode", device=self._id)
