"""Register maps: decoding/encoding of every data type, scaling, and load errors that point at the culprit."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.register_map import (
    MAPS_DIR,
    DataType,
    Field,
    RegisterMapError,
    Table,
    load_register_map,
)


def fld(dtype: DataType, **kw: object) -> Field:
    return Field(name="f", address=0, table=Table.HOLDING, dtype=dtype, **kw)  # type: ignore[arg-type]


# ---- decoding ----


@pytest.mark.parametrize(
    ("dtype", "word_order", "registers", "expected"),
    [
        (DataType.U16, "big", [0xFFFF], 65535),
        (DataType.U16, "big", [0x0000], 0),
        (DataType.S16, "big", [0xFFFF], -1),
        (DataType.S16, "big", [0x8000], -32768),
        (DataType.S16, "big", [0x7FFF], 32767),
        (DataType.U32, "big", [0x0001, 0x0000], 65536),
        (DataType.U32, "little", [0x0000, 0x0001], 65536),
        (DataType.U32, "big", [0xFFFF, 0xFFFF], 4294967295),
        (DataType.S32, "big", [0xFFFF, 0xFFFE], -2),
        (DataType.S32, "little", [0xFFFE, 0xFFFF], -2),
        (DataType.S32, "big", [0x8000, 0x0000], -(2**31)),
        (DataType.FLOAT32, "big", [0x4049, 0x0FDB], math.pi),
        (DataType.FLOAT32, "little", [0x0FDB, 0x4049], math.pi),
        (DataType.FLOAT32, "big", [0xC2F6, 0xE979], -123.456),
    ],
)
def test_decode_each_type(dtype: DataType, word_order: str, registers: list[int], expected: float) -> None:
    f = fld(dtype, word_order=word_order)
    assert f.count == len(registers)
    assert f.decode(registers) == pytest.approx(expected, rel=1e-6)


def test_decode_wrong_register_count() -> None:
    with pytest.raises(ValueError, match="2 register"):
        fld(DataType.U32).decode([1])


@pytest.mark.parametrize(
    ("kw", "registers", "sf", "expected"),
    [
        ({"scale": 0.1, "unit": "%"}, [500], None, 0.5),  # 50.0 % -> SoC fraction
        ({"scale": 10.0, "unit": "W"}, [123], None, 1230.0),
        ({"unit": "kW"}, [3], None, 3000.0),
        ({"unit": "kWh", "scale": 0.01}, [1000], None, 10_000.0),
        ({"scale_factor": "sf", "unit": "W"}, [12345], -1, 1234.5),
        ({"scale_factor": "sf", "unit": "W"}, [12345], 2, 1_234_500.0),
        ({"scale_factor": "sf", "scale": 0.5}, [10], 1, 50.0),  # both: multiplier and exponent
        ({"invert": True, "unit": "W"}, [800], None, -800.0),
    ],
)
def test_scaling(kw: dict[str, object], registers: list[int], sf: int | None, expected: float) -> None:
    f = fld(DataType.U16, **kw)
    assert f.decode(registers, sf) == pytest.approx(expected)
    assert f.decode(f.encode(expected, sf), sf) == pytest.approx(expected)


def test_scale_factor_value_is_required() -> None:
    with pytest.raises(ValueError, match="scale factor"):
        fld(DataType.S16, scale_factor="sf").decode([1])


def test_signed_scale_factor_with_inversion_round_trips() -> None:
    f = fld(DataType.S32, scale_factor="sf", invert=True, unit="W")
    regs = f.encode(-1500.5, -1)
    assert f.decode_raw_int(regs) == 15005
    assert f.decode(regs, -1) == pytest.approx(-1500.5)


# ---- encoding ----


@pytest.mark.parametrize(
    ("dtype", "value", "registers"),
    [
        (DataType.U16, 65535, [0xFFFF]),
        (DataType.S16, -1, [0xFFFF]),
        (DataType.U32, 65536, [0x0001, 0x0000]),
        (DataType.S32, -2, [0xFFFF, 0xFFFE]),
        (DataType.FLOAT32, -123.456, [0xC2F6, 0xE979]),
    ],
)
def test_encode_each_type(dtype: DataType, value: float, registers: list[int]) -> None:
    assert fld(dtype).encode(value) == registers
    assert fld(dtype, word_order="little").encode(value) == registers[::-1]


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        (DataType.U16, -1),
        (DataType.U16, 65536),
        (DataType.S16, 32768),
        (DataType.S16, -32769),
        (DataType.U32, -1),
        (DataType.S32, 2**31),
    ],
)
def test_encode_out_of_range_is_refused(dtype: DataType, value: int) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        fld(dtype).encode(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_encode_non_finite_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        fld(DataType.FLOAT32).encode(value)


def test_encode_rounds_to_the_register_resolution() -> None:
    f = fld(DataType.U16, scale=0.1, unit="%")
    assert f.encode(0.5004) == [500]
    assert f.encode(0.5006) == [501]


_INT_BOUNDS = {
    DataType.U16: (0, 2**16 - 1),
    DataType.S16: (-(2**15), 2**15 - 1),
    DataType.U32: (0, 2**32 - 1),
    DataType.S32: (-(2**31), 2**31 - 1),
}


@given(st.sampled_from(sorted(_INT_BOUNDS)), st.data(), st.sampled_from(["big", "little"]))
def test_integer_types_round_trip(dtype: DataType, data: st.DataObject, word_order: str) -> None:
    lo, hi = _INT_BOUNDS[dtype]
    value = data.draw(st.integers(lo, hi))
    f = fld(dtype, word_order=word_order)
    regs = f.encode(value)
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert f.decode(regs) == value


@given(st.floats(width=32, allow_nan=False, allow_infinity=False), st.sampled_from(["big", "little"]))
def test_float32_round_trips(value: float, word_order: str) -> None:
    f = fld(DataType.FLOAT32, word_order=word_order)
    assert f.decode(f.encode(value)) == value


# ---- loading ----


def test_shipped_sim_map_loads_by_name_and_by_path() -> None:
    rmap = load_register_map("sim_hybrid")
    assert rmap.path == MAPS_DIR / "sim_hybrid.toml"
    assert "simulator" in rmap.source
    assert load_register_map(MAPS_DIR / "sim_hybrid.toml").fields == rmap.fields
    assert load_register_map(str(MAPS_DIR / "sim_hybrid.toml")).fields == rmap.fields
    soc = rmap.field("battery_soc")
    assert (soc.table, soc.dtype, soc.scale, soc.unit) == (Table.INPUT, DataType.U16, 0.1, "%")
    assert rmap.field("battery_power").scale_factor == "battery_power_sf"
    assert rmap.field("battery_setpoint").writable and not rmap.field("battery_soc").writable
    assert (rmap.remote_control_on, rmap.remote_control_off) == (1, 0)
    rmap.require("battery_soc", "pv_power", writable=("battery_setpoint", "remote_control"))


def test_every_shipped_map_loads() -> None:
    maps = sorted(MAPS_DIR.glob("*.toml"))
    assert maps
    for path in maps:
        assert load_register_map(path).fields


GOOD_FIELD = 'address = 10\ntable = "holding"\ntype = "u16"\n'


def write_map(tmp_path: Path, body: str, *, header: str = "") -> Path:
    path = tmp_path / "vendor.toml"
    path.write_text(f"{header}\n[fields.ok]\n{GOOD_FIELD}\n{body}")
    return path


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ('[fields.soc]\naddress = 70000\ntable = "input"\ntype = "u16"\n', "soc", "address"),
        ('[fields.soc]\naddress = "12"\ntable = "input"\ntype = "u16"\n', "soc", "address"),
        ('[fields.soc]\naddress = 1\ntable = "discrete"\ntype = "u16"\n', "soc", "table"),
        ('[fields.soc]\naddress = 1\ntable = "input"\ntype = "u128"\n', "soc", "type must be one of"),
        ('[fields.soc]\naddress = 1\ntable = "input"\ntype = "u16"\nscale = 0\n', "soc", "scale"),
        ('[fields.soc]\naddress = 1\ntable = "input"\ntype = "u16"\nunit = "mW"\n', "soc", "unit"),
        ('[fields.soc]\naddress = 1\ntable = "input"\ntype = "u16"\nwritable = "yes"\n', "soc", "writable"),
        ('[fields.soc]\naddress = 1\ntable = "input"\ntype = "u16"\nadress = 2\n', "soc", "unknown key"),
        (
            '[fields.soc]\naddress = 1\ntable = "input"\ntype = "u32"\nword_order = "mid"\n',
            "soc",
            "word_order",
        ),
        ('[fields.soc]\naddress = 65535\ntable = "input"\ntype = "u32"\n', "soc", "runs past"),
        (
            '[fields.p]\naddress = 1\ntable = "input"\ntype = "s16"\nscale_factor = "p_sf"\n',
            "p",
            "not declared",
        ),
        (
            '[fields.p]\naddress = 1\ntable = "input"\ntype = "s16"\nscale_factor = "p_sf"\n'
            '[fields.p_sf]\naddress = 2\ntable = "input"\ntype = "u32"\n',
            "p",
            "plain s16/u16",
        ),
        ('[fields.wide]\naddress = 9\ntable = "holding"\ntype = "s32"\n', "ok", "overlaps field 'wide'"),
        ('[fields.p]\naddress = 1\ntable = "input"\ntype = "u16"\noffset = 70000\n', "p", "offset must be"),
        ('[fields.p]\naddress = 1\ntable = "input"\ntype = "float32"\noffset = 1\n', "p", "offset must be"),
        ('[fields.p]\naddress = 1\ntable = "input"\ntype = "s32"\noffset = 1.5\n', "p", "offset must be"),
    ],
)
def test_load_errors_name_file_and_field(tmp_path: Path, body: str, field: str, reason: str) -> None:
    path = write_map(tmp_path, body)
    with pytest.raises(RegisterMapError) as info:
        load_register_map(path)
    message = str(info.value)
    assert str(path) in message
    assert f"field {field!r}" in message
    assert reason in message


def test_same_address_in_different_tables_is_fine(tmp_path: Path) -> None:
    rmap = load_register_map(write_map(tmp_path, '[fields.other]\naddress = 10\ntable = "input"\ntype = "u16"\n'))
    assert set(rmap.fields) == {"ok", "other"}


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ('[device]\nword_order = "middle"\n', "word_order"),
        ("[control]\nremote_control_on = 1\nremote_control_off = 1\n", "remote_control_on/off"),
    ],
)
def test_map_level_errors_name_the_file(tmp_path: Path, header: str, reason: str) -> None:
    path = write_map(tmp_path, "", header=header)
    with pytest.raises(RegisterMapError, match=reason) as info:
        load_register_map(path)
    assert str(path) in str(info.value)


def test_missing_file_bad_toml_and_empty_map(tmp_path: Path) -> None:
    with pytest.raises(RegisterMapError, match="not found") as info:
        load_register_map("no_such_vendor")
    assert "no_such_vendor.toml" in str(info.value)
    bad = tmp_path / "bad.toml"
    bad.write_text("[fields.x\n")
    with pytest.raises(RegisterMapError, match="not valid TOML") as info:
        load_register_map(bad)
    assert str(bad) in str(info.value)
    empty = tmp_path / "empty.toml"
    empty.write_text("[device]\nname = 'x'\n")
    with pytest.raises(RegisterMapError, match="no \\[fields"):
        load_register_map(empty)


def test_require_names_the_missing_or_read_only_field(tmp_path: Path) -> None:
    path = write_map(tmp_path, "")
    rmap = load_register_map(path)
    with pytest.raises(RegisterMapError, match="'battery_soc' is not declared") as info:
        rmap.require("battery_soc")
    assert str(path) in str(info.value)
    with pytest.raises(RegisterMapError, match="'ok' must be writable"):
        rmap.require(writable=("ok",))


def test_u64_decodes_big_endian_words_with_scale() -> None:
    """ABB B-series energy: U64 in 0.01 kWh, most significant word first (ABB B21/B23/B24 manual)."""
    f = Field(name="e", address=0x5000, table=Table.HOLDING, dtype=DataType.U64, scale=0.01, unit="kWh")
    assert f.count == 4
    # 0x0000_0001_0000_0000 hundredths of a kWh = 2**32 / 100 kWh
    assert f.decode([0, 1, 0, 0]) == pytest.approx(2**32 / 100 * 1000)
    assert f.decode([0, 0, 0x0012, 0xD687]) == pytest.approx(1234567 * 10.0)


def test_an_inverted_float_zero_is_plain_zero_on_the_wire() -> None:
    """-0.0 would go out as 0x80000000; a device comparing the word to 0 would not see 'stop'."""
    f = Field(name="sp", address=0, table=Table.HOLDING, dtype=DataType.FLOAT32, invert=True, writable=True)
    assert f.encode(0.0) == [0x0000, 0x0000]
    assert f.encode(3000.0) == [0xC53B, 0x8000]  # -3000.0, high word first


def test_an_offset_encoded_power_counts_from_its_zero() -> None:
    """AlphaESS dispatch power: Int, offset 32000, < 32000 charge, > 32000 discharge (vendor list V1.23).
    zapd's + = charge, so the field is inverted: 2000 W charge is raw 30000, 1500 W discharge 33500."""
    f = fld(DataType.S32, unit="W", offset=32000, invert=True)
    assert f.encode(2000.0) == [0, 30000]
    assert f.encode(-1500.0) == [0, 33500]
    assert f.encode(0.0) == [0, 32000]
    assert f.decode([0, 30000]) == 2000.0 and f.decode([0, 32000]) == 0.0
    with pytest.raises(ValueError, match="does not fit"):
        fld(DataType.U16, unit="W", offset=32000, invert=True).encode(40_000.0)  # 32000 - 40000 < 0


@given(raw=st.integers(0, 64000))
def test_offset_round_trips(raw: int) -> None:
    f = fld(DataType.S32, unit="W", offset=32000, invert=True)
    assert f.encode(f.decode([0, raw])) == [0, raw]


# ---- write function (0x06 / 0x10) ----

_W16 = 'table = "holding"\ntype = "u16"\nwritable = true\n'
_W32 = 'table = "holding"\ntype = "s32"\nwritable = true\n'


def test_write_function_defaults_to_multiple_and_the_device_default_applies_to_one_register_fields(
    tmp_path: Path,
) -> None:
    plain = load_register_map(write_map(tmp_path, f"[fields.mode]\naddress = 20\n{_W16}"))
    assert {f.write_function for f in plain.fields.values()} == {"multiple"}  # what the bus always did
    path = write_map(
        tmp_path,
        f"[fields.mode]\naddress = 20\n{_W16}"
        f'[fields.power]\naddress = 30\n{_W32}write_function = "multiple"\n'
        f'[fields.other]\naddress = 40\n{_W16}write_function = "multiple"\n',
        header='[device]\nwrite_function = "single"\n',
    )
    rmap = load_register_map(path)
    assert rmap.field("mode").write_function == "single"  # the device's default
    assert rmap.field("power").write_function == "multiple"  # a 32-bit set point, stated
    assert rmap.field("other").write_function == "multiple"  # a per-field override of the default


@pytest.mark.parametrize(
    ("body", "header", "field", "reason"),
    [
        (f'[fields.p]\naddress = 30\n{_W32}write_function = "single"\n', "", "p", "2 registers"),
        (f'[fields.p]\naddress = 30\n{_W16}write_function = "0x06"\n', "", "p", "'single' (0x06) or 'multiple'"),
        (f"[fields.p]\naddress = 30\n{_W16}write_function = 6\n", "", "p", "'single' (0x06) or 'multiple'"),
        (
            '[fields.p]\naddress = 30\ntable = "holding"\ntype = "u16"\nwrite_function = "single"\n',
            "",
            "p",
            "writable holding registers only",
        ),
        (
            '[fields.p]\naddress = 30\ntable = "coil"\ntype = "bool"\nwritable = true\nwrite_function = "single"\n',
            "",
            "p",
            "0x05",
        ),
        # the device says 0x06, and a 32-bit field does not say it may take 0x10: refused, not split
        (f"[fields.p]\naddress = 30\n{_W32}", '[device]\nwrite_function = "single"\n', "p", "set write_function"),
    ],
)
def test_write_function_errors_name_file_and_key(
    tmp_path: Path, body: str, header: str, field: str, reason: str
) -> None:
    path = write_map(tmp_path, body, header=header)
    with pytest.raises(RegisterMapError) as info:
        load_register_map(path)
    message = str(info.value)
    assert str(path) in message and f"field {field!r}" in message and "write_function" in message
    assert reason in message


def test_device_write_function_must_be_single_or_multiple(tmp_path: Path) -> None:
    path = write_map(tmp_path, "", header='[device]\nwrite_function = "fc6"\n')
    with pytest.raises(RegisterMapError, match=r"device\.write_function must be") as info:
        load_register_map(path)
    assert str(path) in str(info.value)
