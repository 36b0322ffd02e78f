"""A site registered badly or not at all: its location and PV plane from its own PV (cloud.site_infer), the
backtest learning them as it goes (no future data), and the warnings where a registration disagrees with the
measurements."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from cloud.backtest import Config, Planner, Traces, read_traces, rolling_flows, site_notes
from cloud.backtest_config import add_arguments, config_from_args
from cloud.forecast import Location, PvArray, clear_sky
from cloud.site_infer import infer_site, measured_solar_noon, registration_warnings

DATA = Path(__file__).resolve().parents[2] / "bench" / "data"
STEP = timedelta(minutes=30)
START = datetime(2023, 3, 1, tzinfo=UTC)


def _pv(location: Location, array: PvArray, days: int, seed: int = 1, start: datetime = START) -> np.ndarray:
    """pvlib's clear sky on the array, each day dimmed by a random cloudiness (a third of the days clear)."""
    spd = round(timedelta(days=1) / STEP)
    clear = clear_sky(location, [array], start, STEP, days * spd).pv_kw
    rng = np.random.default_rng(seed)
    day = np.where(rng.random(days) < 1 / 3, 1.0, rng.uniform(0.1, 0.8, days))
    return np.asarray(clear * np.repeat(day, spd) * 0.85, dtype=np.float64)


@pytest.mark.parametrize(
    ("location", "array"),
    [
        (Location(-33.87, 151.21), PvArray(1.04, 20.0, 0.0)),  # Sydney: the day spans UTC midnight
        (Location(52.1, 5.18), PvArray(5.0, 35.0, 180.0)),  # De Bilt
        (Location(40.4, -3.7), PvArray(3.0, 10.0, 180.0)),  # Madrid, nearly flat
    ],
)
def test_the_site_is_found_from_its_pv(location: Location, array: PvArray) -> None:
    pv = _pv(location, array, 42)
    est = infer_site(pv, START, STEP)
    assert est is not None
    assert abs(est.lon - location.lon) <= 3.0  # 12 minutes of solar noon
    assert abs(est.lat - location.lat) <= 10.0
    assert est.azimuth == (0.0 if location.lat < 0 else 180.0)  # facing the equator
    # the learned site's clear sky has the measured day's shape: solar noon within 10 minutes
    fitted = clear_sky(Location(est.lat, est.lon), [PvArray(est.kwp, est.tilt, est.azimuth)], START, STEP, len(pv))
    noon_fit, noon_pv = measured_solar_noon(fitted.pv_kw, START, STEP), measured_solar_noon(pv, START, STEP)
    assert noon_fit is not None and noon_pv is not None
    assert abs((noon_fit - noon_pv + 12) % 24 - 12) <= 10 / 60


def test_the_sydney_noon_is_the_circular_mean_across_utc_midnight() -> None:
    pv = _pv(Location(-33.87, 151.21), PvArray(1.0, 0.0, 0.0), 7)
    noon = measured_solar_noon(pv, START, STEP)
    assert noon is not None and abs(noon - (12.0 - 151.21 / 15.0)) <= 0.2  # about 01:55 UTC, not 12:00


def test_no_pv_or_too_few_days_gives_no_estimate() -> None:
    n = 10 * 48
    assert infer_site(np.zeros(n), START, STEP) is None
    assert measured_solar_noon(np.full(n, np.nan), START, STEP) is None
    assert infer_site(_pv(Location(52.1, 5.18), PvArray(5.0), 3), START, STEP) is None  # fewer than 4 days


def test_a_wrong_registration_is_reported_and_a_right_one_is_not() -> None:
    site, array = Location(47.66, 9.18), PvArray(10.1, 28.0, 208.0)
    pv = _pv(site, array, 28)

    def warnings(location: Location, registered: PvArray) -> list[str]:
        clear = clear_sky(location, [registered], START, STEP, len(pv)).pv_kw
        found = registration_warnings(pv, clear, START, STEP)
        assert [kind for kind, _ in found] == [k for k in ("solar_noon", "kwp") if any(k == f[0] for f in found)]
        return [message for _, message in found]

    assert warnings(site, array) == []
    assert warnings(Location(52.1, 5.18), PvArray(10.1, 35.0, 180.0)) == []  # the default: a near guess
    (noon,) = warnings(Location(-33.87, 151.21), array)
    # the longitude the PV says: the array faces 28° west of south, which moves its noon about half an hour
    lon = re.search(r"longitude \(about (-?\d+)°", noon)
    assert lon is not None and abs(int(lon.group(1)) - 9.18) <= 10
    assert any("solar noon" in w for w in warnings(site, replace(array, azimuth_deg=298.0)))  # turned 90°
    (kwp,) = warnings(site, replace(array, kwp=3.0))
    assert "registered kWp" in kwp
    assert registration_warnings(np.zeros(len(pv)), pv, START, STEP) == []  # no PV: nothing to compare


# --- the backtest ---------------------------------------------------------------------------------------------


def _config(*argv: str) -> Config:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(["trace.csv", *argv]))


def test_infer_site_is_on_only_where_no_location_is_registered() -> None:
    assert _config().infer_site
    assert not _config("--lat", "52", "--lon", "5").infer_site
    assert not _config("--lon", "5").infer_site
    assert not _config("--no-infer-site").infer_site
    assert _config("--lat", "52", "--lon", "5", "--infer-site").infer_site
    assert not Config().infer_site  # bench/backtest.py's registered houses are unchanged


@pytest.fixture(scope="module")
def sydney() -> Traces:
    """The first 20 days of the real Ausgrid house (Sydney, half-hourly), run as if nothing were registered."""
    full = read_traces(str(DATA / "ausgrid_c12_nl_2023.csv"))
    return full.head(20 * full.slots_per_day)


def test_the_planner_moves_to_the_site_its_pv_says(sydney: Traces) -> None:
    cfg = Config(infer_site=True)  # De Bilt until the PV says otherwise
    planner = Planner(sydney, cfg)
    spd = sydney.slots_per_day
    before = planner.forecasts(3 * spd, 48)[1]
    planner.forecasts(8 * spd, 48)
    assert planner.site is not None and abs(planner.site.lon - 151.21) <= 10.0 and planner.site.lat < 0
    after = planner.forecasts(8 * spd, 96)[1]
    # the forecast's PV now peaks when the Sydney sun does (about 02:00 UTC), not De Bilt's 11:40 UTC
    hours = [(sydney.start + sydney.step * (8 * spd + j)).hour for j in range(96)]
    peak_hour = hours[int(np.argmax(after))]
    assert peak_hour in (0, 1, 2, 3, 4)
    assert before.max() >= 0.0


def test_learning_the_site_uses_no_future_pv(sydney: Traces) -> None:
    """Changing the PV after slot k changes nothing the planner did before k."""
    k = 12 * sydney.slots_per_day + 5
    changed = replace(sydney, pv_kw=np.concatenate([sydney.pv_kw[:k], sydney.pv_kw[k:][::-1] * 0.3]))
    cfg = Config(infer_site=True)
    c1, d1, _, _ = rolling_flows(sydney, cfg)
    c2, d2, _, _ = rolling_flows(changed, cfg)
    assert np.array_equal(c1[:k], c2[:k]) and np.array_equal(d1[:k], d2[:k])


def test_the_backtest_notes_what_it_learns_and_warns_of_a_wrong_site(sydney: Traces) -> None:
    (note,) = site_notes(sydney, Config(infer_site=True))
    assert note.startswith("note: no site location given") and "lat -" in note
    registered = Config(tz="Australia/Sydney", lat=-33.87, lon=151.21, pv_kwp=1.04, tilt_deg=20.0, azimuth_deg=0.0)
    assert site_notes(sydney, registered) == []
    noon, kwp = site_notes(sydney, Config())  # De Bilt's 5 kWp for Sydney's 1.04
    assert noon.startswith("warning: the measured PV's solar noon") and "registered kWp" in kwp


# --- the planner worker ---------------------------------------------------------------------------------------


def test_the_worker_logs_and_counts_a_registration_its_pv_disagrees_with_once_a_day(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cloud.planner as planner
    from cloud.server.metrics import PV_REGISTRATION_MISMATCH, Metrics

    monkeypatch.setattr(planner, "_PV_REGISTRATION_LOGGED", {})
    step = planner.STEP
    days = 14
    now = datetime(2024, 6, 15, tzinfo=UTC)
    start = now - step * days * 96
    sydney = clear_sky(Location(-33.87, 151.21), [PvArray(4.0, 20.0, 0.0)], start, step, days * 96).pv_kw
    de_bilt = clear_sky(Location(52.1, 5.18), [PvArray(4.0, 35.0, 180.0)], start, step, days * 96).pv_kw
    before = PV_REGISTRATION_MISMATCH["solar_noon"]
    planner._check_pv_registration("s1", sydney * 0.8, sydney, now, now)  # registered right: nothing
    assert PV_REGISTRATION_MISMATCH["solar_noon"] == before
    planner._check_pv_registration("s1", sydney * 0.8, de_bilt, now, now)  # a Sydney house registered at De Bilt
    assert PV_REGISTRATION_MISMATCH["solar_noon"] == before + 1
    planner._check_pv_registration("s1", sydney * 0.8, de_bilt, now, now + timedelta(hours=1))  # the next plan
    assert PV_REGISTRATION_MISMATCH["solar_noon"] == before + 1
    planner._check_pv_registration("s1", sydney * 0.8, de_bilt, now, now + timedelta(days=1))  # a day later
    assert PV_REGISTRATION_MISMATCH["solar_noon"] == before + 2
    assert f'zapcloud_pv_registration_mismatch_total{{kind="solar_noon"}} {before + 2}' in Metrics().render()


def test_the_solar_time_zone_of_a_longitude() -> None:
    from cloud.site_infer import solar_zone

    assert [solar_zone(x) for x in (151.2, 9.18, 5.18, -74.0, 179.9, -179.9)] == [
        "Etc/GMT-10",  # UTC+10 (the Etc names count the other way)
        "Etc/GMT-1",
        "UTC",
        "Etc/GMT+5",
        "Etc/GMT-12",
        "Etc/GMT+12",
    ]


def test_prices_are_published_on_the_learned_sites_clock_only_where_the_default_cannot_be_it(sydney: Traces) -> None:
    """A Sydney house with no time zone: Amsterdam's 13:00 is 9-10 h off its sun, so once the site is learned
    prices are published at 13:00 UTC+10; a house whose sun is within 2 h of Amsterdam's clock keeps it."""
    spd = sydney.slots_per_day
    planner = Planner(sydney, Config(infer_site=True, infer_tz=True))
    assert planner.clock.tz == "Europe/Amsterdam"
    planner.forecasts(8 * spd, 48)
    assert planner.clock.tz == "Etc/GMT-10"
    given = Planner(sydney, Config(infer_site=True))  # a time zone registered (--tz): never moved
    given.forecasts(8 * spd, 48)
    assert given.site is not None and given.clock.tz == "Europe/Amsterdam"
    de_bilt = replace(sydney, pv_kw=_pv(Location(52.1, 5.18), PvArray(1.0, 35.0, 180.0), 20, start=sydney.start))
    planner = Planner(de_bilt, Config(infer_site=True, infer_tz=True))
    planner.forecasts(8 * spd, 48)
    assert planner.site is not None and planner.clock.tz == "Europe/Amsterdam"


def test_infer_tz_only_without_a_registered_time_zone() -> None:
    assert _config().infer_tz
    assert not _config("--tz", "Europe/Berlin").infer_tz
    assert not _config("--lat", "52", "--lon", "5").infer_tz
