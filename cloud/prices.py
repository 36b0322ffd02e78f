"""Day-ahead prices: from a CSV file, from a tariff without spot, or from the ENTSO-E transparency API.

Every source yields a `PriceSeries`: slot starts at a fixed step with prices per kWh (the exchange quotes
per MWh; we convert once, here, so nothing downstream mixes units).

ENTSO-E (https://transparency.entsoe.eu/, REST API, document type A44 "price document"):
* the answer is a Publication_MarketDocument with one or more TimeSeries, each with Periods that have a
  UTC time interval, a resolution (PT60M, PT30M, PT15M) and Points (1-based position, price.amount);
* curveType A03 ("variable sized block") omits a Point whose price equals the previous one, so a missing
  position repeats the previous price until the next Point or the end of the Period; A01 lists every point;
* since the 15-minute day-ahead market (Oct 2025) some zones publish both a PT15M and a PT60M series for the
  same day; we keep the finest resolution, because the PT60M series is only the hourly average;
* "no data" is not an HTTP error but an Acknowledgement_MarketDocument with a Reason (code 999) and a 200
  (or a 400 with the same document): we raise `NoPriceData` so the caller can tell it from a failure.

The XML is parsed with the standard library's expat-based parser, which refuses entity expansion bombs
(expat ≥ 2.4); the document is size-capped before parsing.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import httpx

from cloud.tariffs import Tariff, price_arrays

ENTSOE_URL: Final = "https://web-api.tp.entsoe.eu/api"
DEFAULT_TIMEOUT_S: Final = 20.0
MAX_DOCUMENT_BYTES: Final = 16 * 1024 * 1024
_RESOLUTIONS: Final = {"PT15M": 15, "PT30M": 30, "PT60M": 60, "P1D": 1440}


class PriceSourceError(Exception):
    """A price source failed (network, HTTP status, malformed document); the message says which."""


class NoPriceData(PriceSourceError):
    """The source answered, but has no prices for the asked interval (e.g. tomorrow before publication)."""


@dataclass(frozen=True, slots=True)
class PriceSeries:
    """Prices per kWh for consecutive slots of `step` starting at `start` (UTC). NaN marks a hole."""

    start: datetime
    step: timedelta
    values: tuple[float, ...]
    # When the source published them (ENTSO-E: the document's createdDateTime); None if it does not say.
    published_at: datetime | None = None

    @property
    def end(self) -> datetime:
        return self.start + self.step * len(self.values)

    def starts(self) -> list[datetime]:
        return [self.start + self.step * i for i in range(len(self.values))]

    def at(self, ts: datetime) -> float | None:
        """The price of the slot that contains `ts`, or None outside the series or in a hole."""
        if ts < self.start or ts >= self.end:
            return None
        value = self.values[int((ts - self.start) // self.step)]
        return None if math.isnan(value) else value

    def on_grid(self, start: datetime, step: timedelta, n: int) -> list[float | None]:
        """The series seen on another slot grid (each slot takes the price at its start).

        A coarser price (hourly) repeats over finer slots; a finer one (15 min) is sampled, which is right
        for a tariff that settles per 15 min and close enough for planning on an hourly grid.
        """
        return [self.at(start + step * i) for i in range(n)]

    def known_until(self) -> datetime:
        """End of the leading run without holes: how far a planner can trust the prices."""
        for i, v in enumerate(self.values):
            if math.isnan(v):
                return self.start + self.step * i
        return self.end


def merge(series: Iterable[PriceSeries]) -> PriceSeries:
    """Join series of one step into one (later ones win on overlap); holes become NaN."""
    items = sorted(series, key=lambda s: s.start)
    if not items:
        raise NoPriceData("no price series")
    step = items[0].step
    if any(s.step != step for s in items):
        raise PriceSourceError("cannot merge price series of different resolutions")
    start, end = items[0].start, max(s.end for s in items)
    values = [math.nan] * int((end - start) // step)
    for s in items:
        offset = int((s.start - start) // step)
        values[offset : offset + len(s.values)] = s.values
    return PriceSeries(start=start, step=step, values=tuple(values))


# --- CSV --------------------------------------------------------------------------------


def load_csv(path: str | Path, *, column: str = "price", per_mwh: bool = False) -> PriceSeries:
    """Prices from a CSV with a `ts` column (RFC 3339 with offset) and a price column, at a fixed step.

    The step is taken from the first two rows; a missing row becomes a hole (NaN), a row off the step grid
    is an error, because silently shifting prices by a slot is the worst kind of bug in a planner.
    """
    scale = 0.001 if per_mwh else 1.0
    points: list[tuple[datetime, float]] = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "ts" not in reader.fieldnames or column not in reader.fieldnames:
            raise PriceSourceError(f"{path}: needs columns ts and {column}")
        for line, row in enumerate(reader, start=2):
            try:
                ts = datetime.fromisoformat(row["ts"])
                value = float(row[column]) * scale
            except (TypeError, ValueError) as exc:
                raise PriceSourceError(f"{path}:{line}: {exc}") from None
            if ts.tzinfo is None:
                raise PriceSourceError(f"{path}:{line}: ts {row['ts']!r} has no UTC offset")
            points.append((ts.astimezone(UTC), value))
    return series_from_points(points, source=str(path))


def series_from_points(points: list[tuple[datetime, float]], *, source: str) -> PriceSeries:
    if len(points) < 2:
        raise PriceSourceError(f"{source}: need at least two prices to know the step")
    points.sort()
    step = points[1][0] - points[0][0]
    if step <= timedelta(0):
        raise PriceSourceError(f"{source}: duplicate timestamp {points[0][0].isoformat()}")
    start = points[0][0]
    n = int((points[-1][0] - start) // step) + 1
    values = [math.nan] * n
    for ts, value in points:
        offset, rest = divmod(ts - start, step)
        if rest:
            raise PriceSourceError(f"{source}: {ts.isoformat()} is off the {step} grid")
        values[offset] = value
    return PriceSeries(start=start, step=step, values=tuple(values))


# --- tariffs without spot -----------------------------------------------------------------


def tariff_series(tariff: Tariff, start: datetime, step: timedelta, n: int) -> tuple[PriceSeries, PriceSeries]:
    """Import and export prices of a fixed or time-of-use tariff: known arbitrarily far ahead."""
    starts = [start + step * i for i in range(n)]
    imp, exp = price_arrays(tariff, starts, None)
    return PriceSeries(start, step, tuple(imp)), PriceSeries(start, step, tuple(exp))


# --- ENTSO-E ------------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(el: ET.Element, path: str) -> str:
    """Text of a descendant by a path of local names (namespace-agnostic, since ENTSO-E bumps versions)."""
    found = el.find("/".join(f"{{*}}{p}" for p in path.split("/")))
    if found is None or found.text is None:
        raise PriceSourceError(f"ENTSO-E document: missing {path}")
    return found.text.strip()


def _parse_ts(text: str) -> datetime:
    # ENTSO-E writes minutes-only UTC stamps: 2024-03-14T23:00Z
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2})(:\d{2})?Z", text)
    if m is None:
        raise PriceSourceError(f"ENTSO-E document: bad timestamp {text!r}")
    return datetime.fromisoformat(m.group(1) + (m.group(2) or ":00")).replace(tzinfo=UTC)


def parse_entsoe(document: bytes) -> PriceSeries:
    """Day-ahead prices (per kWh) from an A44 Publication_MarketDocument; raises NoPriceData/PriceSourceError."""
    if len(document) > MAX_DOCUMENT_BYTES:
        raise PriceSourceError(f"ENTSO-E document larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise PriceSourceError(f"ENTSO-E document: not XML: {exc}") from None
    kind = _local(root.tag)
    if kind == "Acknowledgement_MarketDocument":
        code = root.findtext("{*}Reason/{*}code", default="?")
        text = root.findtext("{*}Reason/{*}text", default="")
        if code == "999":
            raise NoPriceData(f"ENTSO-E: no data: {text.strip()}")
        raise PriceSourceError(f"ENTSO-E refused the request (reason {code}): {text.strip()}")
    if kind != "Publication_MarketDocument":
        raise PriceSourceError(f"ENTSO-E: unexpected document {kind}")
    by_minutes: dict[int, list[PriceSeries]] = {}
    for ts_el in root.iterfind("{*}TimeSeries"):
        unit = ts_el.findtext("{*}price_Measure_Unit.name", default="MWH").strip().upper()
        scale = {"MWH": 0.001, "KWH": 1.0}.get(unit)
        if scale is None:
            raise PriceSourceError(f"ENTSO-E document: unknown price unit {unit!r}")
        curve = ts_el.findtext("{*}curveType", default="A01").strip()
        for period in ts_el.iterfind("{*}Period"):
            series = _parse_period(period, scale, repeat_gaps=curve == "A03")
            by_minutes.setdefault(int(series.step.total_seconds() // 60), []).append(series)
    if not by_minutes:
        raise NoPriceData("ENTSO-E document has no TimeSeries")
    created = root.findtext("{*}createdDateTime")
    published = _parse_ts(created.strip()) if created else None
    return dataclasses.replace(merge(by_minutes[min(by_minutes)]), published_at=published)


def _parse_period(period: ET.Element, scale: float, *, repeat_gaps: bool) -> PriceSeries:
    start = _parse_ts(_child_text(period, "timeInterval/start"))
    end = _parse_ts(_child_text(period, "timeInterval/end"))
    resolution = _child_text(period, "resolution")
    minutes = _RESOLUTIONS.get(resolution)
    if minutes is None:
        raise PriceSourceError(f"ENTSO-E document: unsupported resolution {resolution}")
    step = timedelta(minutes=minutes)
    n = int((end - start) // step)
    if n <= 0 or start + step * n != end:
        raise PriceSourceError(f"ENTSO-E document: period {start}..{end} is not a whole number of {resolution}")
    values = [math.nan] * n
    for point in period.iterfind("{*}Point"):
        try:
            position = int(_child_text(point, "position"))
            amount = float(_child_text(point, "price.amount"))
        except ValueError as exc:
            raise PriceSourceError(f"ENTSO-E document: bad Point: {exc}") from None
        if not 1 <= position <= n:
            raise PriceSourceError(f"ENTSO-E document: position {position} outside 1..{n}")
        values[position - 1] = amount * scale
    if repeat_gaps:
        if math.isnan(values[0]):
            raise PriceSourceError("ENTSO-E document: A03 curve without a first point")
        for i in range(1, n):
            if math.isnan(values[i]):
                values[i] = values[i - 1]
    return PriceSeries(start=start, step=step, values=tuple(values))


class EntsoeClient:
    """Fetches day-ahead prices for a bidding zone. One request per call; the caller schedules and stores."""

    def __init__(
        self,
        token: str,
        *,
        base_url: str = ENTSOE_URL,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._token = token
        self._base_url = base_url
        self._timeout = httpx.Timeout(timeout_s)
        self._transport = transport

    async def day_ahead(self, area: str, start: datetime, end: datetime) -> PriceSeries:
        params = {
            "documentType": "A44",
            "in_Domain": area,
            "out_Domain": area,
            "periodStart": _entsoe_stamp(start),
            "periodEnd": _entsoe_stamp(end),
            "securityToken": self._token,
        }
        try:
            async with httpx.AsyncClient(timeout=self._timeout, transport=self._transport) as client:
                response = await client.get(self._base_url, params=params)
        except httpx.TimeoutException:
            raise PriceSourceError(f"ENTSO-E: no answer within {self._timeout.read}s") from None
        except httpx.HTTPError as exc:
            # Never echo the URL: it carries the security token.
            raise PriceSourceError(f"ENTSO-E: {type(exc).__name__}") from None
        body = response.content
        if response.status_code == 200 or (response.status_code == 400 and b"Acknowledgement" in body[:400]):
            return parse_entsoe(body)
        if response.status_code == 401:
            raise PriceSourceError("ENTSO-E: 401 unauthorized (check the security token)")
        if response.status_code == 429:
            raise PriceSourceError("ENTSO-E: 429 rate limited")
        raise PriceSourceError(f"ENTSO-E: HTTP {response.status_code}")


def _entsoe_stamp(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise ValueError("naive datetime")
    return ts.astimezone(UTC).strftime("%Y%m%d%H%M")


__all__ = [
    "ENTSOE_URL",
    "EntsoeClient",
    "NoPriceData",
    "PriceSeries",
    "PriceSourceError",
    "load_csv",
    "merge",
    "parse_entsoe",
    "series_from_points",
    "tariff_series",
]
