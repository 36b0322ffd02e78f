"""Load forecasters: persistence (the baseline), the seasonal profile, LightGBM; none may see the future.

On four weeks of the real Ausgrid household: the GBM's forecast must not depend on anything after its origin,
must fall back to the profile for a new site, and must be finite and non-negative.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import numpy as np
import pytest

from cloud.backtest import Traces, read_traces
from cloud.forecast import GbmLoadForecaster, forecast_load, forecast_load_persistence
from cloud.forecast_load import MAX_STATE_BYTES, Training, continuation_hurts

TRACE = Path(__file__).resolve().parents[2] / "bench" / "data" / "ausgrid_c12_nl_2023.csv"


def test_persistence_is_yesterday() -> None:
    history = np.arange(96, dtype=np.float64)  # two days of 48 slots
    out = forecast_load_persistence(history, 60, 48)
    assert np.array_equal(out[:48], history[48:])  # tomorrow = today
    assert np.array_equal(out[48:], history[48:60])  # the day after: still the last measured day


def test_gbm_uses_only_the_past_and_starts_cold() -> None:
    tr = read_traces(str(TRACE)).head(35 * 48)
    now = 30 * 48 + 5
    model = GbmLoadForecaster(tr.start, tr.step, "Australia/Sydney", country="AU", subdiv="NSW", refit_days=100)
    cold = model.forecast(tr.load_kw, 7 * 48, 48)
    assert np.array_equal(cold, forecast_load(tr.load_kw[: 7 * 48], 48, 48))  # a week of history: the profile
    out = model.forecast(tr.load_kw, now, 72)
    assert out.shape == (72,) and np.all(np.isfinite(out)) and np.all(out >= 0)
    future_changed = tr.load_kw.copy()
    future_changed[now:] *= 5.0
    again = GbmLoadForecaster(tr.start, tr.step, "Australia/Sydney", country="AU", subdiv="NSW", refit_days=100)
    assert np.array_equal(again.forecast(future_changed, now, 72), out)


def test_gbm_knows_the_holiday_calendar() -> None:
    start = datetime(2011, 12, 19, 13, tzinfo=UTC)  # Tuesday 20 Dec 2011 00:00 in Sydney
    model = GbmLoadForecaster(start, timedelta(minutes=30), "Australia/Sydney", country="AU", subdiv="NSW")
    cal = model._cal(np.array([0, 6 * 48, 7 * 48, 8 * 48]))  # Tue 20, Mon 26 (Boxing Day), Tue 27 (holiday), Wed 28
    assert cal[:, 2].tolist() == [0.0, 1.0, 1.0, 0.0]


def test_gbm_quantiles_are_ordered_cover_and_use_only_the_past() -> None:
    tr = read_traces(str(TRACE)).head(70 * 48)
    now = 56 * 48 + 17

    def make() -> GbmLoadForecaster:
        return GbmLoadForecaster(tr.start, tr.step, "Australia/Sydney", country="AU", subdiv="NSW", refit_days=100)

    q = make().quantiles(tr.load_kw, now, 96)
    assert np.all(q.p10 <= q.p50) and np.all(q.p50 <= q.p90) and np.all(q.p10 >= 0)
    future_changed = tr.load_kw.copy()
    future_changed[now:] = 9.0
    again = make().quantiles(future_changed, now, 96)
    assert np.array_equal(again.p10, q.p10) and np.array_equal(again.p90, q.p90)
    # coverage over the next two weeks of day-ahead forecasts: P10..P90 should hold most of the truth
    model, inside, total = make(), 0, 0
    for origin in range(now, now + 13 * 48, 24):
        qq = model.quantiles(tr.load_kw, origin, 48)
        actual = tr.load_kw[origin : origin + 48]
        inside += int(((actual >= qq.p10) & (actual <= qq.p90)).sum())
        total += len(actual)
    assert 0.55 <= inside / total <= 0.95


def test_gbm_state_round_trips_bounded_and_refuses_another_grid() -> None:
    tr = read_traces(str(TRACE)).head(40 * 48)
    now = 35 * 48  # so that 3 days less history still holds every lag (4 weeks + a day)
    model = GbmLoadForecaster(tr.start, tr.step, "Australia/Sydney", country="AU", subdiv="NSW")
    out = model.forecast(tr.load_kw, now, 48)
    model.quantiles(tr.load_kw, now, 48)
    blob = model.to_state()
    assert blob is not None and len(blob) <= MAX_STATE_BYTES
    # a new forecaster on a later grid (the planner's history window moves on) adopts it, predicts the same
    later = tr.start + tr.step * 48 * 3
    other = GbmLoadForecaster(later, tr.step, "Australia/Sydney", country="AU", subdiv="NSW")
    fitted = other.load_state(blob)
    assert fitted == tr.start + tr.step * now and other.fitted_at == now - 3 * 48
    assert np.allclose(other.forecast(tr.load_kw[3 * 48 :], now - 3 * 48, 48), out)
    wrong = GbmLoadForecaster(tr.start, timedelta(minutes=15), "Australia/Sydney", country="AU", subdiv="NSW")
    with pytest.raises(ValueError):
        wrong.load_state(blob)
    with pytest.raises(ValueError):
        other.load_state(b"not a model")


def test_gbm_learns_from_temperature_when_known() -> None:
    """Synthetic (the shipped real houses carry no temperature): a heat pump's load follows the cold."""
    step, spd = timedelta(hours=1), 24
    days = 70
    t = np.arange(days * spd)
    rng = np.random.default_rng(3)
    daily_temp = np.repeat(rng.normal(5.0, 5.0, days), spd)
    temp = daily_temp + 3.0 * np.sin(2 * np.pi * (t % spd - 9) / spd)
    load = 0.3 + 0.15 * np.clip(16.0 - temp, 0.0, None) + 0.05 * rng.standard_normal(len(t))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    errs = {}
    for name, temperature in (("without", None), ("with", temp)):
        model = GbmLoadForecaster(start, step, "UTC", temperature_c=temperature)
        e = [np.abs(model.forecast(load, o, 24) - load[o : o + 24]).mean() for o in range(56 * spd, 69 * spd, 12)]
        errs[name] = float(np.mean(e))
    assert errs["with"] < 0.6 * errs["without"]


def _ausgrid(days: int) -> tuple[Traces, GbmLoadForecaster]:
    tr = read_traces(str(TRACE)).head(days * 48)
    return tr, GbmLoadForecaster(tr.start, tr.step, "Australia/Sydney", country="AU", subdiv="NSW")


def test_gbm_continuation_learns_each_new_target_once_and_only_from_the_past() -> None:
    tr, model = _ausgrid(40)
    fit_at, now = 30 * 48 + 5, 31 * 48 + 11
    model.fit(tr.load_kw[:fit_at], fit_at)
    # a load equal to its slot index: each training row's target names itself
    index = np.arange(tr.n, dtype=np.float64)
    rows = model._new_rows(index[:now], now)
    assert rows is not None
    targets = rows[1].astype(np.int64)
    assert set(targets.tolist()) == set(range(fit_at, now))  # every target measured since the fit, none later
    leads = rows[0][:, 3].astype(np.int64)  # the lead column: (origin, target) pairs are unique
    assert len(set(zip((targets - leads).tolist(), targets.tolist(), strict=True))) == len(targets)
    assert np.all(targets - leads < now) and np.all(leads < model.max_lead)
    # the continued model is the same whatever comes after `now`
    base = model.to_state()
    assert base is not None
    future_changed = tr.load_kw.copy()
    future_changed[now:] *= 5.0
    out = {}
    for name, load in (("as measured", tr.load_kw), ("future changed", future_changed)):
        other = GbmLoadForecaster(tr.start, tr.step, "Australia/Sydney", country="AU", subdiv="NSW")
        other.load_state(base)
        assert other.train(load, now) is Training.UPDATE
        assert other.model.num_trees() == other.base_trees + other.update_rounds == model.base_trees + 8
        out[name] = other.predict(load, now, 48)
    assert np.array_equal(out["as measured"], out["future changed"])
    assert not np.allclose(out["as measured"], model.predict(tr.load_kw, now, 48))  # it did learn something


def test_gbm_schedule_refits_continues_and_bounds_the_booster() -> None:
    tr, model = _ausgrid(60)
    day, fit_at = 48, 40 * 48
    assert model.due(fit_at) is Training.REFIT  # nothing fitted yet
    model.fit(tr.load_kw[:fit_at], fit_at)
    assert model.due(fit_at + day - 1) is None  # the same day: used as it is
    assert model.due(fit_at + day) is Training.UPDATE
    assert model.due(fit_at + model.refit_days * day) is Training.REFIT  # the full refit's schedule
    assert model.due(fit_at - 1) is Training.REFIT  # a fit "from the future" (a clock jump) is redone
    model.update_gain = [0.0, -0.02, -0.03, -0.025]  # continuing did worse than the full fit alone, steadily
    assert model.due(fit_at + day) is Training.REFIT
    model.update_gain = [0.0, -0.03]  # one bad day is noise, not evidence
    assert model.due(fit_at + day) is Training.UPDATE
    model.update_gain = [0.0, 0.05, -0.03, 0.01]  # better and worse: continue
    assert model.due(fit_at + day) is Training.UPDATE
    model.max_trees = model.base_trees + model.update_rounds - 1  # one more continuation would pass the bound
    assert model.due(fit_at + day) is Training.REFIT
    never = GbmLoadForecaster(tr.start, tr.step, "Australia/Sydney", update_days=0)
    never.fit(tr.load_kw[:fit_at], fit_at)
    assert never.due(fit_at + 5 * day) is None  # refit-only: nothing between the full fits


def test_gbm_continued_state_round_trips_continues_and_stays_bounded() -> None:
    tr, model = _ausgrid(60)
    k = 35 * 48
    model.fit(tr.load_kw[:k], k)
    model.quantiles(tr.load_kw, k, 48)  # the stored state's largest form: point and three quantile boosters
    model.refit_days = 10**6  # only the tree bound ends the continuations
    while model.due(k + 48) is Training.UPDATE:
        k += 48
        model.update(tr.load_kw[:k], k)
    assert model.due(k + 48) is Training.REFIT and model.model.num_trees() <= model.max_trees
    assert model.model.num_trees() > model.base_trees  # it did continue
    blob = model.to_state()
    assert blob is not None and len(blob) <= MAX_STATE_BYTES  # the tree bound keeps the row under 512 kB
    later = tr.start + tr.step * 48 * 2
    other = GbmLoadForecaster(later, tr.step, "Australia/Sydney", country="AU", subdiv="NSW", refit_days=10**6)
    assert other.load_state(blob) == tr.start + tr.step * 35 * 48  # the full fit's time, not the last update's
    assert other.updated_at == k - 2 * 48 and other.base_trees == model.base_trees
    assert other.update_gain == model.update_gain and len(model.update_gain) == 20
    assert np.allclose(other.predict(tr.load_kw[2 * 48 :], k - 2 * 48, 48), model.predict(tr.load_kw, k, 48))
    q, q_other = model.quantiles(tr.load_kw, k, 48), other.quantiles(tr.load_kw[2 * 48 :], k - 2 * 48, 48)
    assert np.allclose(q.p90, q_other.p90)  # the continued quantile boosters came along
    assert other.due(k - 2 * 48) is None and other.model.num_trees() == model.model.num_trees()


def test_gbm_reads_a_version_1_state_and_refuses_a_broken_continuation() -> None:
    tr, model = _ausgrid(40)
    k = 35 * 48
    model.fit(tr.load_kw[:k], k)
    blob = model.to_state()
    assert blob is not None
    raw = msgspec.json.decode(zlib.decompress(blob))
    old = {key: v for key, v in raw.items() if key not in ("updated_at", "base_trees", "update_gain")}
    old["version"] = 1
    other = GbmLoadForecaster(tr.start, tr.step, "Australia/Sydney", country="AU", subdiv="NSW")
    other.load_state(zlib.compress(msgspec.json.encode(old)))
    assert other.updated_at == other.fitted_at == k and other.base_trees == model.base_trees
    assert other.due(k + 48) is Training.UPDATE
    for broken in ({"update_gain": [None]}, {"update_gain": [0.0] * 367}, {"base_trees": 10**6}):
        bad = zlib.compress(msgspec.json.encode({**raw, **broken}))
        with pytest.raises(ValueError):
            other.load_state(bad)
    early = {**raw, "updated_at": (tr.start + tr.step * (k - 1)).isoformat()}  # updated before it was fitted
    with pytest.raises(ValueError):
        other.load_state(zlib.compress(msgspec.json.encode(early)))


def test_gbm_continuation_reads_no_more_than_its_update_history() -> None:
    """The planner worker loads only `update_history` slots for a continuation: the same model results."""
    tr, model = _ausgrid(60)
    fit_at, now = 40 * 48, 43 * 48 + 16
    model.fit(tr.load_kw[:fit_at], fit_at)
    blob = model.to_state()
    assert blob is not None
    days = -(-model.update_history(now) // 48)  # whole days, as the worker loads them
    assert days < 40  # far less than a refit's window
    short_start = now - days * 48
    short = GbmLoadForecaster(tr.start + tr.step * short_start, tr.step, "Australia/Sydney", country="AU", subdiv="NSW")
    short.load_state(blob)
    assert short.train(tr.load_kw[short_start:now], now - short_start) is Training.UPDATE
    assert model.train(tr.load_kw, now) is Training.UPDATE
    assert np.allclose(short.predict(tr.load_kw[short_start:], days * 48, 48), model.predict(tr.load_kw, now, 48))


def test_continuation_hurts_only_beyond_the_noise() -> None:
    assert not continuation_hurts([])
    assert not continuation_hurts([0.0, -1.0])  # one day: too little to tell
    assert continuation_hurts([0.0, -0.1, -0.1])  # steadily worse (no spread at all)
    assert not continuation_hurts([0.0, -0.1, 0.1, -0.05])
    assert not continuation_hurts([0.0, 0.1, 0.1])  # better
    rng = np.random.default_rng(5)
    noise = [0.0, *rng.normal(0.0, 0.05, 13).tolist()]
    assert not continuation_hurts(noise)  # a fortnight of pure noise around no effect
    assert continuation_hurts([0.0, *(np.asarray(noise[1:]) - 0.1).tolist()])  # the same, shifted worse
