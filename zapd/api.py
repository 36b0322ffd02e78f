"""The daemon's local control API: newline-delimited JSON on a unix socket (docs/local-api.md).

Why a unix socket and NDJSON rather than HTTP: the gateway needs no extra dependency, file
permissions (0660, group zapd) are the access control, and `socat`/`nc -U` can talk to it
when zapctl is unavailable. One request per line, one response per line; only `telemetry`
with `follow` keeps streaming. The API reads the daemon's state; its only writes are the
operator override (`fallback_force` / `fallback_release`), which is bounded by an expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Protocol

import msgspec
import structlog

from drivers.api import HasHealth
from zapd.clock import Clock
from zapd.config import ZapdConfig
from zapd.controller import Controller
from zapd.devices import DeviceSet
from zapd.model import Plan, Reading
from zapd.override import OperatorOverride, OverrideError
from zapd.state import SiteState
from zapd.store import Store
from zapd.supervisor import Supervisor

log = structlog.get_logger(__name__)

PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024
MAX_CLIENTS = 16
IDLE_TIMEOUT_S = 60.0
HANDLER_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 5.0
HEARTBEAT_S = 15.0
RECENT_READINGS = 1000
FOLLOW_QUEUE = 1000
SOCKET_MODE = 0o660
_SECRET_KEY = re.compile(r"(key|secret|token|password|passwd)", re.IGNORECASE)
_URL_USERINFO = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@]*@", re.IGNORECASE)
REDACTED = "<redacted>"

_encoder = msgspec.json.Encoder()


class HasWritten(Protocol):
    @property
    def written(self) -> int: ...


class DaemonView(Protocol):
    """What the API reads from the daemon; properties so the daemon's attributes stay its own."""

    @property
    def config(self) -> ZapdConfig: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def state(self) -> SiteState: ...
    @property
    def supervisor(self) -> Supervisor: ...
    @property
    def devices(self) -> DeviceSet: ...
    @property
    def store(self) -> Store | None: ...
    @property
    def controller(self) -> Controller | None: ...
    @property
    def telemetry(self) -> HasWritten | None: ...
    @property
    def readings_in(self) -> int: ...
    def current_plan(self) -> Plan | None: ...
    async def link_status(self) -> dict[str, object]: ...


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


_request_decoder = msgspec.json.Decoder(Request)


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


class LocalApi:
    def __init__(self, daemon: DaemonView, override: OperatorOverride | None = None) -> None:
        self._d = daemon
        self.override = override or OperatorOverride(daemon.clock, daemon.state)
        self.socket_path = Path(daemon.config.api.socket)
        self.started_at = daemon.clock.now()
        self._t0 = time.monotonic()
        self.recent: deque[Reading] = deque(maxlen=RECENT_READINGS)
        self._followers: set[asyncio.Queue[Reading]] = set()
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.requests = 0
        self.errors = 0
        self.follow_dropped = 0
        self._handlers: dict[str, Callable[[Request], Awaitable[dict[str, object]]]] = {
            "ping": self._ping,
            "status": self._status,
            "devices": self._devices,
            "plan": self._plan,
            "telemetry": self._telemetry,
            "fallback": self._fallback,
            "fallback_force": self._fallback_force,
            "fallback_release": self._fallback_release,
            "diag": self._diag,
        }

    # --- hooks for the daemon -------------------------------------------------------------

    def publish(self, reading: Reading) -> None:
        """Called from the daemon's sink for every reading; never blocks and never raises."""
        self.recent.append(reading)
        for queue in self._followers:
            try:
                queue.put_nowait(reading)
            except asyncio.QueueFull:
                self.follow_dropped += 1

    async def serve(self) -> None:
        """Supervised task: listen until cancelled, then remove the socket file."""
        await self.override.restore()
        self._prepare_path()
        server = await asyncio.start_unix_server(self._on_client, path=str(self.socket_path), limit=MAX_LINE)
        try:
            os.chmod(self.socket_path, SOCKET_MODE)
            log.info("api.listening", socket=str(self.socket_path))
            await server.serve_forever()
        finally:
            server.close()
            await self._close_clients()
            with contextlib.suppress(OSError):
                self.socket_path.unlink()

    def _prepare_path(self) -> None:
        """Create the parent dir; remove a stale socket, but never steal a live daemon's."""
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if not self.socket_path.exists() and not self.socket_path.is_symlink():
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.socket_path))
            except OSError:
                self.socket_path.unlink()  # nobody listening: a leftover from a crash
                return
        raise RuntimeError(f"{self.socket_path}: another process is listening on the API socket")

    # --- connections -----------------------------------------------------------------------

    async def _close_clients(self) -> None:
        """Hang up on clients so their handlers end by themselves: on Python 3.11 a handler task
        cancelled at loop shutdown makes asyncio log a spurious traceback."""
        for writer in self._clients.values():
            writer.close()
        if self._clients:
            await asyncio.wait(set(self._clients), timeout=WRITE_TIMEOUT_S)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        try:
            if len(self._clients) > MAX_CLIENTS:
                await self._send(writer, _error("busy", f"too many clients (max {MAX_CLIENTS})"))
                return
            await self._serve_client(reader, writer)
        except (ConnectionError, TimeoutError, OSError):
            pass  # the client went away or stalled: its problem, not the daemon's
        finally:
            self._clients.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError, OSError):
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await writer.wait_closed()

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():  # last request without a newline (`echo -n ... | nc -U`)
                    response, request = self._answer_line(exc.partial)
                    await self._send(writer, await self._dispatch(request) if request else response)
                return
            except asyncio.LimitOverrunError:
                self.errors += 1
                await self._send(writer, _error("bad_request", f"request line longer than {MAX_LINE} bytes"))
                return
            if not line.strip():
                continue
            response, request = self._answer_line(line)
            if request is not None:
                response = await self._dispatch(request)
            await self._send(writer, response)
            if request is not None and request.cmd == "telemetry" and request.follow and response.get("ok"):
                await self._follow(reader, writer, request)
                return

    def _answer_line(self, line: bytes) -> tuple[dict[str, object], Request | None]:
        """Decode one request line; a bad one gets an error response, never an exception."""
        self.requests += 1
        try:
            return {}, _request_decoder.decode(line)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self.errors += 1
            return _error("bad_request", f"malformed request: {exc}"), None

    async def _dispatch(self, request: Request) -> dict[str, object]:
        handler = self._handlers.get(request.cmd)
        if handler is None:
            self.errors += 1
            return _error("unknown_command", f"unknown cmd {request.cmd!r} (known: {', '.join(self._handlers)})")
        try:
            async with asyncio.timeout(HANDLER_TIMEOUT_S):
                data = await handler(request)
        except RequestError as exc:
            self.errors += 1
            return _error(exc.code, str(exc))
        except TimeoutError:
            self.errors += 1
            return _error("timeout", f"{request.cmd} took longer than {HANDLER_TIMEOUT_S:.0f} s")
        except Exception as exc:  # a bug in one handler must not take the API down
            self.errors += 1
            log.exception("api.handler_failed", cmd=request.cmd)
            return _error("internal", f"{type(exc).__name__}: {exc}")
        return {"ok": True, "cmd": request.cmd, "data": data}

    async def _send(self, writer: asyncio.StreamWriter, message: dict[str, object]) -> None:
        writer.write(_encoder.encode(message) + b"\n")
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.drain()

    async def _follow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request) -> None:
        """Stream new readings until the client hangs up; heartbeats let it detect a stuck daemon."""
        queue: asyncio.Queue[Reading] = asyncio.Queue(maxsize=FOLLOW_QUEUE)
        self._followers.add(queue)
        hangup = asyncio.ensure_future(reader.read(1))  # any byte or EOF ends the stream
        dropped_seen = self.follow_dropped
        try:
            while not hangup.done():
                getter = asyncio.ensure_future(queue.get())
                try:
                    done, _ = await asyncio.wait(
                        {getter, hangup}, timeout=HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    getter.cancel()
                if getter in done and not getter.cancelled():
                    reading = getter.result()
                    if request.der_id is None or reading.der_id == request.der_id:
                        await self._send(writer, {"event": "reading", "data": reading})
                elif not done:
                    await self._send(writer, {"event": "heartbeat", "ts": _ts(self._d.clock.now())})
                if self.follow_dropped != dropped_seen:
                    await self._send(writer, {"event": "dropped", "total": self.follow_dropped})
                    dropped_seen = self.follow_dropped
        finally:
            self._followers.discard(queue)
            hangup.cancel()

    # --- commands --------------------------------------------------------------------------

    async def _ping(self, request: Request) -> dict[str, object]:
        return {"protocol": PROTOCOL_VERSION, "zapd": _version("zapd")}

    def _rung(self) -> dict[str, object]:
        c = self._d.controller
        stats = c.stats if c is not None else None
        ov = self.override.active()
        return {
            "rung": stats.rung.name.lower() if stats and stats.rung else None,
            "since": _ts(stats.rung_since) if stats else None,
            "reason": stats.rung_reason if stats else "",
            "forced": ov.to_json() if ov else None,
        }

    def _plan_summary(self, plan: Plan | None) -> dict[str, object] | None:
        if plan is None:
            return None
        now = self._d.clock.now()
        return {
            "version": plan.version,
            "issued_at": _ts(plan.issued_at),
            "valid_until": _ts(plan.valid_until),
            "expires_in_s": round((plan.valid_until - now).total_seconds(), 1),
            "expired": now >= plan.valid_until,
            "slots": len(plan.slots),
        }

    async def _link(self) -> dict[str, object]:
        """Link fields; the cloud-sync side adds its own through `daemon.link_status()` when it has one."""
        store = self._d.store
        link: dict[str, object] = {
            "state": "not_configured" if self._d.config.cloud is None else "unknown",
            "last_upload": None,
            "outbox_depth": await store.outbox_depth() if store is not None else None,
        }
        link.update(await self._d.link_status())
        return link

    def _control(self) -> dict[str, object]:
        c = self._d.controller
        if c is None:
            return {"cycles": 0, "last_cycle_ms": None, "writes": 0, "write_failures": 0, "setpoints": {}}
        s = c.stats
        return {
            "cycles": s.cycles,
            "last_cycle_ms": round(s.last_cycle_ms, 3),
            "writes": s.writes,
            "write_failures": s.write_failures,
            "setpoints": {
                der: {"power_w": sp.power_w, "clamped_reason": sp.clamped_reason}
                for der, sp in sorted(s.last_setpoints.items())
            },
        }

    def _tasks(self) -> list[dict[str, object]]:
        return [
            {"name": h.name, "ok": not h.failing, "restarts": h.restarts, "last_error": h.last_error}
            for h in self._d.supervisor.health.values()
        ]

    def _device_health(self) -> list[dict[str, object]]:
        """One entry per configured device: does it answer (drivers/health.py), and its driver task."""
        now = self._d.clock.now()
        tasks = self._d.supervisor.health
        out: list[dict[str, object]] = []
        for driver in self._d.devices.drivers:
            task = tasks.get(f"driver:{driver.name}")
            entry: dict[str, object] = {"device": driver.name}
            if isinstance(driver, HasHealth):
                entry.update(driver.health.view(now).to_json())
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

    async def _status(self, request: Request) -> dict[str, object]:
        now = self._d.clock.now()
        return {
            "site_id": self._d.config.site.id,
            "version": _version("zapd"),
            "pid": os.getpid(),
            "now": _ts(now),
            "started_at": _ts(self.started_at),
            "uptime_s": round(time.monotonic() - self._t0, 1),
            "fallback": self._rung(),
            "link": await self._link(),
            "plan": self._plan_summary(self._d.current_plan()),
            "control": self._control(),
            "tasks": self._tasks(),
            "devices": self._device_health(),
            "readings_in": self._d.readings_in,
        }

    def _device_rows(self) -> list[dict[str, object]]:
        now = self._d.clock.now()
        state = self._d.state
        latest = state.latest()
        kinds = {der: str(kind) for der, kind in self._d.devices.kinds.items()}
        for der, seen in latest.items():
            kinds.setdefault(der, str(seen.kind))
        health = self._d.supervisor.health
        devices = {h["device"]: h for h in self._device_health()}
        rows: list[dict[str, object]] = []
        for der in sorted(kinds):
            r = latest.get(der)
            age = state.age_s(der, now)
            driver = der.split(".", 1)[0]
            task = health.get(f"driver:{driver}")
            dev = devices.get(driver)
            rows.append(
                {
                    "der_id": der,
                    "kind": kinds[der],
                    "driver": driver,
                    "driver_ok": (not task.failing) if task else None,
                    "health": _der_health(dev),
                    "ts": _ts(r.ts) if r else None,
                    "age_s": round(age, 1) if age is not None else None,
                    "quality": str(r.quality) if r else None,
                    "fresh": state.is_fresh(der, now),
                    "values": dict(r.values) if r else {},
                }
            )
        return rows

    async def _devices(self, request: Request) -> dict[str, object]:
        return {
            "now": _ts(self._d.clock.now()),
            "devices": self._device_rows(),
            "device_health": self._device_health(),
        }

    async def _plan(self, request: Request) -> dict[str, object]:
        plan = self._d.current_plan()
        if plan is None:
            return {"plan": None, "slots": []}
        now = self._d.clock.now()
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
        return {"now": _ts(now), "plan": self._plan_summary(plan), "slots": slots}

    async def _telemetry(self, request: Request) -> dict[str, object]:
        limit = _check_limit(request.limit, RECENT_READINGS)
        readings = [r for r in self.recent if request.der_id is None or r.der_id == request.der_id]
        return {"readings": readings[-limit:] if limit else [], "follow": request.follow}

    async def _fallback(self, request: Request) -> dict[str, object]:
        limit = _check_limit(request.limit, 1000)
        store = self._d.store
        rows = await store.events("fallback", limit=limit) if store is not None else []
        transitions = []
        for e in rows:
            rung, _, why = e.detail.partition(": ")
            transitions.append({"ts": e.ts, "rung": rung, "reason": why})
        return {**self._rung(), "transitions": transitions}

    async def _fallback_force(self, request: Request) -> dict[str, object]:
        if request.rung is None or request.minutes is None:
            raise RequestError("bad_request", "fallback_force needs 'rung' and 'minutes'")
        try:
            change = await self.override.force(request.rung, request.minutes, request.reason, source="api")
        except OverrideError as exc:
            raise RequestError("bad_request", str(exc)) from None
        assert change.override is not None
        # `stored: false`: in force now, but a restart will forget it (the store refused the write).
        return {"forced": change.override.to_json(), "stored": change.stored}

    async def _fallback_release(self, request: Request) -> dict[str, object]:
        change = await self.override.release(source="api")
        released = change.override
        return {"released": released.to_json() if released else None, "stored": change.stored}

    async def _diag(self, request: Request) -> dict[str, object]:
        d = self._d
        store = d.store
        counters: dict[str, object] = {
            "readings_in": d.readings_in,
            "readings_written": d.telemetry.written if d.telemetry is not None else 0,
            "api_requests": self.requests,
            "api_errors": self.errors,
            "api_follow_dropped": self.follow_dropped,
            "api_followers": len(self._followers),
        }
        db: dict[str, object] = {}
        if store is not None:
            counters["outbox_last_seq"] = await store.last_seq()
            counters["outbox_acked_seq"] = await store.acked_seq()
            counters["outbox_depth"] = await store.outbox_depth()
            counters["dropped_by_retention"] = int(await store.kv_get("sync.dropped_by_retention") or 0)
            counters["refused_by_cloud"] = int(await store.kv_get("sync.refused_by_cloud") or 0)
            db = {
                "path": str(store.path),
                "schema_version": await store.schema_version(),
                "size_bytes": _size(store.path),
            }
        recent_commands = []
        if store is not None:
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
            "generated_at": _ts(d.clock.now()),
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
            "config": redact(d.config.model_dump(mode="json")),
            "status": await self._status(request),
            "devices": self._device_rows(),
            "counters": counters,
            "health": self._tasks(),
            "db": db,
            "recent_commands": recent_commands,
            "fallback": await self._fallback(Request(cmd="fallback", limit=50)),
        }


def _der_health(device: dict[str, object] | None) -> dict[str, object] | None:
    """The device's health as shown on each of its DER rows (the per-device list has the rest)."""
    if device is None:
        return None
    return {k: device[k] for k in ("state", "since", "reason", "last_error", "errors")}


def _error(code: str, message: str) -> dict[str, object]:
    return {"ok": False, "code": code, "error": message}


def _check_limit(limit: int, maximum: int) -> int:
    if not 0 <= limit <= maximum:
        raise RequestError("bad_request", f"limit must be in [0, {maximum}], got {limit}")
    return limit


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None
