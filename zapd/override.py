"""An operator's temporary override of the fallback ladder (`zapctl fallback force`).

A technician working on a battery wants the site to sit still (SAFE_HOLD) or to run on local
rules (SELF_CONSUMPTION) for a while, whatever the plan says. The override always expires:
a forgotten force must not pin a site for days. Forcing SELF_CONSUMPTION never overrides
the ladder's own SAFE_HOLD on stale readings: the operator can make the site safer, not
make it act on unknown data.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
import structlog

from drivers.resilience import FailureLatch
from fallback.policy import HOLD, Decision, Rung, choose
from zapd.clock import Clock
from zapd.model import Intent, IntentMode
from zapd.state import SiteState
from zapd.store import Store

log = structlog.get_logger(__name__)

FORCEABLE: dict[str, Rung] = {"safe_hold": Rung.SAFE_HOLD, "self_consumption": Rung.SELF_CONSUMPTION}
MAX_MINUTES = 24 * 60
KV_KEY = "operator.forced_rung"


class OverrideError(ValueError):
    """A force request that cannot be honoured; the message is shown to the operator as is."""


@dataclass(frozen=True, slots=True)
class Override:
    rung: Rung
    until: datetime
    set_at: datetime
    reason: str

    def to_json(self) -> dict[str, object]:
        return {
            "rung": str(self.rung),
            "until": self.until.isoformat(),
            "set_at": self.set_at.isoformat(),
            "reason": self.reason,
        }


class _Stored(msgspec.Struct):
    rung: str
    until: datetime
    set_at: datetime
    reason: str = ""


def decode_override(raw: str) -> Override | None:
    """Read back what `encode` stored; a damaged value is ignored rather than trusted."""
    try:
        s = msgspec.json.decode(raw, type=_Stored)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    rung = FORCEABLE.get(s.rung)
    if rung is None or s.until.tzinfo is None:
        return None
    return Override(rung, s.until, s.set_at, s.reason)


def encode_override(ov: Override) -> str:
    return msgspec.json.encode(ov.to_json()).decode()


class ForcedRung:
    """The Controller's `forced_rung` callable; the local API sets and clears it."""

    def __init__(self, clock: Clock, state: SiteState) -> None:
        self._clock = clock
        self._state = state
        self._current: Override | None = None

    def active(self) -> Override | None:
        """The override in force now, dropping it once it expired."""
        if self._current is not None and self._clock.now() >= self._current.until:
            self._current = None
        return self._current

    def force(self, rung_name: str, minutes: float, reason: str = "") -> Override:
        rung = FORCEABLE.get(rung_name.lower())
        if rung is None:
            raise OverrideError(f"cannot force rung {rung_name!r} (choose one of: {', '.join(FORCEABLE)})")
        if not 0 < minutes <= MAX_MINUTES:
            raise OverrideError(f"minutes must be in (0, {MAX_MINUTES}], got {minutes}")
        now = self._clock.now()
        self._current = Override(rung, now + timedelta(minutes=minutes), now, reason.strip()[:200])
        return self._current

    def restore(self, ov: Override) -> bool:
        """Re-apply an override saved before a restart, unless it expired meanwhile."""
        if self._clock.now() >= ov.until:
            return False
        self._current = ov
        return True

    def release(self) -> Override | None:
        released, self._current = self.active(), None
        return released

    def __call__(self) -> Decision | None:
        ov = self.active()
        if ov is None:
            return None
        why = f"forced by operator until {ov.until:%Y-%m-%d %H:%M}Z" + (f": {ov.reason}" if ov.reason else "")
        if ov.rung is Rung.SAFE_HOLD:
            return Decision(Rung.SAFE_HOLD, HOLD, why)
        now = self._clock.now()
        if choose(now, None, False, self._state.snapshot(now)).rung is Rung.SAFE_HOLD:
            return None  # stale data: the ladder's own SAFE_HOLD wins over the operator
        return Decision(Rung.SELF_CONSUMPTION, Intent(mode=IntentMode.SELF_CONSUMPTION), why)


STORE_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class OverrideChange:
    """What a force or release did: the override now in force (or released) and whether it was stored."""

    override: Override | None
    stored: bool

    def to_json(self) -> dict[str, object]:
        return {"override": self.override.to_json() if self.override else None, "stored": self.stored}


class OperatorOverride:
    """The one owner of the operator override: applies it, persists it and wakes the controller.

    The local API (`zapctl fallback force`) and Home Assistant's select both go through here, so
    they cannot disagree (issue 15: the API reported `internal` when the store write failed
    although the force was already active; Home Assistant logged and went on). The rule now: the
    override applies first, in memory, and stays applied; the store write is bounded by
    STORE_TIMEOUT_S and a failure (disk full) is logged, counted and reported as `stored: false`,
    never as an error: the site does what the operator asked, it just will not survive a restart.
    """

    def __init__(self, clock: Clock, state: SiteState, store: Store | None = None) -> None:
        self.forced = ForcedRung(clock, state)
        self._clock = clock
        self.store = store
        self.wake: Callable[[], None] | None = None  # the controller's wake, set once it exists
        self.store_failures = 0
        self._store_latch = FailureLatch(log, "override.store_failed", "override.store_recovered")

    def active(self) -> Override | None:
        return self.forced.active()

    def __call__(self) -> Decision | None:
        """The controller's `forced_rung` hook."""
        return self.forced()

    async def restore(self) -> Override | None:
        """Re-apply the override stored before a restart, unless it expired meanwhile."""
        if self.store is None:
            return None
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                raw = await self.store.kv_get(KV_KEY)
        except (sqlite3.Error, OSError, TimeoutError) as exc:
            log.error("override.restore_failed", error=str(exc) or type(exc).__name__)
            return None
        ov = decode_override(raw) if raw else None
        if ov is None or not self.forced.restore(ov):
            return None
        log.warning("fallback.force_restored", rung=str(ov.rung), until=ov.until.isoformat())
        return ov

    async def force(self, rung_name: str, minutes: float, reason: str = "", *, source: str) -> OverrideChange:
        """Apply (raises OverrideError on a bad request, before anything changed), wake, then store."""
        ov = self.forced.force(rung_name, minutes, reason)
        self._wake()
        log.warning("fallback.forced", source=source, rung=str(ov.rung), until=ov.until.isoformat(), reason=ov.reason)
        event = f"force {ov.rung} until {ov.until.isoformat()}" + _by(source)
        return OverrideChange(ov, await self._store(encode_override(ov), event, ov.set_at))

    async def release(self, *, source: str) -> OverrideChange:
        released = self.forced.release()
        self._wake()
        log.warning("fallback.released", source=source, had_override=released is not None)
        event = f"release {released.rung}" + _by(source) if released is not None else None
        return OverrideChange(released, await self._store("", event, self._clock.now()))

    def _wake(self) -> None:
        if self.wake is not None:
            self.wake()

    async def _store(self, stored: str, event: str | None, at: datetime) -> bool:
        """Persist so the override survives a restart and shows in `zapctl fallback`; bounded, and a
        store that cannot take it leaves the override in force, in memory."""
        if self.store is None:
            return False
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                await self.store.kv_set(KV_KEY, stored)
                if event is not None:
                    await self.store.add_event(at, "operator", event)
        except (sqlite3.Error, OSError, TimeoutError) as exc:
            self.store_failures += 1
            self._store_latch.failed(error=str(exc) or type(exc).__name__)
            return False
        self._store_latch.ok()
        return True


def _by(source: str) -> str:
    return "" if source == "api" else f" ({source.replace('_', ' ')})"
