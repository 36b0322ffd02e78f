"""The one writer: each cycle turns the active intent into safe device commands.

Cycle = snapshot → ladder (plan slot or fallback rules) → safety envelope → write phase.
A setpoint is written only when it moved by more than the deadband, when the refresh
interval ran out, or when the last write failed; every write is logged in the store.

The controller does not assume that a write shows in the next meter sample: the battery's power
at the meter's time is a range (zapd/estimate.py), the envelope is asked for both ends, and the
command moves only as far as is certainly needed (docs/decisions.md, "Closed loop").
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

import structlog

from drivers.api import Controllable
from drivers.config_structs import BatteryLimits, EvLimits
from drivers.resilience import FailureLatch
from fallback.policy import Decision, Rung, choose, resolve_battery_w
from zapd.bounds import MAX_POWER_W
from zapd.clock import Clock
from zapd.envelope import Setpoint, SiteLimits, clamp_batteries, grid_band_w
from zapd.estimate import Command as SentCommand
from zapd.estimate import GridBounds, Sample, battery_range, hold_or_move, moved_past
from zapd.ev_envelope import EvSetpoint, clamp_evs
from zapd.model import POWER_W, BatterySetpoint, CommandResult, DerKind, EvCurrent, Intent, Plan
from zapd.state import BatteryView, SiteState, Snapshot
from zapd.store import Store

log = structlog.get_logger(__name__)


# A bound on the battery readings kept (they are pruned by age: `Controller._observe`), against a poll far faster
# than the loop: 4096 readings are 68 minutes of 1 s polls.
_MAX_SAMPLES = 4096


@dataclass
class _Written:
    power_w: float
    at: datetime
    ok: bool


@dataclass(frozen=True, slots=True)
class _Write:
    """One command of a cycle's write phase."""

    command: BatterySetpoint | EvCurrent
    power_w: float
    clamped_reason: str
    battery: bool


@dataclass
class ControllerStats:
    cycles: int = 0
    writes: int = 0
    write_failures: int = 0
    record_failures: int = 0  # command log / event rows the store refused
    last_cycle_ms: float = 0.0
    rung: Rung | None = None
    rung_since: datetime | None = None
    rung_reason: str = ""
    last_setpoints: dict[str, Setpoint] = field(default_factory=dict)
    last_ev_setpoints: dict[str, EvSetpoint] = field(default_factory=dict)


def limits_for(site: SiteLimits, intent: Intent) -> SiteLimits:
    """The site's limits, tightened by a plan's grid limits for this slot (e.g. a demand-response event).

    A plan can only make the limits stricter, never looser than the fuse and the export limit.
    """
    import_w = site.fuse_limit_w
    if intent.grid_import_limit_w is not None:
        import_w = min(import_w, max(0.0, intent.grid_import_limit_w))
    export_w = site.max_export_w
    if intent.grid_export_limit_w is not None:
        limit = max(0.0, intent.grid_export_limit_w)
        export_w = limit if export_w is None else min(export_w, limit)
    if import_w == site.fuse_limit_w and export_w == site.max_export_w:
        return site
    return replace(site, fuse_limit_w=import_w, max_export_w=export_w)


def _inside(site: SiteLimits, margin_w: float) -> SiteLimits:
    """The limits `margin_w` tighter: a command held within the estimate's tolerance never sits over them.

    An export limit tighter than zero is a floor on the import (a zero-export site aims at `margin_w` of
    import, as zero-export controllers keep a small grid set point): clamped at zero, a command held at the
    edge of the estimate's tolerance sat `margin_w` over the limit before the inverter's own rounding
    added to it (hypothesis: 107 W over a 0 W limit on an inverter acting in 100 W steps)."""
    if margin_w <= 0:
        return site
    export_w = None if site.max_export_w is None else site.max_export_w - margin_w
    return replace(site, fuse_limit_w=max(0.0, site.fuse_limit_w - margin_w), max_export_w=export_w)


def decide_batteries(
    now: datetime,
    snapshot: Snapshot,
    plan: Plan | None,
    plan_fresh: bool,
    site: SiteLimits,
    batteries: Mapping[str, BatteryLimits],
    tick_s: float,
    forced: Decision | None = None,
    margin_w: float = 0.0,
) -> tuple[Decision, list[Setpoint]]:
    """One battery decision, as pure code: ladder, intent, the plan's grid limits, envelope.

    `Controller.decide` runs this on plausible states of the daemon's live site (zapd/estimate.py);
    `cloud.backtest` calls it on simulated state so the backtest executes plans with exactly the
    edge's rules. `margin_w` tightens the grid limits (the controller's estimate tolerance).
    """
    decision = forced or choose(now, plan, plan_fresh, snapshot)
    requested = resolve_battery_w(decision.intent, snapshot)
    limits = _inside(limits_for(site, decision.intent), margin_w)
    return decision, clamp_batteries(requested, snapshot, batteries, limits, tick_s)


class Controller:
    def __init__(
        self,
        *,
        clock: Clock,
        state: SiteState,
        store: Store,
        batteries: Callable[[], Mapping[str, BatteryLimits]],
        actuators: dict[str, Controllable],
        site: SiteLimits,
        tick_s: float,
        refresh_s: float,
        deadband_w: float,
        plan_source: Callable[[], Plan | None],
        plan_fresh: Callable[[], bool],
        on_cycle: Callable[[], None] | None = None,
        forced_rung: Callable[[], Decision | None] | None = None,
        evs: Callable[[], Mapping[str, EvLimits]] | None = None,
        settle_s: float = 30.0,
        dead_time_s: float = 5.0,
        estimate_tolerance_w: float = 50.0,
        intent_overlay: Callable[[datetime, Intent], Intent] | None = None,
        keepalive_s: Callable[[], Mapping[str, float]] | None = None,
    ) -> None:
        """`settle_s`: after this long a battery that has not reached its setpoint is taken as it reads
        (SoC or device limit, not in remote control). `dead_time_s`: the longest an inverter waits
        before it follows a write (hybrid inverters: 1-3 s). `estimate_tolerance_w`: the rounding and
        noise of battery and meter readings; the command holds while the site is within it.
        `keepalive_s`: per DER, the write period its device needs (DerCapabilities.keepalive_s): the
        controller re-writes a held command sooner than `refresh_s` there, so no driver writes on its own."""
        self._clock = clock
        self._state = state
        self._store = store
        self._batteries = batteries
        self._evs = evs
        self._actuators = actuators
        self._site = site
        self._tick_s = tick_s
        self._refresh_s = refresh_s
        self._deadband_w = deadband_w
        self._plan_source = plan_source
        self._plan_fresh = plan_fresh
        self._on_cycle = on_cycle
        self._keepalive_s = keepalive_s or dict
        self._forced_rung = forced_rung
        # Tightens every intent (a cloud DR window: cloud_sync/commands.py); never loosens the site's limits.
        self._intent_overlay = intent_overlay
        self._wake = asyncio.Event()
        self._written: dict[str, _Written] = {}
        self._write_history: dict[str, deque[_Written]] = {}
        self._settle_s = settle_s
        self._dead_time_s = dead_time_s
        self._tolerance_w = estimate_tolerance_w
        # How far short of what keeps a grid limit at every plausible state a command moved over it may stop
        # (zapd/estimate.py `hold_or_move`): the promised tolerance over a limit (100 W) + the margin the limits
        # are tightened by (the estimate tolerance), so the least overshoot that still keeps the promise.
        self._reach_w = 3 * estimate_tolerance_w
        # The side (+1 up, -1 down) and the total of the last command a move over a limit put past the nearest end
        # (zapd/estimate.py `hold_or_move`, `overshot`): it applies while that command is the one in force and no
        # clean reading has held it.
        self._overshot: tuple[int, float] | None = None
        # Per battery: its recent readings, oldest first (what the meter's window may reach back to).
        self._samples: dict[str, deque[Sample]] = {}
        # The meter's last reading time and the intervals between its readings, for its window.
        self._meter_ts: datetime | None = None
        self._meter_intervals: deque[float] = deque(maxlen=8)
        self._record_latch = FailureLatch(
            log, "controller.command_log_write_failed", "controller.command_log_write_recovered"
        )
        self.stats = ControllerStats()
        self.cycle_listeners: list[Callable[[], Awaitable[None]]] = []

    def wake(self) -> None:
        """Run a cycle now (a new meter reading arrived) instead of waiting for the tick."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            # Cleared before the cycle, not after: a reading that arrives while the cycle awaits device
            # I/O must wake the next cycle at once instead of waiting for the tick.
            self._wake.clear()
            await self.cycle()
            sleeper = asyncio.ensure_future(self._clock.sleep(self._tick_s))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()

    def _observe(self) -> datetime | None:
        """Note new battery polls and the meter's rhythm; returns the newest meter reading's time."""
        latest = self._state.latest()
        grid = latest.get(self._state.grid_meter or "")
        meter_ts = grid.ts if grid is not None else None
        if meter_ts is not None and meter_ts != self._meter_ts:
            if self._meter_ts is not None and meter_ts > self._meter_ts:
                self._meter_intervals.append((meter_ts - self._meter_ts).total_seconds())
            self._meter_ts = meter_ts
        for der_id, reading in latest.items():
            power = reading.values.get(POWER_W) if reading.kind is DerKind.BATTERY else None
            if power is None:
                continue
            known = self._samples.setdefault(der_id, deque(maxlen=_MAX_SAMPLES))
            if not known or reading.ts > known[-1].ts:
                known.append(Sample(power, reading.ts))
            # By age, not by count: the range needs the newest reading from before the meter's window, and the
            # readings of `settle_s` before a write. Sixteen 1 s polls did not reach back past a 10 s meter's
            # window by the time its next value came, so the state before a write fell out of the range and the
            # command moved past the answer (hunt seeds 200, 203, 206: 279 W export a step had not caused).
            horizon_s = 2 * self._meter_window_s() + self._settle_s
            while len(known) > 2 and (known[-1].ts - known[1].ts).total_seconds() > horizon_s:
                known.popleft()
        return meter_ts

    def _meter_window_s(self) -> float:
        """How far back a meter value may reach: its slowest recent interval (a meter reports the average
        since its last telegram, or less) plus 1 s for the meter's own delay and the way to us."""
        return max(self._meter_intervals, default=1.0) + 1.0

    def _battery_ranges(self, snapshot: Snapshot, meter_ts: datetime | None) -> dict[str, tuple[float, float]]:
        """Per battery with a fresh reading: the range of its power while the meter measured."""
        out: dict[str, tuple[float, float]] = {}
        if meter_ts is None:
            return out
        for der_id, view in snapshot.batteries.items():
            samples = self._samples.get(der_id)
            if view.power_w is None or not samples:
                continue
            # Failed writes too: a write that timed out or read back wrong may still have reached the device.
            commands = [SentCommand(w.power_w, w.at) for w in self._write_history.get(der_id, ())]
            out[der_id] = battery_range(
                samples,
                commands,
                meter_ts=meter_ts,
                meter_window_s=self._meter_window_s(),
                settle_s=self._settle_s,
                dead_time_s=self._dead_time_s,
                tolerance_w=self._tolerance_w,
            )
        return out

    def _current_command_w(self, snapshot: Snapshot) -> float:
        """The batteries' total as last commanded (what they head for, or will be told again if the write
        failed); as measured where nothing was written yet."""
        total = 0.0
        for der_id, view in snapshot.batteries.items():
            written = self._written.get(der_id)
            if written is not None:
                total += written.power_w
            elif view.power_w is not None:
                total += view.power_w
        return total

    def decide(self, now: datetime, image: Snapshot | None = None) -> tuple[Decision, list[Setpoint]]:
        """The batteries' decision on `image`, the cycle's one read of the site (taken now if not given)."""
        measured = image if image is not None else self._state.snapshot(now)
        ranges = self._battery_ranges(measured, self._observe())
        forced = self._forced_rung() if self._forced_rung else None
        decision = forced or choose(now, self._plan_source(), self._plan_fresh(), measured)
        if self._intent_overlay is not None:
            decision = replace(decision, intent=self._intent_overlay(now, decision.intent))
        envelopes = self._batteries()

        def at(fraction: float) -> Snapshot:
            """The site with each battery `fraction` of the way up its plausible range."""
            views = dict(measured.batteries)
            for der_id, (lo, hi) in ranges.items():
                views[der_id] = BatteryView(der_id, views[der_id].soc, lo + fraction * (hi - lo))
            return replace(measured, batteries=views)

        def answer(fraction: float) -> list[Setpoint]:
            _, setpoints = decide_batteries(
                now, at(fraction), None, True, self._site, envelopes, self._tick_s, decision, self._tolerance_w
            )
            return setpoints

        if not ranges:
            return decision, answer(0.0)

        def bounds() -> GridBounds:
            limits = _inside(limits_for(self._site, decision.intent), self._tolerance_w)

            def most(request_w: float, fraction: float) -> float:
                return sum(
                    sp.power_w for sp in clamp_batteries(request_w, at(fraction), envelopes, limits, self._tick_s)
                )

            return GridBounds(
                floor_w=most(-MAX_POWER_W, 1.0),
                ceiling_w=most(MAX_POWER_W, 0.0),
                spread_w=sum(hi - lo for lo, hi in ranges.values()),
                band_w=grid_band_w(measured, limits),
            )

        totals: dict[float, float] = {}  # the ends are asked twice (here and in hold_or_move): one envelope run each

        def total(fraction: float) -> float:
            if fraction not in totals:
                totals[fraction] = sum(sp.power_w for sp in answer(fraction))
            return totals[fraction]

        current_w = self._current_command_w(measured)
        overshot = self._overshot[0] if self._overshot and abs(self._overshot[1] - current_w) <= 1.0 else 0
        fraction = hold_or_move(
            total,
            current_w,
            bounds=bounds,
            reach_w=self._reach_w,
            slack_w=self._tolerance_w,
            overshot=overshot,
        )
        chosen = answer(fraction)
        new_w = sum(sp.power_w for sp in chosen)
        low_w, high_w = total(0.0), total(1.0)
        side = moved_past(current_w, low_w, high_w, new_w, overshot)
        if side:
            self._overshot = (side, new_w)
        elif overshot and low_w <= current_w <= high_w and sum(hi - lo for lo, hi in ranges.values()) <= self._reach_w:
            # A clean reading (the range no wider than one reading +- the tolerance and the noise between two) holds
            # the command: the move did not go past the answer after all, and from now on the command is an ordinary
            # held one. Kept, noise putting the interval's edge a watt past it later started a 56 W "return" a
            # minute after the move (hunt seed 68: moved to 2349 W, inside the closed interval from 14 s on).
            self._overshot = None
        return decision, chosen

    def decide_evs(
        self, now: datetime, decision: Decision, setpoints: list[Setpoint], image: Snapshot | None = None
    ) -> list[EvSetpoint]:
        """After the batteries, on the same image: the chargers get the fuse headroom the batteries'
        new setpoints leave."""
        chargers = self._evs() if self._evs is not None else {}
        if not chargers:
            return []
        battery_new_w = sum(sp.power_w for sp in setpoints)
        site = limits_for(self._site, decision.intent)
        measured = image if image is not None else self._state.snapshot(now)
        return clamp_evs(decision.intent, measured, chargers, site, battery_new_w)

    async def cycle(self) -> None:
        """One cycle, OpenEMS `CycleWorker` style: read the process image once, decide every DER from it,
        then one write phase. A reading that lands while a write waits on device I/O wakes the next
        cycle; it never changes a decision of this one (issue 15: the EVs used to get a second snapshot)."""
        started = time.perf_counter()
        now = self._clock.now()
        image = self._state.snapshot(now)
        decision, setpoints = self.decide(now, image)
        ev_setpoints = self.decide_evs(now, decision, setpoints, image)
        await self._note_rung(now, decision)
        keepalive = self._keepalive_s()
        results = await self._write_phase(now, self._writes(now, setpoints, ev_setpoints, keepalive))
        self.stats.last_ev_setpoints = {ev.der_id: ev for ev in ev_setpoints}
        if results:
            await self._record(self._store.log_commands(now, results))
        self.stats.last_setpoints = {sp.der_id: sp for sp in setpoints}
        self.stats.cycles += 1
        self.stats.last_cycle_ms = (time.perf_counter() - started) * 1000
        if self._on_cycle is not None:
            self._on_cycle()
        for listener in self.cycle_listeners:
            await listener()

    def _writes(
        self, now: datetime, setpoints: list[Setpoint], evs: list[EvSetpoint], keepalive: Mapping[str, float]
    ) -> list[_Write]:
        """The cycle's commands, batteries first: those the write rules say are due, to known actuators."""
        out: list[_Write] = []
        for sp in setpoints:
            if sp.der_id in self._actuators and self._needs_write(sp, now, keepalive.get(sp.der_id)):
                command: BatterySetpoint | EvCurrent = BatterySetpoint(der_id=sp.der_id, power_w=sp.power_w)
                out.append(_Write(command, sp.power_w, sp.clamped_reason, battery=True))
        for ev in evs:
            if ev.der_id in self._actuators and self._needs_write(ev, now, keepalive.get(ev.der_id)):
                command = EvCurrent(der_id=ev.der_id, current_a=ev.current_a, phases=ev.phases)
                out.append(_Write(command, ev.power_w, ev.clamped_reason, battery=False))
        return out

    async def _write_phase(self, now: datetime, writes: list[_Write]) -> list[tuple[CommandResult, str]]:
        """The only place commands go to devices (the one writer)."""
        results: list[tuple[CommandResult, str]] = []
        for w in writes:
            der_id = w.command.der_id
            result = await self._actuators[der_id].apply(w.command)
            self._written[der_id] = _Written(w.power_w, now, result.ok)
            if w.battery:
                self._write_history.setdefault(der_id, deque(maxlen=64)).append(self._written[der_id])
            self.stats.writes += 1
            if not result.ok:
                self.stats.write_failures += 1
            results.append((result, w.clamped_reason))
        return results

    def _needs_write(self, sp: Setpoint | EvSetpoint, now: datetime, keepalive_s: float | None = None) -> bool:
        prev = self._written.get(sp.der_id)
        if prev is None or not prev.ok:
            return True
        elapsed = (now - prev.at).total_seconds()
        # The device's own period, less one tick: the cycle that finds it due runs up to a tick late.
        refresh_s = self._refresh_s
        if keepalive_s is not None and keepalive_s > 0:
            refresh_s = min(refresh_s, max(keepalive_s - self._tick_s, keepalive_s / 2))
        if elapsed >= refresh_s or elapsed < 0:
            return True  # < 0: the clock went back; waiting for it to catch up would let the device time out
        moved = abs(sp.power_w - prev.power_w)
        # Always honour a move to exactly idle, and any move past the deadband.
        return moved > self._deadband_w or (sp.power_w == 0.0 and prev.power_w != 0.0)

    async def _note_rung(self, now: datetime, decision: Decision) -> None:
        """Log and store each transition once, with its reason (no log flood on every cycle)."""
        if decision.rung == self.stats.rung:
            self.stats.rung_reason = decision.reason
            return
        log.info(
            "fallback.rung_changed",
            rung=str(decision.rung),
            previous=str(self.stats.rung) if self.stats.rung else None,
            reason=decision.reason,
        )
        self.stats.rung = decision.rung
        self.stats.rung_since = now
        self.stats.rung_reason = decision.reason
        await self._record(self._store.add_event(now, "fallback", f"{decision.rung}: {decision.reason}"))

    async def _record(self, write: Awaitable[None]) -> None:
        """The command log and events are the record, not the control: a store that fails (disk full)
        must not stop the cycle. Logged once per failure streak."""
        try:
            await write
        except (sqlite3.Error, OSError) as exc:
            self.stats.record_failures += 1
            self._record_latch.failed(error=str(exc))
            return
        self._record_latch.ok(total_failures=self.stats.record_failures)

    async def safe_mode(self) -> None:
        """Put every controllable device in its safe state; each bounded by its own timeout."""
        for der_id, actuator in self._actuators.items():
            try:
                async with asyncio.timeout(5.0):
                    await actuator.safe_mode()
            except TimeoutError:
                log.warning("controller.safe_mode_timeout", der_id=der_id)
            except Exception as exc:  # one device failing must not stop the others going safe
                log.warning("controller.safe_mode_failed", der_id=der_id, error=str(exc))
