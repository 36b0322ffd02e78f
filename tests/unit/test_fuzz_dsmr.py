"""Fuzzing the P1 (DSMR) input path: any bytes on the line are counted, never an exception, never a false reading.

Why: the meter reading feeds the fuse limit, and the P1 line is the noisiest input zapd has
(line noise, half telegrams after a meter reboot, bit errors). Bytes go through the driver's own
path: `_Framer` (dsmr_parser's TelegramBuffer with our overflow cap) then `P1Meter._handle`
(parser with CRC, conversion), and once through `_read` on a real asyncio stream. Properties:
no exception escapes; every framed telegram is counted exactly once as a reading or as a drop;
a reading only ever comes from a telegram whose CRC matches its bytes.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.p1.dsmr import P1Meter, _Framer
from drivers.p1.transport import TcpP1
from drivers.sim.p1_pty import crc16_dsmr
from zapd.clock import ManualClock
from zapd.model import Reading

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "dsmr"
REAL = {name: (FIXTURES / f"{name}.txt").read_bytes() for name in ("v5_iskra", "v4_2_kaifa", "be_fluvius_emucs171")}
VERSION = {"v5_iskra": "5", "v4_2_kaifa": "4", "be_fluvius_emucs171": "5B"}
_CRC = re.compile(r"!([0-9A-Fa-f]{4})\s*$")


def crc_ok(raw: str) -> bool:
    body, bang, tail = raw.rpartition("!")
    m = _CRC.search("!" + tail)
    return bool(bang) and m is not None and crc16_dsmr((body + "!").encode("latin1")) == int(m.group(1), 16)


class Meter:
    """The driver with a sink that checks every reading against the telegram it came from."""

    def __init__(self, version: str = "5") -> None:
        self.meter = P1Meter(device_id="meter", transport=TcpP1("127.0.0.1", 9), dsmr_version=version,
                             clock=ManualClock(datetime(2026, 6, 21, tzinfo=UTC)))  # fmt: skip
        self.readings: list[Reading] = []

    def sink(self, reading: Reading) -> None:
        raw = self.meter.last_raw
        assert raw is not None and crc_ok(raw), "a reading from a telegram whose CRC does not match"
        self.readings.append(reading)

    def feed(self, chunks: list[bytes]) -> None:
        framer = _Framer(encrypted=False)
        for chunk in chunks:
            for raw in framer.feed(chunk):
                self.meter._handle(raw, self.sink)
        c = self.meter.counters
        assert c["telegrams"] == c["readings"] + c["bad_crc"] + c["parse_error"] + c["decrypt_error"]
        assert c["readings"] == len(self.readings)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if data[a:b]]


@FUZZ
@given(st.binary(max_size=4000), st.lists(st.integers(0, 5000), max_size=8))
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    Meter().feed(split(data, cuts))


@FUZZ
@given(
    st.sampled_from(sorted(REAL)),
    st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete"]), st.integers(0, 10_000), st.integers(0, 255)),
             min_size=1, max_size=4),
    st.lists(st.integers(0, 5000), max_size=6),
    st.binary(max_size=200),
)  # fmt: skip
def test_mutated_real_telegrams(name: str, edits: list[tuple[str, int, int]], cuts: list[int], noise: bytes) -> None:
    data = bytearray(REAL[name])
    for op, pos, byte in edits:
        i = pos % len(data)
        if op == "flip":
            data[i] ^= byte or 1
        elif op == "insert":
            data.insert(i, byte)
        elif len(data) > 1:
            del data[i]
    m = Meter(VERSION[name])
    # Noise before, the mutated telegram, then the intact one: the good one must still come through.
    m.feed(split(noise + bytes(data) + REAL[name], cuts))
    assert m.readings, "the intact telegram after the damaged one was lost"


@FUZZ
@given(st.sampled_from(sorted(REAL)), st.integers(1, 400))
def test_truncated_then_intact(name: str, keep: int) -> None:
    m = Meter(VERSION[name])
    m.feed([REAL[name][:keep], REAL[name]])
    assert m.readings


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 4000), max_size=5))
def test_the_driver_read_loop_on_a_stream(noise: bytes, cuts: list[int]) -> None:
    """Through `_read` itself (what runs on the pty/TCP stream): returns at EOF, never raises."""
    m = Meter()

    async def run() -> bool:
        reader = asyncio.StreamReader()
        for chunk in split(noise + REAL["v5_iskra"] + noise[: len(noise) // 2], cuts):
            reader.feed_data(chunk)
        reader.feed_eof()
        return await m.meter._read(reader, m.sink)

    assert asyncio.run(run()) is True
    assert m.readings


def test_a_flood_without_end_marker_is_capped_and_counted() -> None:
    m = Meter()
    m.feed([b"/" + b"A" * 40_000, REAL["v5_iskra"]])
    assert m.meter.counters["readings"] == 1
