"""A shifted-basis warm start: the last re-plan's optimal simplex basis carried over to the next re-plan's LP.

Why: a rolling planner re-plans every hour over a horizon that shrinks by the executed slots until the next
day-ahead prices arrive (and then grows by a day), so consecutive LPs never have the same matrix and each one
used to start cold. Yet most of the next LP is the last one moved in time: the same kinds of columns and rows
(cloud.optimizer_model.Layout) about the same slots, with the same published prices and forecasts that
changed little. The basis is mapped by kind and slot time: the executed slots are dropped, and slots past the
old horizon (the next day's, when its prices arrive) copy the status of the old horizon's last slot. (Copying
the slot a day earlier instead saved a tenth of the iterations on 60 Ausgrid days and no CPU: not worth the
code.)

A basis is a set of exactly as many basic variables (columns and row logicals) as there are rows. A mapped one
rarely has that count, so it is fixed up: too many basic, the basic logicals of equality rows (always at their
bound, nothing moves) go nonbasic first, then structural columns, the latest slots first; too few, nonbasic
row logicals turn basic, the latest slots first. Each nonbasic variable sits at one of its bounds in the new
model (a bound that became infinite moves it to the other one, or to zero if it is free). The basis goes to
HiGHS as an "alien" one (cloud.optimizer._highs_basis): HiGHS factors it and swaps logicals in for a singular
part. (Handed over as its own, not alien, HiGHS checks the count and refuses a wrong one, but the same bases
then took twice the iterations: 64,872 against 32,900 on 60 Ausgrid days.) A start that is merely not optimal
is only a slower start: the optimum and its objective are HiGHS' exactly as from a cold start, which
tests/unit/test_optimizer_warm.py checks over random rolling re-plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from cloud.optimizer_model import BoolArray, FloatArray, IntArray, Layout, Model, Segment

__all__ = ["BASIC", "LOWER", "UPPER", "ZERO", "KeptBasis", "shifted_basis", "slot_shift"]

# HiGHS' HighsBasisStatus values.
LOWER, BASIC, UPPER, ZERO = 0, 1, 2, 3
StatusArray = NDArray[np.int8]
# A start must lie a whole number of slots after the last one (to this fraction of a slot).
_SLOT_TOL = 1e-6


@dataclass(frozen=True)
class KeptBasis:
    """An optimal basis of a model with a layout: which columns and rows were basic, which nonbasic columns
    sat at their upper bound."""

    layout: Layout
    basic_cols: BoolArray
    upper_cols: BoolArray
    basic_rows: BoolArray

    @classmethod
    def of(cls, model: Model, basic_variables: IntArray, col_value: FloatArray) -> KeptBasis | None:
        """From HiGHS' `getBasicVariables` (index >= 0 a column, -1 - i row i's logical) and the columns'
        values; None for a model without a layout or a basis of the wrong size."""
        if model.layout is None or len(basic_variables) != len(model.row_lower):
            return None
        n_col, n_row = len(model.col_cost), len(model.row_lower)
        basic_cols = np.zeros(n_col, dtype=np.bool_)
        basic_rows = np.zeros(n_row, dtype=np.bool_)
        ids = np.asarray(basic_variables, dtype=np.int64)
        if (ids >= n_col).any() or (ids < -n_row).any():
            return None
        basic_cols[ids[ids >= 0]] = True
        basic_rows[-1 - ids[ids < 0]] = True
        upper = model.col_upper
        finite = np.isfinite(upper)
        bound = np.where(finite, upper, 0.0)  # an infinite upper bound is never "at" it (and inf - inf is NaN)
        at_upper = finite & (upper > model.col_lower) & (col_value >= bound - 1e-9 * (1.0 + np.abs(bound)))
        return cls(model.layout, basic_cols, at_upper & ~basic_cols, basic_rows)


def slot_shift(old: Layout, new: Layout) -> int | None:
    """How many steps later the new layout starts: a whole number >= 0 with the same step, else None."""
    if old.step_s <= 0.0 or abs(new.step_s - old.step_s) > _SLOT_TOL * old.step_s:
        return None
    slots = (new.start_s - old.start_s) / old.step_s
    shift = round(slots)
    return shift if shift >= 0 and abs(slots - shift) <= _SLOT_TOL else None


def _slot_starts(slot_steps: tuple[int, ...], length: int) -> NDArray[np.int64]:
    """Where each of the first `length` slots starts, in steps from slot 0 (one step a slot past the list)."""
    steps = np.ones(length, dtype=np.int64)
    known = min(length, len(slot_steps))
    steps[:known] = slot_steps[:known]
    return np.concatenate([[0], np.cumsum(steps[:-1])]) if length else np.zeros(0, dtype=np.int64)


def _sources(
    old: Segment, new: Segment, shift: int, old_steps: tuple[int, ...], new_steps: tuple[int, ...]
) -> IntArray:
    """For each entry of the new segment, the old index it takes its status from: the old slot in which the
    new slot starts (the same slot of time where both grids are one step a slot), the old segment's last slot
    past its end, the one entry of a scalar."""
    if not new.per_slot or not old.per_slot:
        return np.full(new.length, old.first, dtype=np.int32)
    if not old_steps and not new_steps:
        src = np.minimum(np.arange(new.length, dtype=np.int64) + shift, old.length - 1)
    else:
        at = _slot_starts(new_steps, new.length) + shift
        src = np.searchsorted(_slot_starts(old_steps, old.length), at, side="right") - 1
        src = np.clip(src, 0, old.length - 1)
    return np.asarray(old.first + src, dtype=np.int32)


@lru_cache(maxsize=512)
def _map(
    old: tuple[Segment, ...],
    new: tuple[Segment, ...],
    size: int,
    shift: int,
    old_steps: tuple[int, ...] = (),
    new_steps: tuple[int, ...] = (),
) -> tuple[IntArray, IntArray]:
    """The old index each new entry takes its status from (-1: none), and each entry's slot (-1: scalar).

    Cached (read-only arrays): it depends on the two layouts' shapes and the shift only, and a rolling planner's
    horizons repeat day after day; built afresh it was two thirds of the warm start's own time."""
    source = np.full(size, -1, dtype=np.int32)
    slot = np.full(size, -1, dtype=np.int32)
    by_kind = {g.kind: g for g in old if g.length > 0}
    for g in new:
        if g.per_slot:
            slot[g.first : g.first + g.length] = np.arange(g.length)
        was = by_kind.get(g.kind)
        if was is not None and g.length > 0:
            source[g.first : g.first + g.length] = _sources(was, g, shift, old_steps, new_steps)
    source.flags.writeable = False
    slot.flags.writeable = False
    return source, slot


def _nonbasic(lower: FloatArray, upper: FloatArray, at_upper: BoolArray) -> StatusArray:
    """A nonbasic variable's status at a bound it has: the one it was at where finite, else the other."""
    up = np.isfinite(upper) & (at_upper | ~np.isfinite(lower))
    status = np.where(up, UPPER, LOWER).astype(np.int8)
    status[~np.isfinite(lower) & ~np.isfinite(upper)] = ZERO
    return status


def _latest_first(candidates: BoolArray, slot: IntArray) -> IntArray:
    """Indices of the candidates, the latest slot first (scalars last), ties in index order."""
    ids = np.flatnonzero(candidates)
    return np.asarray(ids[np.argsort(-slot[ids], kind="stable")], dtype=np.int32)


def shifted_basis(kept: KeptBasis, model: Model) -> tuple[StatusArray, StatusArray] | None:
    """(column statuses, row statuses) for `model` from the kept basis, with exactly as many basic variables
    as rows; None where the model has no layout or does not start a whole number of slots later."""
    new = model.layout
    if new is None:
        return None
    shift = slot_shift(kept.layout, new)
    if shift is None:
        return None
    n_col, n_row = len(model.col_cost), len(model.row_lower)
    steps = (kept.layout.slot_steps, new.slot_steps)
    col_src, col_slot = _map(kept.layout.cols, new.cols, n_col, shift, *steps)
    row_src, row_slot = _map(kept.layout.rows, new.rows, n_row, shift, *steps)
    col_mapped, row_mapped = col_src >= 0, row_src >= 0
    basic_col = np.zeros(n_col, dtype=np.bool_)
    basic_col[col_mapped] = kept.basic_cols[col_src[col_mapped]]
    upper_col = np.zeros(n_col, dtype=np.bool_)
    upper_col[col_mapped] = kept.upper_cols[col_src[col_mapped]]
    basic_row = np.ones(n_row, dtype=np.bool_)  # a row of a new kind: its logical is basic
    basic_row[row_mapped] = kept.basic_rows[row_src[row_mapped]]
    free_row = ~np.isfinite(model.row_lower) & ~np.isfinite(model.row_upper)
    basic_row |= free_row  # a free row's logical cannot be nonbasic

    excess = int(basic_col.sum() + basic_row.sum()) - n_row
    if excess > 0:
        equality = (model.row_lower == model.row_upper) & basic_row
        drop = _latest_first(equality, row_slot)[:excess]
        basic_row[drop] = False
        excess -= len(drop)
    if excess > 0:
        drop = _latest_first(basic_col, col_slot)[:excess]
        basic_col[drop] = False
    elif excess < 0:
        add = _latest_first(~basic_row, row_slot)[:-excess]
        basic_row[add] = True
    if int(basic_col.sum() + basic_row.sum()) != n_row:
        return None
    col_status = _nonbasic(model.col_lower, model.col_upper, upper_col)
    col_status[basic_col] = BASIC
    row_status = _nonbasic(model.row_lower, model.row_upper, np.zeros(n_row, dtype=np.bool_))
    row_status[basic_row] = BASIC
    return col_status, row_status
