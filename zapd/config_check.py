"""`zapd config check`: everything that would break `zapd run`, found before it runs.

The pydantic models in zapd.config say what each key may hold. This module turns their errors
into `file: key: reason` lines that name devices by id (`devices.inverter.map`, not
`devices[3]`) and suggest the key or value meant ("did you mean"), and adds the checks a
single field cannot make: the site's one grid meter, register maps resolved and drivers built
exactly as the daemon builds them, and plausibility (a unit mixed up, a URL for a host, a
tick longer than the systemd watchdog). Problems that stop zapd are errors; problems zapd can
run with (it fails safe, or the installer may be right) are warnings: printed, exit 0, unless
`--strict`.
"""

from __future__ import annotations

import binascii
import contextlib
import difflib
import ipaddress
import re
import tomllib
import types
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError

from drivers.config_base import DeviceModel
from drivers.registry import kind
from zapd.config import (
    DRIVER_NAMES,
    METER_ROLES,
    CloudConfig,
    ZapdConfig,
    meter_ders,
)

# systemd/zapd.service `WatchdogSec=`; the watchdog is pinged from the control cycle (tests hold the two equal).
WATCHDOG_S = 30.0
# What zapd.example.toml and the DSMR docs show: a copy that was never filled in.
PLACEHOLDER_PUBLIC_KEYS = frozenset({"+GEv0bL4PmjoQotIdAvYyRzNCv3oYdXBAuQsos/ahs0="})
# RFC 2606 / RFC 6761 names that never reach a real server.
_RESERVED_DOMAINS = ("example", "example.com", "example.net", "example.org", "invalid", "test")
SMALL_W = 100.0  # below this a power or energy limit is more likely kW/kWh typed as W/Wh
# RFC 1123 labels, plus `_` (container and compose service names resolve with it).
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_ID = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True, slots=True)
class Problem:
    key: str
    reason: str
    warning: bool = False


@dataclass
class CheckResult:
    """`config` is None when the models refused the file; `errors` and `warnings` are finished lines."""

    source: str
    config: ZapdConfig | None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# --- pydantic errors → lines ------------------------------------------------------------------


def _element_name(node: object, index: int) -> str:
    """`.inverter` for a table with a unique id among its siblings, else `[3]`."""
    if isinstance(node, list) and 0 <= index < len(node) and isinstance(node[index], dict):
        item_id = node[index].get("id")
        ids = [x.get("id") for x in node if isinstance(x, dict)]
        if isinstance(item_id, str) and _ID.match(item_id) and ids.count(item_id) == 1:
            return f".{item_id}"
    return f"[{index}]"


def key_path(loc: tuple[int | str, ...], data: object) -> str:
    """Pydantic's location as the installer wrote it: `devices.meter.port`, union tag names dropped."""
    parts: list[str] = []
    node: object = data
    for item in loc:
        if isinstance(item, int):
            name = _element_name(node, item)
            parts.append(name if parts or name.startswith("[") else name[1:])
            node = node[item] if isinstance(node, list) and 0 <= item < len(node) else None
            continue
        if isinstance(node, dict) and item not in node and item in DRIVER_NAMES:
            continue  # the discriminator branch pydantic reports, not a key the user wrote
        parts.append(("." if parts else "") + item)
        node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def _resolve(tp: Any, node: object) -> Any:
    """Unwrap Annotated / Optional / a union of models (picked by the table's `driver`)."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
            driver = node.get("driver") if isinstance(node, dict) else None
            for arg in args:
                fields = getattr(arg, "model_fields", {})
                if "driver" in fields and driver in get_args(fields["driver"].annotation):
                    return arg
            return None
        else:
            return tp


def _model_at(loc: tuple[int | str, ...], data: object) -> type[BaseModel] | None:
    """The model whose table sits at `loc`, to suggest the keys it has."""
    tp: Any = ZapdConfig
    node: object = data
    for item in loc:
        tp = _resolve(tp, node)
        if isinstance(item, int):
            if get_origin(tp) is not list:
                return None
            tp = get_args(tp)[0]
            node = node[item] if isinstance(node, list) and 0 <= item < len(node) else None
            continue
        fields = tp.model_fields if isinstance(tp, type) and issubclass(tp, BaseModel) else {}
        if item not in fields:
            if item in DRIVER_NAMES:
                continue
            return None
        tp = fields[item].annotation
        node = node.get(item) if isinstance(node, dict) else None
    tp = _resolve(tp, node)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def did_you_mean(word: object, choices: list[str] | tuple[str, ...]) -> str:
    """`; did you mean 'x'?` for a near miss (difflib; case-insensitive), else ''."""
    if not isinstance(word, str) or not choices:
        return ""
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return f"; did you mean {lowered[word.lower()]!r}?"
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean {lowered[close[0]]!r}?" if close else ""


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _reason(err: Any, data: object) -> str:
    err_type: str = err["type"]
    msg: str = err["msg"].removeprefix("Value error, ")
    err_input = err.get("input")
    loc = tuple(err["loc"])
    if err_type == "union_tag_invalid":
        name = err_input.get("driver") if isinstance(err_input, dict) else err_input
        return f"unknown driver {name!r} (expected one of: {', '.join(DRIVER_NAMES)}){did_you_mean(name, DRIVER_NAMES)}"
    if err_type == "union_tag_not_found":
        return "missing required key 'driver'"
    if err_type == "missing":
        return "missing required key"
    if err_type == "finite_number":  # TOML's inf / nan: every config number must be finite (drivers/config_base.py)
        return f"must be a finite number, not {err_input!r}"
    if err_type == "extra_forbidden":
        model = _model_at(loc[:-1], data)
        known = list(model.model_fields) if model is not None else []
        return "unknown key" + did_you_mean(loc[-1], known)
    reason = msg[0].lower() + msg[1:] if msg else err_type
    if err_type == "literal_error":
        expected = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        reason += did_you_mean(err_input, expected)
    x = _number(err_input)
    if err_type == "less_than_equal" and err.get("ctx", {}).get("le") == 1 and x is not None and 1 < x <= 100:
        reason += f": a fraction 0..1, {x / 100:g} for {x:g} %"
    return reason


def _duplicate_ids(data: dict[str, object]) -> list[Problem]:
    """Checked on the raw data so a duplicate is reported even when other keys are wrong too."""
    devices = data.get("devices")
    if not isinstance(devices, list):
        return []
    problems: list[Problem] = []
    first_index: dict[str, int] = {}
    for i, dev in enumerate(devices):
        dev_id = dev.get("id") if isinstance(dev, dict) else None
        if not isinstance(dev_id, str):
            continue
        if dev_id in first_index:
            reason = f"duplicate device id {dev_id!r} (first at devices[{first_index[dev_id]}])"
            problems.append(Problem(f"devices[{i}].id", reason))
        else:
            first_index[dev_id] = i
    return problems


def _model_problems(exc: ValidationError, data: dict[str, object]) -> list[Problem]:
    problems: list[Problem] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if err["type"] == "union_tag_invalid" and loc:
            loc = (*loc, "driver")
        reason = _reason(err, data)
        if "duplicate device id" not in reason:
            problems.append(Problem(key_path(loc, data), reason))
    return problems


# --- checks the models cannot make ---------------------------------------------------------------


def _grid_meter(config: ZapdConfig) -> Iterator[Problem]:
    meters = meter_ders(config.devices)
    grid = [m for m in meters if m.role == "grid"]
    others = ", ".join(repr(r) for r in METER_ROLES if r != "grid")
    for extra in grid[1:]:
        yield Problem(
            extra.key,
            f"a second grid meter: {grid[0].der_id!r} and {extra.der_id!r} are both role 'grid'; a site has "
            f"exactly one (zapd never adds meters up): give the other role {others}",
        )
    if not grid:
        listed = f" (meters: {', '.join(repr(m.der_id) for m in meters)}, none with role 'grid')" if meters else ""
        yield Problem(
            "devices",
            f"no grid meter{listed}: zapd cannot see the site's import and export, so it cannot keep the fuse "
            "or export limit; it holds every battery idle and EV chargers at their minimum",
            warning=True,
        )


def _unknown_map(name: str) -> str | None:
    from drivers.modbus.register_map import AUTO_MAP, profile_paths  # here: pymodbus loads only for Modbus

    if name == AUTO_MAP:
        return None  # recognised at start
    if "/" in name or name.endswith(".toml"):
        return None if Path(name).is_file() else f"register map file {name} not found"
    shipped = sorted(profile_paths())
    if name in shipped:
        return None
    return (
        f"unknown register map {name!r}{did_you_mean(name, shipped)} "
        f"(shipped: {', '.join(shipped)}; or a path to your own .toml file)"
    )


def _isolated(dev: DeviceModel) -> AbstractContextManager[object]:
    """Modbus buses are shared per endpoint: a check builds its devices on a private set of them."""
    if not kind(dev.driver).factory.startswith("drivers.modbus."):
        return contextlib.nullcontext()  # and pymodbus is not loaded for a site without Modbus
    from drivers.modbus.bus import private_bus_registry

    return private_bus_registry()


STALE_STRUCTS = (
    "driver {driver!r} is registered but the daemon's config structs (drivers/config_structs.py) do not have it: "
    "run `make docs`"
)


def _builds(config: ZapdConfig) -> Iterator[Problem]:
    """Resolve every map and build every driver as `zapd run` would, without starting any."""
    from drivers.config_structs import FACTORIES
    from zapd.clock import SystemClock
    from zapd.config_load import to_structs
    from zapd.devices import build_devices

    for dev in config.devices:
        if dev.driver not in FACTORIES:  # a family added without regenerating the daemon's structs
            yield Problem(f"devices.{dev.id}.driver", STALE_STRUCTS.format(driver=dev.driver))
            continue
        map_name = getattr(dev, "map", None)
        if isinstance(map_name, str):
            missing = _unknown_map(map_name)
            if missing is not None:
                yield Problem(f"devices.{dev.id}.map", missing)
                continue
        one = config.model_copy(update={"devices": [dev]})
        try:
            with _isolated(dev):
                build_devices(to_structs(one), SystemClock())  # as the daemon builds it
        except Exception as exc:  # any failure here is what `zapd run` would die of: report it, never raise
            key = f"devices.{dev.id}.map" if map_name is not None else f"devices.{dev.id}"
            yield Problem(key, f"cannot be used: {exc}")


def host_problem(host: str) -> str | None:
    """Why `host` is not a host name or address (a URL, a port glued on, a path), or None."""
    if "://" in host or "/" in host:
        bare = urlsplit(host if "://" in host else f"//{host}").hostname
        hint = f": write {bare!r}" if bare else ""
        return f"a host name or address, not a URL{hint}"
    try:
        ipaddress.ip_address(host.strip("[]"))
        return None
    except ValueError:
        pass
    m = re.fullmatch(r"(.+):(\d+)", host)
    if m:
        return f"a host name or address without the port: write {m.group(1)!r} and port = {m.group(2)}"
    labels = host.removesuffix(".").split(".")
    if not all(_HOST_LABEL.match(label) for label in labels):
        return "not a host name or IP address"
    if all(label.isdigit() for label in labels):
        return "not a valid IP address (four numbers 0..255, e.g. 192.168.1.50)"
    return None


def _hosts(config: ZapdConfig) -> Iterator[Problem]:
    places = [
        (f"devices.{d.id}.host", host) for d in config.devices if isinstance(host := getattr(d, "host", None), str)
    ]
    places += [("home_assistant.host", config.home_assistant.host), ("metrics.host", config.metrics.host)]
    for key, host in places:
        problem = host_problem(host)
        if problem is not None:
            yield Problem(key, problem)


def _kilo(key: str, value: float | None, unit: str) -> Iterator[Problem]:
    if value is not None and 0 < value < SMALL_W:
        yield Problem(
            key,
            f"{value:g} {unit} — did you mean {value:g} k{unit} ({value * 1000:g})? zapd works in {unit}",
            warning=True,
        )


def _units(config: ZapdConfig) -> Iterator[Problem]:
    yield from _kilo("site.max_export_w", config.site.max_export_w, "W")
    for dev in config.devices:
        battery = getattr(dev, "battery", None)
        if battery is None:
            continue
        base = f"devices.{dev.id}.battery"
        yield from _kilo(f"{base}.capacity_wh", battery.capacity_wh, "Wh")
        yield from _kilo(f"{base}.max_charge_w", battery.max_charge_w, "W")
        yield from _kilo(f"{base}.max_discharge_w", battery.max_discharge_w, "W")


def _family_checks(config: ZapdConfig) -> Iterator[Problem]:
    """What each driver family checks about its own devices (its registered `checks`)."""
    for dev in config.devices:
        check = kind(dev.driver).checks_function()
        if check is not None:
            yield from check(dev, config)


def _serial_ports(config: ZapdConfig) -> Iterator[Problem]:
    """A warning, not an error: a USB adapter may be plugged in after the check; zapd keeps retrying."""
    for dev in config.devices:
        port = dev.serial_port()
        if port is not None and "://" not in port and not Path(port).exists():
            yield Problem(
                f"devices.{dev.id}.port",
                f"serial port {port} does not exist (not plugged in?); zapd keeps retrying until it appears",
                warning=True,
            )


def _timing(config: ZapdConfig) -> Iterator[Problem]:
    tick = config.control.tick_s
    if tick >= WATCHDOG_S / 2:
        yield Problem(
            "control.tick_s",
            f"{tick:g} s: the systemd watchdog (WatchdogSec={WATCHDOG_S:g} in zapd.service) is pinged from the "
            f"control cycle; while no meter reading wakes it, a tick of {WATCHDOG_S / 2:g} s or more "
            f"{'gets zapd killed and restarted' if tick >= WATCHDOG_S else 'leaves no margin'}: keep it below "
            f"{WATCHDOG_S / 2:g} s",
            warning=True,
        )


def _chargers(config: ZapdConfig) -> Iterator[Problem]:
    site = config.site
    for key, limits in (limit for d in config.devices for limit in d.charger_limits()):
        max_current_a, phases = limits.max_current_a, limits.phases
        if max_current_a > site.fuse_a:
            yield Problem(
                f"{key}.max_current_a",
                f"{max_current_a:g} A is above the site's {site.fuse_a:g} A fuse: zapd keeps the site under "
                "its fuse, but a charger circuit cannot be rated above the main fuse; check the value",
                warning=True,
            )
        if phases > site.phases:
            yield Problem(
                f"{key}.phases", f"a {phases}-phase charger on a {site.phases}-phase grid connection (site.phases)"
            )


def _is_reserved_host(host: str) -> bool:
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith(f".{d}") for d in _RESERVED_DOMAINS)


def _cloud(cloud: CloudConfig | None) -> Iterator[Problem]:
    if cloud is None:
        return
    try:
        raw = binascii.a2b_base64(cloud.public_key)
    except binascii.Error:
        raw = b""
    if cloud.public_key in PLACEHOLDER_PUBLIC_KEYS or (raw and len(set(raw)) == 1):
        yield Problem(
            "cloud.public_key",
            "the example's placeholder key: put the key `zapcloud serve` prints; until then every plan is "
            "rejected and zapd runs on its fallback rules",
            warning=True,
        )
    host = urlsplit(cloud.url).hostname or ""
    if _is_reserved_host(host):
        yield Problem(
            "cloud.url",
            f"{host} is a reserved example name (RFC 2606): put your zapcloud's address; no upload can succeed",
            warning=True,
        )


def _systemd_paths(config: ZapdConfig) -> Iterator[Problem]:
    from zapd.systemd_paths import UNIT_WRITABLE, paths_outside_the_unit

    granted = ", ".join(str(p) for p in UNIT_WRITABLE)
    for key, path in paths_outside_the_unit(config):
        yield Problem(
            key,
            f"{path} is outside what the shipped systemd unit may write ({granted}): under systemd zapd cannot "
            "write there; `zapd systemd-dropin --config FILE --write` adds it (then `systemctl daemon-reload`)",
            warning=True,
        )


def semantic_problems(config: ZapdConfig) -> list[Problem]:
    checks = (_grid_meter, _builds, _hosts, _units, _family_checks, _serial_ports, _timing, _chargers, _systemd_paths)
    problems = [p for check in checks for p in check(config)]
    problems += list(_cloud(config.cloud))
    return problems


# --- entry points -----------------------------------------------------------------------------------


def check_data(data: dict[str, object], source: str) -> CheckResult:
    """Validate a parsed TOML document; never raises for any document tomllib can produce."""
    problems = _duplicate_ids(data)
    config: ZapdConfig | None = None
    try:
        config = ZapdConfig.model_validate(data)
    except ValidationError as exc:
        problems += _model_problems(exc, data)
    if config is not None and not problems:
        problems += semantic_problems(config)
    result = CheckResult(source, config)
    for p in problems:
        if p.warning:
            result.warnings.append(f"{source}: {p.key}: warning: {p.reason}")
        else:
            result.errors.append(f"{source}: {p.key}: {p.reason}")
    if config is None and not result.errors:
        result.errors.append(f"{source}: (top level): not a usable config")
    return result


def check_file(path: Path) -> CheckResult:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return CheckResult(str(path), None, [f"{path}: (file): cannot read: {exc.strerror}"])
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return CheckResult(str(path), None, [f"{path}: (syntax): {exc}"])
    return check_data(data, str(path))
