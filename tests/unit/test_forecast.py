"""Forecasters: clear sky, learned PV factor, weather dimming (recorded Open-Meteo answers), load."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest

from cloud.forecast import (
    DEFAULT_FACTOR_TYPICAL,
    Location,
    OpenMeteoClient,
    PvArray,
    PvFactor,
    WeatherDataError,
    WeatherError,
    clear_sky,
    forecast_load,
    forecast_pv,
    learn_pv_factor,
    mae,
    parse_open_meteo,
    weather_dimming,
)

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "openmeteo"
DE_BILT = Location(52.1, 5.18, 2.0)
Q = timedelta(minutes=15)


def test_clear_sky_shape_and_magnitude() -> None:
    start = datetime(2026, 6, 21, tzinfo=UTC)
    south = clear_sky(DE_BILT, [PvArray(1.0, 35, 180)], start, Q, 96)
    # a clear June noon on a 35° south plane: about 1 kW/m² on the plane
    assert 0.85 < south.pv_kw.max() < 1.1
    assert south.pv_kw[:8].max() == 0.0  # 00:00-02:00 UTC
    peak_hour = np.argmax(south.pv_kw) / 4
    assert 11 <= peak_hour <= 12.5  # solar noon at 5° E is ~11:40 UTC
    east = clear_sky(DE_BILT, [PvArray(1.0, 35, 90)], start, Q, 96)
    west = clear_sky(DE_BILT, [PvArray(1.0, 35, 270)], start, Q, 96)
    assert np.argmax(east.pv_kw) < np.argmax(south.pv_kw) < np.argmax(west.pv_kw)
    two = clear_sky(DE_BILT, [PvArray(2.0, 35, 90), PvArray(3.0, 35, 270)], start, Q, 96)
    assert two.pv_kw == pytest.approx(2 * east.pv_kw + 3 * west.pv_kw)
    winter = clear_sky(DE_BILT, [PvArray(1.0, 35, 180)], datetime(2026, 12, 21, tzinfo=UTC), Q, 96)
    assert winter.pv_kw.sum() < 0.5 * south.pv_kw.sum()


def _days_of(clear: np.ndarray, ratios: list[float]) -> np.ndarray:
    return np.concatenate([clear[i * 96 : (i + 1) * 96] * r for i, r in enumerate(ratios)])


def test_learned_factor_is_the_mean_day() -> None:
    cs = clear_sky(DE_BILT, [PvArray(5.0)], datetime(2026, 6, 1, tzinfo=UTC), Q, 96 * 10)
    ratios = [0.8, 0.78, 0.3, 0.82, 0.79, 0.1, 0.81, 0.8, 0.55, 0.0]  # a cloudy day, a dark day, a day of snow
    measured = _days_of(cs.pv_kw, ratios)
    f = learn_pv_factor(measured, cs.pv_kw, 96, kwp=5.0)
    assert f.days == 10
    # The mean day (the energy a plan can count on over many days), not the median (0.795): planned on the
    # median, the dark days' missing energy is bought at the import price.
    clear_energy = cs.pv_kw.reshape(10, 96).sum(axis=1)  # (dawn slots are left out: 1e-4)
    assert f.typical == pytest.approx(float(np.dot(ratios, clear_energy) / clear_energy.sum()), abs=1e-4)
    assert f.typical == pytest.approx(np.mean(ratios), abs=0.01)
    assert 0.79 <= f.clear <= 0.82
    # a day with a telemetry hole at midday is not used at all (it would look like a cloudy day)
    holey = measured.copy()
    holey[40:60] = np.nan
    assert learn_pv_factor(holey, cs.pv_kw, 96, kwp=5.0).days == 9
    # no history: defaults
    assert learn_pv_factor(np.array([]), np.array([]), 96, kwp=5.0) == PvFactor()
    assert forecast_pv(cs.pv_kw[:96], PvFactor()).max() == pytest.approx(DEFAULT_FACTOR_TYPICAL * cs.pv_kw.max())


def test_open_meteo_recorded_answer_dims_the_cloudy_day() -> None:
    wx = parse_open_meteo((FIX / "forecast_debilt_2026-06-01.json").read_bytes())
    assert wx.times[0] == datetime(2026, 6, 1, tzinfo=UTC)
    assert len(wx.times) == 72
    start = datetime(2026, 6, 1, tzinfo=UTC)
    cs = clear_sky(DE_BILT, [PvArray(1.0)], start, Q, 3 * 96)
    ghi = wx.on_grid(start, Q, 3 * 96, "ghi")
    dim = weather_dimming(cs.ghi, ghi=ghi)
    day = [dim[d * 96 + 36 : d * 96 + 64].mean() for d in range(3)]  # 09:00-16:00 UTC
    assert day[0] > 0.9  # mostly clear
    assert day[1] < day[2] < day[0]  # 85 % then 45 % cloud
    by_cc = weather_dimming(cs.ghi, cloud_cover_pct=wx.on_grid(start, Q, 3 * 96, "cloud_cover"))
    assert by_cc[96 + 48] < 0.8 and by_cc[48] > 0.95
    # beyond the forecast: no dimming information → 1
    assert weather_dimming(cs.ghi[:4], ghi=np.full(4, np.nan)).tolist() == [1.0] * 4


def test_open_meteo_local_time_answer_is_converted_to_utc() -> None:
    utc = parse_open_meteo((FIX / "forecast_debilt_2026-06-01.json").read_bytes())
    local = parse_open_meteo((FIX / "forecast_amsterdam_local_2026-06-01.json").read_bytes())
    assert local.times[:24] == utc.times[:24]


def test_ghi_is_aligned_to_the_hour_before_its_stamp() -> None:
    wx = parse_open_meteo((FIX / "forecast_debilt_2026-06-01.json").read_bytes())
    assert wx.ghi is not None
    # slot 10:15-10:30 UTC lies in the hour 10:00-11:00, which Open-Meteo stamps 11:00
    start = datetime(2026, 6, 1, 10, 15, tzinfo=UTC)
    assert wx.on_grid(start, Q, 1, "ghi")[0] == wx.ghi[11]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ((FIX / "error_bad_variable.json").read_bytes(), "cloudcover_foo"),
        (b"not json", "not JSON"),
        (b'{"utc_offset_seconds": 0, "hourly": {"time": ["2026-01-01T00:00"], "cloud_cover": [1, 2]}}', "2 values"),
    ],
)
def test_open_meteo_errors(body: bytes, match: str) -> None:
    with pytest.raises(WeatherError, match=match):
        parse_open_meteo(body)


_T2 = '"time": ["2026-01-01T00:00", "2026-01-01T01:00"]'


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (f'{{"utc_offset_seconds": 0, "hourly": {{{_T2}, "cloud_cover": [1, 101]}}}}', "cloud_cover value 101"),
        (f'{{"utc_offset_seconds": 0, "hourly": {{{_T2}, "cloud_cover": [-1, 5]}}}}', "cloud_cover value -1"),
        (f'{{"utc_offset_seconds": 0, "hourly": {{{_T2}, "shortwave_radiation": [0, 1e300]}}}}', "1e\\+300"),
        (f'{{"utc_offset_seconds": 0, "hourly": {{{_T2}, "shortwave_radiation": [0, 1e999]}}}}', "out of range"),
        ('{"utc_offset_seconds": 0, "hourly": {"time": ["2026-01-01T00:00", "2026-01-01T03:00"]}}', "per hour"),
        (f'{{"utc_offset_seconds": 99999999, "hourly": {{{_T2}}}}}', "utc_offset_seconds"),
        (b'{"utc_offset_seconds": 0, "hourly": {"time": ["2026-01-01T00:00"], "cloud_cover": [NaN]}}', "not JSON"),
    ],
)
def test_open_meteo_values_out_of_range_are_refused(body: str | bytes, match: str) -> None:
    raw = body.encode() if isinstance(body, str) else body
    with pytest.raises(WeatherDataError, match=match):
        parse_open_meteo(raw)
    # null is Open-Meteo's "missing": kept as NaN, not refused
    ok = parse_open_meteo(f'{{"utc_offset_seconds": 0, "hourly": {{{_T2}, "cloud_cover": [null, 100]}}}}'.encode())
    assert ok.cloud_cover_pct is not None and np.isnan(ok.cloud_cover_pct[0]) and ok.cloud_cover_pct[1] == 100


async def test_open_meteo_client_caches_answers_not_failures() -> None:
    body = (FIX / "forecast_debilt_2026-06-01.json").read_bytes()
    answers = [httpx.Response(500), httpx.Response(200, content=body), httpx.Response(200, content=b"x" * (2 << 20))]
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params["latitude"])
        return answers.pop(0)

    client = OpenMeteoClient(transport=httpx.MockTransport(handler), cache_s=3600)
    with pytest.raises(WeatherError, match="HTTP 500"):
        await client.forecast(DE_BILT)
    first = await client.forecast(DE_BILT)  # the failure was not kept: asked again
    assert await client.forecast(DE_BILT) is first  # kept: not asked again
    assert asked == ["52.1", "52.1"]
    with pytest.raises(WeatherDataError, match="over 1048576 bytes"):  # another place; a body over the cap
        await client.forecast(Location(50.8, 4.36, 0.0))


async def test_open_meteo_client_query_and_timeout() -> None:
    seen: list[httpx.Request] = []
    body = (FIX / "forecast_debilt_2026-06-01.json").read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body)

    wx = await OpenMeteoClient(transport=httpx.MockTransport(handler)).forecast(DE_BILT)
    assert len(wx.times) == 72
    assert seen[0].url.params["hourly"] == "cloud_cover,shortwave_radiation"
    assert seen[0].url.params["timezone"] == "GMT"

    err = (FIX / "error_bad_variable.json").read_bytes()
    with pytest.raises(WeatherError, match="cloudcover_foo"):
        await OpenMeteoClient(transport=httpx.MockTransport(lambda r: httpx.Response(400, content=err))).forecast(
            DE_BILT
        )

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(3)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = OpenMeteoClient(base_url=f"http://127.0.0.1:{port}/v1/forecast", timeout_s=0.3)
        with pytest.raises(WeatherError, match="no answer"):
            await client.forecast(DE_BILT)
    finally:
        server.close()


def _weekly_load(weeks: int) -> np.ndarray:
    slots = np.arange(weeks * 7 * 96)
    hod = (slots % 96) / 4
    dow = (slots // 96) % 7
    base = 0.3 + 1.2 * np.exp(-(((hod - 19) / 2) ** 2)) + 0.6 * np.exp(-(((hod - 8) / 1.5) ** 2))
    return np.asarray(base + np.where(dow >= 5, 0.5 * np.exp(-(((hod - 13) / 3) ** 2)), 0.0))


def test_load_repeats_the_weekly_pattern() -> None:
    hist = _weekly_load(5)
    n = 4 * 7 * 96
    fc = forecast_load(hist[:n], 192, 96)
    assert fc == pytest.approx(hist[n : n + 192], abs=1e-9)


def test_load_blends_in_the_recent_level_and_fades_it() -> None:
    hist = _weekly_load(5)
    n = 4 * 7 * 96 + 40
    h = hist[:n].copy()
    h[-8:] *= 1.5  # the last two hours ran 50 % above the usual
    fc = forecast_load(h, 192, 96)
    truth = hist[n : n + 192]
    assert fc[0] / truth[0] == pytest.approx(1.5, rel=0.01)
    assert fc[-1] / truth[-1] == pytest.approx(1.0, abs=0.01)


def test_load_with_little_history_uses_days_then_the_level() -> None:
    hist = _weekly_load(1)
    fc = forecast_load(hist[:200], 96, 96)  # two days: same time yesterday
    assert fc[:40] == pytest.approx(hist[200 - 96 : 200 - 56], rel=0.01)
    flat = forecast_load(np.full(3, 0.8), 10, 96)
    assert flat == pytest.approx([0.8] * 10)
    assert forecast_load(np.array([]), 4, 96, default_kw=0.4) == pytest.approx([0.4] * 4)
    gappy = hist[:800].copy()
    gappy[:] = np.nan
    assert not np.isnan(forecast_load(gappy, 8, 96)).any()


def test_mae() -> None:
    got = mae(np.array([1.0, 2.0, 3.0]), np.array([1.5, np.nan, 2.0]))
    assert got == (pytest.approx(0.75), 2)
    assert mae(np.array([1.0]), np.array([np.nan])) is None
