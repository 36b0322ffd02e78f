"""The demo's summary and plot make sense for any window (issue 15, what a technician meets).

`--hours 6` from midnight printed "self-consumption -2856363.8 %" (a share of ~0 Wh of PV) and a
minimum SoC above the final one; the plot's plan line was invisible and grid hid under PV. The
pixel checks read the PNG back and look for each colour the legend names, outside the legend.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from zapd_demo.run import COLOURS, MIN_PV_WH_FOR_SHARE, Trace, _plot, format_summary, self_consumption

matplotlib = pytest.importorskip("matplotlib")
from matplotlib import image  # noqa: E402

T0 = datetime(2026, 6, 21, tzinfo=UTC)
energy = st.floats(min_value=0, max_value=1e8, allow_nan=False)


@given(pv_wh=energy, export_wh=energy)
def test_self_consumption_is_a_share_or_nothing(pv_wh: float, export_wh: float) -> None:
    share = self_consumption(pv_wh, export_wh)
    if pv_wh < MIN_PV_WH_FOR_SHARE:
        assert share is None
    else:
        assert share is not None and 0.0 <= share <= 1.0


def test_a_night_window_says_there_was_no_pv() -> None:
    # the --hours 6 case: 0.07 Wh of dawn PV, 2 kWh of battery discharge exported
    assert self_consumption(0.07, 2000.0) is None
    assert self_consumption(10_000.0, 2_500.0) == pytest.approx(0.75)
    assert self_consumption(1_000.0, 5_000.0) == 0.0  # all PV exported (and battery energy on top)


def _summary(**over: object) -> dict[str, object]:
    base: dict[str, object] = dict.fromkeys(
        ("hours", "pv_kwh", "load_kwh", "import_kwh", "export_kwh", "baseline_import_kwh", "baseline_export_kwh",
         "charge_kwh", "discharge_kwh", "battery_cycles", "final_soc", "min_soc", "cost_eur", "baseline_cost_eur",
         "balance_error", "metered_import_kwh", "metered_export_kwh", "metered_hours", "metering_error"),
        0.0,
    )  # fmt: skip
    base |= {"wall_s": 1.0, "plan": "p", "commands": 0, "readings_stored": 0, "fallback_transitions": [], "plot": "x"}
    return base | {"self_consumption": None, "baseline_self_consumption": None} | over


def test_summary_prints_no_share_without_pv() -> None:
    out = format_summary(_summary())
    line = next(line for line in out.splitlines() if line.startswith("self-consumption"))
    assert "n/a (no PV in this window)" in line and "%" not in line


def _trace(hours: float, *, coincide: bool) -> Trace:
    """Every 5 min; with `coincide`, grid = PV = load and plan = battery: the worst case for hiding lines."""
    tr = Trace()
    for i in range(int(hours * 12)):
        x = i / (hours * 12)
        tr.ts.append(T0 + timedelta(minutes=5 * i))
        pv = 3000.0 * max(0.0, np.sin(np.pi * x))
        tr.pv_w.append(pv)
        tr.load_w.append(pv if coincide else 800.0 + 300 * np.cos(6 * x))
        tr.grid_w.append(pv if coincide else tr.load_w[-1] - pv)
        tr.battery_w.append(1500.0 * np.sin(2 * np.pi * x))
        tr.plan_w.append(tr.battery_w[-1] if coincide else 1000.0 * np.sign(np.sin(2 * np.pi * x)))
        tr.soc.append(0.5 + 0.3 * np.sin(2 * np.pi * x))
    return tr


def colour_pixels(png: Path) -> dict[str, int]:
    """How many pixels of each legend colour the image holds (within a small tolerance)."""
    rgb = image.imread(str(png))[..., :3]
    out = {}
    for name, hexa in COLOURS.items():
        target = np.array([int(hexa[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        out[name] = int((np.abs(rgb - target).max(axis=-1) < 0.06).sum())
    return out


# A legend swatch is ~20 x 2-6 px; a line across the plot is hundreds of px long.
LINE_PX = 400


@pytest.mark.parametrize("coincide", [False, True], ids=["typical", "lines-on-top-of-each-other"])
def test_every_legend_line_shows_in_the_png(tmp_path: Path, coincide: bool) -> None:
    png = tmp_path / "demo.png"
    _plot(_trace(24, coincide=coincide), png)
    counts = colour_pixels(png)
    assert {name: n for name, n in counts.items() if n < LINE_PX} == {}, counts


def test_a_plan_without_setpoints_is_not_in_the_legend(tmp_path: Path) -> None:
    tr = _trace(6, coincide=False)
    tr.plan_w = [float("nan")] * len(tr.ts)
    png = tmp_path / "demo.png"
    _plot(tr, png)
    assert colour_pixels(png)["plan"] < 50  # no line, and no legend swatch of one
