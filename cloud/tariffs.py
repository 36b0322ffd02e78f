"""Tariffs: what a kWh imported or exported costs a site in each slot, and its capacity charge.

The stored tariff (`sites.tariff` JSON) is decoded into these structs once per planning run; a bad
tariff is a `TariffError` naming the field, never a traceback inside the planner.

Import price = (energy + grid fee + energy tax) × (1 + VAT), where the energy part is the day-ahead
spot price (`energy.kind = "spot"`), a fixed price, or a time-of-use schedule. Time-of-use windows are
matched in the tariff's own time zone, because that is how utilities write them ("07:00-23:00 on
weekdays" means local time, also across DST changes).

Export is settled by one of a few rules (spot, spot minus a fee, fixed feed-in, nothing), optionally
floored at 0 — some contracts never charge for export even when the spot price is negative.

The capacity charge is per kW of the billing period's highest (15-minute mean) import. The optimizer only
sees `price_per_kw` and the peak already set this period (`peak_already_kw`): raising the peak above it
costs the full monthly price per kW, staying below it is free. That is the true marginal cost.

All prices are per kWh in the tariff's currency; spot prices come in per kWh too (prices.py converts the
exchange's per-MWh figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, time, timedelta
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from cloud.optimizer_io import DemandCharge

NonNeg = Annotated[float, msgspec.Meta(ge=0.0)]
Weekday = Annotated[int, msgspec.Meta(ge=0, le=6)]
Month = Annotated[int, msgspec.Meta(ge=1, le=12)]
ClockTime = Annotated[str, msgspec.Meta(pattern=r"^([01]\d|2[0-4]):[0-5]\d$")]


class TariffError(ValueError):
    """A tariff that cannot be used; the message names the field."""


class TouWindow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A value that applies from `start` to `end` (local clock; end may be before start: wraps midnight).

    `days` are ISO weekdays as Python counts them (0 = Monday); `months` 1..12. Empty means every day/month.
    """

    start: ClockTime
    end: ClockTime
    value: float
    days: list[Weekday] = msgspec.field(default_factory=list)
    months: list[Month] = msgspec.field(default_factory=list)


class TouSchedule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`default` applies wherever no window does; the first matching window wins."""

    default: float = 0.0
    windows: list[TouWindow] = msgspec.field(default_factory=list)


class Energy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The energy part of the import price, before fees, tax and VAT."""

    kind: Literal["spot", "fixed", "tou"]
    price: float = 0.0  # fixed
    tou: TouSchedule | None = None  # tou
    markup: float = 0.0  # supplier's margin on top of spot (or of the fixed/TOU price)


class Export(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: Literal["spot", "spot_minus_fee", "fixed", "none"] = "none"
    fee: float = 0.0  # spot_minus_fee
    price: float = 0.0  # fixed feed-in
    floor_zero: bool = False
    vat: bool = False  # whether the export credit carries VAT (private households mostly: no)


class CapacityCharge(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per kW of the billing period's peak import (15-minute mean); the period is a calendar month.

    `min_kw`: the lowest peak a month is billed for (Flanders: 2.5 kW), so shaving below it earns nothing."""

    price_per_kw: NonNeg
    min_kw: NonNeg = 0.0


class Tariff(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    energy: Energy
    timezone: str = "UTC"
    grid_fee: TouSchedule = msgspec.field(default_factory=TouSchedule)
    energy_tax: float = 0.0
    vat: NonNeg = 0.0  # fraction: 0.21 for 21 %
    export: Export = msgspec.field(default_factory=Export)
    capacity: CapacityCharge | None = None
    spot_area: str | None = None  # bidding zone EIC code for the day-ahead price, e.g. 10YNL----------L
    currency: str = "EUR"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def needs_spot(self) -> bool:
        return self.energy.kind == "spot" or self.export.kind in ("spot", "spot_minus_fee")


# A billed minimum peak above this is no household's (Flanders: 2.5 kW; connections are 10-60 kW).
MAX_CAPACITY_MIN_KW: Final = 1000.0


def decode_tariff(obj: Any) -> Tariff:
    """Validate a tariff from stored JSON (a dict) or raw bytes."""
    try:
        if isinstance(obj, bytes | str):
            tariff = msgspec.json.decode(obj, type=Tariff)
        else:
            tariff = msgspec.convert(obj, type=Tariff)
    except msgspec.ValidationError as exc:
        raise TariffError(f"tariff: {exc}") from None
    except msgspec.DecodeError as exc:
        raise TariffError(f"tariff: malformed JSON: {exc}") from None
    _check(tariff)
    return tariff


def _check(tariff: Tariff) -> None:
    try:
        ZoneInfo(tariff.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise TariffError(f"tariff.timezone: unknown time zone {tariff.timezone!r}") from None
    if tariff.energy.kind == "tou" and tariff.energy.tou is None:
        raise TariffError("tariff.energy.tou: required when energy.kind is 'tou'")
    if tariff.capacity is not None and not tariff.capacity.min_kw <= MAX_CAPACITY_MIN_KW:
        raise TariffError(f"tariff.capacity.min_kw: at most {MAX_CAPACITY_MIN_KW:g} kW (a household's connection)")
    if tariff.needs_spot and not tariff.spot_area:
        raise TariffError("tariff.spot_area: required when a price follows the spot market")


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def tou_value(schedule: TouSchedule, local: datetime) -> float:
    """The schedule's value at a local wall-clock instant."""
    minute = local.hour * 60 + local.minute
    for w in schedule.windows:
        if w.months and local.month not in w.months:
            continue
        start, end = _minutes(w.start), _minutes(w.end)
        if start <= end:
            inside = start <= minute < end
            day = local.weekday()
        else:  # wraps midnight: the part after midnight belongs to the previous day's window
            inside = minute >= start or minute < end
            day = local.weekday() if minute >= start else (local.weekday() - 1) % 7
        if inside and (not w.days or day in w.days):
            return w.value
    return schedule.default


def _energy_value(tariff: Tariff, local: datetime, spot: float | None) -> float:
    e = tariff.energy
    if e.kind == "spot":
        if spot is None:
            raise TariffError("spot price missing for a spot tariff")
        return spot + e.markup
    if e.kind == "fixed":
        return e.price + e.markup
    assert e.tou is not None  # _check
    return tou_value(e.tou, local) + e.markup


def import_price(tariff: Tariff, ts: datetime, spot: float | None = None) -> float:
    """Price of one kWh imported in the slot starting at `ts` (tz-aware)."""
    local = ts.astimezone(tariff.zone)
    energy = _energy_value(tariff, local, spot)
    return (energy + tou_value(tariff.grid_fee, local) + tariff.energy_tax) * (1.0 + tariff.vat)


def export_price(tariff: Tariff, ts: datetime, spot: float | None = None) -> float:
    """Credit for one kWh exported in the slot starting at `ts` (negative: exporting costs)."""
    x = tariff.export
    if x.kind == "none":
        value = 0.0
    elif x.kind == "fixed":
        value = x.price
    else:
        if spot is None:
            raise TariffError("spot price missing for a spot export rule")
        value = spot - (x.fee if x.kind == "spot_minus_fee" else 0.0)
    if x.vat:
        value *= 1.0 + tariff.vat
    return max(value, 0.0) if x.floor_zero else value


def price_arrays(
    tariff: Tariff, starts: Sequence[datetime], spot: Sequence[float | None] | None = None
) -> tuple[list[float], list[float]]:
    """Import and export prices per slot. `spot` (per kWh, aligned with `starts`) is needed if the tariff
    follows the spot market; a None inside it is a missing price and raises TariffError."""
    if spot is not None and len(spot) != len(starts):
        raise TariffError(f"spot: {len(spot)} prices for {len(starts)} slots")
    imp: list[float] = []
    exp: list[float] = []
    for i, ts in enumerate(starts):
        s = spot[i] if spot is not None else None
        imp.append(import_price(tariff, ts, s))
        exp.append(export_price(tariff, ts, s))
    return imp, exp


def billing_period_start(tariff: Tariff, now: datetime) -> datetime:
    """Start of the calendar month (in the tariff's zone) that contains `now`, as an aware datetime."""
    local = now.astimezone(tariff.zone)
    first = datetime.combine(local.date().replace(day=1), time(0), tzinfo=tariff.zone)
    return first


def billing_period_end(tariff: Tariff, now: datetime) -> datetime:
    first = billing_period_start(tariff, now)
    nxt = (first.replace(tzinfo=None) + timedelta(days=32)).replace(day=1)
    return nxt.replace(tzinfo=tariff.zone)


def demand_charge(
    tariff: Tariff, peak_already_kw: float, reserve_kwh: list[float] | None = None
) -> DemandCharge | None:
    """The optimizer's view of the capacity charge, given the level already paid for this billing period
    (its peak so far, or the month's target where that is higher: cloud/peak_limit.py) and the battery
    reserve per slot the plan keeps to hold it.

    The optimizer's horizon may cross into the next billing period; we still charge the whole horizon's
    peak against this period's peak, which errs on the side of not creating a new peak.
    """
    if tariff.capacity is None or tariff.capacity.price_per_kw == 0.0:
        return None
    return DemandCharge(
        price_per_kw=tariff.capacity.price_per_kw,
        peak_already_kw=max(0.0, peak_already_kw, tariff.capacity.min_kw),
        reserve_kwh=list(reserve_kwh or []),
    )


__all__ = [
    "CapacityCharge",
    "Energy",
    "Export",
    "Tariff",
    "TariffError",
    "TouSchedule",
    "TouWindow",
    "billing_period_end",
    "billing_period_start",
    "decode_tariff",
    "demand_charge",
    "export_price",
    "import_price",
    "price_arrays",
    "tou_value",
]
