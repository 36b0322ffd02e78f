"""Recognition against every profile in the maps folder, so a profile added later is covered too.

Every profile file must carry `[identify]` rules and a real peer to prove them: a vendor-document
fixture (tests/fixtures/devices/<name>.toml: registers written from the vendor's document, never
from the profile's identify table) served by a pymodbus server, or, for the simulator's own
profile, the running simulator. `zapd devices scan --host` against that peer must name exactly
that profile (itself, and no other profile's probes match its image), print its capabilities and
a config snippet that loads, send no write, and keep to the probe rate limit. RS-485 devices (a
fixture with an `rtu` table) are scanned over Modbus RTU on a pty too (`zapd devices scan --serial`).

The rate-limit checks are lower bounds (N requests at R per second take at least (N - 1) / R), so
load cannot make them fail; the per-profile scans run at a raised rate to keep the suite fast,
test_scan_host_is_rate_limited_and_read_only checks the shipped PROBES_PER_S.
"""

from __future__ import annotations

import contextlib
import json
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.bus import ModbusBus, close_all_buses, get_serial_bus, get_tcp_bus
from drivers.modbus.recognize import recognize
from drivers.modbus.register_map import MAPS_DIR
from drivers.sim.modbus_rtu import NullModem
from drivers.sim.modbus_server import start_modbus_sim
from drivers.sim.physics import BatteryModel, SimSite
from drivers.sim.register_image import fixture_units, start_register_image
from tests.integration.profile_peers import over_tcp, rtu_peer
from tests.waiting import wait_until
from zapd import recognize_cli

FIXTURES = Path(__file__).parent.parent / "fixtures" / "devices"
PROFILES = sorted(MAPS_DIR.glob("*.toml"))
FAST_PROBES_PER_S = 200.0  # the per-profile scans: the same limiter at a rate that keeps the suite quick
SIMULATED = "sim_hybrid"  # zapd's own simulator: its "vendor document" is drivers/sim/modbus_server.py


def _fixture(name: str) -> dict[str, Any] | None:
    path = FIXTURES / f"{name}.toml"
    return tomllib.loads(path.read_text()) if path.is_file() else None


@contextlib.asynccontextmanager
async def _peer(name: str) -> AsyncIterator[tuple[str, int, int, Callable[[], int]]]:
    """(host, port, unit id, writes so far) of a real server for profile `name`."""
    if name == SIMULATED:
        battery = BatteryModel(capacity_wh=10_000.0, soc=0.42, max_charge_w=5000.0, max_discharge_w=4000.0)
        sim = await start_modbus_sim(SimSite(battery=battery), unit_id=1)
        try:
            yield sim.host, sim.port, 1, lambda: sim.counters(1)["writes"]
        finally:
            await close_all_buses()
            await sim.stop()
        return
    fixture = _fixture(name)
    assert fixture is not None, f"{name}: no vendor-document fixture {FIXTURES / (name + '.toml')} to recognise it by"
    server = await start_register_image(fixture_units(fixture["image"]))
    try:
        yield server.host, server.port, fixture["unit_id"], lambda: len(server.writes)
    finally:
        await close_all_buses()
        await server.stop()


def _record_buses(monkeypatch: pytest.MonkeyPatch, factory: str) -> list[ModbusBus]:
    """Every bus the scan opens through recognize_cli.<factory> (get_tcp_bus / get_serial_bus), for its
    request counter."""
    make = {"get_tcp_bus": get_tcp_bus, "get_serial_bus": get_serial_bus}[factory]
    buses: list[ModbusBus] = []

    def recording_bus(*args: Any, **kwargs: Any) -> ModbusBus:
        buses.append(make(*args, **kwargs))
        return buses[-1]

    monkeypatch.setattr(recognize_cli, factory, recording_bus)
    return buses


def _json_rows(text: str) -> list[dict[str, Any]]:
    rows, _ = json.JSONDecoder().raw_decode(text[text.index("[\n") :])  # after structlog's lines
    assert isinstance(rows, list)
    return rows


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_profile_has_identification_rules(path: Path) -> None:
    """A profile without `[identify]` cannot be told apart by `zapd devices scan`: that fails here."""
    doc = tomllib.loads(path.read_text())
    assert doc.get("identify"), f"{path.name} has no [identify] rules: `zapd devices scan` cannot recognise it"


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
async def test_scan_host_names_every_profile_alone_in_its_own_image(
    path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = path.stem
    buses = _record_buses(monkeypatch, "get_tcp_bus")
    monkeypatch.setattr(recognize_cli, "PROBES_PER_S", FAST_PROBES_PER_S)
    async with _peer(name) as (host, port, unit, writes):
        capsys.readouterr()
        started = time.monotonic()
        rc = await recognize_cli.scan_host(f"{host}:{port}", unit_ids=[unit], as_json=True)
        elapsed = time.monotonic() - started
        assert writes() == 0, "recognition must only read"
    rows = _json_rows(capsys.readouterr().out)
    assert rc == 0
    assert [r["profile"] for r in rows if r["profile"]] == [name], f"{name}: the scan named {rows}"
    row = next(r for r in rows if r["profile"])
    assert row["capabilities"] and row["evidence"], row
    snippet = tomllib.loads(row["config"])["devices"][0]
    assert (snippet["map"], snippet["driver"], snippet["unit_id"]) == (name, row["driver"], unit)
    assert (snippet["host"], snippet["port"]) == (host, port)
    (bus,) = buses
    requests = bus.counters["requests"]
    assert requests >= 2, requests
    assert elapsed >= (requests - 1) / FAST_PROBES_PER_S * 0.95, (requests, elapsed)


def test_meters_named_in_the_issue_have_identify_tables() -> None:
    """SDM72, SDM120, EM340 and ABB B23/B24 had none: recognition could not tell them apart."""
    for name in ("eastron_sdm72", "eastron_sdm120", "carlo_gavazzi_em340", "abb_b23_b24"):
        assert "identify" in tomllib.loads((MAPS_DIR / f"{name}.toml").read_text()), name


async def test_an_identification_code_beats_a_plausibility_probe() -> None:
    """An SDM72's L1 voltage is also a plausible SDM630 voltage; its meter code says which it is."""
    fixture = _fixture("eastron_sdm72")
    assert fixture is not None
    async with over_tcp(fixture) as (_server, bus):
        found = await recognize(bus, 1)
    assert [(m.profile, m.strong) for m in found] == [("eastron_sdm72", True)]
    fixture_630 = _fixture("eastron_sdm630")
    assert fixture_630 is not None
    async with over_tcp(fixture_630) as (_server, bus):
        found = await recognize(bus, 1)
    assert [(m.profile, m.strong) for m in found] == [("eastron_sdm630", False)]


# Each serial scan takes ~3 s at the shipped rate limit: one per device family is enough (a fixture
# with `rtu_scan = false` names the sibling whose scan covers it); every RS-485 meter fixture still
# decodes over RTU in test_meter_profiles.py.
RTU_FIXTURES = [p.stem for p in PROFILES if "rtu" in (f := _fixture(p.stem) or {}) and f.get("rtu_scan", True)]


@pytest.mark.parametrize("name", RTU_FIXTURES)
async def test_serial_scan_recognises_rs485_devices_read_only_at_the_rate_limit(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`zapd devices scan --serial PORT --baud B --unit N` over Modbus RTU (pymodbus's RTU server on a
    pty), at the shipped PROBES_PER_S: no write, and N requests take at least (N - 1) / PROBES_PER_S.
    The snippet it prints is valid config as pasted: an RTU kind (an RS-485 charger's is `modbus_ev_rtu`,
    not the TCP `modbus_ev` with serial keys) that `load_config` accepts with the scanned line settings."""
    from zapd.config import load_config

    buses = _record_buses(monkeypatch, "get_serial_bus")
    fixture = _fixture(name)
    assert fixture is not None
    line = fixture["rtu"]
    async with rtu_peer(fixture) as (server, port):
        capsys.readouterr()
        started = time.monotonic()
        rc = await recognize_cli.scan_serial(
            port,
            unit_ids=[fixture["unit_id"]],
            baudrate=line["baudrate"],
            parity=line["parity"],
            stopbits=line["stopbits"],
            as_json=True,
            timeout_s=0.3,
        )
        elapsed = time.monotonic() - started
    rows = _json_rows(capsys.readouterr().out)
    assert rc == 0
    assert [r["profile"] for r in rows if r["profile"]] == [name]
    row = next(r for r in rows if r["profile"])
    assert row["driver"].endswith("_rtu"), row["driver"]
    snippet = tomllib.loads(row["config"])["devices"][0]
    assert snippet["port"] == port and snippet["baudrate"] == line["baudrate"] and snippet["map"] == name
    assert "host" not in snippet
    config = tmp_path / "zapd.toml"
    config.write_text(f'[site]\nid = "home"\nfuse_a = 25\n\n{row["config"]}\n')
    (device,) = load_config(config).devices
    assert device.driver == row["driver"] and device.serial_port() == port
    assert device.serial_line() == (line["baudrate"], line["parity"], line["stopbits"], 8)
    assert device.serial_unit() == fixture["unit_id"]
    assert server.writes == [], "a serial scan must only read"
    (bus,) = buses
    requests = bus.counters["requests"]
    assert elapsed >= (requests - 1) / recognize_cli.PROBES_PER_S * 0.95, (requests, elapsed)


async def test_scan_prints_profile_capabilities_and_a_snippet_that_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The human-readable `zapd devices scan --host H:P --unit 3` on the SBS fixture: the profile line with
    its evidence (device type 9358 = SBS5.0-10 at 30054), the capabilities, and a `[[devices]]` snippet
    that `zapd config check`'s loader accepts as pasted under a [site]."""
    from zapd.cli import build_parser
    from zapd.config import load_config

    fixture = _fixture("sma_sunny_boy_storage")
    assert fixture is not None
    async with over_tcp(fixture) as (server, _bus):
        await close_all_buses()
        args = build_parser().parse_args(["devices", "scan", "--host", f"{server.host}:{server.port}", "--unit", "3"])
        capsys.readouterr()
        rc = await recognize_cli.scan_host(args.host, unit_ids=args.unit, as_json=args.json)
        assert server.writes == []
    out = capsys.readouterr().out
    lines = out[out.index("sma_sunny_boy_storage: ") :].splitlines()
    assert rc == 0
    assert lines[0].startswith("sma_sunny_boy_storage: SMA Sunny Boy Storage (unit 3; ")
    assert "register 30054 = 9358" in lines[0]
    assert lines[1] == "  capabilities: battery (controllable: signed_setpoint)"
    snippet = "\n".join(line[2:] for line in lines[2:] if line.startswith("  "))
    assert snippet.startswith('[[devices]]\ndriver = "modbus_tcp"')
    config = tmp_path / "zapd.toml"
    config.write_text(f'[site]\nid = "home"\nfuse_a = 25\n\n{snippet}\n')
    (device,) = load_config(config).devices
    assert (device.map, device.unit_id, device.port) == ("sma_sunny_boy_storage", 3, server.port)  # type: ignore[union-attr]


async def test_serial_scan_with_nothing_there_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    from zapd.recognize_cli import scan_serial

    modem = NullModem()
    modem.open()
    try:
        rc = await scan_serial(modem.port_a, unit_ids=[7], timeout_s=0.2)
    finally:
        await close_all_buses()
        modem.close()
    assert rc == 1 and "nothing recognised" in capsys.readouterr().out


async def test_scan_host_is_rate_limited_and_read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """At PROBES_PER_S, N requests take at least (N - 1) / PROBES_PER_S: a lower bound, so load cannot
    make it fail. N is the bus's own request count; the peer records any write."""
    buses = _record_buses(monkeypatch, "get_tcp_bus")
    fixture = _fixture("eastron_sdm72")
    assert fixture is not None
    server = await start_register_image(fixture_units(fixture["image"]))
    try:
        started = time.monotonic()
        rc = await recognize_cli.scan_host(f"{server.host}:{server.port}", unit_ids=[1], as_json=True)
        elapsed = time.monotonic() - started
    finally:
        await close_all_buses()
        await server.stop()
    assert rc == 0 and server.writes == []
    (bus,) = buses
    requests = bus.counters["requests"]
    assert requests >= 5, requests  # SunSpec base addresses + one read per identification register
    assert elapsed >= (requests - 1) / recognize_cli.PROBES_PER_S * 0.95, (requests, elapsed)


def test_cli_serial_scan_refuses_a_missing_port_and_a_bad_baud_rate(capsys: pytest.CaptureFixture[str]) -> None:
    from zapd.cli import build_parser

    def run(*argv: str) -> int:  # the command itself; main() would also reconfigure logging for the session
        args = build_parser().parse_args(["devices", "scan", *argv])
        return int(args.func(args))

    assert run("--serial", "/dev/zapd-no-such-port", "--unit", "3") == 2
    assert "does not exist" in capsys.readouterr().err
    assert run("--serial", "/dev/null", "--baud", "1234") == 2
    assert "baud rate 1234" in capsys.readouterr().err


async def test_meter_map_auto_recognises_its_profile_at_start(tmp_path: Path) -> None:
    """`driver = "modbus_meter_tcp"`, `map = "auto"`: the daemon's builder makes a meter that names the
    SDM72D-M-2 by its meter code, then reads it through that profile; only reads reach the device."""
    import asyncio
    import contextlib

    from drivers.modbus.auto_profile import AutoProfileMeter
    from zapd.clock import SystemClock
    from zapd.config import load_config
    from zapd.devices import build_devices
    from zapd.model import POWER_W, DerKind, Reading

    fixture = _fixture("eastron_sdm72")
    assert fixture is not None
    async with over_tcp(fixture) as (server, _bus):
        path = tmp_path / "zapd.toml"
        path.write_text(
            '[site]\nid = "home"\nfuse_a = 25\n\n[[devices]]\ndriver = "modbus_meter_tcp"\nid = "grid"\n'
            f'host = "{server.host}"\nport = {server.port}\nmap = "auto"\npoll_s = 0.2\n'
        )
        devices = build_devices(load_config(path), SystemClock())
        assert devices.kinds == {"grid": DerKind.METER}
        (meter,) = devices.drivers
        assert isinstance(meter, AutoProfileMeter) and meter.capabilities() == []
        got: asyncio.Future[Reading] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(meter.run(lambda r: got.done() or got.set_result(r)))
        try:
            async with asyncio.timeout(5):
                reading = await got
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert meter.profile == "eastron_sdm72"
        assert reading.der_id == "grid" and reading.values[POWER_W] == pytest.approx(fixture["meter"]["power_w"])
        assert server.writes == []


async def test_meter_map_auto_on_a_battery_is_a_configuration_error() -> None:
    """A Sungrow SH image under a meter's `map = "auto"`: no meter profile fits; the health record says so."""
    import asyncio
    import contextlib

    from drivers.health import HealthState
    from drivers.modbus.auto_profile import AutoProfileMeter
    from zapd.clock import SystemClock

    fixture = _fixture("sungrow_sh")
    assert fixture is not None
    async with over_tcp(fixture) as (server, bus):
        meter = AutoProfileMeter(
            device_id="m",
            bus=bus,
            unit_id=1,
            clock=SystemClock(),
            make=lambda rmap: None,
            retry_s=30.0,  # type: ignore[arg-type,return-value]
        )
        task = asyncio.create_task(meter.run(lambda r: None))
        try:
            await wait_until(lambda: meter.health.view().state is HealthState.UNUSABLE, 2.0, "an unusable meter")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        view = meter.health.view()
        assert view.state is HealthState.UNUSABLE and "no meter profile" in view.reason and "sungrow_sh" in view.reason
        assert meter.inner is None and server.writes == []
