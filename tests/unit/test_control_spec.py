"""The `[control]` vocabulary refuses inconsistent profiles at load time, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.modbus.register_map import MAPS_DIR, RegisterMapError, load_register_map

# The battery/hybrid profiles issue 12 asks control for (the meters and chargers have none).
BATTERY_PROFILES_WITH_CONTROL = (
    "sungrow_sh",
    "huawei_sun2000_luna2000",
    "victron_gx_ess",
    "solaredge_storedge",
    "goodwe_et",
    "deye_sunsynk_3p",
    "kostal_plenticore",
    "alpha_ess_smile",
    "solis_hybrid",
    "fox_ess_h3",
    "growatt_sph",
    "growatt_tl_xh",
)

_FIELDS = """
[fields.battery_soc]
address = 0
table = "input"
type = "u16"
unit = "%"
[fields.battery_power]
address = 1
table = "input"
type = "s16"
unit = "W"
[fields.mode]
address = 10
table = "holding"
type = "u16"
writable = true
[fields.cmd]
address = 11
table = "holding"
type = "u16"
writable = true
[fields.power]
address = 12
table = "holding"
type = "u16"
unit = "W"
writable = true
[fields.grid]
address = 2
table = "input"
type = "s16"
unit = "W"
[fields.enable]
address = 400
table = "coil"
type = "bool"
writable = true
"""


_DISPATCH = (
    'style = "dispatch"\nsetpoint = "power"\nsoc_target = "cmd"\nduration = "mode"\nduration_s = 300\n'
    'activate = [{field = "mode", value = 2}]'
)
_RATE_SLOT = (
    'style = "rate_slot"\nrate_reference = "grid"\ncharge_rate = "cmd"\ndischarge_rate = "power"\n'
    'charge_soc = "mode"\ndischarge_soc = "mode"\ncharge_writes = [{field = "mode", value = 1}]\n'
    'discharge_writes = [{field = "mode", value = 2}]'
)


def _load(tmp_path: Path, control: str) -> object:
    p = tmp_path / "m.toml"
    p.write_text(f'[device]\nname = "t"\n[control]\n{control}\n{_FIELDS}')
    return load_register_map(p).control


def test_direction_magnitude_parses(tmp_path: Path) -> None:
    spec = _load(
        tmp_path,
        'style = "direction_magnitude"\ndirection = "cmd"\ncharge_value = 1\ndischarge_value = 2\n'
        'idle_value = 0\ncharge_power = "power"\ndischarge_power = "power"\n'
        'enter = [{field = "mode", value = 2}]\nmode_field = "mode"',
    )
    assert spec is not None


@pytest.mark.parametrize(
    ("control", "message"),
    [
        ('style = "pulse"', "control.style must be one of"),
        ('style = "signed_setpoint"', "needs control.setpoint"),
        ('style = "signed_setpoint"\nsetpoint = "grid"', "must be writable"),
        ('style = "signed_setpoint"\nsetpoint = "nope"', "not declared"),
        (
            'style = "direction_magnitude"\ndirection = "cmd"\ncharge_power = "power"\ndischarge_power = "power"',
            "must differ",
        ),
        ('style = "grid_setpoint"\nsetpoint = "power"', "needs control.grid_power"),
        ('style = "signed_setpoint"\nsetpoint = "power"\nmode_field = "mode"', "must be one of the `enter` writes"),
        ('style = "signed_setpoint"\nsetpoint = "power"\nrevert = "release"', "needs control.release"),
        ('style = "signed_setpoint"\nsetpoint = "power"\ntimeout_s = 30', "go together"),
        ('style = "signed_setpoint"\nsetpoint = "power"\nkeepalive_s = -1', "keepalive_s must be in"),
        ('style = "signed_setpoint"\nsetpoint = "power"\nenter = [{field = "mode", value = -1}]', "raw register"),
        ('style = "signed_setpoint"\nsetpoint = "power"\nbogus = 1', "unknown key"),
        ('style = "tou_slot"\nslot_power = "power"\nslot_soc = "cmd"', "needs control.slot_charge"),
        (
            'style = "tou_slot"\nslot_power = "power"\nslot_soc = "cmd"\nslot_charge = "mode"\nslot_charge_on = 0',
            "slot_charge_on and slot_charge_off must differ",
        ),
        ('style = "tou_slot"\nslot_power = "power"\nslot_soc = "grid"\nslot_charge = "mode"', "must be writable"),
        ('style = "signed_setpoint"\nsetpoint = "power"\nenter = [{field = "enable", value = 2}]', "takes 0 or 1"),
        ('style = "dispatch"\nsetpoint = "power"\nsoc_target = "cmd"\nduration = "mode"', "needs control.duration_s"),
        (_DISPATCH.replace('activate = [{field = "mode", value = 2}]', ""), "needs control.activate"),
        (_DISPATCH + "\nkeepalive_s = 600", "must be shorter than duration_s"),
        (_DISPATCH.replace("duration_s = 300", "duration_s = 0"), "duration_s must be in"),
        (_DISPATCH.replace('soc_target = "cmd"', 'soc_target = "grid"'), "must be writable"),
        ('style = "signed_setpoint"\nsetpoint = "power"\nduration_s = 60', "belong to style 'dispatch'"),
        ('style = "signed_setpoint"\nsetpoint = "power"\ndirection_first = true', "direction_magnitude' only"),
        (_RATE_SLOT.replace('rate_reference = "grid"\n', ""), "needs control.rate_reference"),
        (_RATE_SLOT.replace('discharge_writes = [{field = "mode", value = 2}]', ""), "needs control.charge_writes"),
        (_RATE_SLOT.replace('charge_rate = "cmd"', 'charge_rate = "grid"'), "must be writable"),
        ('style = "signed_setpoint"\nsetpoint = "power"\ncharge_rate = "cmd"', "belong to style 'rate_slot'"),
        (
            'style = "direction_magnitude"\ndirection = "cmd"\ncharge_value = 1\ndischarge_value = 2\n'
            'charge_power = "power"\ndischarge_power = "power"\ndirection_first = "yes"',
            "direction_first must be true or false",
        ),
    ],
)
def test_inconsistent_control_is_refused(tmp_path: Path, control: str, message: str) -> None:
    with pytest.raises(RegisterMapError, match=message):
        _load(tmp_path, control)


def test_rate_slot_parses(tmp_path: Path) -> None:
    spec = _load(tmp_path, _RATE_SLOT)
    assert spec is not None and spec.style == "rate_slot"  # type: ignore[attr-defined]
    assert "grid" in spec.read_fields() and {"cmd", "power", "mode"} <= spec.written_fields()  # type: ignore[attr-defined]


def test_tou_slot_parses(tmp_path: Path) -> None:
    spec = _load(
        tmp_path,
        'style = "tou_slot"\nslot_power = "power"\nslot_soc = "cmd"\nslot_charge = "mode"\n'
        'enter = [{field = "mode", value = 255}]\nmode_field = "mode"\nrevert = "release"\n'
        'release = [{field = "mode", value = 0}]',
    )
    assert spec is not None and spec.style == "tou_slot" and spec.slot_charge_on == 1 and spec.slot_charge_off == 0
    assert {"power", "cmd", "mode"} <= spec.written_fields()  # type: ignore[attr-defined]


def test_dispatch_parses_with_keepalive_half_the_duration(tmp_path: Path) -> None:
    spec = _load(tmp_path, _DISPATCH)
    assert spec is not None and spec.style == "dispatch"  # type: ignore[attr-defined]
    assert spec.keepalive_s == 150.0 and spec.duration_s == 300.0  # type: ignore[attr-defined]
    assert {"power", "cmd", "mode"} <= spec.written_fields()  # type: ignore[attr-defined]


def test_shipped_profiles_with_control_cite_two_sources() -> None:
    """Every shipped vendor profile (each file in the maps folder, so one added later is covered too)
    names its document and a second, independent source its addresses were checked against; the
    battery profiles among them carry control. Only the simulator's own map has no vendor to cite."""
    names = sorted(p.stem for p in MAPS_DIR.glob("*.toml") if p.stem != "sim_hybrid")
    assert len(names) >= 26, names
    missing = [n for n in names if not ((rmap := load_register_map(n)).source and rmap.cross_check)]
    assert missing == []
    for name in BATTERY_PROFILES_WITH_CONTROL:
        assert load_register_map(name).control is not None, name


def test_coil_enable_in_a_mode_sequence_parses(tmp_path: Path) -> None:
    spec = _load(
        tmp_path,
        'style = "signed_setpoint"\nsetpoint = "power"\nenter = [{field = "enable", value = 1}]\n'
        'revert = "release"\nrelease = [{field = "enable", value = 0}]',
    )
    assert spec is not None


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ('address = 400\ntable = "coil"\ntype = "u16"', "a coil is type 'bool'"),
        ('address = 400\ntable = "holding"\ntype = "bool"', "a coil is type 'bool'"),
    ],
)
def test_coil_fields_must_be_bool(tmp_path: Path, field: str, message: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(f'[device]\nname = "t"\n[fields.enable]\n{field}\n')
    with pytest.raises(RegisterMapError, match=message):
        load_register_map(p)


def test_ev_enable_must_be_a_writable_coil(tmp_path: Path) -> None:
    from drivers.modbus.ev_charger import ev_profile

    p = tmp_path / "ev.toml"
    fields = '[fields.ev_state]\naddress = 1\ntable = "input"\ntype = "u16"\n'
    p.write_text(f'[device]\nname = "t"\n[ev]\nenable = "ev_state"\n{fields}')
    with pytest.raises(RegisterMapError, match=r"ev\.enable must name a writable coil"):
        ev_profile(load_register_map(p))


@pytest.mark.parametrize(
    ("ev", "message"),
    [
        ('heartbeat = "ev_state"', r"ev\.heartbeat must name a writable register"),
        ('heartbeat = "beat"\nheartbeat_value = -1', r"ev\.heartbeat_value must be a raw register value"),
    ],
)
def test_ev_heartbeat_must_be_a_writable_register(tmp_path: Path, ev: str, message: str) -> None:
    from drivers.modbus.ev_charger import ev_profile

    p = tmp_path / "ev.toml"
    fields = (
        '[fields.ev_state]\naddress = 1\ntable = "input"\ntype = "u16"\n'
        '[fields.beat]\naddress = 4000\ntable = "holding"\ntype = "u16"\nwritable = true\n'
    )
    p.write_text(f'[device]\nname = "t"\n[ev]\n{ev}\n{fields}')
    with pytest.raises(RegisterMapError, match=message):
        ev_profile(load_register_map(p))


def test_pv_total_and_pv_strings_together_are_refused(tmp_path: Path) -> None:
    """A profile gives the PV total or one field per MPPT string (summed), never both: one would be ignored."""
    from typing import cast

    from drivers.modbus.bus import ModbusBus
    from drivers.modbus.hybrid_inverter import ModbusHybridInverter
    from zapd.clock import SystemClock

    pv = '[fields.pv_power]\naddress = 20\ntable = "input"\ntype = "u16"\n'
    pv1 = '[fields.pv_power_1]\naddress = 21\ntable = "input"\ntype = "u16"\n'
    p = tmp_path / "pv.toml"
    p.write_text(f'[device]\nname = "t"\n{_FIELDS}{pv}{pv1}')
    with pytest.raises(RegisterMapError, match=r"pv_power or pv_power_1\.\.N, not both"):
        ModbusHybridInverter(
            device_id="d",
            bus=cast(ModbusBus, None),
            unit_id=1,
            register_map=load_register_map(p),
            poll_s=1.0,
            clock=SystemClock(),
        )
