"""Recognition against every profile in the maps folder, so a profile added later is covered too.

For each profile file: a profile with an `[identify]` table must have a vendor-document fixture
(tests/fixtures/devices/<name>.toml), and recognition over Modbus-TCP against that fixture's image
must name exactly that profile; a profile without one must not be claimed by any other profile's
probes in its own image (no false positives). Every scan is read-only: the peer records writes.
The serial scan (`zapd devices scan --serial`) runs over Modbus RTU on a pty.
"""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.bus import close_all_buses, get_tcp_bus
from drivers.modbus.recognize import recognize
from drivers.modbus.register_map import MAPS_DIR
from drivers.sim.modbus_rtu import NullModem
from drivers.sim.register_image import fixture_units, start_register_image
from tests.integration.profile_peers import over_tcp, rtu_peer

FIXTURES = Path(__file__).parent.parent / "fixtures" / "devices"
PROFILES = sorted(MAPS_DIR.glob("*.toml"))


def _fixture(name: str) -> dict[str, Any] | None:
    path = FIXTURES / f"{name}.toml"
    return tomllib.loads(path.read_text()) if path.is_file() else None


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
async def test_every_profile_is_recognised_in_its_own_image(path: Path) -> None:
    name = path.stem
    has_identify = "identify" in tomllib.loads(path.read_text())  # noqa: ASYNC240 - a small local file
    fixture = _fixture(name)
    if fixture is None:
        assert not has_identify, f"{name} has an [identify] table but no fixture in {FIXTURES} to prove it"
        pytest.skip(f"{name}: no [identify] and no vendor-document fixture: nothing to recognise it by")
    async with over_tcp(fixture) as (server, bus):
        found = await recognize(bus, fixture["unit_id"])
    claimed = [m.profile for m in found if m.profile]
    if has_identify:
        assert claimed == [name], f"{name}: recognition found {claimed}"
        match = next(m for m in found if m.profile)
        assert match.capabilities and match.evidence
        snippet = match.snippet({"host": server.host, "port": server.port})
        assert f'map = "{name}"' in snippet and f'driver = "{match.driver}"' in snippet
    else:
        assert claimed == [], f"{name} has no [identify], yet its image was claimed by {claimed}"
    assert server.writes == [], "recognition must only read"


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


RTU_RECOGNISABLE = [
    p.stem for p in PROFILES if "identify" in tomllib.loads(p.read_text()) and "rtu" in (_fixture(p.stem) or {})
]


@pytest.mark.parametrize("name", RTU_RECOGNISABLE)
async def test_serial_scan_recognises_rs485_devices_and_writes_nothing(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`zapd devices scan --serial PORT --baud B --unit N` over Modbus RTU (pymodbus's RTU server on a pty)."""
    from zapd.recognize_cli import scan_serial

    fixture = _fixture(name)
    assert fixture is not None
    line = fixture["rtu"]
    async with rtu_peer(fixture) as (server, port):
        capsys.readouterr()
        rc = await scan_serial(
            port,
            unit_ids=[fixture["unit_id"]],
            baudrate=line["baudrate"],
            parity=line["parity"],
            stopbits=line["stopbits"],
            as_json=True,
            timeout_s=0.3,
        )
    text = capsys.readouterr().out
    rows, _ = json.JSONDecoder().raw_decode(text[text.index("[\n") :])  # after structlog's lines
    assert rc == 0
    assert [r["profile"] for r in rows if r["profile"]] == [name]
    row = next(r for r in rows if r["profile"])
    assert row["driver"].endswith("_rtu") or row["driver"] == "modbus_ev", row["driver"]
    snippet = tomllib.loads(row["config"])["devices"][0]
    assert snippet["port"] == port and snippet["baudrate"] == line["baudrate"] and snippet["map"] == name
    assert "host" not in snippet
    assert server.writes == [], "a serial scan must only read"


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
    from drivers.modbus.bus import ModbusBus
    from zapd import recognize_cli

    buses: list[ModbusBus] = []

    def recording_bus(*args: Any, **kwargs: Any) -> ModbusBus:
        buses.append(get_tcp_bus(*args, **kwargs))
        return buses[-1]

    monkeypatch.setattr(recognize_cli, "get_tcp_bus", recording_bus)
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
            for _ in range(100):
                if meter.health.view().state is HealthState.UNUSABLE:
                    break
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        view = meter.health.view()
        assert view.state is HealthState.UNUSABLE and "no meter profile" in view.reason and "sungrow_sh" in view.reason
        assert meter.inner is None and server.writes == []
