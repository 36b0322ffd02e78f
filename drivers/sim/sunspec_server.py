"""A SunSpec hybrid inverter in front of a SimSite: a real Modbus TCP server with a real model chain.

The register image is built from the same pysunspec2 model definitions the driver decodes
with, so discovery, scale factors and the storage controls (model 124) run over a socket
against what a SunSpec device would answer: 'SunS' at the chosen base, models 1, 103, 120,
124, 203 and 713 by default, the end marker, exception 2 everywhere else. Like the plain
simulator, it mirrors the site and never steps its physics; the model-124 revert timer runs
on site time. Fault injection (exception codes at chosen addresses) serves the degrade tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.sunspec_models import ModelDef, Value, decode_raw, encode_raw, encode_scaled, model_def
from drivers.sim.physics import SimSite

log = structlog.get_logger(__name__)

SUNS = (0x5375, 0x6E53)
DEFAULT_MODELS = (1, 103, 120, 124, 203, 713)
_HOLDING_READ, _HOLDING_WRITES = 3, {6, 16}
# Scale factors the simulated device reports: some positive, some negative, so both paths are exercised.
_SCALE_FACTORS = {
    "A_SF": -2,
    "V_SF": -1,
    "Hz_SF": -2,
    "PF_SF": -2,
    "WHRtg_SF": 1,
    "WChaMax_SF": 1,
    "InOutWRte_SF": -2,
    "ChaState_SF": -1,
    "WH_SF": 1,
    "Pct_SF": -1,
    "MaxChaRte_SF": 1,
    "MaxDisChaRte_SF": 1,
}
_CHARGE_LIMIT, _DISCHARGE_LIMIT = 0x1, 0x2  # StorCtl_Mod bits
_IMPLEMENTED_CONTROLS = {
    (124, name) for name in ("StorCtl_Mod", "OutWRte", "InWRte", "InOutWRte_WinTms", "InOutWRte_RvrtTms")
}


@dataclass
class _Image:
    """Registers from the base address: 'SunS', the models, the end marker."""

    base: int
    regs: list[int]
    offsets: dict[int, int]  # model id -> index of its ID register in regs

    @classmethod
    def build(cls, base: int, model_ids: Sequence[int]) -> _Image:
        regs, offsets = list(SUNS), {}
        for mid in model_ids:
            mdef = model_def(mid)
            if mdef is None:
                raise ValueError(f"no SunSpec definition for model {mid}")
            offsets[mid] = len(regs)
            body = [mid, mdef.length]
            for p in list(mdef.points.values())[2:]:
                if p.type == "sunssf":
                    body += encode_raw(p, _SCALE_FACTORS.get(p.name, 0))
                else:  # a real device reads its writable controls as values (0 = off), not "not implemented"
                    body += encode_raw(p, 0 if (mid, p.name) in _IMPLEMENTED_CONTROLS else None)
            regs += body
        regs += [0xFFFF, 0]
        return cls(base, regs, offsets)

    def _model(self, mid: int) -> tuple[ModelDef, int]:
        mdef = model_def(mid)
        assert mdef is not None
        return mdef, self.offsets[mid]

    def model_regs(self, mid: int) -> list[int]:
        mdef, off = self._model(mid)
        return self.regs[off : off + 2 + mdef.length]

    def set(self, mid: int, name: str, value: float | None) -> None:
        """Engineering value (scaled by the model's own scale factor); None = not implemented."""
        if mid not in self.offsets:
            return
        mdef, off = self._model(mid)
        p = mdef.point(name)
        regs = encode_raw(p, None) if value is None else encode_scaled(mdef, p, value, self.model_regs(mid))
        self.regs[off + p.offset : off + p.offset + p.size] = regs

    def set_raw(self, mid: int, name: str, value: Value | None) -> None:
        if mid not in self.offsets:
            return
        mdef, off = self._model(mid)
        p = mdef.point(name)
        self.regs[off + p.offset : off + p.offset + p.size] = encode_raw(p, value)

    def get(self, mid: int, name: str) -> float | None:
        mdef, off = self._model(mid)
        p = mdef.point(name)
        raw = decode_raw(p, self.regs[off + p.offset : off + p.offset + p.size])
        if raw is None or isinstance(raw, str):
            return None
        sf = mdef.points.get(p.sf) if isinstance(p.sf, str) else None
        exp = decode_raw(sf, self.regs[off + sf.offset : off + sf.offset + 1]) if sf is not None else 0
        return float(raw) * 10.0 ** int(exp or 0)

    def writable(self, address: int, count: int) -> bool:
        """True when every register in the range belongs to a read-write point."""
        for reg in range(address - self.base, address - self.base + count):
            ok = False
            for mid, off in self.offsets.items():
                mdef, _ = self._model(mid)
                for p in mdef.points.values():
                    if off + p.offset <= reg < off + p.offset + p.size:
                        ok = p.writable
            if not ok:
                return False
        return True


@dataclass
class SimSunSpecDevice:
    site: SimSite
    image: _Image
    inverter_rating_w: float = 8000.0
    last_control_at: datetime | None = None
    # address -> exception code answered for any request touching it (and how many more times; None = always)
    faults: dict[int, tuple[ExcCodes, int | None]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=lambda: {"reads": 0, "writes": 0, "faults": 0})
    # (model, point) -> value served instead of the site's: a float32 point can be +Inf, -Inf or NaN.
    overrides: dict[tuple[int, str], float] = field(default_factory=dict)

    def inject(self, address: int, code: ExcCodes, times: int | None = None) -> None:
        self.faults[address] = (code, times)

    def _fault(self, address: int, count: int) -> ExcCodes | None:
        for addr in range(address, address + count):
            if addr in self.faults:
                code, times = self.faults[addr]
                if times is not None:
                    if times <= 1:
                        del self.faults[addr]
                    else:
                        self.faults[addr] = (code, times - 1)
                self.counters["faults"] += 1
                return code
        return None

    def refresh(self) -> None:
        s, b, img = self.site, self.site.battery, self.image
        img.set_raw(1, "Mn", "zapd")
        img.set_raw(1, "Md", "SimHybrid SunSpec")
        img.set_raw(1, "Vr", "1.0")
        img.set_raw(1, "SN", "SIM-0001")
        img.set_raw(1, "DA", 1)
        img.set(103, "W", s.pv_w - b.measured_power_w())  # AC side: PV minus what goes into the battery
        img.set(103, "DCW", s.pv_w)
        img.set(103, "Hz", 50.0)
        img.set_raw(103, "St", 4)  # MPPT
        img.set_raw(120, "DERTyp", 82)  # PV and storage
        img.set(120, "WRtg", self.inverter_rating_w)
        img.set(120, "WHRtg", b.capacity_wh)
        img.set(120, "MaxChaRte", b.max_charge_w)
        img.set(120, "MaxDisChaRte", b.max_discharge_w)
        img.set(124, "WChaMax", b.max_charge_w)
        img.set(124, "ChaState", b.soc * 100.0)
        img.set_raw(124, "ChaSt", 4 if b.power_w > 0 else 3 if b.power_w < 0 else 6)
        grid_w = s.metered_grid_w()  # the meter's own (averaged, late) measurement
        for meter in (203, 213):  # the int + scale factor meter, or the float32 one (whichever is served)
            img.set(meter, "W", grid_w)
            for phase in ("AphA", "AphB", "AphC"):
                img.set(meter, phase, grid_w / 3 / 230.0)
            img.set(meter, "PhV", 230.0)
            img.set(meter, "Hz", 50.0)
            img.set(meter, "TotWhImp", round(s.counters.import_wh) or None)
            img.set(meter, "TotWhExp", round(s.counters.export_wh) or None)
        img.set(713, "WHRtg", b.capacity_wh)
        img.set(713, "WHAvail", b.soc * b.capacity_wh)
        img.set(713, "SoC", b.soc * 100.0)
        img.set(713, "SoH", 100.0)
        for (mid, name), value in self.overrides.items():
            img.set(mid, name, value)

    def _revert_if_silent(self) -> None:
        """Model 124: without a new rate inside InOutWRte_RvrtTms the device returns to its own control."""
        if 124 not in self.image.offsets:
            return
        mode = self.image.get(124, "StorCtl_Mod") or 0
        timeout = self.image.get(124, "InOutWRte_RvrtTms") or 0
        now, last = self.site.last, self.last_control_at
        if not mode or timeout <= 0 or now is None or last is None:
            return
        if (now - last).total_seconds() > timeout:
            self.image.set_raw(124, "StorCtl_Mod", 0)
            self.site.battery.setpoint_w = 0.0
            log.warning("sim.sunspec.revert", timeout_s=timeout)

    def apply_storage_control(self) -> None:
        """Battery power = the device's own wish (idle here) clamped to [-OutWRte, InWRte] when limited."""
        img, b = self.image, self.site.battery
        mode = int(img.get(124, "StorCtl_Mod") or 0)
        hi, lo = b.max_charge_w, -b.max_discharge_w
        if mode & _CHARGE_LIMIT:
            hi = (img.get(124, "InWRte") or 0.0) / 100.0 * b.max_charge_w
        if mode & _DISCHARGE_LIMIT:
            lo = -(img.get(124, "OutWRte") or 0.0) / 100.0 * b.max_discharge_w
        b.setpoint_w = min(max(0.0, lo), hi) if lo <= hi else 0.0
        self.last_control_at = self.site.last

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        fault = self._fault(address, count)
        if fault is not None:
            return fault
        if address + count > self.image.base + len(self.image.regs):
            return ExcCodes.ILLEGAL_ADDRESS
        self._revert_if_silent()
        if set_values is None:
            self.counters["reads"] += 1
            self.refresh()
        else:
            if not self.image.writable(address, count):
                return ExcCodes.ILLEGAL_ADDRESS
            self.counters["writes"] += 1
            i = address - self.image.base
            self.image.regs[i : i + count] = [int(v) for v in set_values]
            self.apply_storage_control()
        registers[:] = self.image.regs[: len(registers)]
        return None


class SimSunSpecServer:
    def __init__(self, server: ModbusTcpServer, host: str, port: int, device: SimSunSpecDevice) -> None:
        self._server = server
        self.host = host
        self.port = port
        self.device = device

    async def stop(self) -> None:
        await self._server.shutdown()  # type: ignore[no-untyped-call]
        log.info("sim.sunspec.stopped", host=self.host, port=self.port)


async def start_sunspec_sim(
    site: SimSite,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    unit_id: int = 1,
    base: int = 40000,
    models: Sequence[int] = DEFAULT_MODELS,
) -> SimSunSpecServer:
    """Serve `site` as a SunSpec device at unit_id with 'SunS' at `base` (40000, 50000, 0, or +1 of those)."""
    image = _Image.build(base, models)
    device = SimSunSpecDevice(site=site, image=image)
    device.refresh()
    no_bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS, readonly=True)]
    holding = [SimData(base, count=len(image.regs), datatype=DataType.REGISTERS)]
    sim = SimDevice(
        id=unit_id,
        simdata=(no_bits, list(no_bits), holding, [SimData(0, datatype=DataType.INVALID)]),
        action=device.action,
    )
    server = ModbusTcpServer([sim], address=(host, port))
    await server.serve_forever(background=True)
    sockets = getattr(server.transport, "sockets", None) or ()
    real_port = int(sockets[0].getsockname()[1]) if sockets else port
    log.info("sim.sunspec.started", host=host, port=real_port, base=base, models=list(models))
    return SimSunSpecServer(server, host, real_port, device)
