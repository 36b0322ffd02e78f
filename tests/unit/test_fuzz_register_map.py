"""Fuzzing register decoding: whatever a device answers, a field decodes to a number or raises ValueError.

Why: registers come from devices we do not control (firmware bugs, a wrong unit id answering, a
gateway padding with 0xFFFF). The driver turns ValueError and non-finite values into a counted
DriverError; any other exception would escape the poll loop. Every field of every shipped map
is decoded from random registers, with and without scale factors, and a wrong register count
must be refused rather than read past.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.modbus.register_map import Field, load_register_map

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAPS = ["sim_hybrid", "huawei_sun2000_luna2000", "sma_sunny_boy_storage", "alfen_eve"]
FIELDS: list[Field] = [f for name in MAPS for f in load_register_map(name).fields.values()]
registers = st.lists(st.integers(0, 0xFFFF), min_size=0, max_size=6)


@FUZZ
@given(st.sampled_from(FIELDS), registers, st.none() | st.integers(-(2**15), 2**15))
def test_decode_random_registers_is_a_number_or_value_error(f: Field, regs: list[int], sf: int | None) -> None:
    try:
        value = f.decode(regs, sf if f.scale_factor is not None else None)
    except ValueError:
        return  # wrong count, or a scale factor that makes no number: the driver counts a DriverError
    assert len(regs) == f.count, "decoded from the wrong number of registers"
    assert isinstance(value, float)
    # NaN/inf is possible for float registers; the driver refuses those (hybrid_inverter._read).
    if f.dtype.value.startswith("int") or f.dtype.value.startswith("uint"):
        assert math.isfinite(value) or sf is not None


@FUZZ
@given(st.sampled_from(FIELDS), st.data())
def test_right_count_decodes_and_raw_int_round_trips(f: Field, data: st.DataObject) -> None:
    regs = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=f.count, max_size=f.count))
    f.decode(regs, 0 if f.scale_factor is not None else None)
    if not f.dtype.value.startswith("float"):
        raw = f.decode_raw_int(regs)
        assert f.encode_raw_int(raw) == regs


@FUZZ
@given(st.sampled_from(FIELDS), st.floats(allow_nan=True, allow_infinity=True), st.integers(-4, 4))
def test_encode_any_float_is_registers_or_value_error(f: Field, value: float, sf: int) -> None:
    try:
        regs = f.encode(value, sf if f.scale_factor is not None else None)
    except ValueError:
        return
    assert len(regs) == f.count and all(0 <= r <= 0xFFFF for r in regs)
