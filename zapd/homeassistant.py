"""Home Assistant through MQTT discovery: zapd's sensors, and a select to override the mode.

Why MQTT discovery rather than a custom integration: Home Assistant's MQTT integration is on
most installations already, and discovery makes the entities appear with no YAML; zapd stays the
owner of the site and Home Assistant only reads it, except for the mode select, which goes through
the same expiring operator override as `zapctl fallback force` (the ladder's own SAFE_HOLD on stale
data still wins, see zapd/override.py).

The link is a reconnect loop like the MQTT driver's (aiomqtt docs): `async with client` inside
`while True`, capped jittered backoff, one log line when it breaks and one when it recovers. On
every connect the discovery configs are published again (retained): a broker restarted without
persistence has forgotten them, and so has Home Assistant's view of the device. A last will makes
the broker mark the entities unavailable when zapd dies; a clean stop says so itself.

Stale is unknown here too: a value missing from the daemon's snapshot is published as `None`,
which Home Assistant shows as unknown rather than the last number.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any

import aiomqtt
import structlog

from drivers.api import HasHealth
from drivers.health import HealthState
from drivers.mqtt.client import Client
from drivers.resilience import Backoff, FailureLatch
from zapd.config_structs import HomeAssistantConfig
from zapd.model import DerKind, Intent, IntentMode, Plan
from zapd.override import FORCEABLE, OperatorOverride
from zapd.siteview import SiteView

log = structlog.get_logger(__name__)

ONLINE, OFFLINE = "online", "offline"
UNKNOWN = "None"  # Home Assistant sets a sensor or select to unknown on this payload
AUTO = "auto"
MODE_OPTIONS = (AUTO, *FORCEABLE)
RUNG_OPTIONS = ("plan", "cached_plan", "self_consumption", "safe_hold")
TIMEOUT_S = 5.0  # connect, subscribe, publish
KEEPALIVE_S = 30
GOODBYE_S = 2.0  # bounded "offline" on a clean stop
CHECK_S = 1.0  # how often a changed rung, plan or override is noticed (real s)


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """One sensor entity. `needs` are the DER kinds that must exist on the site for it to make sense."""

    object_id: str
    name: str
    needs: DerKind | None
    unit: str | None = None
    device_class: str | None = None
    state_class: str | None = None
    precision: int | None = None
    icon: str | None = None
    options: tuple[str, ...] = ()
    attributes: bool = False
    numeric: bool = True
    entity_category: str | None = None  # "diagnostic": shown apart from the controls and sensors


SENSORS: tuple[SensorSpec, ...] = (
    SensorSpec("grid_power", "Grid power", DerKind.METER, "W", "power", "measurement", 0),
    SensorSpec("grid_import_energy", "Grid import", DerKind.METER, "kWh", "energy", "total_increasing", 3),
    SensorSpec("grid_export_energy", "Grid export", DerKind.METER, "kWh", "energy", "total_increasing", 3),
    SensorSpec("pv_power", "PV power", DerKind.PV, "W", "power", "measurement", 0),
    SensorSpec("battery_soc", "Battery SoC", DerKind.BATTERY, "%", "battery", "measurement", 1),
    SensorSpec("battery_power", "Battery power", DerKind.BATTERY, "W", "power", "measurement", 0),
    SensorSpec("ev_power", "EV power", DerKind.EV_CHARGER, "W", "power", "measurement", 0),
    # The Energy dashboard's solar, battery and device sections (zapd/energy.py integrates them).
    SensorSpec("pv_energy", "PV production", DerKind.PV, "kWh", "energy", "total_increasing", 3),
    SensorSpec("battery_charge_energy", "Battery charged", DerKind.BATTERY, "kWh", "energy", "total_increasing", 3),
    SensorSpec(
        "battery_discharge_energy", "Battery discharged", DerKind.BATTERY, "kWh", "energy", "total_increasing", 3
    ),
    SensorSpec("ev_energy", "EV charged", DerKind.EV_CHARGER, "kWh", "energy", "total_increasing", 3),
    SensorSpec(
        "fallback_rung",
        "Fallback rung",
        None,
        device_class="enum",
        icon="mdi:stairs",
        options=RUNG_OPTIONS,
        attributes=True,
        numeric=False,
        entity_category="diagnostic",
    ),
    SensorSpec("next_action", "Next planned action", None, icon="mdi:calendar-clock", attributes=True, numeric=False),
)


def device_health_spec(device_id: str) -> SensorSpec:
    """One enum sensor per configured device: ok, connecting, stale, degraded, unusable, unreachable;
    `since`, `reason`, `last_error` and `errors` as its attributes."""
    return SensorSpec(
        f"device_{default_node_id(device_id).lower()}_health",
        f"{device_id} health",
        None,
        device_class="enum",
        icon="mdi:lan-connect",
        options=tuple(str(s) for s in HealthState),
        attributes=True,
        numeric=False,
        entity_category="diagnostic",
    )


def default_node_id(site_id: str) -> str:
    """Home Assistant allows only letters, digits, `_` and `-` in a discovery node id."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", site_id)


def _num(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return UNKNOWN
    text = f"{value:.{digits}f}"
    return "0" if float(text) == 0 else text  # no "-0" on a dashboard


def describe_intent(intent: Intent) -> str:
    """A slot's intent in a few words, as a person would say it."""
    if intent.mode is IntentMode.HOLD:
        return "hold"
    if intent.mode is IntentMode.SELF_CONSUMPTION:
        return "self-consumption"
    parts: list[str] = []
    if intent.battery_w is not None:
        if intent.battery_w > 0:
            parts.append(f"charge {intent.battery_w / 1000:.1f} kW")
        elif intent.battery_w < 0:
            parts.append(f"discharge {-intent.battery_w / 1000:.1f} kW")
        else:
            parts.append("battery idle")
    elif intent.target_soc is not None:
        parts.append(f"battery to {intent.target_soc * 100:.0f} %")
    if intent.ev_w is not None and intent.ev_w > 0:
        parts.append(f"EV {intent.ev_w / 1000:.1f} kW")
    return ", ".join(parts) or "follow plan"


def next_action(plan: Plan | None, now: datetime, tz: tzinfo | None = None) -> tuple[str, dict[str, Any]]:
    """The next slot that changes what the site does, e.g. "charge 2.5 kW at 14:00" (local time).

    Slots that say the same as the current one are skipped: a dashboard wants the next change, not
    the next hour boundary.
    """
    if plan is None:
        return "no plan", {}
    if now >= plan.valid_until:
        return "plan expired", {"plan_version": plan.version}
    current = plan.slot_at(now)
    doing = describe_intent(current.intent) if current is not None else None
    for slot in sorted(plan.slots, key=lambda s: s.start):
        if slot.start <= now or slot.start >= plan.valid_until:
            continue
        text = describe_intent(slot.intent)
        if text == doing:
            continue
        local, today = slot.start.astimezone(tz), now.astimezone(tz).date()
        if local.date() == today:
            when = f"at {local:%H:%M}"
        elif local.date() == today + timedelta(days=1):
            when = f"tomorrow at {local:%H:%M}"
        else:
            when = f"on {local:%Y-%m-%d} at {local:%H:%M}"
        return f"{text} {when}", {
            "start": slot.start.isoformat(),
            "end": slot.end.isoformat(),
            "mode": str(slot.intent.mode),
            "battery_w": slot.intent.battery_w,
            "ev_w": slot.intent.ev_w,
            "target_soc": slot.intent.target_soc,
            "plan_version": plan.version,
        }
    return "nothing planned", {"plan_version": plan.version}


def _payload_text(payload: Any) -> str | None:
    if isinstance(payload, bytes | bytearray):
        try:
            return bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(payload, str):
        return payload
    return None


class HomeAssistant:
    """Supervised task: one broker connection that announces, publishes and listens to the select."""

    def __init__(
        self,
        view: Callable[[], SiteView],
        override: OperatorOverride,
        config: HomeAssistantConfig,
        *,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        tz: tzinfo | None = None,
    ) -> None:
        self._view = view  # one read of the site per publish (zapd/siteview.py)
        self._override = override  # the select drives the one owner of the operator override
        self._cfg = config
        self._tz = tz
        self.site_id = view().site_id
        self.node_id = config.node_id or default_node_id(self.site_id)
        self.base = f"{config.base_topic.rstrip('/')}/{self.node_id}"
        self.prefix = config.discovery_prefix.rstrip("/")
        self.availability_topic = f"{self.base}/availability"
        self.command_topic = f"{self.base}/mode/set"
        self.ha_status_topic = f"{self.prefix}/status"
        self._backoff = Backoff(backoff_initial_s, max(backoff_initial_s, backoff_max_s))
        self._link = FailureLatch(
            log,
            "home_assistant.link_down",
            "home_assistant.link_up",
            first_ok_event="home_assistant.connected",
            level="warning",
            host=config.host,
            port=config.port,
        )
        self._published: dict[str, str] = {}  # topic -> payload last published on this connection
        self._wake = asyncio.Event()
        self._full_due = True
        self._announce_at: float | None = None  # loop time of a re-announcement Home Assistant asked for
        self._invalid_logged = False
        self._retained_logged = False
        self.counters: dict[str, int] = dict.fromkeys(
            ("connects", "disconnects", "discovery", "states", "commands", "invalid_commands", "ignored_retained"), 0
        )

    # ---- topics and discovery payloads ----

    def state_topic(self, object_id: str) -> str:
        return f"{self.base}/{object_id}/state"

    def attributes_topic(self, object_id: str) -> str:
        return f"{self.base}/{object_id}/attributes"

    def config_topic(self, component: str, object_id: str) -> str:
        return f"{self.prefix}/{component}/{self.node_id}/{object_id}/config"

    def _device(self) -> dict[str, Any]:
        return {
            "identifiers": [f"zapd_{self.node_id}"],
            "name": f"zapd {self.site_id}",
            "manufacturer": "zapd",
            "model": "zapd energy management",
            "sw_version": _version(),
        }

    def _common(self, object_id: str, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "unique_id": f"zapd_{self.node_id}_{object_id}",
            # The entity id Home Assistant gives it on first discovery: `sensor.zapd_<node>_<object>`
            # (docs/operations.md lists them), rather than one derived from the display name.
            "object_id": f"zapd_{self.node_id}_{object_id}",
            "device": self._device(),
            "origin": {"name": "zapd", "sw_version": _version()},
            "availability_topic": self.availability_topic,
            "payload_available": ONLINE,
            "payload_not_available": OFFLINE,
        }

    def sensor_config(self, spec: SensorSpec) -> dict[str, Any]:
        cfg = self._common(spec.object_id, spec.name)
        cfg["state_topic"] = self.state_topic(spec.object_id)
        for key, value in (
            ("unit_of_measurement", spec.unit),
            ("device_class", spec.device_class),
            ("state_class", spec.state_class),
            ("suggested_display_precision", spec.precision),
            ("icon", spec.icon),
            ("entity_category", spec.entity_category),
        ):
            if value is not None:
                cfg[key] = value
        if spec.options:
            cfg["options"] = list(spec.options)
        if spec.attributes:
            cfg["json_attributes_topic"] = self.attributes_topic(spec.object_id)
        if spec.numeric:
            # A zapd that hangs with its broker link still open: the values go unknown by themselves.
            cfg["expire_after"] = max(30, math.ceil(3 * self._cfg.state_interval_s))
        return cfg

    def select_config(self) -> dict[str, Any]:
        cfg = self._common("mode", "Mode override")
        cfg.update(
            {
                "state_topic": self.state_topic("mode"),
                "command_topic": self.command_topic,
                "json_attributes_topic": self.attributes_topic("mode"),
                "options": list(MODE_OPTIONS),
                "qos": 1,
                "retain": False,
                "icon": "mdi:tune-variant",
            }
        )
        return cfg

    def discovery(self) -> dict[str, str]:
        """Config topic → retained payload; an empty payload removes an entity this site has no device for."""
        view = self._view()
        kinds = set(view.kinds.values())
        out: dict[str, str] = {}
        for spec in SENSORS:
            present = spec.needs is None or spec.needs in kinds
            out[self.config_topic("sensor", spec.object_id)] = (
                json.dumps(self.sensor_config(spec), sort_keys=True) if present else ""
            )
        for driver in _health_drivers(view):
            spec = device_health_spec(driver.health.device_id)
            out[self.config_topic("sensor", spec.object_id)] = json.dumps(self.sensor_config(spec), sort_keys=True)
        out[self.config_topic("select", "mode")] = json.dumps(self.select_config(), sort_keys=True)
        return out

    # ---- states ----

    @staticmethod
    def _sensor_values(view: SiteView) -> dict[str, str]:
        snap = view.snapshot
        soc = view.battery_soc
        energy = view.energy_kwh
        return {
            "grid_power": _num(snap.grid_w, 0),
            "grid_import_energy": _num(_kwh(snap.grid_import_wh), 3),
            "grid_export_energy": _num(_kwh(snap.grid_export_wh), 3),
            "pv_power": _num(snap.pv_w, 0),
            "battery_soc": _num(soc * 100.0 if soc is not None else None, 1),
            "battery_power": _num(snap.battery_total_w() if snap.batteries else None, 0),
            "ev_power": _num(snap.ev_total_w(), 0),
            "pv_energy": _num(energy.get("pv_wh"), 3),
            "battery_charge_energy": _num(energy.get("battery_charge_wh"), 3),
            "battery_discharge_energy": _num(energy.get("battery_discharge_wh"), 3),
            "ev_energy": _num(energy.get("ev_wh"), 3),
        }

    def states(self) -> dict[str, tuple[str, bool]]:
        """Topic → (payload, published at once when it changes). Numbers wait for the interval,
        except when they turn known or unknown; a power reading changes every second and Home
        Assistant's recorder does not want each one."""
        view = self._view()
        now = view.now
        out: dict[str, tuple[str, bool]] = {}
        for object_id, payload in self._sensor_values(view).items():
            prev = self._published.get(self.state_topic(object_id))
            out[self.state_topic(object_id)] = (payload, prev is None or (prev == UNKNOWN) != (payload == UNKNOWN))
        control, ov = view.control, view.override
        rung = str(control.rung) if control.rung is not None else UNKNOWN
        out[self.state_topic("fallback_rung")] = (rung, True)
        rung_attrs = {
            "reason": control.rung_reason,
            "since": control.rung_since.isoformat() if control.rung_since else None,
            "forced_until": ov.until.isoformat() if ov is not None else None,
        }
        out[self.attributes_topic("fallback_rung")] = (json.dumps(rung_attrs, sort_keys=True), True)
        text, attrs = next_action(view.plan, now, self._tz)
        out[self.state_topic("next_action")] = (text, True)
        out[self.attributes_topic("next_action")] = (json.dumps(attrs, sort_keys=True), True)
        for driver in _health_drivers(view):
            health = driver.health.view(now)
            spec = device_health_spec(health.device)
            out[self.state_topic(spec.object_id)] = (str(health.state), True)
            attrs = health.to_json()
            del attrs["state"]
            # The error count moves on every failed poll: that waits for the interval.
            urgent = self._published.get(self.state_topic(spec.object_id)) != str(health.state)
            out[self.attributes_topic(spec.object_id)] = (json.dumps(attrs, sort_keys=True), urgent)
        out[self.state_topic("mode")] = (str(ov.rung) if ov is not None else AUTO, True)
        out[self.attributes_topic("mode")] = (json.dumps(ov.to_json() if ov else {}, sort_keys=True), True)
        return out

    # ---- the connection loop ----

    async def run(self) -> None:
        """Own the broker connection forever; a lost link means a backoff pause, never an exit."""
        while True:
            try:
                async with Client(
                    self._cfg.host,
                    self._cfg.port,
                    username=self._cfg.username,
                    password=self._cfg.password,
                    identifier=f"zapd-ha-{self.node_id}",
                    will=aiomqtt.Will(self.availability_topic, OFFLINE, qos=1, retain=True),
                    timeout=TIMEOUT_S,
                    keepalive=KEEPALIVE_S,
                ) as client:
                    await self._session(client)
            except* (aiomqtt.MqttError, TimeoutError) as group:
                self._link_lost(str(group.exceptions[0]) or type(group.exceptions[0]).__name__)
            await asyncio.sleep(self._backoff.next_delay())

    async def _session(self, client: aiomqtt.Client) -> None:
        self._published.clear()
        await self.announce(client)
        async with asyncio.timeout(TIMEOUT_S):
            await client.subscribe(self.command_topic, qos=1)
            await client.subscribe(self.ha_status_topic, qos=1)
        await self._publish(client, self.availability_topic, ONLINE, retain=True)
        self._link_ok()
        self._full_due = True
        self._announce_at = None
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._publish_loop(client))
                tg.create_task(self._read_loop(client))
        except asyncio.CancelledError:
            await self._goodbye(client)
            raise

    async def announce(self, client: aiomqtt.Client) -> None:
        for topic, payload in self.discovery().items():
            await self._publish(client, topic, payload, retain=True)
        self.counters["discovery"] += 1

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """A clean stop sends no last will: say "offline" ourselves, within a short bound."""
        try:
            async with asyncio.timeout(GOODBYE_S):
                await client.publish(self.availability_topic, OFFLINE, qos=1, retain=True)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.info("home_assistant.offline_not_sent", error=str(exc) or type(exc).__name__)

    async def _publish(self, client: aiomqtt.Client, topic: str, payload: str, *, retain: bool = False) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            await client.publish(topic, payload, qos=1, retain=retain)

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        last_full = -math.inf
        while True:
            if self._announce_at is not None and loop.time() >= self._announce_at:
                self._announce_at = None
                await self.announce(client)
                self._full_due = True
            full = self._full_due or loop.time() - last_full >= self._cfg.state_interval_s
            if full:
                self._full_due = False
                last_full = loop.time()
            for topic, (payload, urgent) in self.states().items():
                changed = self._published.get(topic) != payload
                if full or (urgent and changed):
                    await self._publish(client, topic, payload)
                    self._published[topic] = payload
                    self.counters["states"] += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(CHECK_S, self._cfg.state_interval_s)):
                    await self._wake.wait()
            self._wake.clear()

    async def _read_loop(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            if topic == self.command_topic:
                await self.on_command(_payload_text(message.payload), retained=message.retain)
            elif topic == self.ha_status_topic and _payload_text(message.payload) == ONLINE:
                # Home Assistant (re)started and lost our entities' states: announce and publish
                # everything again, after a pause so that it has subscribed to what the configs name
                # (its docs ask for a random delay, so many devices do not answer at once).
                self._announce_at = asyncio.get_running_loop().time() + random.uniform(0.5, 2.0)
        raise aiomqtt.MqttError("message stream ended")

    # ---- the select ----

    async def on_command(self, text: str | None, *, retained: bool = False) -> None:
        """Drive the operator override from the select. Never raises on what a client sent."""
        self.counters["commands"] += 1
        if retained:
            # A retained command would re-force the site after every reconnect, long past its expiry.
            self.counters["ignored_retained"] += 1
            if not self._retained_logged:
                self._retained_logged = True
                log.warning("home_assistant.retained_command_ignored", topic=self.command_topic)
            return
        choice = text.strip().lower() if text is not None else None
        if choice not in MODE_OPTIONS:
            self.counters["invalid_commands"] += 1
            if not self._invalid_logged:
                self._invalid_logged = True
                shown = repr(text[:40]) if text is not None else "<not UTF-8>"
                log.warning(
                    "home_assistant.invalid_command",
                    topic=self.command_topic,
                    payload=shown,
                    expected=", ".join(MODE_OPTIONS),
                )
            return
        override = self._override
        if choice == AUTO:
            await override.release(source="home_assistant")
        else:
            await override.force(choice, self._cfg.override_minutes, "set in Home Assistant", source="home_assistant")
        self._wake.set()

    # ---- link state, logged on change ----

    @property
    def link_up(self) -> bool:
        return bool(self._link.up)

    def _link_ok(self) -> None:
        self.counters["connects"] += 1
        self._backoff.reset()
        self._link.ok(node_id=self.node_id, discovery_prefix=self.prefix)

    def _link_lost(self, reason: str) -> None:
        if self._link.up:
            self.counters["disconnects"] += 1
        self._link.failed(reason=reason)


def _health_drivers(view: SiteView) -> list[HasHealth]:
    return [d for d in view.drivers if isinstance(d, HasHealth)]


def _kwh(wh: float | None) -> float | None:
    return wh / 1000.0 if wh is not None else None


def _version() -> str:
    try:
        return importlib.metadata.version("zapd")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
