"""An IEEE 1547 SunSpec device (models 701-713) as SunSpec's own sample device image, over Modbus TCP.

The image is pysunspec2's test device `sunspec2/tests/test_data/device_1547.json` (SunSpec Alliance,
a PV-only DER: 701 W = 9800 W with W_SF = 0, 702 WMaxRtg = 10000 W, 713 DERStorageCapacity present
with every point "not implemented"), turned into registers by pysunspec2's own encoder
(`Model.get_mb`), not by zapd. Expected values are read off that JSON file by hand.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

import pytest
import sunspec2.file.client as sunspec_file

from drivers.modbus.bus import close_all_buses, get_tcp_bus
from drivers.modbus.sunspec import SunSpecInverter
from drivers.sim.register_image import start_register_image
from zapd.clock import SystemClock
from zapd.model import POWER_W, SOC, DerKind, Reading

BASE = 40000
SAMPLE = resources.files("sunspec2") / "tests" / "test_data" / "device_1547.json"


def _image(doc: dict[str, Any], tmp_path: Any) -> dict[int, int]:
    """SunS, each model as pysunspec2 encodes it (ID, L, body), the end marker."""
    path = tmp_path / "device.json"
    path.write_text(json.dumps(doc))
    device = sunspec_file.FileClientDevice(str(path))
    device.scan()
    regs = [0x5375, 0x6E53]
    for mid, models in device.models.items():
        if isinstance(mid, int):
            mb = models[0].get_mb()
            regs += [int.from_bytes(mb[i : i + 2], "big") for i in range(0, len(mb), 2)]
    regs += [0xFFFF, 0]
    return {BASE + i: v for i, v in enumerate(regs)}


async def _scan_and_poll(doc: dict[str, Any], tmp_path: Any) -> tuple[dict[str, Any], dict[str, Reading]]:
    server = await start_register_image({1: {"holding": _image(doc, tmp_path)}})
    try:
        bus = get_tcp_bus(server.host, server.port, timeout_s=2.0, backoff_initial_s=0.05, backoff_max_s=0.2)
        inv = SunSpecInverter(device_id="d", bus=bus, unit_id=1, poll_s=1.0, clock=SystemClock())
        await inv.scan()
        got: dict[str, Reading] = {}
        await inv.poll_once(lambda r: got.__setitem__(r.der_id, r))
        assert server.writes == []
        return {c.der_id: c for c in inv.capabilities()}, got
    finally:
        await close_all_buses()
        await server.stop()


@pytest.fixture
def sample() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(SAMPLE.read_text())
    return doc


async def test_pv_only_1547_device_gets_a_pv_der_and_no_battery(sample: dict[str, Any], tmp_path: Any) -> None:
    caps, got = await _scan_and_poll(sample, tmp_path)
    assert set(caps) == {"d.pv"}  # 713 is there, but shows no battery
    assert caps["d.pv"].kind is DerKind.PV and caps["d.pv"].max_power_w == 10000.0  # 702 WMaxRtg
    assert got["d.pv"].values[POWER_W] == 9800.0  # 701 W (AC), W_SF 0
    assert caps["d.pv"].model == "SunSpecTest Test-1547-1"


async def test_1547_device_with_storage_capacity_gets_a_battery(sample: dict[str, Any], tmp_path: Any) -> None:
    """The same sample with a battery filled in to model 713 (WHRtg 13.5 kWh, SoC 55 %, scale 0)."""
    doc = copy.deepcopy(sample)
    m713 = next(m for m in doc["models"] if m["ID"] == 713)
    m713.clear()
    m713.update({"ID": 713, "L": 7, "WHRtg": 13500, "WHAvail": 7000, "SoC": 55, "SoH": 98, "Sta": 1})
    m713.update({"WH_SF": 0, "Pct_SF": 0})
    caps, got = await _scan_and_poll(doc, tmp_path)
    assert set(caps) == {"d.pv", "d.battery"}
    battery = caps["d.battery"]
    assert battery.capacity_wh == 13500.0
    assert not battery.controllable  # no model 124 and 704 is not spoken: monitoring only
    assert got["d.battery"].values[SOC] == pytest.approx(0.55)


def _synthetic(sample: dict[str, Any], *models: dict[str, Any]) -> dict[str, Any]:
    """The sample's common model (1) with hand-written models after it (values per the SunSpec model docs)."""
    common = next(m for m in sample["models"] if m["ID"] == 1)
    return {"name": "synthetic", "models": [common, *models]}


async def test_pv_only_inverter_reports_ac_power_not_dc(sample: dict[str, Any], tmp_path: Any) -> None:
    """Model 103 with W 5000 W (AC) and DCW 5085 W (DC, inverter losses on top): PV is the AC side."""
    m103 = {"ID": 103, "W": 5000, "W_SF": 0, "DCW": 5085, "DCW_SF": 0, "St": 4}
    caps, got = await _scan_and_poll(_synthetic(sample, m103), tmp_path)
    assert set(caps) == {"d.pv"}
    assert got["d.pv"].values[POWER_W] == 5000.0


async def test_model_124_without_its_control_points_is_not_controllable(sample: dict[str, Any], tmp_path: Any) -> None:
    """A battery in model 124 (WChaMax 5 kW, ChaState 50 %) whose rate-window points are not implemented."""
    m103 = {"ID": 103, "W": 1000, "W_SF": 0, "DCW": 1200, "DCW_SF": 0, "St": 4}
    m124 = {"ID": 124, "WChaMax": 5000, "WChaMax_SF": 0, "ChaState": 50, "ChaState_SF": 0, "InOutWRte_SF": 0}
    caps, got = await _scan_and_poll(_synthetic(sample, m103, m124), tmp_path)
    assert set(caps) == {"d.pv", "d.battery"}
    assert caps["d.battery"].max_charge_w == 5000.0
    assert not caps["d.battery"].controllable
    assert got["d.battery"].values[SOC] == pytest.approx(0.5)
    assert got["d.pv"].values[POWER_W] == 1200.0  # a hybrid: W carries the battery, DCW is the PV


async def test_recognition_reports_the_sunspec_device(sample: dict[str, Any], tmp_path: Any) -> None:
    from drivers.modbus.recognize import recognize

    server = await start_register_image({1: {"holding": _image(sample, tmp_path)}})
    try:
        bus = get_tcp_bus(server.host, server.port, timeout_s=2.0, backoff_initial_s=0.05, backoff_max_s=0.2)
        found = await recognize(bus, 1)
    finally:
        await close_all_buses()
        await server.stop()
    assert [(m.driver, m.description) for m in found] == [("sunspec_tcp", "SunSpecTest Test-1547-1")]
    assert found[0].capabilities == ["pv"] and "701" in found[0].evidence
    assert server.writes == []


async def test_sunspec_rtu_device_from_the_config_scans_over_a_serial_line(
    sample: dict[str, Any], tmp_path: Any
) -> None:
    """`driver = "sunspec_rtu"`: the daemon's device builder puts the SunSpec driver on a serial bus; the
    sample device is served by pymodbus's RTU server behind a pty null modem."""
    from drivers.modbus.bus import close_all_buses as close_buses
    from drivers.sim.modbus_rtu import NullModem
    from drivers.sim.register_image import start_register_image_rtu
    from zapd.config import load_config
    from zapd.devices import build_devices

    modem = NullModem()
    modem.open()
    server = await start_register_image_rtu({3: {"holding": _image(sample, tmp_path)}}, modem.port_b, baudrate=19200)
    try:
        path = tmp_path / "zapd.toml"
        path.write_text(
            '[site]\nid = "home"\nfuse_a = 25\n\n[[devices]]\ndriver = "sunspec_rtu"\nid = "inv"\n'
            f'port = "{modem.port_a}"\nbaudrate = 19200\nunit_id = 3\nhas_battery = false\npoll_s = 1\n'
        )
        devices = build_devices(load_config(path), SystemClock())
        (inv,) = devices.drivers
        assert isinstance(inv, SunSpecInverter) and devices.kinds == {"inv.pv": DerKind.PV}
        await inv.scan()
        got: dict[str, Reading] = {}
        await inv.poll_once(lambda r: got.__setitem__(r.der_id, r))
        assert got["inv.pv"].values[POWER_W] == 9800.0
        assert server.writes == []
    finally:
        await close_buses()
        await server.stop()
        modem.close()


@pytest.mark.parametrize("expect_battery", [True, False])
async def test_a_battery_expectation_the_scan_contradicts_is_reported(
    sample: dict[str, Any], tmp_path: Any, expect_battery: bool
) -> None:
    """`has_battery = true` on the PV-only sample (and `false` on the sample with a battery) is a counted,
    logged configuration error on the device's health record, naming the fix."""
    doc = copy.deepcopy(sample)
    if not expect_battery:
        m713 = next(m for m in doc["models"] if m["ID"] == 713)
        m713.update({"WHRtg": 13500, "SoC": 55, "WH_SF": 0, "Pct_SF": 0})
    server = await start_register_image({1: {"holding": _image(doc, tmp_path)}})
    try:
        bus = get_tcp_bus(server.host, server.port, timeout_s=2.0, backoff_initial_s=0.05, backoff_max_s=0.2)
        inv = SunSpecInverter(
            device_id="d", bus=bus, unit_id=1, poll_s=1.0, clock=SystemClock(), expect_battery=expect_battery
        )
        await inv.scan()
    finally:
        await close_all_buses()
        await server.stop()
    assert inv.counters["config_errors"] == 1
    wanted = "set has_battery = false" if expect_battery else "set has_battery = true"
    assert wanted in inv.health.view().last_error


# Model 704 (DERCtlAC) offsets from its ID register, from the SunSpec model 704 point table:
# WSetEna 22, WSetMod 23, WSet 24-25 (int32), WSetRvrt 26-27, WSetPct 28, WSetPctRvrt 29,
# WSetEnaRvrt 30, WSetRvrtTms 31-32 (uint32 s), WSetRvrtRem 33-34; WSetMod 1 = WATTS; WSet + = injection.
_WSET_ENA, _WSET_MOD = 22, 23


# Model 714 (DERMeasureDC) port types, from the SunSpec model 714 point table: PrtTyp 0 = PV, 1 = ESS.
PV_PORT, ESS_PORT = 0, 1
AC_COUPLED = ((ESS_PORT, -1200),)  # a storage DER: one battery port (DCW - = charging, here 1.2 kW)


def _with_714_ports(doc: dict[str, Any], ports: tuple[tuple[int, int], ...]) -> dict[str, Any]:
    """Model 714 before the end marker, one `Prt` instance per (PrtTyp, DCW in W, DCW_SF 0)."""
    prt = [{"PrtTyp": t, "ID": i + 1, "IDStr": f"port {i + 1}", "DCW": w} for i, (t, w) in enumerate(ports)]
    m714 = {"ID": 714, "NPrt": len(ports), "DCA_SF": 0, "DCV_SF": 0, "DCW_SF": 0, "DCWH_SF": 0, "Tmp_SF": 0}
    doc["models"].insert(len(doc["models"]) - 1, {**m714, "Prt": prt})
    return doc


def _with_704_battery(
    sample: dict[str, Any], *, wset_implemented: bool = True, ports: tuple[tuple[int, int], ...] | None = AC_COUPLED
) -> dict[str, Any]:
    """The sample with a 5 kW / 13.5 kWh battery (702 rates, 713), 704's set-active-power points, and
    model 714's DC ports (`ports`; None: no model 714)."""
    doc = copy.deepcopy(sample)
    m702 = next(m for m in doc["models"] if m["ID"] == 702)
    m702.update({"WChaRteMax": 5000, "WDisChaRteMax": 5000})
    m713 = next(m for m in doc["models"] if m["ID"] == 713)
    m713.update({"WHRtg": 13500, "SoC": 55, "WH_SF": 0, "Pct_SF": 0})
    if wset_implemented:
        m704 = next(m for m in doc["models"] if m["ID"] == 704)
        m704.update({"WSetEna": 0, "WSetMod": 0, "WSet": 0, "WSetRvrt": 0, "WSetPct": 0, "WSetPctRvrt": 0})
        m704.update({"WSetEnaRvrt": 0, "WSetRvrtTms": 0, "WSetRvrtRem": 0, "WSet_SF": 0, "WSetPct_SF": 0})
    return doc if ports is None else _with_714_ports(doc, ports)


def _model_address(image: dict[int, int], model_id: int) -> int:
    """Walk the served image's chain (SunS, then ID/L blocks) to a model's ID register."""
    address = BASE + 2
    while image[address] != model_id:
        assert image[address] != 0xFFFF, f"model {model_id} not in the image"
        address += 2 + image[address + 1]
    return address


async def test_model_704_controls_the_battery_where_124_is_absent(sample: dict[str, Any], tmp_path: Any) -> None:
    """No model 124, a storage-only DER (model 714: one ESS port): a charge of 2000 W becomes, per model
    704, WSetMod = WATTS, WSet = -2000 W (the DER absorbs), reversion to the device's own control
    (WSetEnaRvrt = DISABLED) after the revert timeout, written in one request before WSetEna = ENABLED;
    then read back. Its 701 AC power is the battery's, so there is no PV DER."""
    from zapd.model import BatterySetpoint

    image = _image(_with_704_battery(sample), tmp_path)
    at = _model_address(image, 704)
    server = await start_register_image({1: {"holding": image}})
    try:
        bus = get_tcp_bus(server.host, server.port, timeout_s=2.0, backoff_initial_s=0.05, backoff_max_s=0.2)
        inv = SunSpecInverter(device_id="d", bus=bus, unit_id=1, poll_s=1.0, clock=SystemClock(), revert_timeout_s=300)
        await inv.scan()
        (battery,) = inv.capabilities()
        assert battery.der_id == "d.battery" and battery.controllable
        assert battery.max_charge_w == 5000.0 and battery.max_discharge_w == 5000.0
        assert server.writes == []

        result = await inv.apply(BatterySetpoint(der_id="d.battery", power_w=2000.0))
        assert result.ok, result.detail
        got = [(w.unit, w.address, list(w.values)) for w in server.writes]
        assert got == [
            (1, at + _WSET_MOD, [1, 0xFFFF, 0xF830, 0, 0, 0, 0, 0, 0, 300]),  # WSet -2000 = 0xFFFFF830
            (1, at + _WSET_ENA, [1]),
        ]

        server.clear()
        result = await inv.apply(BatterySetpoint(der_id="d.battery", power_w=-1500.0))  # discharge: inject
        assert result.ok, result.detail
        assert [(w.address, list(w.values)) for w in server.writes] == [
            (at + _WSET_MOD, [1, 0x0000, 1500, 0, 0, 0, 0, 0, 0, 300])  # already enabled: one write
        ]

        server.clear()
        refused = await inv.apply(BatterySetpoint(der_id="d.battery", power_w=6000.0))
        assert not refused.ok and server.writes == []  # beyond the 5 kW nameplate: nothing written

        await inv.safe_mode()  # idle: WSet 0 W, still reverting to the device's own control
        assert [(w.address, list(w.values)) for w in server.writes] == [
            (at + _WSET_MOD, [1, 0, 0, 0, 0, 0, 0, 0, 0, 300])
        ]
    finally:
        await close_all_buses()
        await server.stop()


@pytest.mark.parametrize(
    ("ports", "why"),
    [
        (((PV_PORT, 4200), (ESS_PORT, -1200)), "types [0, 1]"),  # a DC-coupled hybrid
        (((PV_PORT, 2100), (PV_PORT, 2100), (ESS_PORT, -1200)), "types [0, 1]"),  # two strings and a battery
        (((ESS_PORT, -1200), (2, 3000)), "types [1, 2]"),  # a battery and an EV port on one AC terminal
        (None, "no model 714 port types"),  # the device does not say what its AC terminals carry
    ],
    ids=["pv+ess", "2pv+ess", "ess+ev", "no-714"],
)
async def test_model_704_is_refused_where_the_ac_terminals_carry_more_than_the_battery(
    sample: dict[str, Any], tmp_path: Any, ports: tuple[tuple[int, int], ...] | None, why: str
) -> None:
    """704 WSet is the DER's net AC power. On a hybrid a fixed WSet = PV - battery command leaves the battery
    to take up every change of PV until the next write (or, with zapd gone, the 300 s reversion time): a
    cloud under an idle command discharges it, below reserve if it lasts; the envelope cannot bound it. So
    the battery is reported but not controllable, a command is refused with the reason and nothing is
    written, and safe mode writes nothing. A hybrid's PV is its PV ports' DC power, not 701's 9800 W."""
    from zapd.model import BatterySetpoint

    image = _image(_with_704_battery(sample, ports=ports), tmp_path)
    server = await start_register_image({1: {"holding": image}})
    try:
        bus = get_tcp_bus(server.host, server.port, timeout_s=2.0, backoff_initial_s=0.05, backoff_max_s=0.2)
        inv = SunSpecInverter(device_id="d", bus=bus, unit_id=1, poll_s=1.0, clock=SystemClock())
        await inv.scan()
        caps = {c.der_id: c for c in inv.capabilities()}
        assert set(caps) == {"d.pv", "d.battery"} and not caps["d.battery"].controllable
        result = await inv.apply(BatterySetpoint(der_id="d.battery", power_w=2000.0))
        assert not result.ok and why in result.detail and "704" in result.detail, result.detail
        assert inv.counters["commands_refused"] == 1
        await inv.safe_mode()
        got: dict[str, Reading] = {}
        await inv.poll_once(lambda r: got.__setitem__(r.der_id, r))
        assert server.writes == []
    finally:
        await close_all_buses()
        await server.stop()
    pv_ports = [w for t, w in ports or () if t == PV_PORT]
    assert got["d.pv"].values[POWER_W] == (sum(pv_ports) if pv_ports else 9800.0)  # no 714: 701 W as before


async def test_the_scan_says_why_a_hybrids_battery_is_not_controlled(sample: dict[str, Any], tmp_path: Any) -> None:
    """`zapd devices scan` on the 704 hybrid (714: a PV and a storage port) names the battery as monitoring
    only, with the reason, before the installer configures it; the storage-only DER as controllable."""
    from drivers.modbus.recognize import recognize

    for ports, wanted in (
        (((PV_PORT, 4200), (ESS_PORT, -1200)), ["pv", "battery (monitoring only: model 714 shows DC ports"]),
        (AC_COUPLED, ["battery (controllable)"]),
    ):
        server = await start_register_image({1: {"holding": _image(_with_704_battery(sample, ports=ports), tmp_path)}})
        try:
            bus = get_tcp_bus(server.host, server.port, timeout_s=2.0, backoff_initial_s=0.05)
            (match,) = await recognize(bus, 1)
        finally:
            await close_all_buses()
            await server.stop()
        assert len(match.capabilities) == len(wanted), match.capabilities
        assert all(got.startswith(want) for got, want in zip(match.capabilities, wanted, strict=True))
        assert server.writes == []


async def test_model_704_without_its_wset_points_or_a_battery_is_not_control(
    sample: dict[str, Any], tmp_path: Any
) -> None:
    """704 present but WSet not implemented (the sample as shipped, with a battery): monitoring only.
    704 implemented on the PV-only sample: no battery DER, so nothing to control."""
    caps, _ = await _scan_and_poll(_with_704_battery(sample, wset_implemented=False), tmp_path)
    assert caps["d.battery"].kind is DerKind.BATTERY and not caps["d.battery"].controllable
    pv_only = _with_704_battery(sample, ports=((PV_PORT, 9800),))
    m713 = next(m for m in pv_only["models"] if m["ID"] == 713)
    m713.update({"WHRtg": None, "SoC": None})
    caps, _ = await _scan_and_poll(pv_only, tmp_path)
    assert set(caps) == {"d.pv"}


async def test_has_battery_defaults_to_false_and_the_scan_snippet_says_when_there_is_one(
    sample: dict[str, Any], tmp_path: Any
) -> None:
    """A `sunspec_tcp` device without `has_battery` gets no battery DER (a PV-only inverter must not carry
    a stale one); the recognition snippet for a device that shows a battery sets `has_battery = true`,
    and that snippet, pasted into a config, declares the battery."""
    import tomllib

    from drivers.modbus.recognize import recognize
    from zapd.config_check import check_data
    from zapd.devices import build_devices

    site = '[site]\nid = "home"\nfuse_a = 25\n\n'
    for doc, battery in ((sample, False), (_with_704_battery(sample), True)):
        server = await start_register_image({1: {"holding": _image(doc, tmp_path)}})
        try:
            bus = get_tcp_bus(server.host, server.port, timeout_s=2.0, backoff_initial_s=0.05)
            (match,) = await recognize(bus, 1)
        finally:
            await close_all_buses()
            await server.stop()
        snippet = match.snippet({"host": server.host, "port": server.port})
        assert f"has_battery = {'true' if battery else 'false'}" in snippet
        result = check_data(tomllib.loads(site + snippet), "zapd.toml")
        assert result.config is not None and result.errors == [], result.errors
        kinds = build_devices(result.config, SystemClock()).kinds
        assert ("inverter.battery" in kinds) is battery, kinds
    bare = check_data(tomllib.loads(site + '[[devices]]\ndriver = "sunspec_tcp"\nid = "x"\nhost = "h"\n'), "t")
    assert bare.config is not None
    assert build_devices(bare.config, SystemClock()).kinds == {"x.pv": DerKind.PV}


async def test_serial_scan_recognises_a_sunspec_device_with_an_rtu_snippet(
    sample: dict[str, Any], tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """`zapd devices scan --serial`: the sample device behind a pty (pymodbus's RTU server) is named as
    SunSpec, with a `sunspec_rtu` snippet carrying the port and line settings, and nothing written."""
    import tomllib

    from drivers.sim.modbus_rtu import NullModem
    from drivers.sim.register_image import start_register_image_rtu
    from zapd.recognize_cli import scan_serial

    modem = NullModem()
    modem.open()
    server = await start_register_image_rtu({3: {"holding": _image(sample, tmp_path)}}, modem.port_b, baudrate=19200)
    try:
        capsys.readouterr()
        # Unit 3 is the only unit probed and it answers, so the reply deadline costs nothing when met; it is
        # not 0.3 s because the peer runs in this event loop and a loaded CI box can take longer to answer.
        rc = await scan_serial(modem.port_a, unit_ids=[3], baudrate=19200, as_json=True, timeout_s=2.0)
    finally:
        await close_all_buses()
        await server.stop()
        modem.close()
    text = capsys.readouterr().out
    rows, _ = json.JSONDecoder().raw_decode(text[text.index("[\n") :])
    assert rc == 0 and [(r["driver"], r["profile"]) for r in rows] == [("sunspec_rtu", "")]
    (dev,) = tomllib.loads(rows[0]["config"])["devices"]
    assert dev["port"] == modem.port_a and dev["baudrate"] == 19200 and dev["unit_id"] == 3
    assert dev["has_battery"] is False and "host" not in dev
    assert server.writes == []
