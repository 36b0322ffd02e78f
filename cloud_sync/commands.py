"""What the Zap does with a verified cloud command, and the persisted nonce window that refuses replays.

A DR activation becomes a grid-limit window that the controller folds into every intent
(`DemandResponse.overlay`): it is a min() with what the intent already asks, and the controller's
`limits_for` takes a min() with the site's fuse and export limit, so a command can only tighten,
never loosen what the site allows. An offset is turned into an import limit once, at activation,
from the grid power measured then (unknown meter → refused). A safe-mode order is the operator's
SAFE_HOLD override (zapd/override.py, source "cloud") for the window; a re-plan order fetches the plan now.

Nonces: each accepted command id is stored (kv `channel.nonces`) with its expiry and the answer the
Zap gave, before the command is applied. A command is valid only until it expires, so an id is kept
exactly that long; a second arrival inside the window is refused as a replay (and the first answer
is sent again, so a lost ack is recovered), one after it is refused as expired.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import msgspec
import structlog

from cloud_sync.channel_wire import Ack, Command, DrAction, ReplanAction, SafeModeAction
from zapd.model import Intent
from zapd.override import MAX_MINUTES, OperatorOverride, OverrideError
from zapd.store import Store

log = structlog.get_logger(__name__)

NONCES_KEY = "channel.nonces"
DR_KEY = "channel.dr_windows"
MAX_NONCES = 1000  # unexpired commands remembered at once; beyond it new commands are refused
MAX_DR_WINDOWS = 16


class _Seen(msgspec.Struct):
    expires_at: datetime
    ack: Ack | None = None


class DrWindow(msgspec.Struct, frozen=True):
    command_id: str
    start: datetime
    end: datetime
    import_limit_w: float | None
    export_limit_w: float | None


class NonceWindow:
    """The persisted set of command ids seen and not yet expired."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._seen: dict[str, _Seen] = {}

    async def load(self) -> None:
        raw = await self._store.kv_get(NONCES_KEY)
        if raw is None:
            return
        try:
            self._seen = msgspec.json.decode(raw, type=dict[str, _Seen])
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("channel.nonces_unreadable")  # refused commands expire within the hour
            self._seen = {}

    def seen(self, command_id: str) -> _Seen | None:
        return self._seen.get(command_id)

    def full(self, now: datetime) -> bool:
        self._prune(now)
        return len(self._seen) >= MAX_NONCES

    async def remember(self, cmd: Command, now: datetime, ack: Ack | None = None) -> None:
        self._prune(now)
        self._seen[cmd.command_id] = _Seen(expires_at=cmd.expires_at, ack=ack)
        await self._store.kv_set(NONCES_KEY, msgspec.json.encode(self._seen).decode())

    def _prune(self, now: datetime) -> None:
        for cid in [c for c, s in self._seen.items() if s.expires_at <= now]:
            del self._seen[cid]


class DemandResponse:
    """Active DR windows; `overlay` is the controller's intent hook."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.windows: list[DrWindow] = []

    async def load(self, now: datetime) -> None:
        raw = await self._store.kv_get(DR_KEY)
        if raw is None:
            return
        try:
            windows = msgspec.json.decode(raw, type=list[DrWindow])
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("channel.dr_windows_unreadable")
            return
        self.windows = [w for w in windows if w.end > now and _window_ok(w)]

    async def add(self, window: DrWindow, now: datetime) -> None:
        running = [w for w in self.windows if w.end > now]
        self.windows = [*running[-(MAX_DR_WINDOWS - 1) :], window]
        await self._store.kv_set(DR_KEY, msgspec.json.encode(self.windows).decode())

    def active(self, now: datetime) -> list[DrWindow]:
        return [w for w in self.windows if w.start <= now < w.end]

    def overlay(self, now: datetime, intent: Intent) -> Intent:
        """The intent with every active window's limits folded in (each a min: only ever tighter)."""
        active = self.active(now)
        if not active:
            return intent
        imp, exp = intent.grid_import_limit_w, intent.grid_export_limit_w
        for w in active:
            if w.import_limit_w is not None:
                imp = w.import_limit_w if imp is None else min(imp, w.import_limit_w)
            if w.export_limit_w is not None:
                exp = w.export_limit_w if exp is None else min(exp, w.export_limit_w)
        return msgspec.structs.replace(intent, grid_import_limit_w=imp, grid_export_limit_w=exp)


def _window_ok(w: DrWindow) -> bool:
    return all(v is None or (math.isfinite(v) and v >= 0) for v in (w.import_limit_w, w.export_limit_w))


@dataclass
class Applier:
    """Applies verified commands. `site_import_w`/`site_export_w`: the site's configured limits (W);
    `grid_w`: the measured grid power now (None if unknown); `fetch_plan`: fetch now, returns the version."""

    demand: DemandResponse
    override: OperatorOverride | None
    grid_w: Callable[[], float | None]
    site_import_w: float
    site_export_w: float | None
    fetch_plan: Callable[[], Awaitable[int | None]]

    async def apply(self, cmd: Command, now: datetime) -> Ack:
        action = cmd.action
        if isinstance(action, DrAction):
            return await self._dr(cmd, action, now)
        if isinstance(action, SafeModeAction):
            return await self._safe_mode(cmd, action, now)
        assert isinstance(action, ReplanAction)
        try:
            version = await self.fetch_plan()
        except Exception as exc:  # the link failed: said in the answer; the poll keeps trying
            return _refused(cmd, now, f"fetch_failed: {type(exc).__name__}"[:200])
        return _ack(cmd, now, {"plan_version": None if version is None else float(version)})

    async def _dr(self, cmd: Command, a: DrAction, now: datetime) -> Ack:
        import_w = None if a.import_limit_kw is None else a.import_limit_kw * 1000.0
        if a.offset_kw is not None:
            grid = self.grid_w()
            if grid is None or not math.isfinite(grid):
                return _refused(cmd, now, "no_baseline")  # an offset from an unknown import is no limit
            import_w = max(0.0, grid - a.offset_kw * 1000.0)
        export_w = None if a.export_limit_kw is None else a.export_limit_kw * 1000.0
        # What will be in force: never above the site's own limits.
        if import_w is not None:
            import_w = min(import_w, self.site_import_w)
        if export_w is not None and self.site_export_w is not None:
            export_w = min(export_w, self.site_export_w)
        window = DrWindow(cmd.command_id, a.start, a.end, import_w, export_w)
        await self.demand.add(window, now)
        log.info("channel.dr_window_applied", command_id=cmd.command_id, start=a.start.isoformat(),
                 end=a.end.isoformat(), import_limit_w=import_w, export_limit_w=export_w)  # fmt: skip
        return _ack(
            cmd,
            now,
            {
                "import_limit_w": import_w,
                "export_limit_w": export_w,
                "start": a.start.isoformat(),
                "end": a.end.isoformat(),
            },
        )

    async def _safe_mode(self, cmd: Command, a: SafeModeAction, now: datetime) -> Ack:
        if self.override is None:
            return _refused(cmd, now, "no_override")
        minutes = min(MAX_MINUTES, (a.until - now).total_seconds() / 60.0)
        try:
            change = await self.override.force("safe_hold", minutes, f"cloud: {a.reason}"[:200], source="cloud")
        except OverrideError as exc:
            return _refused(cmd, now, f"override: {exc}"[:200])
        assert change.override is not None
        return _ack(cmd, now, {"rung": "safe_hold", "until": change.override.until.isoformat()})


def _ack(cmd: Command, now: datetime, applied: dict[str, float | str | None]) -> Ack:
    return Ack(command_id=cmd.command_id, result="applied", applied=applied, applied_at=now)


def _refused(cmd: Command, now: datetime, reason: str) -> Ack:
    return Ack(command_id=cmd.command_id, result="refused", reason=reason, applied_at=now)
