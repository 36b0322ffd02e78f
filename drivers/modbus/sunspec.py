"""SunSpec discovery and a driver for SunSpec inverters with storage.

A SunSpec device describes itself: a 'SunS' marker, then a chain of (model id, length)
blocks up to 0xFFFF. Walking that chain once at start tells zapd what the device is
(model 1), what it can do (nameplate 120, DER capacity 702, storage 124/713/802) and where
every value lives, so one driver serves any brand that implements the standard instead of a
register map per model. Control uses model 124's charge/discharge rate window with a revert
timeout, or, where 124 is absent, model 704 (DERCtlAC, IEEE 1547) "set active power" in watts
with its reversion timer. Either way the device falls back to its own control on its own when
zapd stops talking. Control is claimed only where the device implements the points it needs.

Model 704's `WSet` is the DER's active power at its AC terminals, + = injection (SunSpec DER
sign convention; zapd's battery + = charging, so WSet = -setpoint). On an AC-coupled storage DER
that is the battery's power. On a hybrid DER whose AC terminals also carry PV it is the net
exchange: a fixed WSet leaves the battery to take up every change of PV until the next write (a
cloud under an "idle" command discharges it, below reserve if it lasts), so zapd claims 704
control only where model 714 (DER DC measurement) shows storage ports and nothing else, and
refuses it, saying why, on a hybrid or a device that does not say (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from drivers.api import ConfigurationError, DriverError, ReadingSink
from drivers.health import DeviceHealth, ReportsHealth
from drivers.modbus.bus import ModbusBus, Priority
from drivers.modbus.device_loop import poll_forever
from drivers.modbus.sunspec_models import (
    ModelDef,
    SunSpecError,
    Value,
    decode_groups,
    decode_model,
    decode_raw,
    encode_raw,
    model_def,
    point_regs,
    repeating_group,
    scale_factor,
)
from drivers.modbus.write_budget import BUDGET_EXHAUSTED, WriteBudget, WriteBudgetExhausted
from zapd.bounds import check_value
from zapd.clock import Clock
from zapd.model import (
    EXPORT_WH,
    IMPORT_WH,
    PHASE_CURRENT_A,
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

SUNS_MARKER = [0x5375, 0x6E53]  # "SunS"
# Wire (0-based) addresses to look for the marker: the standard 40000/50000/0, then the same
# read by devices (or manuals) that count registers from 1.
SUNSPEC_BASES = (40000, 50000, 0, 40001, 50001, 1)
END_MODEL_ID = 0xFFFF
INVERTER_MODELS = (103, 113, 102, 112, 101, 111)
METER_MODELS = (203, 204, 201, 202, 213, 214, 211, 212)
# Models whose bodies are read and decoded at scan; others are listed (id, address, length) only.
DECODED_MODELS = frozenset({1, 101, 102, 103, 111, 112, 113, 120, 121, 124, 160, 201, 202, 203, 204, 802})
DECODED_MODELS |= frozenset(range(701, 715))  # 701-713 and 714 DERMeasureDC (its ports' types)
_MAX_MODELS = 64
_MAX_READ = 100  # registers per request: under the protocol's 125, and what small gateways accept
_CHARGE_AND_DISCHARGE_LIMITS = 0x3  # StorCtl_Mod bits 0 (CHARGE) and 1 (DISCHARGE)
_CONTROL_POINTS = ("StorCtl_Mod", "OutWRte", "InWRte", "InOutWRte_WinTms", "InOutWRte_RvrtTms")
# Of those, the ones a device must implement for zapd to claim control. The rate window's time window
# (WinTms) is optional: Fronius documents it "not supported", and it is then written back as read.
_CONTROL_POINTS_NEEDED = ("StorCtl_Mod", "OutWRte", "InWRte", "InOutWRte_RvrtTms")
_GRID_CHARGE = 1  # model 124 ChaGriSet GRID (0 = PV): a charge command may take power from the grid
# Model 704 DERCtlAC "set active power": the points written (WSetMod..WSetRvrtTms, one write, then
# WSetEna) and those that must be implemented for zapd to claim control through it.
_704_WATTS = 1  # WSetMod WATTS (0 = W_MAX_PCT)
_704_ENABLED, _704_DISABLED = 1, 0
_704_POINTS = ("WSetEna", "WSetMod", "WSet", "WSetRvrt", "WSetEnaRvrt", "WSetRvrtTms")  # and WSet_SF
_704_SPAN = ("WSetMod", "WSetRvrtTms")  # first and last point of the one write
# PV when there is no 10x inverter model: IEEE 1547 DER AC measurement (701).
PV_MODELS = (*INVERTER_MODELS, 701)
# Model 714 DERMeasureDC port types (PrtTyp): what each DC port of the DER is.
PORT_PV, PORT_ESS = 0, 1
# (storage model, points of which one must be implemented for the device to show a battery)
_STORAGE_EVIDENCE = ((124, ("WChaMax", "ChaState")), (713, ("WHRtg", "SoC")), (802, ("SoC", "WHRtg")))
# Devices that report their battery's DC power as two model-160 (multiple MPPT) modules, one charging and
# one discharging, by common-model manufacturer: the IDStr prefixes of the charge and discharge modules.
# Fronius GEN24 Plus: "StCha 3" / "StDisCha 4" (Fronius "GEN24 Modbus TCP & RTU", model 160; evcc's
# fronius-gen24.yaml and OpenEMS's FroniusGen24EssImpl read modules 3 and 4 the same way). The others
# are PV strings.
STORAGE_MODULES: dict[str, tuple[str, str]] = {"Fronius": ("StCha", "StDisCha")}


@dataclass
class SunSpecModel:
    id: int
    address: int  # of its ID register
    length: int  # L: registers after ID and L
    regs: list[int] = field(default_factory=list)  # from ID; empty for models not read
    values: dict[str, Value] = field(default_factory=dict)
    groups: list[dict[str, Value]] = field(default_factory=list)  # a repeating group's instances (160 modules)

    @property
    def definition(self) -> ModelDef | None:
        return model_def(self.id)

    def number(self, name: str) -> float | None:
        value = self.values.get(name)
        return float(value) if isinstance(value, int | float) else None


@dataclass
class SunSpecDevice:
    unit_id: int
    base: int
    models: list[SunSpecModel]

    def model(self, *ids: int) -> SunSpecModel | None:
        """The first model of the chain among `ids`, preferring the order given."""
        for mid in ids:
            for m in self.models:
                if m.id == mid:
                    return m
        return None

    def _text(self, name: str) -> str:
        common = self.model(1)
        value = common.values.get(name) if common else None
        return value if isinstance(value, str) else ""

    @property
    def manufacturer(self) -> str:
        return self._text("Mn")

    @property
    def model_name(self) -> str:
        return self._text("Md")

    @property
    def serial(self) -> str:
        return self._text("SN")

    @property
    def description(self) -> str:
        return " ".join(p for p in (self.manufacturer, self.model_name) if p) or "SunSpec device"

    def _first(self, *candidates: tuple[int, str], key: str = "power_w") -> float | None:
        """The first positive, plausible value (zapd/bounds.py, as `key`): a float32 nameplate of +Inf is unset."""
        for mid, name in candidates:
            m = self.model(mid)
            value = m.number(name) if m else None
            if value is not None and value > 0 and check_value(key, value) is None:
                return value
        return None

    def storage_modules(self) -> tuple[int, int] | None:
        """Indices of the model-160 modules that carry the battery's charge and discharge power, or None."""
        prefixes = STORAGE_MODULES.get(self.manufacturer)
        m160 = self.model(160)
        if prefixes is None or m160 is None:
            return None
        found: list[int | None] = [None, None]
        for i, module in enumerate(m160.groups):
            label = module.get("IDStr")
            for k, prefix in enumerate(prefixes):
                # "StDisCha" also starts with "St", so match the whole word before the module number
                if isinstance(label, str) and label.split(" ")[0] == prefix and found[k] is None:
                    found[k] = i
        charge, discharge = found
        return None if charge is None or discharge is None else (charge, discharge)

    def battery_power_from_modules(self, m160: SunSpecModel) -> float | None:
        """Charge module DC power - discharge module DC power (zapd: + = charging); None if either is unset."""
        idx = self.storage_modules()
        if idx is None or max(idx) >= len(m160.groups):
            return None
        charge, discharge = (m160.groups[i].get("DCW") for i in idx)
        if not isinstance(charge, int | float) or not isinstance(discharge, int | float):
            return None
        return float(charge) - float(discharge)

    def max_ac_power_w(self) -> float | None:
        return self._first((120, "WRtg"), (702, "WMaxRtg"), (702, "WMax"), (121, "WMax"))

    def max_charge_w(self) -> float | None:
        return self._first((124, "WChaMax"), (702, "WChaRteMax"), (120, "MaxChaRte"), (802, "WChaRteMax"))

    def max_discharge_w(self) -> float | None:
        """Model 124 has no discharge maximum; Fronius and others use WChaMax for both directions."""
        return self._first((702, "WDisChaRteMax"), (120, "MaxDisChaRte"), (802, "WDisChaRteMax"), (124, "WChaMax"))

    def capacity_wh(self) -> float | None:
        return self._first((713, "WHRtg"), (802, "WHRtg"), (120, "WHRtg"), key="capacity_wh")

    @property
    def has_storage(self) -> bool:
        """A storage model with at least one of its capacity / state points implemented.

        IEEE 1547 devices (models 701-713) carry 713 DERStorageCapacity whether or not a battery is
        there; a PV-only one leaves its points "not implemented". Only a device that shows a
        battery gets a battery DER.
        """
        for mid, points in _STORAGE_EVIDENCE:
            m = self.model(mid)
            if m is not None and any(m.number(p) is not None for p in points):
                return True
        return False

    def dc_port_types(self) -> frozenset[int] | None:
        """The types (PrtTyp) of the DC ports model 714 shows; None without 714 or a port with a type."""
        m714 = self.model(714)
        types = {t for port in m714.groups if isinstance(t := port.get("PrtTyp"), int)} if m714 else set()
        return frozenset(types) or None

    @property
    def storage_only(self) -> bool:
        """Model 714 shows storage ports and nothing else: the AC terminals carry the battery alone."""
        return self.dc_port_types() == frozenset({PORT_ESS})

    @property
    def has_pv(self) -> bool:
        """A PV DER: an inverter model, or a 1547 AC measurement (701) that model 714 does not show to be
        a storage-only DER's (whose AC power is its battery's, not PV)."""
        return self.model(*INVERTER_MODELS) is not None or (self.model(701) is not None and not self.storage_only)

    @property
    def pv_beside_storage(self) -> bool:
        """Model 714 shows PV ports and storage ports: a hybrid (DC-coupled) DER."""
        return {PORT_PV, PORT_ESS} <= (self.dc_port_types() or frozenset())

    @staticmethod
    def hybrid_pv_w(m714: SunSpecModel) -> float | None:
        """A 1547 hybrid's PV: its PV ports' DC power (701's AC power is PV and battery together); None
        when no PV port reports one (then there is no PV reading: the net AC power is not PV)."""
        watts = [p.get("DCW") for p in m714.groups if p.get("PrtTyp") == PORT_PV]
        numbers = [float(w) for w in watts if isinstance(w, int | float)]
        return sum(numbers) if numbers else None

    def pv_power_w(self, inverter: SunSpecModel, mppt: SunSpecModel | None = None) -> float | None:
        """AC power (W) is what the PV delivers to the site; DC power (DCW) includes the inverter's
        losses (1-2 % high). A hybrid's AC power also carries its battery, so there DCW comes first.
        Where the battery is two model-160 modules (`mppt`, Fronius GEN24), PV is the other modules' DCW."""
        idx = self.storage_modules() if mppt is not None else None
        if mppt is not None and idx is not None:
            strings = [m.get("DCW") for i, m in enumerate(mppt.groups) if i not in idx]
            watts = [float(w) for w in strings if isinstance(w, int | float)]
            if watts:
                return sum(watts)
        order = ("DCW", "W") if self.has_storage and inverter.id in INVERTER_MODELS else ("W", "DCW")
        for name in order:
            value = inverter.number(name)
            if value is not None:
                return value
        return None

    @property
    def control_model(self) -> int | None:
        """The model zapd controls the battery through: 124 where it is usable, else 704 on a storage-only
        DER, else None."""
        if self._implements(124, _CONTROL_POINTS_NEEDED, "InWRte"):
            return 124
        if self._704_usable and self.storage_only:
            return 704
        return None

    @property
    def _704_usable(self) -> bool:
        return self.has_storage and self.max_discharge_w() is not None and self._implements(704, _704_POINTS, "WSet")

    @property
    def no_control_reason(self) -> str | None:
        """Why a device that could take model 704 "set active power" commands is not controlled through it."""
        if self.control_model is not None or not self._704_usable:
            return None
        types = self.dc_port_types()
        if types is None:
            return (
                "model 704 WSet is the DER's net AC power, and the device does not say what its AC terminals carry "
                "(no model 714 port types): on a hybrid it would be PV and battery together, so zapd does not "
                "control the battery through it"
            )
        return (
            f"model 714 shows DC ports of types {sorted(types)} (0 = PV, 1 = storage) on one AC terminal: model "
            "704 WSet is their net AC power, not the battery's, so a fixed WSet would leave the battery to take "
            "up every change of PV; zapd does not control a hybrid's battery through 704"
        )

    @property
    def storage_control(self) -> bool:
        return self.control_model is not None

    def _implements(self, model_id: int, points: tuple[str, ...], scaled: str) -> bool:
        """The model is there, long enough, every point implemented, `scaled`'s scale factor usable."""
        m = self.model(model_id)
        mdef = model_def(model_id)
        if m is None or mdef is None or self.max_charge_w() is None:
            return False
        if any(point_regs(mdef.point(n), m.regs) is None for n in points):
            return False
        if any(m.number(n) is None for n in points):  # "not implemented" markers: no control
            return False
        return scale_factor(mdef, mdef.point(scaled), m.regs) is not None


async def _read_block(bus: ModbusBus, unit_id: int, address: int, count: int, priority: Priority) -> list[int]:
    regs: list[int] = []
    while len(regs) < count:
        n = min(_MAX_READ, count - len(regs))
        regs += await bus.read_holding(unit_id, address + len(regs), n, priority=priority)
    return regs


async def read_model(
    bus: ModbusBus, unit_id: int, model: SunSpecModel, priority: Priority = Priority.POLL
) -> SunSpecModel:
    """A fresh copy of a model (registers and decoded values)."""
    regs = [model.id, model.length] + await _read_block(bus, unit_id, model.address + 2, model.length, priority)
    mdef = model_def(model.id)
    values = decode_model(mdef, regs) if mdef is not None else {}
    gdef = repeating_group(model.id) if mdef is not None else None
    groups = decode_groups(mdef, gdef, regs) if mdef is not None and gdef is not None else []
    return SunSpecModel(model.id, model.address, model.length, regs, values, groups)


async def find_sunspec_base(bus: ModbusBus, unit_id: int) -> int:
    """The wire address of 'SunS'. Exception 2 at a candidate is normal (nothing there); a timeout is not."""
    for base in SUNSPEC_BASES:
        try:
            regs = await bus.read_holding(unit_id, base, 2)
        except ConfigurationError:
            continue
        if regs == SUNS_MARKER:
            return base
    tried = ", ".join(str(b) for b in SUNSPEC_BASES)
    raise ConfigurationError(f"{bus}: unit {unit_id}: no SunSpec 'SunS' marker at {tried}")


async def scan_sunspec(bus: ModbusBus, unit_id: int) -> SunSpecDevice:
    """Find the marker, walk the model chain to 0xFFFF, read and decode the models zapd understands."""
    base = await find_sunspec_base(bus, unit_id)
    models: list[SunSpecModel] = []
    address = base + 2
    for _ in range(_MAX_MODELS):
        mid, length = await bus.read_holding(unit_id, address, 2)
        if mid == END_MODEL_ID:
            break
        if address + 2 + length > 0x10000:
            raise DriverError(f"{bus}: unit {unit_id}: model {mid} at {address} runs past register 65535")
        model = SunSpecModel(mid, address, length)
        if mid in DECODED_MODELS:
            model = await read_model(bus, unit_id, model)
        models.append(model)
        address += 2 + length
    else:
        raise DriverError(f"{bus}: unit {unit_id}: no end marker after {_MAX_MODELS} models")
    device = SunSpecDevice(unit_id, base, models)
    log.info(
        "sunspec.discovered",
        endpoint=str(bus.endpoint),
        unit=unit_id,
        base=base,
        models=[m.id for m in models],
        device=device.description,
        serial=device.serial,
    )
    return device


def device_capabilities(
    device: SunSpecDevice, device_id: str, overrides: dict[str, float | None] | None = None
) -> list[DerCapabilities]:
    """DERs behind a SunSpec device; config may lower a limit, never raise it."""
    over = overrides or {}

    def limit(key: str, probed: float | None) -> float | None:
        configured = over.get(key)
        if probed is not None and configured is not None:
            return min(probed, configured)
        return configured if configured is not None else probed

    caps: list[DerCapabilities] = []
    name = device.description
    if device.has_pv:
        caps.append(
            DerCapabilities(
                der_id=f"{device_id}.pv", kind=DerKind.PV, model=name, max_power_w=device.max_ac_power_w() or 0.0
            )
        )
    if device.has_storage:
        charge = limit("max_charge_w", device.max_charge_w())
        discharge = limit("max_discharge_w", device.max_discharge_w())
        caps.append(
            DerCapabilities(
                der_id=f"{device_id}.battery",
                kind=DerKind.BATTERY,
                controllable=device.storage_control and bool(charge) and bool(discharge),
                model=name,
                max_charge_w=charge or 0.0,
                max_discharge_w=discharge or 0.0,
                capacity_wh=limit("capacity_wh", device.capacity_wh()) or 0.0,
            )
        )
    if device.model(*METER_MODELS) is not None:
        caps.append(DerCapabilities(der_id=f"{device_id}.meter", kind=DerKind.METER, model=name))
    return caps


class SunSpecInverter(ReportsHealth):
    """Driver (+ Controllable when model 124, or 704 with a battery, is usable) for one SunSpec unit id."""

    def __init__(
        self,
        *,
        device_id: str,
        bus: ModbusBus,
        unit_id: int,
        poll_s: float,
        clock: Clock,
        max_charge_w: float | None = None,
        max_discharge_w: float | None = None,
        capacity_wh: float | None = None,
        max_writes_per_hour: int | None = None,
        revert_timeout_s: int = 300,
        backoff_max_s: float = 60.0,
        apply_timeout_s: float = 10.0,
        expect_battery: bool | None = None,
    ) -> None:
        if poll_s <= 0 or not 0 < revert_timeout_s <= 0xFFFE:
            raise ValueError("need poll_s > 0 and 0 < revert_timeout_s < 65535")
        self._id = device_id
        self._bus = bus
        self._unit = unit_id
        self._poll_s = poll_s
        self._clock = clock
        self._overrides: dict[str, float | None] = {
            "max_charge_w": max_charge_w,
            "max_discharge_w": max_discharge_w,
            "capacity_wh": capacity_wh,
        }
        self._revert_s = revert_timeout_s
        # The config's `has_battery` (None: no expectation): a scan that disagrees is said once, loudly.
        self._expect_battery = expect_battery
        self._backoff_max_s = max(backoff_max_s, poll_s)
        self._apply_timeout_s = apply_timeout_s
        self._budget = WriteBudget(device_id, max_writes_per_hour, clock)
        self.device: SunSpecDevice | None = None
        self._held: tuple[list[int], float] | None = None  # model-124 control span as read back, and when
        # Model 124 ChaGriSet as the scan found it (the installer's own setting), None when not implemented.
        self._own_grid_charge: int | None = None
        self._health = DeviceHealth(device_id, clock, event_prefix="sunspec", unit=unit_id)
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "scans",
                "scan_errors",
                "polls",
                "poll_errors",
                "config_errors",
                "commands",
                "commands_refused",
                "command_errors",
                "commands_over_budget",
                "writes_skipped",
                "safe_mode_errors",
            ),
            0,
        )

    @property
    def name(self) -> str:
        return self._id

    @property
    def battery_id(self) -> str:
        return f"{self._id}.battery"

    def capabilities(self) -> list[DerCapabilities]:
        """Empty until the first scan: what the device is, only it can say."""
        return [] if self.device is None else device_capabilities(self.device, self._id, self._overrides)

    # ---- discovery and polling ----

    async def scan(self) -> SunSpecDevice:
        """Walk the model chain; a chain with nothing zapd can read or drive is a configuration error."""
        self.counters["scans"] += 1
        device = await scan_sunspec(self._bus, self._unit)
        if not device_capabilities(device, self._id, self._overrides):
            found = ", ".join(str(m.id) for m in device.models) or "none"
            raise ConfigurationError(f"{self._bus}: unit {self._unit}: no usable SunSpec models: found {found}")
        self.device = device
        self._held = None
        m124 = device.model(124)
        own = m124.values.get("ChaGriSet") if m124 is not None else None
        self._own_grid_charge = own if isinstance(own, int) else None
        self._check_battery_expectation(device)
        if device.no_control_reason is not None:  # the battery is reported, never commanded: say why once a scan
            log.warning("sunspec.battery_not_controlled", device=self._id, reason=device.no_control_reason)
        return self.device

    def _check_battery_expectation(self, device: SunSpecDevice) -> None:
        """A configured battery the device does not show stays unknown and refuses every command: say why.
        (The DER ids are fixed by the config before any I/O, so the scan cannot add or drop one.)"""
        shows = device.has_storage
        if self._expect_battery is None or shows == self._expect_battery:
            return
        models = " ".join(str(m.id) for m in device.models)
        if self._expect_battery:
            problem = (
                f"has_battery = true, but the device shows no battery (models {models}: no storage model with an "
                "implemented point): set has_battery = false"
            )
        else:
            problem = f"the device shows a battery (models {models}); set has_battery = true to use it"
        self.counters["config_errors"] += 1
        self._health.note_error(problem)
        log.error("sunspec.battery_mismatch", device=self._id, problem=problem)

    async def poll_once(self, sink: ReadingSink) -> None:
        device = self.device
        assert device is not None
        ts = self._clock.now()
        m160 = device.model(160) if device.storage_modules() is not None else None
        mppt = None if m160 is None else await read_model(self._bus, self._unit, m160)  # battery and PV strings
        inverter = device.model(*PV_MODELS) if device.has_pv else None
        if inverter is not None:
            m714 = device.model(714) if inverter.id == 701 and device.pv_beside_storage else None
            if m714 is not None:  # a 1547 hybrid: PV is its PV ports' DC power, not 701's net AC power
                pv_w = device.hybrid_pv_w(await read_model(self._bus, self._unit, m714))
            else:
                pv_w = device.pv_power_w(await read_model(self._bus, self._unit, inverter), mppt)
            if pv_w is not None:
                q = Quality.GOOD if pv_w >= 0 else Quality.SUSPECT
                sink(Reading(der_id=f"{self._id}.pv", kind=DerKind.PV, ts=ts, values={POWER_W: pv_w}, quality=q))
        if device.has_storage:
            await self._poll_storage(device, sink, ts, mppt)
        meter = device.model(*METER_MODELS)
        if meter is not None:
            fresh = await read_model(self._bus, self._unit, meter)
            values = _meter_values(fresh)
            if values:  # never empty: power is always there (a NaN when the meter has none)
                sink(Reading(der_id=f"{self._id}.meter", kind=DerKind.METER, ts=ts, values=values))
        self.counters["polls"] += 1

    async def _poll_storage(
        self, device: SunSpecDevice, sink: ReadingSink, ts: datetime, mppt: SunSpecModel | None
    ) -> None:
        values: dict[str, float] = {}
        battery_w = None if mppt is None else device.battery_power_from_modules(mppt)
        if battery_w is not None:
            values[POWER_W] = battery_w
        for mid, soc_point in ((713, "SoC"), (802, "SoC"), (124, "ChaState")):
            m = device.model(mid)
            if m is None:
                continue
            fresh = await read_model(self._bus, self._unit, m)
            if mid == device.control_model:
                self._check_held(fresh)
            soc = fresh.number(soc_point)
            if soc is not None and SOC not in values:
                values[SOC] = soc / 100.0
            w802 = fresh.number("W") if mid == 802 else None
            if w802 is not None:
                values[POWER_W] = w802
        m704 = device.model(704) if device.control_model == 704 else None
        if m704 is not None:
            self._check_held(await read_model(self._bus, self._unit, m704))
        if values:
            soc = values.get(SOC)
            q = Quality.GOOD if soc is None or 0.0 <= soc <= 1.0 else Quality.SUSPECT
            sink(Reading(der_id=self.battery_id, kind=DerKind.BATTERY, ts=ts, values=values, quality=q))

    def _check_held(self, model: SunSpecModel) -> None:
        """A poll that shows other control values than we left (device reverted, someone else wrote) forgets them."""
        if self._held is not None and self._control_span(model.regs) != self._held[0]:
            self._held = None

    async def run(self, sink: ReadingSink) -> None:
        """Scan (until it works), then poll forever; device trouble means a pause, never an exit."""

        async def step() -> None:
            if self.device is None:
                try:
                    await self.scan()
                except DriverError:
                    self.counters["scan_errors"] += 1
                    raise
            await self.poll_once(sink)

        await poll_forever(
            step,
            health=self._health,
            counters=self.counters,
            clock=self._clock,
            poll_s=self._poll_s,
            backoff_max_s=self._backoff_max_s,
            io_errors=(DriverError, SunSpecError),
        )

    # ---- control (model 124, or 704 where 124 is absent) ----

    def _control(self) -> tuple[SunSpecModel, ModelDef, tuple[str, ...], str]:
        """The control model as scanned, its definition, the points of its span, and its enable point."""
        device = self.device
        assert device is not None and device.control_model is not None
        mid = device.control_model
        model, mdef = device.model(mid), model_def(mid)
        assert model is not None and mdef is not None
        if mid == 124:
            return model, mdef, _CONTROL_POINTS, "StorCtl_Mod"
        return model, mdef, (*_704_SPAN, "WSetEna"), "WSetEna"

    def _span(self) -> tuple[int, int]:
        """Offsets (from ID) of the control points' first and one-past-last register."""
        _, mdef, names, _ = self._control()
        points = [mdef.point(n) for n in names]
        return min(p.offset for p in points), max(p.offset + p.size for p in points)

    def _control_span(self, regs: list[int]) -> list[int]:
        lo, hi = self._span()
        return regs[lo:hi]

    def _refusal(self, command: Command) -> str | None:
        if not isinstance(command, BatterySetpoint):
            return f"{type(command).__name__} is not supported by {self._id}"
        if command.der_id != self.battery_id:
            return f"unknown DER {command.der_id!r} (this driver controls {self.battery_id!r})"
        if self.device is None:
            return "device not scanned yet"
        if not self.device.storage_control:
            why = self.device.no_control_reason
            return why or "device has no SunSpec storage control (model 124, or 704 on a storage-only DER)"
        if not math.isfinite(command.power_w):
            return f"setpoint {command.power_w} W is not a number"
        battery = next(c for c in self.capabilities() if c.kind is DerKind.BATTERY)
        if not -battery.max_discharge_w <= command.power_w <= battery.max_charge_w:
            return (
                f"setpoint {command.power_w:g} W outside limits "
                f"-{battery.max_discharge_w:g}..{battery.max_charge_w:g} W"
            )
        return None

    async def apply(self, command: Command) -> CommandResult:
        self.counters["commands"] += 1
        refusal = self._refusal(command)
        if refusal is not None:
            self.counters["commands_refused"] += 1
            log.warning("sunspec.command_refused", device=self._id, reason=refusal)
            return CommandResult(command=command, ok=False, detail=refusal)
        assert isinstance(command, BatterySetpoint)
        try:
            async with asyncio.timeout(self._apply_timeout_s):
                ok, detail = await self._set_power(command.power_w)
        except TimeoutError:
            ok, detail = False, f"no completion within {self._apply_timeout_s:g} s"
        except WriteBudgetExhausted:
            self.counters["commands_over_budget"] += 1
            return CommandResult(command=command, ok=False, detail=BUDGET_EXHAUSTED)
        except (DriverError, SunSpecError) as exc:
            ok, detail = False, str(exc)
        if not ok:
            self._held = None
            self.counters["command_errors"] += 1
            log.warning("sunspec.command_failed", device=self._id, setpoint_w=command.power_w, error=detail)
        return CommandResult(command=command, ok=ok, detail=detail)

    def _wanted_span(self, power_w: float) -> list[int]:
        """The control span as it must read for `power_w`: model 124's rate window [-OutWRte, InWRte]
        pinned to it (percent of the device's own maxima), or model 704's WSet in W (+ = injection)."""
        device = self.device
        assert device is not None
        model, mdef, _, _ = self._control()
        regs = list(model.regs)

        def put(name: str, raw: int) -> None:
            p = mdef.point(name)
            regs[p.offset : p.offset + p.size] = encode_raw(p, raw)

        if device.control_model == 704:
            sf = scale_factor(mdef, mdef.point("WSet"), regs)
            if sf is None:
                raise SunSpecError("WSet_SF not implemented")
            put("WSetMod", _704_WATTS)
            put("WSet", round(-power_w / 10.0**sf))
            put("WSetRvrt", 0)
            put("WSetEnaRvrt", _704_DISABLED)  # after the reversion time: the device's own control
            put("WSetRvrtTms", self._revert_s)
            put("WSetEna", _704_ENABLED)
            return self._control_span(regs)
        charge_max, discharge_max = device.max_charge_w(), device.max_discharge_w()
        assert charge_max and discharge_max  # storage_control checked
        sf = scale_factor(mdef, mdef.point("InWRte"), regs)
        if sf is None:
            raise SunSpecError("InOutWRte_SF not implemented")
        put("InWRte", round(power_w / charge_max * 100.0 / 10.0**sf))
        put("OutWRte", round(-power_w / discharge_max * 100.0 / 10.0**sf))
        if model.number("InOutWRte_WinTms") is not None:  # else written back as read (not implemented)
            put("InOutWRte_WinTms", 0)
        put("InOutWRte_RvrtTms", self._revert_s)
        put("StorCtl_Mod", _CHARGE_AND_DISCHARGE_LIMITS)
        return self._control_span(regs)

    def _grid_charge(self, power_w: float) -> int | None:
        """Model 124 ChaGriSet for a command: GRID while charging, else the installer's own setting; None
        where the device does not implement it (or control goes through 704)."""
        if self._own_grid_charge is None or self.device is None or self.device.control_model != 124:
            return None
        return _GRID_CHARGE if power_w > 0 else self._own_grid_charge

    def _holds(self, span: list[int]) -> bool:
        if self._held is None:
            return False
        held, at = self._held
        return held == span and self._clock.now().timestamp() - at < self._revert_s / 2

    async def _set_power(self, power_w: float, *, force: bool = False) -> tuple[bool, str]:
        """Write the values (one write) and the enable/mode point (only when it changes); read back both."""
        model, mdef, names, enable_name = self._control()
        wanted = self._wanted_span(power_w)
        if not force and self._holds(wanted):
            self.counters["writes_skipped"] += 1
            return True, f"{power_w:g} W already held"
        lo, _ = self._span()
        enable = mdef.point(enable_name)
        # The values: every point of the span but the enable one (124: rates after StorCtl_Mod; 704:
        # WSetMod..WSetRvrtTms after WSetEna), written before it so the enable never applies stale ones.
        value_points = [mdef.point(n) for n in names if n != enable_name]
        first = min(p.offset for p in value_points)
        last = max(p.offset + p.size for p in value_points)
        current = await read_model(self._bus, self._unit, model, Priority.CONTROL)
        grid = self._grid_charge(power_w)
        if grid is not None and current.values.get("ChaGriSet") != grid:
            # before the window: a charge window without grid charging charges from PV only
            await self._write(model.address + mdef.point("ChaGriSet").offset, [grid], force=force)
        cur_span = self._control_span(current.regs)
        values = wanted[first - lo : last - lo]
        if cur_span[first - lo : last - lo] != values or force or self._held is None:
            await self._write(model.address + first, values, force=force)
        if cur_span[enable.offset - lo] != wanted[enable.offset - lo]:
            await self._write(model.address + enable.offset, [wanted[enable.offset - lo]], force=force)
        back = await read_model(self._bus, self._unit, model, Priority.CONTROL)
        got = self._control_span(back.regs)
        if grid is not None and back.values.get("ChaGriSet") != grid:
            return False, f"read back ChaGriSet={back.values.get('ChaGriSet')}, wrote {grid} for {power_w:g} W"
        if got != wanted:
            mode_now = decode_raw(enable, got[enable.offset - lo : enable.offset - lo + 1])
            return False, f"read back {enable_name}={mode_now} and {got}, wrote {wanted} for {power_w:g} W"
        self._held = (got, self._clock.now().timestamp())
        return True, f"{power_w:g} W read back"

    async def _write(self, address: int, regs: list[int], *, force: bool) -> None:
        if not force:
            self._budget.spend()
        await self._bus.write_registers(self._unit, address, regs, priority=Priority.CONTROL)

    async def safe_mode(self) -> None:
        """Battery idle (window 0..0); the revert timeout then hands it back to the device's own control."""
        if self.device is None or not self.device.storage_control:
            return
        try:
            async with asyncio.timeout(self._apply_timeout_s):
                ok, problem = await self._set_power(0.0, force=True)
        except (DriverError, SunSpecError, TimeoutError) as exc:
            ok, problem = False, str(exc) or type(exc).__name__
        if not ok:
            self.counters["safe_mode_errors"] += 1
            log.error("sunspec.safe_mode_failed", device=self._id, error=problem)
            return
        log.info("sunspec.safe_mode", device=self._id)


def _meter_values(m: SunSpecModel) -> dict[str, float]:
    """SunSpec meters count W + = import at the grid connection point, like zapd."""
    # W is mandatory in every meter model: not implemented (0x8000, a float32 NaN) on a meter that answers
    # is a meter without power, whose other values must not make it look known. NaN lets the drivers'
    # guard make it unknown and count it, as it does for the ±Inf a float32 point can carry.
    w = m.number("W")
    values: dict[str, float] = {POWER_W: math.nan if w is None else w}
    for key, point in ((IMPORT_WH, "TotWhImp"), (EXPORT_WH, "TotWhExp")):
        v = m.number(point)
        if v is not None:
            values[key] = v
    for key, point in zip(PHASE_CURRENT_A, ("AphA", "AphB", "AphC"), strict=True):
        v = m.number(point)
        if v is not None:
            values[key] = v
    return values
