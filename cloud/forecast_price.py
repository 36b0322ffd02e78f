"""Spot prices past the published day-ahead horizon: a forecast, only ever used where no price is published.

Day-ahead prices for tomorrow appear around noon, so a morning plan sees 12-24 h of prices and cannot tell
whether tonight's charge should wait for tomorrow's cheap midday. A forecast of the unpublished hours lets it
plan the full horizon; the plan only executes its first slots (published prices) and is re-made when the
real prices arrive, so a forecast never sets what a slot is paid.

The forecast of an unpublished slot is a blend of the same slot on published days, weighted by how well
each predicts the next day on real ENTSO-E 2023 data (NL, BE; day-ahead MAE of the blend 0.028 / 0.022
EUR/kWh vs 0.031 / 0.024 for yesterday alone, correlation of the daily shape 0.81 vs 0.74):

    0.5 x the latest published day + 0.25 x the same weekday a week earlier + 0.25 x the mean of the last three days

A lag that reaches before the history uses the latest published day instead.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import numpy as np

from cloud.forecast_load import FloatArray, IntArray

WEIGHTS: Final = (0.5, 0.25, 0.25)  # latest day, a week earlier, mean of the last three days


class PriceModel(StrEnum):
    """The price forecaster (issue 11, fifth pass: scored in money on the backtest, docs/cloud-planning.md)."""

    BLEND = "blend"  # WEIGHTS: the lowest day-ahead MAE
    LATEST = "latest"  # the same slot on the latest published day: a real day's spread
    # the blend's level and shape, each forecast day's spread around its mean rescaled to the latest day's:
    # an average of days is flatter than any day, so its cheapest hour is dearer than a real day's cheapest
    BLEND_SPREAD = "blend_spread"


def forecast_prices(
    history: FloatArray, horizon: int, slots_per_day: int, model: PriceModel = PriceModel.BLEND
) -> FloatArray:
    """Prices for the `horizon` slots right after `history` (the published prices, oldest first, no gaps)."""
    n = len(history)
    if n == 0:
        raise ValueError("a price forecast needs at least one published price")
    spd = slots_per_day
    j = np.arange(horizon)
    t = n + j
    latest = t - (j // spd + 1) * spd  # the same slot on the latest published day
    day = np.where(latest >= 0, history[np.clip(latest, 0, n - 1)], history[-1])

    if model is PriceModel.LATEST:
        return np.asarray(day, dtype=np.float64)

    def lagged(idx: IntArray) -> FloatArray:
        return np.where(idx >= 0, history[np.clip(idx, 0, n - 1)], day)

    week = lagged(t - 7 * spd)  # the same weekday a week before the target (horizons are < a week)
    three = (day + lagged(latest - spd) + lagged(latest - 2 * spd)) / 3.0
    w_day, w_week, w_three = WEIGHTS
    blend = np.asarray(w_day * day + w_week * week + w_three * three, dtype=np.float64)
    if model is PriceModel.BLEND_SPREAD and n >= spd:
        latest_day = history[n - spd :]
        target = float(np.std(latest_day))
        for a in range(0, horizon, spd):  # each forecast day (from the first unpublished slot on)
            chunk = blend[a : a + spd]
            sd = float(np.std(chunk))
            if sd > 1e-9 and len(chunk) == spd:
                mean = float(np.mean(chunk))
                blend[a : a + spd] = mean + (chunk - mean) * (target / sd)
    return blend


class TerminalBasis(StrEnum):
    """Which kWh the energy left at the horizon's end is counted as (issue 11, fifth pass; all measured).

    With p the cheapest import the reference day shows, a kWh still stored is worth between p x the discharge
    efficiency - wear (it is taken out to cover load at the cheapest price: the least it can be worth) and
    (p + wear) / the charge efficiency (it saves buying a kWh back at p: the most, where buying to hold breaks
    even).
    """

    DISCHARGE = "discharge"  # p x discharge efficiency - wear: the lower bound
    PRICE = "price"  # p: strictly inside the bounds, so a kWh bought at p never pays to hold
    RECHARGE = "recharge"  # p / charge efficiency: near the upper bound, still below a buy-back at p


def terminal_value(
    import_price: FloatArray,
    slots_per_day: int,
    discharge_efficiency: float,
    cycle_cost: float,
    *,
    basis: TerminalBasis = TerminalBasis.DISCHARGE,
    charge_efficiency: float = 1.0,
    next_day: FloatArray | None = None,
) -> float:
    """EUR per kWh a plan may count on for energy still stored at the end of its horizon.

    Without it the last slot values stored energy at nothing, so a plan that ends where the published prices
    end (midnight, before tomorrow's are out) empties the battery into the grid at whatever the evening
    export pays, and the morning that follows buys it back. A kWh kept past the horizon can at least replace
    a kWh of the house's load later; bought back instead, it would cost at least the cheapest import price
    the plan's last day shows. So it is worth that price times the discharge efficiency, less the wear of
    taking it out: never more than any import in that day, so no plan ever buys energy just to hold it.

    `basis` picks another point between the bounds (TerminalBasis). `next_day`, a forecast of the import
    prices of the day after the horizon (cloud.forecast_price.forecast_prices), lowers the reference price
    when that day looks cheaper: then the kWh kept would be bought back there for less.
    """
    if len(import_price) == 0:
        return 0.0
    p = float(np.min(import_price[-slots_per_day:]))
    if next_day is not None and len(next_day) > 0:
        p = min(p, float(np.min(next_day)))
    if basis is TerminalBasis.PRICE:
        return max(0.0, p)
    if basis is TerminalBasis.RECHARGE:
        return max(0.0, p / charge_efficiency)
    return max(0.0, p * discharge_efficiency - cycle_cost)


__all__ = ["WEIGHTS", "PriceModel", "TerminalBasis", "forecast_prices", "terminal_value"]
