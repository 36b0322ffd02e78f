"""What the batteries were doing when the meter measured, as a range, and a decision that only acts on certainty.

The envelope works on the site "as if the batteries were idle": base = grid - battery. The grid
comes from the meter and the battery power from the inverter, read at other times, and a written
setpoint acts only after the inverter's dead time and ramp, and shows in the meter's averaged,
late telegram later still. Pairing the meter with a battery value from the wrong moment (issue
10: a poll taken before the inverter applied a write, trusted as fresh; or the written value
assumed applied when the meter had not seen it) puts the whole step into the base estimate; the
next setpoint then corrects by the full error again, a one-cycle-delay loop with gain 1, and the
setpoint bangs between its limits.

So the battery's power at the meter's time is not one number but a range: the reading, the
reading before it when the meter's window reaches back past it, and every setpoint that may
still have been moving the battery (written after that reading, or shortly before and not yet
seen reached). Everything the envelope computes grows with the battery power (the base, the
export floor, the fuse headroom, the self-consumption target), so the envelope's answer over the
range is an interval [low, high] that holds the right answer. The decision keeps the current
command when it lies in that interval (it may be right: wait for the device to show where it
is), and otherwise moves it to the nearest end (it is certainly wrong by at least that much).
A move thus never goes past what is certainly needed: no overshoot from the estimate, no limit
cycle, and once the battery settles the range closes to the tolerance and the loop is exact.
Over a grid limit the move goes on to the limit's safe side instead (`hold_or_move`): a wide
range's nearest end would leave the site over the limit by up to the range's width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

# Finding the plausible battery state whose answer is the current command: close enough at 0.01 W (far below
# any device's resolution), or when the bracket is 2^-30 of the range; at most _SOLVE_STEPS answers.
_SOLVE_W = 0.01
_SOLVE_BRACKET = 2.0**-30
_SOLVE_STEPS = 90  # the safeguard halves the bracket at least every three answers: 2^-30 within 90


@dataclass(frozen=True, slots=True)
class Sample:
    """A battery power reading: W (+ charging) at ts."""

    power_w: float
    ts: datetime


@dataclass(frozen=True, slots=True)
class Command:
    """A setpoint that was accepted by the device at `at`."""

    power_w: float
    at: datetime


def battery_range(
    samples: Sequence[Sample],
    commands: Sequence[Command],
    *,
    meter_ts: datetime,
    meter_window_s: float,
    settle_s: float,
    dead_time_s: float,
    tolerance_w: float,
) -> tuple[float, float]:
    """(lowest, highest) power the battery may have had while the meter measured at `meter_ts`.

    `samples`: the battery's recent readings, oldest first (at least one). `meter_window_s`: how
    far back the meter's value reaches (its averaging window plus its delay). `settle_s`: a
    setpoint older than this before a reading is in the reading (done, or the device will not do
    it). `dead_time_s`: the longest an inverter waits before it starts to follow a setpoint.
    `tolerance_w`: the readings' rounding and noise.
    """
    window_start = meter_ts.timestamp() - meter_window_s
    # The newest reading from before the meter's window began, and every reading inside it.
    older = [s for s in samples if s.ts.timestamp() <= window_start]
    ref = older[-1] if older else samples[0]
    points = [s.power_w for s in samples if s.ts >= ref.ts]
    moving = [c for c in commands if (ref.ts - c.at).total_seconds() < settle_s]
    before = [c for c in commands if c.at <= ref.ts]
    if before and _done(before, ref, samples, settle_s=settle_s, dead_time_s=dead_time_s, tolerance_w=tolerance_w):
        # The newest setpoint before the reading is done: it and the older ones no longer move the battery.
        moving = [c for c in moving if c.at > before[-1].at]
    points += [c.power_w for c in moving]
    return min(points) - tolerance_w, max(points) + tolerance_w


def _done(
    before: Sequence[Command],
    reading: Sample,
    samples: Sequence[Sample],
    *,
    settle_s: float,
    dead_time_s: float,
    tolerance_w: float,
) -> bool:
    """Has the battery finished following the newest of `before` (the setpoints up to `reading`) by then?

    Reached: the reading is the setpoint (within the tolerance), and so is every setpoint the
    inverter may still act on: the newest one that is surely in force (written a dead time or more
    before the reading) and every one written after it. A reading that matches the newest setpoint
    inside its dead time proves nothing by itself: the battery may still be where it was, about to
    follow an older setpoint that is waiting out its own dead time (written 51 W, then 0 W half a
    second later, polled at 0 W: the 51 W is still to come), or ramping through the value on its
    way elsewhere. Without a setpoint surely in force there is no proof either.

    Or shown apart: the reading is the newest setpoint and lies clear of every power the battery
    could show *without* having applied it. An inverter applies writes in the order they came, so
    until it applies the newest one the battery sits where it was when that one was written or moves
    toward an older setpoint: within the readings and the setpoints of the `settle_s` before the
    write (`_before_write`). A reading outside that span (both readings' noise counted) is the newest
    setpoint applied, and the older ones with it, at once on a fast inverter: the configured dead
    time is the longest an inverter may wait, not a time every inverter waits (seed 302: an
    instant inverter exported 251 W for 7 s while a second correction waited out the 5 s).

    Or stopped: this reading and the one before it agree, and both came after the dead time, so the
    battery is not waiting to start and not ramping; it stopped where its limits, its rounding or
    its own control put it. (Two readings that agree *within* the dead time prove nothing: that is
    the poll that predates the write's effect, the reading issue 10 trusted.)
    """
    command = before[-1]
    in_force = [i for i, c in enumerate(before) if (reading.ts - c.at).total_seconds() >= dead_time_s]
    if in_force and all(abs(c.power_w - reading.power_w) <= tolerance_w for c in before[in_force[-1] :]):
        return True
    if abs(command.power_w - reading.power_w) <= tolerance_w:
        span = _before_write(before, samples, settle_s, tolerance_w)
        if span is not None and (reading.power_w - tolerance_w > span[1] or reading.power_w + tolerance_w < span[0]):
            return True
    earlier = [s for s in samples if s.ts < reading.ts]
    if not earlier:
        return False
    prev = earlier[-1]
    started = (prev.ts - command.at).total_seconds() >= dead_time_s
    return started and abs(prev.power_w - reading.power_w) <= tolerance_w


def _before_write(
    before: Sequence[Command], samples: Sequence[Sample], settle_s: float, tolerance_w: float
) -> tuple[float, float] | None:
    """(lowest, highest) power the battery may show while it has not applied the newest of `before`.

    Where it was when that setpoint was written (the readings of the `settle_s` before, or the newest
    reading before it; each true to `tolerance_w`) and every older setpoint of that time it may still
    be heading for. None when no reading predates the write: nothing to tell the setpoint apart from.
    """
    written = before[-1].at
    prior = [s for s in samples if s.ts <= written]
    if not prior:
        return None
    recent = [s.power_w for s in prior if (written - s.ts).total_seconds() <= settle_s] or [prior[-1].power_w]
    older = [c.power_w for c in before[:-1] if (written - c.at).total_seconds() <= settle_s]
    return min([min(recent) - tolerance_w, *older]), max([max(recent) + tolerance_w, *older])


@dataclass(frozen=True, slots=True)
class GridBounds:
    """What keeps the grid limits at every plausible battery state, as battery totals (W, + charging).

    `floor_w`: the least the batteries may do and keep the export limit at the highest plausible state
    (the export floor rises with the state). `ceiling_w`: the most they may do and keep the fuse at
    the lowest (so does the fuse headroom). `spread_w`: the battery's plausible range, highest - lowest.
    `band_w`: fuse headroom - export floor at any one state (zapd/envelope.py `grid_band_w`).
    """

    floor_w: float
    ceiling_w: float
    spread_w: float
    band_w: float


def hold_or_move(
    answer: Callable[[float], float],
    current_w: float,
    *,
    bounds: Callable[[], GridBounds] | None = None,
    reach_w: float = 0.0,
    slack_w: float = 0.0,
    overshot: int = 0,
) -> float:
    """The λ in [0, 1] to act on: answer(λ) is the envelope's total for the battery state λ of the way up the range.

    `answer` is nondecreasing in λ. The current command is kept when some plausible state calls
    for it; otherwise the command moves to the nearest end of what the plausible states call for,
    which never goes past what is certainly needed.

    Except where that end may break a grid limit at another plausible state (`bounds`). A range is
    wide when an averaging meter slower than the battery poll mixed two battery states in its
    window; the nearest end then leaves the site over the limit by up to the range's width until a
    clean reading, and each such correction mixes into the next window again (a 10 s meter, 5 s
    polls: 154 W export for 20 s). So a command below the low end moves up to `reach_w` short of
    what keeps the export limit at every plausible state, one above the high end down to `reach_w`
    past what keeps the fuse (within the interval): over the limit by no more than `reach_w` less
    the controller's margin whatever the state (the controller's 150 W: the promised 100 W). It may go
    past the right answer, to the limit's safe side, by up to the spread - `reach_w`, and come back.
    Only where twice the spread is at most the band between the limits (`band_w`) + 2 x `reach_w`:
    such a move then stays clear of the other limit, and the command crosses the right answer at most
    once per change of the site (no limit cycle: the argument is in docs/decisions.md, "Closed loop",
    and tests/unit/test_estimate.py checks it as a property).

    `overshot`: +1 when the command stands where such a move put it upward, past the nearest end, -1 downward
    (`moved_past`), 0 otherwise. Once it lies beyond the interval on that side, it was past the answer at every
    plausible state, and the way back lands `slack_w` inside the interval's near end, not on it: on the near
    end the next reading's noise takes it out again, and a second return, held under the slack and the
    deadband until noise pushes it over, comes at a random later time (seed 30: 101 W moved, 76 W the near end
    25 W away at 10 s, the 51 W write at 20.5 s, after the grace). `slack_w` inside is still inside: a command
    the hold accepts, and on a closed interval (the reading +- the tolerance) the estimate itself. The caller ends
    `overshot` once a clean reading holds the command (zapd/controller.py: the move was not past the answer).
    """
    low, high = answer(0.0), answer(1.0)
    if high <= low:
        return 0.0
    target = min(max(current_w, low), high)  # held inside, the nearest end outside
    # Outside by no more than `slack_w` (the readings' tolerance) the command may be right but for noise: no move
    # past the nearest end on that (a range wide only with the controller's own write still pending, noise a
    # watt under its low end: the move went to the far end and back, issue 10's site at start-up).
    moves_up, moves_down = current_w < low - max(slack_w, _SOLVE_W), current_w > high + max(slack_w, _SOLVE_W)
    if _returns(current_w, low, high, overshot):  # back from a limit's safe side: the band guard kept the other clear
        target = max(low, high - slack_w) if overshot > 0 else min(high, low + slack_w)
    elif bounds is not None and (moves_up or moves_down):
        b = bounds()
        if 2 * b.spread_w <= b.band_w + 2 * reach_w:
            if moves_up and low < b.floor_w - reach_w:
                target = min(b.floor_w - reach_w, high)
            elif moves_down and high > b.ceiling_w + reach_w:
                target = max(b.ceiling_w + reach_w, low)
    if target <= low:
        return 0.0
    if target >= high:
        return 1.0
    return _solve(answer, target, low, high)


def moved_past(current_w: float, low_w: float, high_w: float, new_w: float, overshot: int = 0) -> int:
    """The `overshot` of the next decision: +1 when `new_w` took a command below the interval [low_w, high_w] past
    its low end (a move over a limit, `hold_or_move`), -1 when it took one above it past the high end, else 0.

    A return (`overshot` and the command beyond the interval on its side) lands inside the interval, `slack_w`
    past its near end: not a move past, so it cannot start another return the other way."""
    if _returns(current_w, low_w, high_w, overshot):
        return 0
    if current_w < low_w and new_w > low_w + _SOLVE_W:
        return 1
    if current_w > high_w and new_w < high_w - _SOLVE_W:
        return -1
    return 0


def _returns(current_w: float, low_w: float, high_w: float, overshot: int) -> bool:
    """Does a command a move over a limit put past the nearest end lie beyond the interval on that side now?"""
    return (overshot > 0 and current_w > high_w + _SOLVE_W) or (overshot < 0 and current_w < low_w - _SOLVE_W)


def _solve(answer: Callable[[float], float], target_w: float, low: float, high: float) -> float:
    """The λ whose answer is `target_w` (low = answer(0) < target_w < high = answer(1))."""
    # Illinois (regula falsi that halves the weight of an end kept twice): the envelope's answer is piecewise
    # linear in the state (clamps of linear terms), so the secant lands on it in a few answers where bisection
    # took 30, each a full ladder + envelope run: 85 % of a cycle's time (bench/closedloop.py, the property).
    lo, hi, f_lo, f_hi = 0.0, 1.0, low - target_w, high - target_w
    # Safeguard (as Brent's): where two answers did not halve the bracket the next one bisects, so the bracket
    # halves at least every three answers and _SOLVE_STEPS reach the 2^-30 bracket even where the answer is
    # nearly a step (hypothesis: a 370 kW-per-range clamp next to a flat 0.5 W one
    # kept the secant crawling along the flat part for all 60 answers).
    kept = 0  # +1: the low end was kept last time, -1: the high end
    bisect = False
    widths = [1.0, 1.0]  # the bracket two answers ago and one answer ago
    for _ in range(_SOLVE_STEPS):
        mid = (lo + hi) / 2 if bisect else (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
        if not lo < mid < hi:
            mid = (lo + hi) / 2
        f = answer(mid) - target_w
        if abs(f) <= _SOLVE_W:
            return mid
        if f < 0:
            lo, f_lo = mid, f
            f_hi = f_hi / 2 if kept == -1 else f_hi
            kept = -1
        else:
            hi, f_hi = mid, f
            f_lo = f_lo / 2 if kept == 1 else f_lo
            kept = 1
        if hi - lo <= _SOLVE_BRACKET:
            break
        bisect = hi - lo > widths[0] / 2
        widths = [widths[1], hi - lo]
    return hi
