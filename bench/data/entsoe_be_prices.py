"""Convert ENTSO-E day-ahead prices for Belgium (as published in a public repository) to `entsoe_be_2023_dayahead.csv`.

Source: ENTSO-E Transparency Platform, day-ahead prices, bidding zone BE (10YBE----------2), 60-minute resolution,
via the public GitHub repository RigauxBaptiste/The_Proof_of_the_Pudding_is_in_the_Heating, file `DAM_prices.csv`
(its `.ReadMe_DAM_prices.txt`: ENTSO-E transparency platform, converted from EUR/MWh to EUR/kWh). That file has
`time,DAM_price` rows like `01jan2023 00:00:00,.0820199966430664`: Belgian local wall-clock time (CET/CEST as
ENTSO-E publishes it), prices in EUR/kWh stored as 32-bit floats.

What the file actually contains around the 2023 clock changes, and what this script does with it:
* 26 Mar 2023 (23-hour day): a row `26mar2023 02:00:00,` with an EMPTY price for the local hour that does not
  exist. It is dropped (checked: only an empty row may fall in the gap; a price there is an error).
* 29 Oct 2023 (25-hour day): `29oct2023 02:00:00` appears twice. The first is 02:00 CEST (00:00 UTC), the
  second 02:00 CET (01:00 UTC), in file order (fold 0, then fold 1).
So 8,761 rows of the local year give 8,760 prices, one per UTC hour from 2022-12-31T23:00Z to 2023-12-31T22:00Z.

ENTSO-E publishes BE prices in EUR/MWh with two decimals, so the EUR/kWh values are rounded to 5 decimals, which
removes the float32 noise (0.0820199966... -> 0.08202) and loses nothing.

Run: `python bench/data/entsoe_be_prices.py DAM_prices.csv [--year 2023] [--out bench/data/entsoe_be_2023_dayahead.csv]`
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

BRUSSELS = ZoneInfo("Europe/Brussels")
HERE = Path(__file__).resolve().parent
HEADER = (
    "# Real day-ahead prices: ENTSO-E Transparency Platform, day-ahead prices, bidding zone BE (10YBE----------2),\n"
    "# {year}, hourly, EUR/kWh (ENTSO-E publishes EUR/MWh; /1000, rounded to 5 decimals = EUR/MWh to 2 decimals).\n"
    "# Via github.com/RigauxBaptiste/The_Proof_of_the_Pudding_is_in_the_Heating, DAM_prices.csv (local Belgian time),\n"
    "# converted to UTC by bench/data/entsoe_be_prices.py (DST rules in its docstring). Not synthetic.\n"
)


class SourceError(ValueError):
    """The source file does not look like what this script was written against; the message names the line."""


def convert(lines: Iterable[str], year: int) -> list[tuple[datetime, float]]:
    """(UTC hour start, EUR/kWh) for every hour of local calendar year `year`, in order."""
    out: list[tuple[datetime, float]] = []
    seen: set[datetime] = set()
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("time,"):
            continue
        stamp, _, value = line.partition(",")
        try:
            naive = datetime.strptime(stamp.strip(), "%d%b%Y %H:%M:%S")
        except ValueError:
            raise SourceError(f"line {number}: cannot read time {stamp!r}") from None
        if naive.year != year:
            continue
        fold = 1 if naive in seen else 0  # the repeated 02:00 on the October change is the second (CET) one
        seen.add(naive)
        local = naive.replace(tzinfo=BRUSSELS, fold=fold)
        utc = local.astimezone(UTC)
        if utc.astimezone(BRUSSELS).replace(tzinfo=None) != naive:  # a wall-clock time skipped by the March change
            if value.strip():
                raise SourceError(f"line {number}: a price for {stamp}, a local time that does not exist")
            continue
        if not value.strip():
            raise SourceError(f"line {number}: no price for {stamp}")
        try:
            price = round(float(value), 5)
        except ValueError:
            raise SourceError(f"line {number}: cannot read price {value!r}") from None
        out.append((utc, price + 0.0))  # + 0.0: no "-0.0" in the output
    first = datetime(year, 1, 1, tzinfo=BRUSSELS).astimezone(UTC)
    last = datetime(year + 1, 1, 1, tzinfo=BRUSSELS).astimezone(UTC) - timedelta(hours=1)
    expected = int((last - first) / timedelta(hours=1)) + 1
    if [ts for ts, _ in out] != [first + timedelta(hours=i) for i in range(expected)]:
        got = f"{out[0][0]:%Y-%m-%dT%H:%MZ}..{out[-1][0]:%Y-%m-%dT%H:%MZ}" if out else "nothing"
        raise SourceError(f"{len(out)} prices ({got}), expected every UTC hour of local {year}: {expected}")
    return out


def write(prices: list[tuple[datetime, float]], path: Path, year: int) -> None:
    with path.open("w") as fh:
        fh.write(HEADER.format(year=year))
        fh.write("ts,price_eur_per_kwh\n")
        for ts, price in prices:
            fh.write(f"{ts:%Y-%m-%dT%H:%M:%SZ},{price:.5f}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", help="DAM_prices.csv from the repository named above")
    parser.add_argument("--year", type=int, default=2023)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or HERE / f"entsoe_be_{args.year}_dayahead.csv"
    try:
        with open(args.source) as fh:
            prices = convert(fh, args.year)
    except (OSError, SourceError) as exc:
        print(f"entsoe_be_prices: {exc}", file=sys.stderr)
        return 1
    write(prices, out, args.year)
    values = [p for _, p in prices]
    print(
        f"{out.name}: {len(values)} hours, mean {1000 * sum(values) / len(values):.2f} EUR/MWh, "
        f"{sum(v < 0 for v in values)} negative hours, min {min(values):.5f}, max {max(values):.5f} EUR/kWh"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
