"""Price sources: ENTSO-E documents (recorded format, tests/fixtures/entsoe), CSV files, tariffs."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from cloud.prices import (
    EntsoeClient,
    NoPriceData,
    PriceSeries,
    PriceSourceError,
    load_csv,
    merge,
    parse_entsoe,
    tariff_series,
)
from cloud.tariffs import decode_tariff

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "entsoe"


def test_pt60m_a01_two_timeseries_become_one_series() -> None:
    s = parse_entsoe((FIX / "nl_a44_pt60m_a01_2023-03-15.xml").read_bytes())
    assert s.start == datetime(2023, 3, 14, 23, tzinfo=UTC)
    assert s.step == timedelta(hours=1)
    assert len(s.values) == 48
    assert not any(math.isnan(v) for v in s.values)
    # per kWh: the document's first price is in EUR/MWh
    first = float((FIX / "nl_a44_pt60m_a01_2023-03-15.xml").read_text().split("<price.amount>")[1].split("<")[0])
    assert s.values[0] == pytest.approx(first / 1000)


def test_the_documents_creation_time_is_the_publication_time() -> None:
    """The header's createdDateTime (2023-03-15T11:02:41Z in the document), minutes and seconds kept."""
    s = parse_entsoe((FIX / "nl_a44_pt60m_a01_2023-03-15.xml").read_bytes())
    assert s.published_at == datetime(2023, 3, 15, 11, 2, 41, tzinfo=UTC)


def test_a03_missing_positions_repeat_the_previous_price() -> None:
    s = parse_entsoe((FIX / "de_lu_a44_pt60m_a03_2024-05-12.xml").read_bytes())
    expected_mwh = [62.1, 55.4, 50.0, 48.9, 48.9, 48.9, 52.3, 40.1, 10.5, -0.01, -5.2, -12.4, -14.9, -14.9,
                    -9.8, -1.0, 0.0, 35.2, 80.6, 104.3, 112.7, 98.4, 85.0, 85.0]  # fmt: skip
    assert s.values == pytest.approx([p / 1000 for p in expected_mwh])
    # position 24 is absent from the document (same as 23) and still filled up to the period end
    assert s.end == datetime(2024, 5, 12, 22, tzinfo=UTC)
    assert s.at(datetime(2024, 5, 12, 10, 30, tzinfo=UTC)) == pytest.approx(-0.0149)


def test_pt15m_preferred_when_both_resolutions_are_published() -> None:
    s = parse_entsoe((FIX / "nl_a44_pt15m_a03_2025-10-02.xml").read_bytes())
    assert s.step == timedelta(minutes=15)
    assert len(s.values) == 96
    # the plateau (positions 41..44) was compressed to one point in the document
    assert s.values[40] == s.values[41] == s.values[42] == s.values[43]
    assert not any(math.isnan(v) for v in s.values)


def test_dst_day_has_25_hours() -> None:
    s = parse_entsoe((FIX / "nl_a44_pt60m_dst_2024-10-27.xml").read_bytes())
    assert len(s.values) == 25
    assert s.start == datetime(2024, 10, 26, 22, tzinfo=UTC)


def test_acknowledgement_means_no_data() -> None:
    with pytest.raises(NoPriceData, match="No matching data"):
        parse_entsoe((FIX / "acknowledgement_no_data.xml").read_bytes())


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        (b"<html>502 Bad Gateway", "not XML"),
        (b"<Foo/>", "unexpected document"),
        (
            b'<Publication_MarketDocument xmlns="x"><TimeSeries><curveType>A03</curveType><Period>'
            b"<timeInterval><start>2024-01-01T00:00Z</start><end>2024-01-01T02:00Z</end></timeInterval>"
            b"<resolution>PT60M</resolution><Point><position>3</position><price.amount>1</price.amount></Point>"
            b"</Period></TimeSeries></Publication_MarketDocument>",
            "outside",
        ),
        (
            b'<Publication_MarketDocument xmlns="x"><TimeSeries><Period>'
            b"<timeInterval><start>2024-01-01T00:00Z</start><end>2024-01-01T02:00Z</end></timeInterval>"
            b"<resolution>PT5M</resolution></Period></TimeSeries></Publication_MarketDocument>",
            "resolution",
        ),
    ],
)
def test_malformed_documents_are_errors(doc: bytes, match: str) -> None:
    with pytest.raises(PriceSourceError, match=match):
        parse_entsoe(doc)


def test_a01_hole_stays_a_hole_and_limits_known_until() -> None:
    doc = (
        b'<Publication_MarketDocument xmlns="x"><TimeSeries><curveType>A01</curveType><Period>'
        b"<timeInterval><start>2024-01-01T00:00Z</start><end>2024-01-01T03:00Z</end></timeInterval>"
        b"<resolution>PT60M</resolution><Point><position>1</position><price.amount>10</price.amount></Point>"
        b"<Point><position>3</position><price.amount>30</price.amount></Point>"
        b"</Period></TimeSeries></Publication_MarketDocument>"
    )
    s = parse_entsoe(doc)
    assert s.at(datetime(2024, 1, 1, 1, tzinfo=UTC)) is None
    assert s.known_until() == datetime(2024, 1, 1, 1, tzinfo=UTC)


def test_on_grid_repeats_hourly_prices_over_quarter_hours() -> None:
    s = PriceSeries(datetime(2024, 1, 1, tzinfo=UTC), timedelta(hours=1), (0.1, 0.2))
    grid = s.on_grid(datetime(2024, 1, 1, 0, 30, tzinfo=UTC), timedelta(minutes=15), 8)
    assert grid == [0.1, 0.1, 0.2, 0.2, 0.2, 0.2, None, None]


def test_merge_later_wins_and_gaps_are_nan() -> None:
    h = timedelta(hours=1)
    a = PriceSeries(datetime(2024, 1, 1, tzinfo=UTC), h, (1.0, 2.0))
    b = PriceSeries(datetime(2024, 1, 1, 1, tzinfo=UTC), h, (5.0,))
    c = PriceSeries(datetime(2024, 1, 1, 4, tzinfo=UTC), h, (7.0,))
    m = merge([c, a, b])
    assert m.values[:2] == (1.0, 5.0)
    assert math.isnan(m.values[2]) and m.values[4] == 7.0


def test_csv(tmp_path: Path) -> None:
    p = tmp_path / "p.csv"
    p.write_text("ts,price\n2024-01-01T00:00:00Z,85.5\n2024-01-01T01:00:00+00:00,90\n2024-01-01T03:00:00Z,-4\n")
    s = load_csv(p, per_mwh=True)
    assert s.step == timedelta(hours=1)
    assert s.values[0] == pytest.approx(0.0855)
    assert math.isnan(s.values[2])
    assert s.values[3] == pytest.approx(-0.004)
    p.write_text("ts,price\n2024-01-01T00:00:00Z,1\n2024-01-01T01:00:00Z,2\n2024-01-01T01:30:00Z,3\n")
    with pytest.raises(PriceSourceError, match="off the"):
        load_csv(p)
    p.write_text("ts,price\n2024-01-01T00:00:00,1\n")
    with pytest.raises(PriceSourceError, match="UTC offset"):
        load_csv(p)


def test_tariff_series_for_tou_tariff() -> None:
    t = decode_tariff(
        {
            "energy": {
                "kind": "tou",
                "tou": {"default": 0.3, "windows": [{"start": "00:00", "end": "06:00", "value": 0.1}]},
            }
        }
    )
    imp, exp = tariff_series(t, datetime(2024, 1, 1, 5, tzinfo=UTC), timedelta(hours=1), 3)
    assert imp.values == pytest.approx((0.1, 0.3, 0.3))
    assert exp.values == (0.0, 0.0, 0.0)


async def test_client_sends_a44_query_and_parses() -> None:
    seen: list[httpx.Request] = []
    body = (FIX / "de_lu_a44_pt60m_a03_2024-05-12.xml").read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=body, headers={"content-type": "text/xml"})

    client = EntsoeClient("tok", transport=httpx.MockTransport(handler))
    s = await client.day_ahead(
        "10Y1001A1001A82H", datetime(2024, 5, 11, 22, tzinfo=UTC), datetime(2024, 5, 12, 22, tzinfo=UTC)
    )
    assert len(s.values) == 24
    q = seen[0].url.params
    assert q["documentType"] == "A44"
    assert q["in_Domain"] == q["out_Domain"] == "10Y1001A1001A82H"
    assert q["periodStart"] == "202405112200" and q["periodEnd"] == "202405122200"


async def test_client_400_acknowledgement_is_no_data_and_401_is_error() -> None:
    ack = (FIX / "acknowledgement_no_data.xml").read_bytes()
    client = EntsoeClient("t", transport=httpx.MockTransport(lambda r: httpx.Response(400, content=ack)))
    t0 = datetime(2026, 6, 1, 22, tzinfo=UTC)
    with pytest.raises(NoPriceData):
        await client.day_ahead("10YNL----------L", t0, t0 + timedelta(days=1))
    client = EntsoeClient("secret-token", transport=httpx.MockTransport(lambda r: httpx.Response(401)))
    with pytest.raises(PriceSourceError, match="401") as info:
        await client.day_ahead("10YNL----------L", t0, t0 + timedelta(days=1))
    assert "secret-token" not in str(info.value)


async def test_client_times_out_against_a_silent_loopback_server() -> None:
    """A real socket on 127.0.0.1 that accepts and never answers: the timeout must fire."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = EntsoeClient("t", base_url=f"http://127.0.0.1:{port}/api", timeout_s=0.3)
        t0 = datetime(2026, 6, 1, tzinfo=UTC)
        with pytest.raises(PriceSourceError, match="no answer"):
            await client.day_ahead("10YNL----------L", t0, t0 + timedelta(days=1))
    finally:
        server.close()
