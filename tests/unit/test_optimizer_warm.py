"""The shifted-basis warm start (cloud/optimizer_warm.py) over rolling re-plans: it changes the simplex's start,
never the optimum.

Each example is a rolling planner's day as the backtest runs it: re-plans every `every` slots over a horizon
that ends with the published prices (the day's end, the next day's from 13:00 on), so it shrinks by the
executed slots and grows by a day when prices arrive; the SoC each re-plan starts from is new. Every re-plan is
solved cold as well, and the warm start must give the same optimal objective; it must also have been used
(a basis carried over, accepted by HiGHS), or the property would hold for a warm start that does nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.optimizer import WarmStart, _run, solve
from cloud.optimizer_io import Grid, Problem
from cloud.optimizer_model import build_model, site_data, with_flows
from cloud.optimizer_scenarios import SWANSON_WEIGHTS, _stack
from cloud.optimizer_warm import BASIC, UPPER, KeptBasis, shifted_basis
from tests.plan_problems import bench_battery

DAY = 24  # hourly slots
PUBLICATION_HOUR = 13
HORIZON_MAX = 36
REL = 1e-9


@dataclass(frozen=True)
class Rolling:
    """A trace long enough for the re-plans and their horizons, and how the planner walks it."""

    import_price: list[float]
    export_price: list[float]
    load: list[float]
    pv: list[float]
    socs: list[float]
    first_hour: int
    every: int

    def replans(self) -> list[Problem]:
        """The re-plans' problems: slot k's horizon runs to the end of the published prices."""
        out = []
        for i, soc in enumerate(self.socs):
            k = i * self.every
            hour = (self.first_hour + k) % DAY
            known = DAY - hour + (DAY if hour >= PUBLICATION_HOUR else 0)
            horizon = min(HORIZON_MAX, known)
            window = slice(k, k + horizon)
            out.append(
                Problem(
                    start=datetime(2026, 3, 1, tzinfo=UTC) + timedelta(hours=self.first_hour + k),
                    step_minutes=60.0,
                    import_price=self.import_price[window],
                    export_price=self.export_price[window],
                    load_kw=self.load[window],
                    pv_kw=self.pv[window],
                    battery=bench_battery(soc),
                    grid=Grid(max_import_kw=10.0, max_export_kw=10.0),
                )
            )
        return out


@st.composite
def rollings(draw: st.DrawFn, negative_prices: bool = False) -> Rolling:
    every = draw(st.integers(min_value=1, max_value=3))
    n_replans = draw(st.integers(min_value=2, max_value=8))
    n = n_replans * every + HORIZON_MAX + DAY
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = np.random.default_rng(seed)
    hours = np.arange(n)
    # a day's price shape with noise, a share of it paid back for export (never more than import: the LP path)
    imp = 0.25 + 0.1 * np.sin(2 * np.pi * (hours - 7) / DAY) + rng.normal(0.0, 0.04, n)
    if negative_prices:
        imp[rng.random(n) < 0.15] = -0.05
    exp = np.minimum(imp * draw(st.floats(min_value=0.0, max_value=1.0)), imp)
    sun = np.maximum(0.0, np.sin(2 * np.pi * (hours - 6) / DAY))
    pv = sun * draw(st.floats(min_value=0.0, max_value=6.0)) * rng.uniform(0.3, 1.0, n)
    load = rng.uniform(0.2, 2.5, n)
    socs = [draw(st.floats(min_value=0.1, max_value=0.95)) for _ in range(n_replans)]
    return Rolling(
        imp.round(4).tolist(),
        exp.round(4).tolist(),
        load.round(3).tolist(),
        pv.round(3).tolist(),
        socs,
        draw(st.integers(min_value=0, max_value=DAY - 1)),
        every,
    )


@settings(max_examples=40, deadline=None)
@given(rollings(negative_prices=True))
def test_a_shifted_warm_start_gives_the_cold_optimum(rolling: Rolling) -> None:
    """The deterministic optimizer through one WarmStart, re-plan by re-plan, against cold solves (terminal
    value 0, so the contract cost is the objective): the same cost, also where negative prices send a solve
    down the MILP path (its first LP relaxation is the warm one)."""
    warm = WarmStart()
    problems = rolling.replans()
    for problem in problems:
        cold, hot = solve(problem), solve(problem, warm=warm)
        assert hot.status == cold.status == "optimal"
        assert hot.cost is not None and cold.cost is not None
        assert hot.cost == pytest.approx(cold.cost, rel=REL, abs=REL)
    stats = warm.stats
    assert (stats.cold, stats.refused) == (1, 0)
    assert stats.shifted + stats.same == len(problems) - 1


@settings(max_examples=40, deadline=None)
@given(rollings(), st.floats(min_value=0.2, max_value=1.0), st.floats(min_value=1.0, max_value=2.0))
def test_a_shifted_warm_start_gives_the_cold_optimum_of_the_two_stage_lp(
    rolling: Rolling, dark: float, high: float
) -> None:
    """The two-stage LP (three scenarios stacked, the first `every` slots' battery flows tied): warm and cold
    give the same weighted objective at every re-plan; its tie rows (anchored at the first slots) and the
    scenarios' blocks are carried over by slot time too."""
    warm = WarmStart()
    problems = rolling.replans()
    for problem in problems:
        pv, load = np.asarray(problem.pv_kw), np.asarray(problem.load_kw)
        dark_day = msgspec.structs.replace(problem, pv_kw=(pv * dark).tolist(), load_kw=(load * high).tolist())
        bright_day = msgspec.structs.replace(problem, pv_kw=(pv / dark).tolist(), load_kw=(load / high).tolist())
        data = [site_data(p) for p in (dark_day, problem, bright_day)]
        none = np.zeros(problem.horizon, dtype=np.bool_)
        first = build_model(data[0], none, none, None)
        models = [first, *(with_flows(first, d) for d in data[1:])]
        stacked = _stack(models, SWANSON_WEIGHTS, problem.horizon, min(rolling.every, problem.horizon))
        deadline = math.inf
        cold, hot = _run(stacked, deadline, None), _run(stacked, deadline, None, warm)
        assert hot.status == cold.status == "optimal"
        assert hot.objective == pytest.approx(cold.objective, rel=REL, abs=REL)
    stats = warm.stats
    assert (stats.cold, stats.refused) == (1, 0)
    assert stats.shifted + stats.same == len(problems) - 1


@settings(max_examples=60, deadline=None)
@given(rollings(), st.integers(min_value=0, max_value=30), st.integers(min_value=1, max_value=40))
def test_a_shifted_basis_has_one_basic_variable_per_row(rolling: Rolling, shift: int, horizon: int) -> None:
    """Whatever the shift and the new horizon (shorter, longer, past the old one's end), the mapped basis has
    exactly as many basic variables as rows, and every nonbasic variable sits at a finite bound of its own
    (HiGHS would refuse the first, and start from an infeasible point with the second)."""
    problem = rolling.replans()[0]
    model = build_model(site_data(problem), *(np.zeros(problem.horizon, dtype=np.bool_),) * 2, None)
    warm = WarmStart()
    assert _run(model, math.inf, None, warm).status == "optimal"
    assert warm._kept is not None
    later = msgspec.structs.replace(
        problem,
        start=problem.start + timedelta(hours=shift),
        import_price=(rolling.import_price * 3)[shift : shift + horizon],
        export_price=(rolling.export_price * 3)[shift : shift + horizon],
        load_kw=(rolling.load * 3)[shift : shift + horizon],
        pv_kw=(rolling.pv * 3)[shift : shift + horizon],
    )
    new = build_model(site_data(later), *(np.zeros(horizon, dtype=np.bool_),) * 2, None)
    statuses = shifted_basis(warm._kept, new)
    assert statuses is not None
    cols, rows = statuses
    assert int((cols == BASIC).sum() + (rows == BASIC).sum()) == len(new.row_lower)
    for status, lower, upper in ((cols, new.col_lower, new.col_upper), (rows, new.row_lower, new.row_upper)):
        at = np.where(status == 0, lower, np.where(status == 2, upper, 0.0))
        assert np.isfinite(at[status != BASIC]).all()


def _battery_problem(n: int, start: datetime) -> Problem:
    return Problem(
        start=start,
        step_minutes=60.0,
        import_price=[0.1, 0.3, 0.2, 0.4, 0.1, 0.3] * (n // 6 + 1),
        export_price=[0.05] * n,
        load_kw=[1.0] * n,
        pv_kw=[0.5] * n,
        battery=bench_battery(0.5),
        grid=Grid(max_import_kw=10.0, max_export_kw=10.0),
    )


def _sized(problem: Problem, n: int) -> Problem:
    return msgspec.structs.replace(
        problem,
        import_price=problem.import_price[:n],
        export_price=problem.export_price[:n],
        load_kw=problem.load_kw[:n],
        pv_kw=problem.pv_kw[:n],
    )


@pytest.mark.parametrize("new_horizon", [10, 12, 16])
def test_a_slot_takes_the_status_its_time_had_and_new_slots_the_last_ones(new_horizon: int) -> None:
    """The mapping itself, on a basis whose count is right by construction (every row's logical basic, the
    columns nonbasic, a pattern of them at their upper bound): two hours later, slot j of the new horizon has
    the old slot j + 2's statuses, slots past the old horizon's end the old last slot's."""
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    old = build_model(site_data(_sized(_battery_problem(12, t0), 12)), *(np.zeros(12, dtype=np.bool_),) * 2, None)
    assert old.layout is not None
    upper = np.zeros(len(old.col_cost), dtype=np.bool_)
    upper[0:12:3] = True  # charge at full power every third hour
    upper[3 * 12 + 1 : 4 * 12 : 2] = True  # export at its limit every other hour from hour 1
    kept = KeptBasis(old.layout, np.zeros(len(old.col_cost), dtype=np.bool_), upper, np.ones(24, dtype=np.bool_))
    problem = _sized(_battery_problem(new_horizon, t0 + timedelta(hours=2)), new_horizon)
    new = build_model(site_data(problem), *(np.zeros(new_horizon, dtype=np.bool_),) * 2, None)
    statuses = shifted_basis(kept, new)
    assert statuses is not None
    cols, rows = statuses
    assert (rows == BASIC).all() and not (cols == BASIC).any()
    source = np.minimum(np.arange(new_horizon) + 2, 11)
    for block in (0, 3):  # charge, export: both with finite upper bounds, so the flag decides
        got = cols[block * new_horizon : (block + 1) * new_horizon] == UPPER
        assert np.array_equal(got, upper[block * 12 + source]), block


@pytest.mark.parametrize(
    ("offset", "lines_up"),
    [(timedelta(0), True), (timedelta(hours=1), True), (timedelta(minutes=30), False), (timedelta(hours=-1), False)],
)
def test_a_start_that_does_not_line_up_starts_cold(offset: timedelta, lines_up: bool) -> None:
    """A re-plan that starts a whole number of slots after the last (0 too: a new horizon from the same slot)
    starts from the shifted basis; one between two of its slots, or before it, has no slot-by-slot mapping and
    starts cold, and the count says so."""
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    warm = WarmStart()
    first, later = _sized(_battery_problem(6, t0), 6), _sized(_battery_problem(5, t0 + offset), 5)
    assert solve(first, warm=warm).status == solve(later, warm=warm).status == "optimal"
    assert (warm.stats.shifted, warm.stats.cold, warm.stats.refused) == ((1, 1, 0) if lines_up else (0, 2, 0))


def test_a_kept_basis_needs_a_layout_and_one_basic_variable_per_row() -> None:
    problem = Rolling([0.2] * 4, [0.1] * 4, [1.0] * 4, [0.0] * 4, [0.5], 0, 1).replans()[0]
    none = np.zeros(problem.horizon, dtype=np.bool_)
    model = build_model(site_data(problem), none, none, None)
    bare = replace(model, layout=None)
    basic = np.arange(-1, -1 - len(model.row_lower), -1, dtype=np.int32)  # every row's logical
    values = np.zeros(len(model.col_cost))
    assert KeptBasis.of(bare, basic, values) is None
    assert KeptBasis.of(model, basic[:-1], values) is None
    kept = KeptBasis.of(model, basic, values)
    assert kept is not None and kept.basic_rows.all() and not kept.basic_cols.any()
    assert shifted_basis(kept, bare) is None


def _kept_with(basic_per_slot: dict[int, tuple[int, ...]], basic_rows: tuple[int, ...]) -> KeptBasis:
    """A basis of the 12-hour battery model: the given column blocks basic in each slot, the given rows basic."""
    model = build_model(
        site_data(_sized(_battery_problem(12, datetime(2026, 3, 1, tzinfo=UTC)), 12)),
        *(np.zeros(12, dtype=np.bool_),) * 2,
        None,
    )
    assert model.layout is not None
    cols = np.zeros(len(model.col_cost), dtype=np.bool_)
    for slot, blocks in basic_per_slot.items():
        cols[[b * 12 + slot for b in blocks]] = True
    rows = np.zeros(24, dtype=np.bool_)
    rows[list(basic_rows)] = True
    assert int(cols.sum() + rows.sum()) == 24  # a basis of the old model
    return KeptBasis(model.layout, cols, np.zeros(len(model.col_cost), dtype=np.bool_), rows)


def _one_hour_later(kept: KeptBasis) -> tuple[np.ndarray, np.ndarray]:
    problem = _sized(_battery_problem(11, datetime(2026, 3, 1, 1, tzinfo=UTC)), 11)
    new = build_model(site_data(problem), *(np.zeros(11, dtype=np.bool_),) * 2, None)
    statuses = shifted_basis(kept, new)
    assert statuses is not None
    assert int((statuses[0] == BASIC).sum() + (statuses[1] == BASIC).sum()) == 22
    return statuses


def test_too_few_basic_variables_are_made_up_by_the_latest_rows() -> None:
    """The executed hour held four basic columns: an hour later two are missing, and the rows of the new
    horizon's last slot (balance row 10, storage row 21) get their logicals basic."""
    kept = _kept_with({0: (0, 2, 4, 6), **{t: (2, 6) for t in range(1, 11)}}, ())
    cols, rows = _one_hour_later(kept)
    assert np.flatnonzero(rows == BASIC).tolist() == [10, 21]
    assert (cols == BASIC).sum() == 20


def test_too_many_basic_variables_go_nonbasic_equality_rows_first() -> None:
    """The executed hour held none: an hour later there is one basic variable too many per row pair. A basic
    equality row's logical goes first (the old slot 11's balance row, now slot 10's), then the latest slot's
    columns in block order."""
    kept = _kept_with({**{t: (2, 6) for t in range(1, 11)}, 11: (0, 2, 6)}, (11,))
    cols, rows = _one_hour_later(kept)
    assert not (rows == BASIC).any()  # the balance row of slot 10 was dropped first
    basic = np.flatnonzero(cols == BASIC)
    assert len(basic) == 22
    assert 0 * 11 + 10 not in basic  # then slot 10's charge column, the first of its basic columns
    assert {2 * 11 + 10, 6 * 11 + 10} <= set(basic.tolist())
