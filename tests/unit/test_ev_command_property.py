"""Property: whatever current a plan asks of a Modbus charger, the setpoint written is 0 or within limits.

Besides the setpoint, a charger may only see the writes its documented rule adds: the enable
coil (Phoenix: on after a setpoint, off for a pause) and the life bit (EVlink: 1).

Each charger profile with a vendor-document fixture runs against the fake bus of
test_control_property.py (unit tests may use fakes; the wire is covered by
tests/integration/test_ev_profiles.py). For any commanded current: a current the charger may take
(0 = pause, or min..max) is written, and the written words, decoded by the vendor's encoding
written out here (not by the profile), are that current; anything else writes nothing at all.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Callable
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.config_structs import EvLimits
from drivers.modbus.bus import ModbusBus
from drivers.modbus.ev_charger import ModbusEvCharger
from drivers.modbus.register_map import load_register_map
from tests.unit.test_control_property import FakeBus, _fixture, _image
from zapd.clock import SystemClock
from zapd.model import EvCurrent

MIN_A, MAX_A = 6.0, 16.0


def _abb(words: list[int]) -> float:  # 4100h: U32 in mA, most significant word first
    return ((words[0] << 16) | words[1]) / 1000.0


def _amtron(words: list[int]) -> float:  # 0400h: U16 in A
    return float(words[0])


def _phoenix(words: list[int]) -> float:  # 528: U16 in A (Phoenix firmware)
    return float(words[0])


def _wallbe(words: list[int]) -> float:  # 528: U16 in 0.1 A (Wallbe firmware)
    return words[0] / 10.0


def _evlink(words: list[int]) -> float:  # 4004: U16 in A
    return float(words[0])


# profile -> (setpoint address, decoder, resolution of the register in A)
SETPOINT: dict[str, tuple[int, Callable[[list[int]], float], float]] = {
    "abb_terra_ac": (0x4100, _abb, 0.001),
    "mennekes_amtron": (0x0400, _amtron, 1.0),
    "phoenix_ev_eth": (528, _phoenix, 1.0),
    "wallbe_phoenix_ev": (528, _wallbe, 0.1),
    "schneider_evlink_pro_ac": (4004, _evlink, 1.0),
}
# profile -> the other writes its rule may add: (address, words) for a pause and for a current
ENABLE_COIL = 400  # Phoenix coil 400: 1 = charging allowed
EXTRA: dict[str, tuple[list[tuple[int, list[int]]], list[tuple[int, list[int]]]]] = {
    "phoenix_ev_eth": ([(ENABLE_COIL, [0])], [(ENABLE_COIL, [1])]),
    "wallbe_phoenix_ev": ([(ENABLE_COIL, [0])], [(ENABLE_COIL, [1])]),
    "schneider_evlink_pro_ac": ([(4000, [1])], [(4000, [1])]),
}


async def _command(profile: str, current_a: float) -> tuple[bool, list[tuple[int, int, list[int]]]]:
    fixture = _fixture(profile)
    bus = FakeBus(_image(fixture))
    charger = ModbusEvCharger(
        device_id="wb",
        bus=cast(ModbusBus, bus),
        unit_id=fixture["unit_id"],
        register_map=load_register_map(profile),
        poll_s=1.0,
        clock=SystemClock(),
        limits=EvLimits(max_current_a=MAX_A, min_current_a=MIN_A),
    )
    result = await charger.apply(EvCurrent(der_id="wb.ev", current_a=current_a))
    return result.ok, bus.writes


currents = st.one_of(
    st.floats(min_value=-100.0, max_value=100.0),
    st.sampled_from([0.0, MIN_A, MAX_A, MIN_A - 1e-9, MAX_A + 1e-9, math.nan, math.inf, -math.inf]),
)


@pytest.mark.parametrize("profile", sorted(SETPOINT))
@settings(max_examples=150, deadline=None)
@given(current_a=currents)
def test_any_current_is_written_within_limits_or_not_at_all(profile: str, current_a: float) -> None:
    ok, writes = asyncio.run(_command(profile, current_a))
    allowed = math.isfinite(current_a) and (current_a == 0.0 or MIN_A <= current_a <= MAX_A)
    if not ok:
        assert writes == [], f"{current_a} A refused but written: {writes}"
        return
    assert allowed, f"{current_a} A accepted"
    address, decode, step = SETPOINT[profile]
    pause_extra, current_extra = EXTRA.get(profile, ([], []))
    setpoint = [w for w in writes if w[1] == address]
    others = [(a, v) for _, a, v in writes if a != address]
    if current_a == 0.0 and profile in ("phoenix_ev_eth", "wallbe_phoenix_ev"):
        assert setpoint == [] and others == pause_extra  # pause = the coil off, nothing else
        return
    assert others == (pause_extra if current_a == 0.0 else current_extra)
    assert len(setpoint) == 1
    written = decode(setpoint[0][2])
    assert written == 0.0 or MIN_A - step <= written <= MAX_A + step
    assert abs(written - current_a) <= step / 2 + 1e-9


def test_the_float32_packing_used_above_is_the_documents() -> None:
    """Guard for the hand-written decoders: 16 A = 16000 mA = 0x00003E80 (ABB), as in the fixture."""
    assert _abb([0x0000, 0x3E80]) == 16.0
    assert struct.pack(">I", 16000) == b"\x00\x00\x3e\x80"
