"""An operator's temporary override of the fallback ladder (`zapctl fallback force`).

A technician working on a battery wants the site to sit still (SAFE_HOLD) or to run on local
rules (SELF_CONSUMPTION) for a while, whatever the plan says. The override always expires:
a forgotten force must not pin a site for days. Forcing SELF_CONSUMPTION never overrides
the ladder's own SAFE_HOLD on stale readings: the operator can make the site safer, not
make it act on unknown data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from fallback.policy import HOLD, Decision, Rung, choose
from zapd.clock import Clock
from zapd.model import Intent, IntentMode
from zapd.state import SiteState

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
            "rung": self.rung.name.lower(),
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
