"""The local API's views: what each command answers, from one `SiteView` per request.

The transport (zapd/api.py: the unix socket, NDJSON framing, limits, timeouts, `follow`) and the
answers are separate rooms (issue 15): a view is a function of (request, SiteView, the store) and
can be read and tested without a socket. The async parts a view needs beyond the SiteView (the
store's counters and events, the cloud link's own status) come through `ApiContext`.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import msgspec

from drivers.api import HasHealth
from zapd.config_load import as_builtins
from zapd.config_structs import ZapdConfig
from zapd.model import Plan, Reading
from zapd.override import OperatorOverride, OverrideError
from zapd.retention import EXPIRED_WITHOUT_CLOUD_KEY
from zapd.siteview import SiteView
from zapd.store import Store

PROTOCOL_VERSION = 1
RECENT_READINGS = 1000
_SECRET_KEY = re.compile(r"(key|secret|token|password|passwd)", re.IGNORECASE)
_URL_USERINFO = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@]*@", re.IGNORECASE)
REDACTED = "<redacted>"


class RequestError(Exception):
    """A request the API will not serve; `code` is part of the stable error schema."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Request(msgspec.Struct):
    """Unknown fields are ignored so an older daemon still serves a newer zapctl."""

    cmd: str
    follow: bool = False
    limit: int = 50
    der_id: str | None = None
    rung: str | None = None
    minutes: float | None = None
    reason: str = ""


async def _no_link() -> dict[str, object]:
    return {}


@dataclass
class ApiContext:
    """What the views read besides the SiteView: the parts that need the event loop or the store."""

    config: ZapdConfig
    view: Callable[[], SiteView]
    override: OperatorOverride
    store: Callable[[], Store | None] = lambda: None
    link_status: Callable[[], Awaitable[dict[str, object]]] = _no_link


@dataclass
class TransportStats:
    """The transport's own counters and the recent readings, shown by `status`, `telemetry` and `diag`."""

    started_at: datetime
    t0: float = field(default_factory=time.monotonic)
    recent: deque[Reading] = field(default_factory=lambda: deque(maxlen=RECENT_READINGS))
    requests: int = 0
    errors: int = 0
    follow_dropped: int = 0
    followers: int = 0


def _ts(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt is not None else None


def redact(value: object, key: str = "") -> object:
    """Config as a support bundle may show it: no keys, no secrets, no credentials in URLs."""
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if value is not None and _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return _URL_USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", value)
    return value


def _version(dist: str) -> str:
    import importlib.metadata  # only for a support bundle: email, zipfile, csv are 1.5 MB

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


Handler = Callable[[Request, SiteView], Awaitable[dict[str, object]]]


class ApiViews:
    """One method per command; each reads the SiteView it is given, never the daemon."""

    def __init__(self, ctx: ApiContext, stats: TransportStats) -> None:
        self._ctx = ctx
        self._stats = stats

    def handlers(self) -> dict[str, Handler]:
        return {
            "ping": self.ping,
            "status": self.status,
            "devices": self.devices,
            "plan": self.plan,
            "telemetry": self.telemetry,
            "fallback": self.fallback,
            "fallback_force": self.fallback_force,
            "fallback_release": self.fallback_release,
            "diag": self.diag,
        }

    async def ping(self, request: Request, v: SiteView) -> dict[str, object]:
        return {"protocol": PROTOCOL_VERSION, "zapd": _version("zapd")}

    def _rung(self, v: SiteView) -> dict[str, object]:
        c, ov = v.control, v.override
        return {
            "rung": str(c.rung) if c.rung else None,
            "since": _ts(c.rung_since),
            "reason": c.rung_reason,
            "forced": ov.to_json() if ov else None,
        }

    def _plan_summary(self, plan: Plan | None, now: datetime) -> dict[str, object] | None:
        if plan is None:
            return None
        return {
            "version": plan.version,
            "issued_at": _ts(plan.issued_at),
            "valid_until": _ts(plan.valid_until),
            "expires_in_s": round((plan.valid_until - now).total_seconds(), 1),
            "expired": now >= plan.valid_until,
            "slots": len(plan.slots),
        }

    async def _link(self) -> dict[str, object]:
        """Link fields; the cloud-sync side adds its own through `link_status()` when it has one."""
        store = self._ctx.store()
        link: dict[str, object] = {
            "state": "not_configured" if self._ctx.config.cloud is None else "unknown",
            "last_upload": None,
            "outbox_depth": await store.outbox_depth() if store is not None else None,
        }
        link.update(await self._ctx.link_status())
        return link

    def _control(self, v: SiteView) -> dict[str, object]:
        c = v.control
        if c.setpoints is None:  # no controller yet
            return {"cycles": 0, "last_cycle_ms": None, "writes": 0, "write_failures": 0, "setpoints": {}}
        return {
            "cycles": c.cycles,
            "last_cycle_ms": round(c.last_cycle_ms, 3),
            "writes": c.writes,
            "write_failures": c.write_failures,
            "setpoints": {
                der: {"power_w": sp.power_w, "clamped_reason": sp.clamped_reason}
                for der, sp in sorted(c.setpoints.items())
            },
        }

    def _tasks(self, v: SiteView) -> list[dict[str, object]]:
        return [
            {"name": h.name, "ok": not h.failing, "restarts": h.restarts, "last_error": h.last_error}
            for h in v.tasks.values()
        ]

    def _device_health(self, v: SiteView) -> list[dict[str, object]]:
        """One entry per configured device: does it answer (drivers/health.py), and its driver task."""
        out: list[dict[str, object]] = []
        for driver in v.drivers:
            task = v.tasks.get(f"driver:{driver.name}")
            entry: dict[str, object] = {"device": driver.name}
            if isinstance(driver, HasHealth):
                entry.update(driver.health.view(v.now).to_json())
            else:  # a driver that keeps no record: say so rather than guess
                entry.update(
                    {"state": "unknown", "since": None, "reason": "this driver reports no health", "last_error": "",
                     "last_error_at": None, "errors": 0, "last_ok": None}
                )  # fmt: skip
            if task is not None and task.failing:
                # The driver itself keeps crashing: whatever its record said last is not current.
                entry["state"] = "degraded" if entry["state"] in ("ok", "connecting") else entry["state"]
                entry["reason"] = f"driver task failing: {task.last_error}"
            entry["task_ok"] = (not task.failing) if task else None
            entry["restarts"] = task.restarts if task else 0
            out.append(entry)
        return out

    async def status(self, request: Request, v: SiteView) -> dict[str, object]:
        return {
            "site_id": v.site_id,
            "version": _version("zapd"),
            "pid": os.getpid(),
            "now": _ts(v.now),
            "started_at": _ts(self._stats.started_at),
            "uptime_s": round(time.monotonic() - self._stats.t0, 1),
            "fallback": self._rung(v),
            "link": await self._link(),
            "plan": self._plan_summary(v.plan, v.now),
            "control": self._control(v),
            "tasks": self._tasks(v),
            "devices": self._device_health(v),
            "readings_in": v.readings_in,
        }

    def _device_rows(self, v: SiteView) -> list[dict[str, object]]:
        latest = v.latest
        kinds = {der: str(kind) for der, kind in v.kinds.items()}
        for der, seen in latest.items():
            kinds.setdefault(der, str(seen.kind))
        devices = {h["device"]: h for h in self._device_health(v)}
        rows: list[dict[str, object]] = []
        for der in sorted(kinds):
            r = latest.get(der)
            age = (v.now - r.ts).total_seconds() if r is not None else None
            driver = der.split(".", 1)[0]
            task = v.tasks.get(f"driver:{driver}")
            rows.append(
                {
                    "der_id": der,
                    "kind": kinds[der],
                    "driver": driver,
                    "driver_ok": (not task.failing) if task else None,
                    "health": _der_health(devices.get(driver)),
                    "ts": _ts(r.ts) if r else None,
                    "age_s": round(age, 1) if age is not None else None,
                    "quality": str(r.quality) if r else None,
                    "fresh": der in v.fresh,
                    "values": dict(r.values) if r else {},
                }
            )
        return rows

    async def devices(self, request: Request, v: SiteView) -> dict[str, object]:
        return {"now": _ts(v.now), "devices": self._device_rows(v), "device_health": self._device_health(v)}

    async def plan(self, request: Request, v: SiteView) -> dict[str, object]:
        plan, now = v.plan, v.now
        if plan is None:
            return {"plan": None, "slots": []}
        slots = [
            {
                "start": _ts(s.start),
                "end": _ts(s.end),
                "active": s.start <= now < s.end,
                "mode": str(s.intent.mode),
                "battery_w": s.intent.battery_w,
                "ev_w": s.intent.ev_w,
                "grid_import_limit_w": s.intent.grid_import_limit_w,
                "grid_export_limit_w": s.intent.grid_export_limit_w,
                "target_soc": s.intent.target_soc,
            }
            for s in plan.slots
        ]
        return {"now": _ts(now), "plan": self._plan_summary(plan, now), "slots": slots}

    async def telemetry(self, request: Request, v: SiteView) -> dict[str, object]:
        limit = _check_limit(request.limit, RECENT_READINGS)
        readings = [r for r in self._stats.recent if request.der_id is None or r.der_id == request.der_id]
        return {"readings": readings[-limit:] if limit else [], "follow": request.follow}

    async def fallback(self, request: Request, v: SiteView) -> dict[str, object]:
        limit = _check_limit(request.limit, 1000)
        store = self._ctx.store()
        rows = await store.events("fallback", limit=limit) if store is not None else []
        transitions = []
        for e in rows:
            rung, _, why = e.detail.partition(": ")
            transitions.append({"ts": e.ts, "rung": rung, "reason": why})
        return {**self._rung(v), "transitions": transitions}

    async def fallback_force(self, request: Request, v: SiteView) -> dict[str, object]:
        if request.rung is None or request.minutes is None:
            raise RequestError("bad_request", "fallback_force needs 'rung' and 'minutes'")
        try:
            change = await self._ctx.override.force(request.rung, request.minutes, request.reason, source="api")
        except OverrideError as exc:
            raise RequestError("bad_request", str(exc)) from None
        assert change.override is not None
        # `stored: false`: in force now, but a restart will forget it (the store refused the write).
        return {"forced": change.override.to_json(), "stored": change.stored}

    async def fallback_release(self, request: Request, v: SiteView) -> dict[str, object]:
        change = await self._ctx.override.release(source="api")
        released = change.override
        return {"released": released.to_json() if released else None, "stored": change.stored}

    async def diag(self, request: Request, v: SiteView) -> dict[str, object]:
        store = self._ctx.store()
        st = self._stats
        counters: dict[str, object] = {
            "readings_in": v.readings_in,
            "readings_written": v.readings_written,
            "api_requests": st.requests,
            "api_errors": st.errors,
            "api_follow_dropped": st.follow_dropped,
            "api_followers": st.followers,
        }
        db: dict[str, object] = {}
        recent_commands = []
        if store is not None:
            counters["outbox_last_seq"] = await store.last_seq()
            counters["outbox_acked_seq"] = await store.acked_seq()
            counters["outbox_depth"] = await store.outbox_depth()
            counters["dropped_by_retention"] = int(await store.kv_get("sync.dropped_by_retention") or 0)
            counters["expired_without_cloud"] = int(await store.kv_get(EXPIRED_WITHOUT_CLOUD_KEY) or 0)
            counters["refused_by_cloud"] = int(await store.kv_get("sync.refused_by_cloud") or 0)
            db = {
                "path": str(store.path),
                "schema_version": await store.schema_version(),
                "size_bytes": _size(store.path),
            }
            for row in await store.recent_commands(limit=20):
                recent_commands.append(
                    {
                        "ts": row.ts,
                        "der_id": row.der_id,
                        "command": msgspec.json.decode(row.command),
                        "ok": row.ok,
                        "detail": row.detail,
                        "clamped_reason": row.clamped_reason,
                    }
                )
        return {
            "generated_at": _ts(v.now),
            "versions": {
                "python": platform.python_version(),
                "zapd": _version("zapd"),
                "pymodbus": _version("pymodbus"),
                "dsmr_parser": _version("dsmr-parser"),
                "msgspec": _version("msgspec"),
                "structlog": _version("structlog"),
            },
            "platform": {
                "system": platform.platform(),
                "machine": platform.machine(),
                "executable": sys.executable,
            },
            "config": redact(as_builtins(self._ctx.config)),
            "status": await self.status(request, v),
            "devices": self._device_rows(v),
            "counters": counters,
            "health": self._tasks(v),
            "db": db,
            "recent_commands": recent_commands,
            "fallback": await self.fallback(Request(cmd="fallback", limit=50), v),
        }


def _der_health(device: dict[str, object] | None) -> dict[str, object] | None:
    """The device's health as shown on each of its DER rows (the per-device list has the rest)."""
    if device is None:
        return None
    return {k: device[k] for k in ("state", "since", "reason", "last_error", "errors")}


def _check_limit(limit: int, maximum: int) -> int:
    if not 0 <= limit <= maximum:
        raise RequestError("bad_request", f"limit must be in [0, {maximum}], got {limit}")
    return limit


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None
