"""Recognition: the identification probes find each profile in its vendor-document image, over TCP,
never write, and do not claim a profile whose registers are not there."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from drivers.modbus.bus import close_all_buses, get_tcp_bus
from drivers.modbus.recognize import identification_probes, recognize
from drivers.sim.register_image import start_register_image

FIXTURES = Path(__file__).parent.parent / "fixtures" / "devices"
RECOGNIZABLE = [
    (p.stem, doc) for p in sorted(FIXTURES.glob("*.toml")) if "recognized_as" in (doc := tomllib.loads(p.read_text()))
]


def _image(fixture: dict[str, Any]) -> dict[int, dict[str, dict[int, int]]]:
    units: dict[int, dict[str, dict[int, int]]] = {}
    for block in fixture["image"]:
        table = units.setdefault(block["unit"], {}).setdefault(block["table"], {})
        for i, value in enumerate(block["values"]):
            table[block["address"] + i] = value
    return units


@pytest.mark.parametrize(("name", "fixture"), RECOGNIZABLE, ids=[n for n, _ in RECOGNIZABLE])
async def test_recognize_finds_the_profile_and_only_it(name: str, fixture: dict[str, Any]) -> None:
    server = await start_register_image(_image(fixture))
    try:
        bus = get_tcp_bus(server.host, server.port, timeout_s=0.5, backoff_initial_s=0.05, max_requests_per_s=200)
        found = await recognize(bus, fixture["unit_id"])
        assert [m.profile for m in found if m.profile] == [fixture["recognized_as"]], name
        match = next(m for m in found if m.profile)
        assert match.capabilities and match.evidence
        assert f'map = "{fixture["recognized_as"]}"' in match.snippet(server.host, server.port)
        assert server.writes == []  # probes are read-only
    finally:
        await close_all_buses()
        await server.stop()


def test_every_shipped_identify_table_is_valid() -> None:
    names = {p.profile for p in identification_probes()}
    assert {"sungrow_sh", "huawei_sun2000_luna2000", "solaredge_storedge", "eastron_sdm630", "victron_gx_ess"} <= names


async def test_cli_scan_host_prints_profile_and_snippet(capsys: pytest.CaptureFixture[str]) -> None:
    from zapd.recognize_cli import scan_host

    fixture = dict(RECOGNIZABLE)["sungrow_sh"]
    server = await start_register_image(_image(fixture))
    try:
        rc = await scan_host(f"{server.host}:{server.port}", unit_ids=[1], as_json=True)
    finally:
        await close_all_buses()
        await server.stop()
    text = capsys.readouterr().out  # structlog lines come first; the JSON array is printed whole
    out, _ = json.JSONDecoder().raw_decode(text[text.index("[\n") :])
    assert rc == 0 and out[0]["profile"] == "sungrow_sh" and 'map = "sungrow_sh"' in out[0]["config"]
