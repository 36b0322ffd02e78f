"""One grid meter per site (issue 10, item 3): named by `role`, never summed, stale means stale.

The attack: a P1 meter plus a Shelly Pro 3EM (or `has_meter = true` on the inverter) were both
`kind = "meter"`; state added them, doubling the power the fuse and export checks act on, and
one going stale left the other's value and no safe hold.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fallback.policy import Rung, choose
from zapd.clock import SystemClock
from zapd.config import ConfigError, validate_config
from zapd.config_check import check_data
from zapd.devices import build_devices
from zapd.model import PHASE_CURRENT_A, POWER_W, DerKind, Reading
from zapd.state import SiteState

T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)
SITE = {"id": "home", "fuse_a": 25}
P1 = {"driver": "p1_tcp", "id": "meter", "host": "192.0.2.60", "port": 2000}
SHELLY = {"id": "grid", "kind": "meter", "preset": "shelly_em", "source": "shellypro3em-0cb815fc1234"}
MQTT = {"driver": "mqtt", "id": "mq", "host": "192.0.2.10", "ders": [SHELLY]}
FRONIUS = {"driver": "sunspec_tcp", "id": "fronius", "host": "192.0.2.55", "has_meter": True}


def config(*devices: dict[str, Any]) -> dict[str, Any]:
    return {"site": SITE, "devices": list(devices)}


def lines(*devices: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate_config(config(*devices), "z.toml")
    return err.value.lines


def test_p1_and_a_shelly_both_grid_is_an_error_naming_both() -> None:
    (line,) = lines(P1, MQTT)
    assert line.startswith("z.toml: devices.mq.ders.grid.role: a second grid meter:"), line
    assert "'meter'" in line and "'mq.grid'" in line


def test_p1_and_an_inverter_meter_is_an_error_naming_both() -> None:
    (line,) = lines(P1, FRONIUS)
    assert line.startswith("z.toml: devices.fronius.meter_role: a second grid meter:"), line
    assert "'meter'" in line and "'fronius.meter'" in line


def test_a_second_meter_with_another_role_is_fine() -> None:
    shelly = {**MQTT, "ders": [{**SHELLY, "role": "submeter"}]}
    cfg = validate_config(config(P1, shelly, {**FRONIUS, "meter_role": "pv"}), "z.toml")
    assert cfg.grid_meter == "meter"
    assert build_devices(cfg, SystemClock()).grid_meter == "meter"


@pytest.mark.parametrize(
    ("devices", "grid"),
    [((P1,), "meter"), ((MQTT,), "mq.grid"), ((FRONIUS,), "fronius.meter")],
)
def test_a_lone_meter_is_the_grid_meter_by_default(devices: tuple[dict[str, Any], ...], grid: str) -> None:
    assert validate_config(config(*devices), "z.toml").grid_meter == grid


def test_role_only_on_meters() -> None:
    pv = {"id": "pv", "kind": "pv", "preset": "opendtu", "source": "solar/1", "role": "grid"}
    assert any("role is for kind = 'meter' only" in line for line in lines(P1, {**MQTT, "ders": [pv]}))
    assert any(
        "meter_role needs has_meter" in line for line in lines(P1, {**FRONIUS, "has_meter": False, "meter_role": "pv"})
    )


def test_an_unknown_role_gets_a_did_you_mean() -> None:
    (line,) = lines({**P1, "role": "gird"})
    assert line.startswith("z.toml: devices.meter.role: input should be 'grid'"), line
    assert line.endswith("did you mean 'grid'?")


def test_no_grid_meter_is_a_warning_and_strict_makes_it_an_error(tmp_path: Path) -> None:
    shelly = {**MQTT, "ders": [{**SHELLY, "role": "submeter"}]}
    result = check_data(config(shelly), "z.toml")
    assert result.config is not None and result.errors == []
    assert [w for w in result.warnings if w.startswith("z.toml: devices: warning: no grid meter")], result.warnings
    path = tmp_path / "z.toml"
    path.write_text(
        '[site]\nid = "home"\nfuse_a = 25\n[[devices]]\ndriver = "p1_tcp"\nid = "m"\nhost = "192.0.2.1"\n'
        'port = 2000\nrole = "submeter"\n'
    )
    cmd = [sys.executable, "-m", "zapd.cli", "config", "check"]
    ok = subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "warning: no grid meter" in ok.stderr
    strict = subprocess.run([*cmd, "--strict", str(path)], capture_output=True, text=True, timeout=60)
    assert strict.returncode == 2 and f"{path}: devices: warning: no grid meter" in strict.stderr


def meter(der_id: str, ts: datetime, power: float, currents: tuple[float, float, float]) -> Reading:
    values = {POWER_W: power} | dict(zip(PHASE_CURRENT_A, currents, strict=True))
    return Reading(der_id=der_id, kind=DerKind.METER, ts=ts, values=values)


def two_meter_state() -> SiteState:
    state = SiteState(grid_meter="meter")
    state.register("meter", DerKind.METER, poll_s=1.0)
    state.register("mq.heat_pump", DerKind.METER, poll_s=20.0)
    return state


def test_grid_power_and_currents_come_from_the_grid_meter_only() -> None:
    state = two_meter_state()
    state.update(meter("meter", T0, 3000.0, (5.0, 4.0, 4.0)))
    state.update(meter("mq.heat_pump", T0, 2500.0, (11.0, 0.0, 0.0)))
    snap = state.snapshot(T0 + timedelta(seconds=1))
    assert snap.grid_w == 3000.0  # not 5500: a sub-meter is part of what the grid meter sees
    assert snap.phase_currents_a == (5.0, 4.0, 4.0)


def test_a_stale_grid_meter_is_stale_even_with_a_fresh_other_meter() -> None:
    state = two_meter_state()
    state.update(meter("meter", T0, 3000.0, (5.0, 4.0, 4.0)))
    later = T0 + timedelta(seconds=10)  # > 3 telegram intervals of the grid meter
    state.update(meter("mq.heat_pump", later, 2500.0, (11.0, 0.0, 0.0)))
    snap = state.snapshot(later)
    assert snap.grid_w is None and snap.phase_currents_a is None
    assert choose(later, None, True, snap).rung is Rung.SAFE_HOLD


def test_without_a_named_grid_meter_two_meters_are_unknown_never_summed() -> None:
    state = SiteState()
    state.update(meter("a", T0, 1000.0, (1.0, 1.0, 1.0)))
    state.update(meter("b", T0, 2000.0, (2.0, 2.0, 2.0)))
    assert state.snapshot(T0).grid_w is None
    lone = SiteState()
    lone.update(meter("a", T0, 1000.0, (1.0, 1.0, 1.0)))
    assert lone.snapshot(T0).grid_w == 1000.0  # one meter and no config: it is the grid meter


def test_the_cloud_is_told_which_meter_is_the_grid_meter(tmp_path: Path) -> None:
    """The DER capabilities the Zap uploads carry each meter's role, and the cloud's wire decoder keeps it."""
    import msgspec

    from cloud_sync.wire import WireError, decode_discovery
    from zapd.daemon import Daemon

    shelly = {**MQTT, "ders": [{**SHELLY, "role": "submeter"}]}
    cfg = validate_config({**config(P1, shelly), "store": {"state_dir": str(tmp_path)}}, "z.toml")
    caps = Daemon(cfg, SystemClock())._capabilities()
    roles = {c.der_id: c.role for c in caps if c.kind is DerKind.METER}
    assert roles == {"meter": "grid", "mq.grid": "submeter"}
    body = msgspec.json.encode({"site_id": "home", "ders": caps})
    assert {d.der_id: d.role for d in decode_discovery(body).ders if d.kind is DerKind.METER} == roles
    bad = body.replace(b'"submeter"', b'"boss"')
    with pytest.raises(WireError, match="malformed"):
        decode_discovery(bad)


finite_w = st.floats(-50_000, 50_000, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    grid=st.tuples(finite_w, st.floats(0, 30)),  # (power, age in s)
    others=st.lists(st.tuples(finite_w, st.floats(0, 30)), max_size=4),
    poll_s=st.floats(0.5, 5),
)
def test_grid_power_is_the_fresh_grid_meters_or_unknown_whatever_other_meters_say(
    grid: tuple[float, float], others: list[tuple[float, float]], poll_s: float
) -> None:
    now = T0 + timedelta(seconds=60)
    state = SiteState(grid_meter="meter")
    state.register("meter", DerKind.METER, poll_s=poll_s)
    state.update(meter("meter", now - timedelta(seconds=grid[1]), grid[0], (1.0, 2.0, 3.0)))
    for i, (power, age) in enumerate(others):
        state.register(f"sub{i}", DerKind.METER, poll_s=poll_s)
        state.update(meter(f"sub{i}", now - timedelta(seconds=age), power, (9.0, 9.0, 9.0)))
    snap = state.snapshot(now)
    if state.is_fresh("meter", now):
        assert snap.grid_w == grid[0] and snap.phase_currents_a == (1.0, 2.0, 3.0)
    else:
        assert snap.grid_w is None and snap.phase_currents_a is None
        assert choose(now, None, True, snap).rung is Rung.SAFE_HOLD
