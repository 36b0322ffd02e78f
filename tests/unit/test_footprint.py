"""zapd imports what the site's config asks for and nothing else (issue 15, footprint).

Each check runs in a fresh interpreter: the test process itself has imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "dsmr"

# What a site without a cloud, MQTT, OCPP, Home Assistant or an encrypted meter must not load.
HEAVY_FOR_A_PLAIN_SITE = (
    "cryptography",  # dsmr_parser's DLMS decryption (encrypted meters only)
    "dlms_cosem",
    "asn1crypto",
    "serialx",  # dsmr_parser's own serial client; zapd has its own transport
    "httpx",  # the cloud link only
    "anyio",
    "aiomqtt",  # MQTT devices and Home Assistant only
    "paho",
    "ocpp",  # OCPP chargers only
    "websockets",
    "click",  # httpx's command-line client
    "pygments",
    "greenlet",  # structlog's probe; comes with the cloud's SQLAlchemy
    "importlib.metadata",  # pydantic's plugin scan, websockets' version module
    "zipfile",
    # The config is checked by the pydantic models in a child (zapd/config_load.py): the daemon runs on
    # the msgspec Structs generated from them (docs/decisions.md, footprint).
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "zapd.config",
    "zapd.config_check",
    "drivers.config_base",
    "drivers.registry",
    "drivers.p1.config",
    "drivers.modbus.config",
    "drivers.mqtt.config",
    "drivers.ocpp.config",
    "difflib",  # the check's "did you mean"
    "zapd.homeassistant",
    "cloud",
    "cloud_sync.session",
)

# The daemon as `zapd run` starts it; once its API socket is up, a thread records sys.modules and
# stops it with SIGTERM (the daemon's own shutdown path).
RUNNER = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    from pathlib import Path
    from zapd import cli

    sock, out = Path(sys.argv[2]), Path(sys.argv[3])

    def watch():
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        out.write_text(json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()
    sys.exit(cli.main(["run", "--config", sys.argv[1]]))
    """
)


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )


def _modules_of_zapd_run(tmp_path: Path, device_id: str, driver: str, extra: str = "") -> set[str]:
    """sys.modules of a `zapd run` (no cloud, metrics on) with one TCP device, once its API is up."""
    config = tmp_path / "zapd.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [site]
            id = "footprint-test"
            fuse_a = 25
            [store]
            state_dir = "{tmp_path / "state"}"
            [api]
            socket = "{tmp_path / "zapd.sock"}"
            [metrics]
            port = {free_port()}
            [[devices]]
            id = "{device_id}"
            driver = "{driver}"
            host = "127.0.0.1"
            port = {free_port()}
            """
        )
        + extra
    )
    out = tmp_path / "modules.json"
    res = _run(RUNNER, str(config), str(tmp_path / "zapd.sock"), str(out))
    assert out.exists(), res.stderr[-3000:]
    assert res.returncode == 0, res.stderr[-3000:]
    return set(json.loads(out.read_text()))


def _present(heavy: set[str], loaded: set[str]) -> list[str]:
    return sorted(m for m in heavy if m in loaded or any(k.startswith(m + ".") for k in loaded))


def test_zapd_run_with_a_plain_meter_and_no_cloud_leaves_the_heavy_modules_out(tmp_path: Path) -> None:
    loaded = _modules_of_zapd_run(tmp_path, "meter", "p1_tcp")
    assert "drivers.p1.dsmr" in loaded and "zapd.config_structs" in loaded  # it did build the site
    heavy = set(HEAVY_FOR_A_PLAIN_SITE) | {"pymodbus", "serial_asyncio"}  # no Modbus device, a TCP meter
    assert _present(heavy, loaded) == []


# What a site of fixed-map Modbus inverters does not use: recognition (`map = "auto"`, SunSpec
# scans and their model catalogue) and the other Modbus kinds' drivers.
MODBUS_NOT_FOR_A_FIXED_MAP = (
    "drivers.modbus.sunspec",
    "drivers.modbus.sunspec_models",
    "drivers.modbus.auto_profile",
    "drivers.modbus.recognize",
    "drivers.modbus.ev_charger",
    "drivers.modbus.map_meter",
)


def test_zapd_run_with_fixed_map_inverters_leaves_recognition_and_other_modbus_kinds_out(tmp_path: Path) -> None:
    loaded = _modules_of_zapd_run(tmp_path, "inverter", "modbus_tcp", 'map = "sim_hybrid"\n')
    assert "drivers.modbus.hybrid_inverter" in loaded and "pymodbus" in loaded  # it did build the inverter
    heavy = set(HEAVY_FOR_A_PLAIN_SITE) | set(MODBUS_NOT_FOR_A_FIXED_MAP)
    assert _present(heavy, loaded) == []


DSMR_CHECK = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime
    from pathlib import Path
    from drivers.p1.dsmr import P1Meter, TcpP1
    from zapd.clock import ManualClock

    CRYPTO = ("cryptography", "dlms_cosem")
    fixtures = Path(sys.argv[1])
    clock = ManualClock(datetime(2026, 6, 1, tzinfo=UTC))
    loaded = lambda: [m for m in CRYPTO if m in sys.modules]

    plain = P1Meter(device_id="grid", transport=TcpP1("127.0.0.1", 1), dsmr_version="5", clock=clock)
    ok = plain._handle((fixtures / "v5_iskra.txt").read_bytes().decode("latin1"), lambda r: None)
    print("RESULT plain", ok, loaded())
    ok = plain._handle("DB08 looks like a cipher frame", lambda r: None)
    print("RESULT hex noise", ok, plain.counters["parse_error"] + plain.counters["bad_crc"])

    from drivers.sim.p1_pty import encrypt_telegram  # imports cryptography itself
    key = "0123456789ABCDEF0123456789ABCDEF"
    frame = encrypt_telegram((fixtures / "lu_smarty.txt").read_bytes(), key).hex().upper()
    meter = P1Meter(device_id="grid", transport=TcpP1("127.0.0.1", 1), dsmr_version="5L",
                    decryption_key=key, clock=clock)
    got = []
    print("RESULT encrypted", meter._handle(frame, got.append), got[0].values["power_w"] if got else None)
    wrong = P1Meter(device_id="grid", transport=TcpP1("127.0.0.1", 1), dsmr_version="5L",
                    decryption_key="00" * 16, clock=clock)
    print("RESULT wrong key", wrong._handle(frame, got.append), wrong.counters["decrypt_error"])
    """
)


def test_plain_meter_never_loads_the_dlms_crypto_and_an_encrypted_one_still_decrypts() -> None:
    res = _run(DSMR_CHECK, str(FIXTURES))
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [line.removeprefix("RESULT ") for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    # v5_iskra.txt's recorded power (tests/fixtures/dsmr/README.md) parsed without any crypto module
    assert lines[0] == "plain True []"
    assert lines[1] == "hex noise False 1"  # counted as a bad telegram, not a crash
    assert lines[2] == "encrypted True -897.0"  # lu_smarty.txt's recorded power, through AES-GCM
    assert lines[3] == "wrong key False 1"  # dlms_cosem's DecryptionError caught as itself
