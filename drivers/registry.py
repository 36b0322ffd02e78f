"""The driver registry: which `driver = "..."` kinds exist, their config models, and how each is built.

Each driver family registers itself from a `family.py` (or `family_*.py`) module in its package under
drivers/ (drivers/p1/family.py, drivers/modbus/family.py, ...); `kinds()` finds those modules by walking
the package, so a new protocol is one new module and no list elsewhere. zapd/config.py builds the device
union and `DRIVER_NAMES` from here, docs/config-reference.md is generated from that union, `zapd config
check` builds every device through the factories, and zapd/devices.py is one loop over them.

A family module stays import-light (pydantic and its config models only). Its factory is named as
"module:function" and imported the first time a config uses that kind, so the DSMR parser and its
crypto load only for a P1 meter, websockets and ocpp only for an OCPP listener, aiomqtt only for MQTT.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, get_args

import drivers
from drivers.config_base import DeviceModel

if TYPE_CHECKING:
    from zapd.clock import Clock
    from zapd.config import ZapdConfig
    from zapd.config_check import Problem
    from zapd.devices import DeviceSet

Factory = Callable[["DeviceSet", Any, "Clock"], None]
Checks = Callable[[Any, "ZapdConfig"], Iterator["Problem"]]


class RegistryError(RuntimeError):
    """Two families claim one driver name, or a registration does not match its model."""


@dataclass(frozen=True)
class DriverKind:
    """One `driver = "name"` value: its config model and its factory ("package.module:function")."""

    name: str
    family: str
    model: type[DeviceModel]
    factory: str
    # Place in the union, the docs and `expected one of` lines; ties keep registration order.
    order: int = 100
    # `zapd config check`'s questions about one such device beyond its model ("module:function" taking
    # the device and the whole config, yielding zapd.config_check.Problem), imported by the check only.
    checks: str | None = None

    def build(self) -> Factory:
        """The factory, imported now (the first time a config uses this kind)."""
        fn: Factory = _load(self.factory)
        return fn

    def checks_function(self) -> Checks | None:
        if self.checks is None:
            return None
        fn: Checks = _load(self.checks)
        return fn


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


_KINDS: dict[str, DriverKind] = {}


def register(*kinds: DriverKind) -> None:
    """Called by each family module at import; a name may be registered once (re-import is a no-op)."""
    for kind in kinds:
        tag = get_args(kind.model.model_fields["driver"].annotation)
        if tag != (kind.name,):
            raise RegistryError(f"{kind.model.__name__}.driver must be Literal[{kind.name!r}], is {tag!r}")
        known = _KINDS.get(kind.name)
        if known is not None and known.model is not kind.model:
            raise RegistryError(f"driver {kind.name!r} registered by {known.family} and {kind.family}")
        _KINDS[kind.name] = kind


def _family_modules() -> list[str]:
    """Every drivers.<pkg>.family / family_* module, found on disk without importing the packages' code."""
    names: list[str] = []
    for pkg in pkgutil.iter_modules(drivers.__path__):
        if not pkg.ispkg:
            continue
        sub = importlib.import_module(f"drivers.{pkg.name}")
        for mod in pkgutil.iter_modules(sub.__path__):
            if mod.name == "family" or mod.name.startswith("family_"):
                names.append(f"drivers.{pkg.name}.{mod.name}")
    return sorted(names)


@cache
def _discover() -> None:
    for name in _family_modules():
        importlib.import_module(name)


def kinds() -> list[DriverKind]:
    """Every registered kind, in union order."""
    _discover()
    return sorted(_KINDS.values(), key=lambda k: k.order)


def kind(name: str) -> DriverKind:
    _discover()
    try:
        return _KINDS[name]
    except KeyError:
        raise RegistryError(f"no driver {name!r} registered") from None


def driver_names() -> tuple[str, ...]:
    return tuple(k.name for k in kinds())


def device_models() -> tuple[type[DeviceModel], ...]:
    return tuple(k.model for k in kinds())
