"""`zapctl`: what a field technician types over SSH to see and steer a running zapd.

It only talks to the daemon's local API (docs/local-api.md), so it works with the same
permissions as the socket (group zapd) and never touches the database or the devices.
Every failure is one line on stderr and exit code 1: a technician on a flaky SSH session
needs the reason, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

DEFAULT_SOCKET = "/run/zapd/zapd.sock"
REQUEST_TIMEOUT_S = 15.0
FOLLOW_TIMEOUT_S = 60.0  # the daemon sends a heartbeat every 15 s while following
MAX_RESPONSE = 16 * 1024 * 1024
CHART_HOURS = 24

Json = dict[str, Any]


class ZapctlError(Exception):
    """Shown to the operator as one line; the message must say what to do next when we know."""


# --- talking to the daemon -----------------------------------------------------------------


class ApiClient:
    def __init__(self, path: str, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise ZapctlError(
                f"cannot reach zapd: socket {self.path} not found (is zapd running? try: systemctl status zapd)"
            ) from None
        except ConnectionRefusedError:
            sock.close()
            raise ZapctlError(
                f"cannot reach zapd: connection refused on {self.path} (zapd not running? try: systemctl status zapd)"
            ) from None
        except PermissionError:
            sock.close()
            raise ZapctlError(
                f"permission denied on {self.path} (join the zapd group: sudo usermod -aG zapd $USER, or use sudo)"
            ) from None
        except TimeoutError:
            sock.close()
            raise ZapctlError(
                f"zapd did not accept the connection on {self.path} within {self.timeout_s:.0f} s"
            ) from None
        except OSError as exc:
            sock.close()
            raise ZapctlError(f"cannot reach zapd on {self.path}: {exc.strerror or exc}") from None
        return sock

    def _lines(self, sock: socket.socket) -> Iterator[Json]:
        buf = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise ZapctlError(f"zapd did not answer within {sock.gettimeout() or 0:.0f} s") from None
            except OSError as exc:
                raise ZapctlError(f"connection to zapd lost: {exc.strerror or exc}") from None
            if not chunk:
                if buf.strip():
                    yield _decode(buf)
                return
            buf += chunk
            if len(buf) > MAX_RESPONSE:
                raise ZapctlError("zapd sent an oversized response")
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    yield _decode(line)

    def request(self, message: Json) -> Json:
        """One request, one response; returns the response's `data` or raises on an API error."""
        with self._connect() as sock:
            _send(sock, message)
            for response in self._lines(sock):
                return _data(response)
        raise ZapctlError("zapd closed the connection without an answer")

    def stream(self, message: Json) -> tuple[Json, Iterator[Json]]:
        """The first response's data, then the streamed events (for `telemetry --follow`)."""
        sock = self._connect()
        try:
            _send(sock, message)
            lines = self._lines(sock)
            first = next(lines, None)
            if first is None:
                raise ZapctlError("zapd closed the connection without an answer")
            data = _data(first)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(FOLLOW_TIMEOUT_S)

        def events() -> Iterator[Json]:
            with sock:
                yield from lines

        return data, events()


def _send(sock: socket.socket, message: Json) -> None:
    try:
        sock.sendall(json.dumps(message).encode() + b"\n")
    except TimeoutError:
        raise ZapctlError("zapd did not take the request in time") from None
    except OSError as exc:
        raise ZapctlError(f"connection to zapd lost: {exc.strerror or exc}") from None


def _decode(line: bytes) -> Json:
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ZapctlError("zapd sent a response that is not JSON (is that socket really zapd's?)") from None
    if not isinstance(value, dict):
        raise ZapctlError("zapd sent an unexpected response")
    return value


def _data(response: Json) -> Json:
    if not response.get("ok"):
        raise ZapctlError(f"zapd refused: {response.get('error', 'unknown error')} ({response.get('code', '?')})")
    data = response.get("data")
    if not isinstance(data, dict):
        raise ZapctlError("zapd sent a response without data")
    return data


# --- formatting ----------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(out)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _parse_ts(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


# Times shown in the host's zone (TZ, else /etc/localtime), as a technician on site reads a clock;
# `--utc` for UTC. Every time printed carries its zone's name, so a pasted line is never ambiguous.
_display_tz: tzinfo | None = None


def set_display_zone(*, utc: bool) -> None:
    global _display_tz
    _display_tz = UTC if utc else None


def _shown(ts: datetime) -> datetime:
    return ts.astimezone(_display_tz)  # None: the host's zone


def zone_name(ts: datetime | None = None) -> str:
    """`CEST`, `UTC`, or `+0530` for a zone without an abbreviation."""
    local = _shown(ts or datetime.now(UTC))
    return local.tzname() or local.strftime("%z")


def _clock(value: object) -> str:
    ts = _parse_ts(value)
    return f"{_shown(ts):%Y-%m-%d %H:%M:%S} {zone_name(ts)}" if ts else "-"


def _minute(value: object) -> str:
    ts = _parse_ts(value)
    return f"{_shown(ts):%Y-%m-%d %H:%M} {zone_name(ts)}" if ts else "-"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 60:
        return f"{sign}{s:.1f}s"
    if s < 3600:
        return f"{sign}{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{sign}{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{sign}{int(s // 86400)}d{int(s % 86400 // 3600):02d}h"


def _since(value: object, now: object) -> str:
    ts, ref = _parse_ts(value), _parse_ts(now)
    if ts is None:
        return "-"
    ago = f" ({duration((ref - ts).total_seconds())} ago)" if ref else ""
    return f"{_clock(value)}{ago}"


def _values(values: object) -> str:
    if not isinstance(values, dict):
        return ""
    return " ".join(f"{k}={_cell(v)}" for k, v in sorted(values.items()))


def format_status(d: Json) -> str:
    fb = d.get("fallback") or {}
    link = d.get("link") or {}
    plan = d.get("plan")
    ctl = d.get("control") or {}
    lines = [
        (
            "site",
            f"{d.get('site_id')}  (zapd {d.get('version')}, pid {d.get('pid')}, up {duration(d.get('uptime_s'))})",
        ),
        ("fallback", f"{fb.get('rung') or 'starting'} since {_since(fb.get('since'), d.get('now'))}"),
        ("reason", fb.get("reason") or "-"),
    ]
    forced = fb.get("forced")
    if forced:
        lines.append(("forced", f"{forced.get('rung')} until {_clock(forced.get('until'))} {forced.get('reason', '')}"))
    lines.append(
        (
            "link",
            f"{link.get('state')}, last upload {_clock(link.get('last_upload'))}, "
            f"outbox {_cell(link.get('outbox_depth'))} readings",
        )
    )
    if plan:
        state = "EXPIRED" if plan.get("expired") else f"expires in {duration(plan.get('expires_in_s'))}"
        lines.append(("plan", f"v{plan.get('version')}, {plan.get('slots')} slots, {state}"))
    else:
        lines.append(("plan", "none"))
    lines.append(
        (
            "control",
            f"{ctl.get('cycles')} cycles, last {_cell(ctl.get('last_cycle_ms'))} ms, "
            f"{ctl.get('writes')} writes ({ctl.get('write_failures')} failed)",
        )
    )
    for der, sp in sorted((ctl.get("setpoints") or {}).items()):
        clamp = f"  clamped: {sp.get('clamped_reason')}" if sp.get("clamped_reason") else ""
        lines.append(("setpoint", f"{der} {_cell(sp.get('power_w'))} W{clamp}"))
    lines.append(("readings", f"{d.get('readings_in')} received"))
    width = max(len(k) for k, _ in lines)
    head = "\n".join(f"{k:<{width}}  {v}" for k, v in lines)
    tasks = [
        (t.get("name"), "ok" if t.get("ok") else "FAILING", t.get("restarts"), t.get("last_error") or "")
        for t in d.get("tasks") or []
    ]
    out = head + "\n\n" + table(["TASK", "STATE", "RESTARTS", "LAST ERROR"], tasks)
    devices = d.get("devices")
    if devices:
        out += "\n\n" + device_health_table(devices, d.get("now"))
    return out


def _health_state(state: object) -> str:
    """ok stays lower case; anything else shouts, like STALE and FAILING do."""
    if state is None:
        return "-"
    return str(state) if state == "ok" else str(state).upper()


def device_health_table(devices: Sequence[Json], now: object) -> str:
    """One row per configured device: does it answer, since when, and why not."""
    rows = [
        (
            h.get("device"),
            _health_state(h.get("state")),
            _since(h.get("since"), now),
            h.get("errors"),
            h.get("restarts"),
            h.get("reason") or (f"last: {h.get('last_error')}" if h.get("last_error") else ""),
        )
        for h in devices
    ]
    return table(["DEVICE", "HEALTH", "SINCE", "ERRORS", "RESTARTS", "REASON"], rows)


def format_devices(d: Json) -> str:
    rows = []
    for r in d.get("devices") or []:
        health = r.get("health")
        state = health.get("state") if isinstance(health, dict) else None
        device = _health_state(state) if state is not None else ("ok" if r.get("driver_ok") in (True, None) else "-")
        if r.get("driver_ok") is False:
            device = "FAILING"
        rows.append(
            (
                r.get("der_id"),
                r.get("kind"),
                duration(r.get("age_s")),
                "BAD" if r.get("quality") == "bad" else r.get("quality"),  # a refused value: the DER is unknown
                "fresh" if r.get("fresh") else "STALE",
                device,
                _values(r.get("values")),
            )
        )
    if not rows:
        return "no devices configured"
    out = table(["DER", "KIND", "AGE", "QUALITY", "STATE", "DEVICE", "VALUES"], rows)
    devices = d.get("device_health")
    if devices:
        out += "\n\n" + device_health_table(devices, d.get("now"))
    return out


def _next_slots(d: Json, hours: float = CHART_HOURS) -> list[Json]:
    now = _parse_ts(d.get("now")) or datetime.now(UTC)
    end = now + timedelta(hours=hours)
    out = []
    for s in d.get("slots") or []:
        start, stop = _parse_ts(s.get("start")), _parse_ts(s.get("end"))
        if start is not None and stop is not None and stop > now and start < end:
            out.append(s)
    return out


def format_plan(d: Json, chart: str = "auto") -> str:
    plan = d.get("plan")
    if not plan:
        return "no plan (the site runs on the fallback rules: see zapctl fallback)"
    state = "EXPIRED" if plan.get("expired") else f"expires in {duration(plan.get('expires_in_s'))}"
    head = (
        f"plan v{plan.get('version')}  issued {_clock(plan.get('issued_at'))}  "
        f"valid until {_clock(plan.get('valid_until'))} ({state})"
    )
    slots = _next_slots(d)
    if not slots:
        return head + "\nno slots in the next 24 h"
    rows = [
        (
            ("> " if s.get("active") else "  ") + _minute(s.get("start")),
            s.get("mode"),
            s.get("battery_w"),
            s.get("ev_w"),
            s.get("grid_import_limit_w"),
            s.get("grid_export_limit_w"),
            s.get("target_soc"),
        )
        for s in slots
    ]
    out = [head, table(["  START", "MODE", "BATTERY_W", "EV_W", "IMPORT_MAX_W", "EXPORT_MAX_W", "SOC"], rows)]
    if chart != "none":
        drawn = _plotext_chart(slots) if chart == "auto" else None
        out.append(drawn if drawn is not None else ascii_chart(slots))
    return "\n\n".join(out)


def _slot_label(s: Json) -> str:
    ts = _parse_ts(s.get("start"))
    return f"{_shown(ts):%H:%M}" if ts else "?"


def _slots_zone(slots: list[Json]) -> str:
    """The zone the chart's times are in (of its first slot; a DST change inside shows in the labels)."""
    return zone_name(_parse_ts(slots[0].get("start")) if slots else None)


def _battery_kw(s: Json) -> float:
    w = s.get("battery_w")
    return float(w) / 1000 if isinstance(w, int | float) else 0.0


def _plotext_chart(slots: list[Json]) -> str | None:
    """plotext is optional: without it, or with an API we do not know, the ASCII chart is used.

    Only plotext's 5.x module API is used; 6.x reorganised it (and drew empty bar charts in
    our tests), so it is treated as absent. A cosmetic renderer must never fail `zapctl plan`.
    """
    try:
        plt: Any = importlib.import_module("plotext")
    except ImportError:
        return None
    if not all(hasattr(plt, name) for name in ("clear_figure", "bar", "plotsize", "build", "theme")):
        return None
    try:
        plt.clear_figure()
        plt.theme("clear")
        plt.bar([_slot_label(s) for s in slots], [_battery_kw(s) for s in slots])
        plt.title(f"battery setpoint kW (+ charge, - discharge), next 24 h, {_slots_zone(slots)}")
        plt.plotsize(min(shutil.get_terminal_size((100, 24)).columns, 140), 18)
        text = plt.build()
    except Exception:  # any plotext trouble: fall back to our own chart
        return None
    return text if isinstance(text, str) and text.strip() else None


def _chart_rows(slots: list[Json], max_rows: int = 48) -> list[tuple[str, float, str]]:
    """(label, kW, note) per slot; hourly means when there are too many slots for a terminal."""
    rows = [
        (
            _slot_label(s),
            _battery_kw(s),
            "" if isinstance(s.get("battery_w"), int | float) else str(s.get("mode")),
        )
        for s in slots
    ]
    if len(rows) <= max_rows:
        return rows
    hourly: dict[str, list[tuple[float, str]]] = {}
    for s, (_, kw, note) in zip(slots, rows, strict=True):
        ts = _parse_ts(s.get("start"))
        key = f"{_shown(ts):%Y-%m-%d %H:00}" if ts else "?"
        hourly.setdefault(key, []).append((kw, note))
    return [
        (key[-5:], sum(kw for kw, _ in vals) / len(vals), "" if any(not n for _, n in vals) else vals[0][1])
        for key, vals in hourly.items()
    ]


def ascii_chart(slots: list[Json], half_width: int = 24) -> str:
    """One row per slot (or hour), bars left of the axis for discharge and right for charge."""
    rows = _chart_rows(slots)
    peak = max((abs(kw) for _, kw, _ in rows), default=0.0) or 1.0
    lines = [f"battery kW (+ charge, - discharge), scale ±{peak:.1f} kW, {_slots_zone(slots)}"]
    for label, kw, note in rows:
        n = round(abs(kw) / peak * half_width)
        left = ("#" * n if kw < 0 else "").rjust(half_width)
        right = "#" * n if kw > 0 else ""
        lines.append(f"{label} {kw:+6.2f} {left}|{right}" + (f"  ({note})" if note else ""))
    return "\n".join(lines)


def format_reading(r: Json) -> str:
    fields = (_clock(r.get("ts")), r.get("der_id"), r.get("kind"), r.get("quality"), _values(r.get("values")))
    return "  ".join(str(f) for f in fields)


def format_telemetry(d: Json) -> str:
    rows = [
        (_clock(r.get("ts")), r.get("der_id"), r.get("kind"), r.get("quality"), _values(r.get("values")))
        for r in d.get("readings") or []
    ]
    if not rows:
        return "no readings yet"
    return table(["TS", "DER", "KIND", "QUALITY", "VALUES"], rows)


def format_fallback(d: Json) -> str:
    lines = [
        f"rung    {d.get('rung') or 'starting'} since {_clock(d.get('since'))}",
        f"reason  {d.get('reason') or '-'}",
    ]
    forced = d.get("forced")
    lines.append(
        f"forced  {forced.get('rung')} until {_clock(forced.get('until'))} {forced.get('reason', '')}".strip()
        if forced
        else "forced  no"
    )
    rows = [(_clock(t.get("ts")), t.get("rung"), t.get("reason")) for t in d.get("transitions") or []]
    return "\n".join(lines) + "\n\n" + (table(["TS", "RUNG", "REASON"], rows) if rows else "no transitions recorded")


def format_diag(d: Json) -> str:
    return "# zapd support bundle (secrets redacted); save with: zapctl diag --json > zapd-diag.json\n" + json.dumps(
        d, indent=2, sort_keys=True
    )


# --- commands ------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, data: Json, human: Callable[[], str]) -> None:
    print(json.dumps(data, sort_keys=True) if args.json else human())


def cmd_status(client: ApiClient, args: argparse.Namespace) -> int:
    data = client.request({"cmd": "status"})
    _emit(args, data, lambda: format_status(data))
    return 0


def cmd_devices(client: ApiClient, args: argparse.Namespace) -> int:
    data = client.request({"cmd": "devices"})
    _emit(args, data, lambda: format_devices(data))
    return 0


def cmd_plan(client: ApiClient, args: argparse.Namespace) -> int:
    data = client.request({"cmd": "plan"})
    _emit(args, data, lambda: format_plan(data, args.chart))
    return 0


def cmd_telemetry(client: ApiClient, args: argparse.Namespace) -> int:
    message: Json = {"cmd": "telemetry", "limit": args.limit, "follow": args.follow}
    if args.der:
        message["der_id"] = args.der
    if not args.follow:
        data = client.request(message)
        _emit(args, data, lambda: format_telemetry(data))
        return 0
    data, events = client.stream(message)
    for r in data.get("readings") or []:
        print(json.dumps(r, sort_keys=True) if args.json else format_reading(r), flush=True)
    for event in events:
        if event.get("event") == "reading":
            r = event.get("data") or {}
            print(json.dumps(r, sort_keys=True) if args.json else format_reading(r), flush=True)
        elif event.get("event") == "dropped":
            print(f"zapctl: {event.get('total')} readings dropped (terminal too slow)", file=sys.stderr)
    raise ZapctlError("zapd closed the telemetry stream (daemon stopping?)")


def cmd_fallback(client: ApiClient, args: argparse.Namespace) -> int:
    if args.action is None:
        if args.rung is not None:
            raise ZapctlError("usage: zapctl fallback [force RUNG --for MINUTES | release]")
        data = client.request({"cmd": "fallback", "limit": args.limit})
        _emit(args, data, lambda: format_fallback(data))
        return 0
    if args.action == "release":
        data = client.request({"cmd": "fallback_release"})
        released = data.get("released")
        human = f"released forced {released.get('rung')}" if released else "no override was active"
        _emit(args, data, lambda: human)
        return 0
    if args.rung is None or args.minutes is None:
        raise ZapctlError("usage: zapctl fallback force {safe_hold|self_consumption} --for MINUTES [--reason TEXT]")
    data = client.request({"cmd": "fallback_force", "rung": args.rung, "minutes": args.minutes, "reason": args.reason})
    forced = data.get("forced") or {}
    _emit(
        args,
        data,
        lambda: f"forced {forced.get('rung')} until {_clock(forced.get('until'))} (release: zapctl fallback release)",
    )
    return 0


def cmd_diag(client: ApiClient, args: argparse.Namespace) -> int:
    data = client.request({"cmd": "diag"})
    _emit(args, data, lambda: format_diag(data))
    return 0


def cmd_logs(extra: Sequence[str], *, as_json: bool = False) -> int:
    """Hand the terminal to journalctl (exec), so paging, colours and Ctrl-C behave as usual.

    `--json`: journalctl's own JSON output, one entry (an object) per line, like `zapctl telemetry --json`.
    """
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        raise ZapctlError("journalctl not found: this host has no systemd journal (zapd logs go to its stderr)")
    argv = [journalctl, "-u", "zapd", "-n", "200", "--no-pager", *(["--output=json"] if as_json else []), *extra]
    sys.stdout.flush()
    try:
        os.execv(journalctl, argv)
    except OSError as exc:
        raise ZapctlError(f"cannot run journalctl: {exc.strerror or exc}") from None
    return 1  # not reached: execv replaces the process


def build_parser() -> argparse.ArgumentParser:
    # Accept --json/--socket before or after the subcommand: SUPPRESS keeps the later one from
    # resetting what the earlier one set.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="stable JSON output")
    common.add_argument(
        "--utc", action="store_true", default=argparse.SUPPRESS, help="show times in UTC (default: the host's zone)"
    )
    common.add_argument(
        "--socket", default=argparse.SUPPRESS, help=f"API socket (default $ZAPD_SOCKET or {DEFAULT_SOCKET})"
    )

    parser = argparse.ArgumentParser(
        prog="zapctl", parents=[common], description="Inspect and steer the local zapd daemon."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("status", parents=[common], help="site, fallback rung, link, plan, tasks")
    sub.add_parser("devices", parents=[common], help="latest reading per DER, age and freshness")
    plan = sub.add_parser("plan", parents=[common], help="the current plan: next 24 h as a table and a chart")
    plan.add_argument("--chart", choices=["auto", "ascii", "none"], default="auto", help="auto = plotext if installed")
    tel = sub.add_parser("telemetry", parents=[common], help="recent readings; --follow streams new ones")
    tel.add_argument("--follow", "-f", action="store_true", help="keep printing new readings as they arrive")
    tel.add_argument("--limit", type=int, default=50, help="readings to show (default 50)")
    tel.add_argument("--der", help="only this DER id")
    fb = sub.add_parser("fallback", parents=[common], help="fallback rung and history; force or release an override")
    fb.add_argument(
        "action", nargs="?", choices=["force", "release"], help="force a rung, or release the force (none: show)"
    )
    fb.add_argument("rung", nargs="?", help="safe_hold or self_consumption (with force)")
    fb.add_argument("--for", dest="minutes", type=float, metavar="MINUTES", help="how long the force lasts")
    fb.add_argument("--reason", default="", help="why (stored in the event log)")
    fb.add_argument("--limit", type=int, default=20, help="transitions to show")
    sub.add_parser(
        "logs",
        parents=[common],
        help="journalctl -u zapd -n 200 (extra arguments pass through; --json: one JSON object per entry)",
    )
    sub.add_parser("diag", parents=[common], help="support bundle: redacted config, versions, counters, health")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "logs":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.json = getattr(args, "json", False)
    set_display_zone(utc=getattr(args, "utc", False))
    path = getattr(args, "socket", None) or os.environ.get("ZAPD_SOCKET") or DEFAULT_SOCKET
    client = ApiClient(path)
    commands = {
        "status": cmd_status,
        "devices": cmd_devices,
        "plan": cmd_plan,
        "telemetry": cmd_telemetry,
        "fallback": cmd_fallback,
        "diag": cmd_diag,
    }
    try:
        if args.command == "logs":
            return cmd_logs(extra, as_json=args.json)
        return commands[args.command](client, args)
    except ZapctlError as exc:
        print(f"zapctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `zapctl telemetry -f | head`: the reader left; stay quiet like other Unix tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
