"""The transcribed APG day-ahead PV forecast (bench/data/README.md, "A real day-ahead PV forecast").

The raw files are the source's rows on its own Vienna wall clock: each row starts where the one before ended
(one 2-hour row at the spring change, the doubled hour labelled 2A / 2B in autumn), the counts, sums and maxima
are the ones the README states, and the UTC index file is what `make_pv_index.py` builds from them.
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "bench" / "data"


def _rows(name: str) -> list[dict[str, str]]:
    with open(DATA / "raw" / f"apg_at_solar_dayahead_{name}.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize(
    ("name", "count", "first", "last"),
    [
        ("2016_h1", 4391, "01.01.2016 00:00:00", "01.07.2016 23:00:00"),
        ("2016_h2", 4441, "01.07.2016 00:00:00", "01.01.2017 23:00:00"),
        ("2017_janfeb", 1417, "01.01.2017 00:00:00", "01.03.2017 00:00:00"),
    ],
)
def test_each_raw_file_is_a_contiguous_run_of_the_sources_rows(name: str, count: int, first: str, last: str) -> None:
    rows = _rows(name)
    assert len(rows) == count and rows[0]["start"] == first and rows[-1]["start"] == last
    for before, row in itertools.pairwise(rows):
        assert row["start"] == before["end"]
        value = float(row["solar_mw"])
        assert 0.0 <= value <= 700.0 and len(row["solar_mw"].split(".")[1]) == 4


def test_the_clock_changes_are_as_the_source_writes_them() -> None:
    h1, h2 = _rows("2016_h1"), _rows("2016_h2")
    spring = [r for r in h1 if r["start"] == "27.03.2016 01:00:00"]
    assert [r["end"] for r in spring] == ["27.03.2016 03:00:00"]
    autumn = [r["start"] for r in h2 if r["start"].startswith("30.10.2016 0") or " 2" in r["start"][10:13]]
    assert "30.10.2016 2A:00:00" in autumn and "30.10.2016 2B:00:00" in autumn


def test_the_sums_and_maxima_are_the_readmes() -> None:
    h1, h2, y17 = _rows("2016_h1"), _rows("2016_h2"), _rows("2017_janfeb")
    january = sum(float(r["solar_mw"]) for r in h1 if r["start"][3:10] == "01.2016")
    december = sum(float(r["solar_mw"]) for r in h2 if r["start"][3:10] == "12.2016")
    assert january == pytest.approx(21031.7148, abs=1e-3) and december == pytest.approx(27023.5945, abs=1e-3)
    top = max(h1, key=lambda r: float(r["solar_mw"]))
    assert (top["start"], top["solar_mw"]) == ("30.04.2016 13:00:00", "610.1633")
    assert max(float(r["solar_mw"]) for r in y17) == pytest.approx(505.6318)


def test_the_index_file_is_what_the_builder_makes(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_pv_index", DATA / "make_pv_index.py")
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    out = tmp_path / "index.csv"
    builder.main(out)
    assert out.read_bytes() == (DATA / "apg_at_solar_dayahead_utc.csv").read_bytes()
    lines = [line for line in out.read_text().splitlines() if not line.startswith(("#", "ts,"))]
    stamps = [datetime.fromisoformat(line.split(",")[0]) for line in lines]
    assert len(stamps) == 10201 and stamps[0] == datetime(2015, 12, 31, 23, tzinfo=UTC)
    assert all((b - a).total_seconds() == 3600.0 for a, b in itertools.pairwise(stamps))
    assert builder.source_start("30.10.2016 2A:00:00") == datetime(2016, 10, 30, 0, tzinfo=UTC)
    assert builder.source_start("30.10.2016 2B:00:00") == datetime(2016, 10, 30, 1, tzinfo=UTC)
