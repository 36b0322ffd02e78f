"""The operator override: bounded in time, limited to safe rungs, never acting on stale data."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fallback.policy import Rung
from zapd.api import REDACTED, redact
from zapd.clock import ManualClock
from zapd.model import POWER_W, DerKind, IntentMode, Reading
from zapd.override import ForcedRung, OverrideError, decode_override, encode_override
from zapd.state import SiteState

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _site(clock: ManualClock, *, meter: bool = True) -> SiteState:
    state = SiteState()
    state.register("meter", DerKind.METER, 1.0)
    if meter:
        state.update(Reading(der_id="meter", kind=DerKind.METER, ts=clock.now(), values={POWER_W: 300.0}))
    return state


@pytest.mark.parametrize(
    ("rung", "meter", "leap_s", "expected"),
    [
        ("safe_hold", True, 0, Rung.SAFE_HOLD),
        ("safe_hold", False, 0, Rung.SAFE_HOLD),
        ("SELF_CONSUMPTION", True, 0, Rung.SELF_CONSUMPTION),
        ("self_consumption", False, 0, None),  # stale meter: the ladder's own SAFE_HOLD wins
        ("safe_hold", True, 10 * 60 - 1, Rung.SAFE_HOLD),
        ("safe_hold", True, 10 * 60, None),  # expired exactly at `until`
    ],
)
def test_forced_rung_table(rung: str, meter: bool, leap_s: float, expected: Rung | None) -> None:
    clock = ManualClock(T0)
    state = _site(clock, meter=meter)
    forced = ForcedRung(clock, state)
    forced.force(rung, 10, "battery swap")
    clock.advance(leap_s)
    if meter and leap_s:  # keep the meter fresh while time passes
        state.update(Reading(der_id="meter", kind=DerKind.METER, ts=clock.now(), values={POWER_W: 1.0}))
    decision = forced()
    assert (decision.rung if decision else None) is expected
    if decision is not None:
        assert "forced by operator" in decision.reason and "battery swap" in decision.reason
        wanted = IntentMode.HOLD if expected is Rung.SAFE_HOLD else IntentMode.SELF_CONSUMPTION
        assert decision.intent.mode is wanted


@pytest.mark.parametrize(("rung", "minutes"), [("plan", 5), ("cached_plan", 5), ("safe_hold", 0), ("safe_hold", 1441)])
def test_force_refuses_what_it_must_not_do(rung: str, minutes: float) -> None:
    clock = ManualClock(T0)
    with pytest.raises(OverrideError):
        ForcedRung(clock, _site(clock)).force(rung, minutes)


def test_release_and_restore_after_restart() -> None:
    clock = ManualClock(T0)
    forced = ForcedRung(clock, _site(clock))
    ov = forced.force("safe_hold", 30)
    saved = encode_override(ov)
    assert forced.release() == ov
    assert forced() is None and forced.release() is None

    again = ForcedRung(clock, _site(clock))
    restored = decode_override(saved)
    assert restored == ov
    assert again.restore(restored)
    clock.advance(31 * 60)
    assert not ForcedRung(clock, _site(clock)).restore(restored)  # expired while zapd was down


@pytest.mark.parametrize("raw", ["", "{", '{"rung": "plan", "until": "2026-06-01T12:00:00Z", "set_at": "x"}', "[]"])
def test_damaged_saved_override_is_ignored(raw: str) -> None:
    assert decode_override(raw) is None


def test_redact_hides_keys_secrets_and_url_credentials() -> None:
    config = {
        "site": {"id": "s1"},
        "cloud": {"url": "https://zap:hunter2@cloud.example/v1", "public_key": "AAAA", "timeout_s": 10},
        "devices": [{"id": "meter", "decryption_key": "00112233", "port": "/dev/ttyUSB0"}],
        "notes": {"api_token": None},
    }
    out = redact(config)
    assert out == {
        "site": {"id": "s1"},
        "cloud": {"url": f"https://{REDACTED}@cloud.example/v1", "public_key": REDACTED, "timeout_s": 10},
        "devices": [{"id": "meter", "decryption_key": REDACTED, "port": "/dev/ttyUSB0"}],
        "notes": {"api_token": None},
    }
    assert "hunter2" not in str(out) and "00112233" not in str(out)
