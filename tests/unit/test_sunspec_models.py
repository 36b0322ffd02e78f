"""SunSpec point codec and model definitions from pysunspec2, without a socket."""

from __future__ import annotations

import math

import pytest

from drivers.modbus.sunspec_models import (
    PointDef,
    SunSpecError,
    decode_groups,
    decode_model,
    decode_raw,
    encode_raw,
    encode_scaled,
    model_def,
    repeating_group,
)


def test_definitions_come_from_pysunspec2() -> None:
    m124 = model_def(124)
    assert m124 is not None and m124.length == 24
    assert m124.point("StorCtl_Mod").offset == 5 and m124.point("StorCtl_Mod").writable
    assert m124.point("InWRte").sf == "InOutWRte_SF"
    assert model_def(1) is not None and model_def(1).length == 66  # type: ignore[union-attr]
    assert model_def(103) is not None and model_def(103).length == 50  # type: ignore[union-attr]
    assert model_def(64999) is None


@pytest.mark.parametrize(
    ("ptype", "size", "regs"),
    [
        ("int16", 1, [0x8000]),
        ("uint16", 1, [0xFFFF]),
        ("sunssf", 1, [0x8000]),
        ("enum16", 1, [0xFFFF]),
        ("acc32", 2, [0, 0]),
        ("uint32", 2, [0xFFFF, 0xFFFF]),
        ("int32", 2, [0x8000, 0]),
        ("float32", 2, [0x7FC0, 0]),
        ("string", 2, [0, 0]),
    ],
)
def test_not_implemented_markers_decode_to_none(ptype: str, size: int, regs: list[int]) -> None:
    point = PointDef(name="x", type=ptype, size=size, offset=0, sf=None, units="", writable=False)
    assert decode_raw(point, regs) is None
    assert encode_raw(point, None) == regs or ptype in ("float32", "string")


def test_signed_and_string_round_trip() -> None:
    m1, m103 = model_def(1), model_def(103)
    assert m1 is not None and m103 is not None
    w = m103.point("W")
    assert decode_raw(w, encode_raw(w, -1234)) == -1234
    mn = m1.point("Mn")
    assert decode_raw(mn, encode_raw(mn, "Fronius")) == "Fronius"
    with pytest.raises(SunSpecError):
        encode_raw(w, 40000)


def test_scale_factors_apply_and_missing_scale_drops_the_value() -> None:
    m124 = model_def(124)
    assert m124 is not None
    regs = [124, m124.length] + [0] * m124.length
    p = m124.point("WChaMax")
    sf = m124.point("WChaMax_SF")
    regs[sf.offset] = 1  # 10 W resolution
    regs[p.offset : p.offset + 1] = encode_scaled(m124, p, 5000.0, regs)
    assert regs[p.offset] == 500
    rte = m124.point("InWRte")
    regs[m124.point("InOutWRte_SF").offset] = 0xFFFE  # -2: 0.01 % resolution
    regs[rte.offset : rte.offset + 1] = encode_scaled(m124, rte, -37.5, regs)
    values = decode_model(m124, regs)
    assert values["WChaMax"] == 5000.0
    assert math.isclose(float(values["InWRte"]), -37.5)
    regs[sf.offset] = 0x8000  # scale factor not implemented: the value is unknown, not unscaled
    assert "WChaMax" not in decode_model(m124, regs)


def test_short_model_leaves_out_missing_points() -> None:
    m103 = model_def(103)
    assert m103 is not None
    regs = [103, 10] + [0] * 10
    assert "St" not in decode_model(m103, regs)


def test_model_160_modules_decode_with_the_top_level_scale_factors() -> None:
    """Model 160's repeating `module` group (20 registers each); DCW_SF lives in the fixed block."""
    mdef, gdef = model_def(160), repeating_group(160)
    assert mdef is not None and gdef is not None and mdef.length == 8 and gdef.length == 20
    assert repeating_group(124) is None
    top = [160, 48, 0xFFFE, 0xFFFE, 1, 0, 0, 0, 2, 0xFFFF]  # DCA_SF -2, DCV_SF -2, DCW_SF 1, N = 2
    one = [1, 0x4D50, 0x5054, 0x2031, 0, 0, 0, 0, 0, 520, 38461, 200, 0, 0, 0, 0, 0x8000, 4, 0, 0]
    two = [2, 0x5374, 0x4368, 0x6120, 0x3300, 0, 0, 0, 0, 0xFFFF, 0xFFFF, 0xFFFF, 0, 0, 0, 0, 0x8000, 4, 0, 0]
    modules = decode_groups(mdef, gdef, top + one + two + [7, 7])  # 2 stray registers: not a whole module
    assert [m.get("IDStr") for m in modules] == ["MPPT 1", "StCha 3"]
    assert modules[0]["DCW"] == 2000.0 and modules[0]["DCA"] == pytest.approx(5.2)
    assert "DCW" not in modules[1]  # 0xFFFF: not implemented
    assert decode_groups(mdef, gdef, top) == []
