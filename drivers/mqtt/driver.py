"""MQTT devices through one broker connection: readings from mapped topics, commands on QoS 1.

One `MqttDriver` owns one broker connection (brokers and small gateways cope badly with a
client per device). The connection lives in a reconnect loop, `async with client` inside a
`while True`, with capped jittered backoff; a link change is logged once when it breaks and
once when it recovers. A DER's values can come from several topics (OpenDTU publishes power
and energy separately), so the driver merges the latest value per key and drops a value older
than `stale_s` rather than passing an old number on as current.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiomqtt
import structlog

from drivers.api import ReadingSink
from drivers.config_structs import EvLimits
from drivers.ev_command import current_refusal
from drivers.health import DeviceHealth
from drivers.mqtt.client import Client
from drivers.mqtt.mapping import BadPayload, TopicMapping, decode_json
from drivers.resilience import Backoff, FailureLatch
from zapd.clock import Clock
from zapd.model import (
    BatterySetpoint,
    Command,
    CommandResult,
    DerCapabilities,
    DerKind,
    EvCurrent,
    Reading,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CommandTopic:
    """Where a command for `der_id` goes. The value is EvCurrent.current_a or BatterySetpoint.power_w.

    `payload` is a template with `{value}`; a relay (Shelly `<prefix>/command/switch:0`, Tasmota
    `cmnd/<topic>/POWER`) sets on/off payloads instead: value > 0 is on.
    """

    der_id: str
    topic: str
    payload: str = "{value}"
    on_payload: str | None = None
    off_payload: str | None = None
    qos: int = 1
    retain: bool = False
    safe_value: float | None = None  # published by safe_mode(); None = leave the device as it is

    def render(self, value: float) -> str:
        if self.on_payload is not None and self.off_payload is not None:
            return self.on_payload if value > 0 else self.off_payload
        return self.payload.replace("{value}", f"{value:g}")


@dataclass(frozen=True, slots=True)
class MqttDer:
    der_id: str
    kind: DerKind
    controllable: bool = False
    ev: EvLimits | None = None  # an EV charger's limits (its `[ev]` table); None: not a charger zapd commands


class MqttDriver:
    """Driver (+ Controllable when command topics are configured) for the DERs behind one broker."""

    def __init__(
        self,
        *,
        device_id: str,
        host: str,
        port: int,
        mappings: Sequence[TopicMapping],
        clock: Clock,
        ders: Sequence[MqttDer] = (),
        commands: Sequence[CommandTopic] = (),
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        stale_s: float = 60.0,
        timeout_s: float = 5.0,
        keepalive_s: int = 30,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
    ) -> None:
        if not mappings:
            raise ValueError(f"{device_id}: no topic mappings")
        self._id = device_id
        self._host, self._port = host, port
        self._mappings = list(mappings)
        self._clock = clock
        self._commands = {c.der_id: c for c in commands}
        self._username, self._password = username, password
        self._client_id = client_id or f"zapd-{device_id}"
        self._stale_s = stale_s
        self._timeout_s = timeout_s
        self._keepalive_s = keepalive_s
        self._backoff = Backoff(backoff_initial_s, max(backoff_initial_s, backoff_max_s))
        known = {d.der_id: d for d in ders}
        for m in self._mappings:
            known.setdefault(m.der_id, MqttDer(m.der_id, m.kind))
        for c in commands:
            known.setdefault(c.der_id, MqttDer(c.der_id, DerKind.EV_CHARGER))
        self._ders = known
        self._topics = sorted({m.topic for m in self._mappings})
        self._values: dict[str, dict[str, tuple[float, datetime]]] = {}
        self._client: aiomqtt.Client | None = None
        self._link = FailureLatch(
            log,
            "mqtt.link_down",
            "mqtt.link_up",
            first_ok_event="mqtt.connected",
            level="warning",
            device=device_id,
            host=host,
            port=port,
        )
        self._bad_topics: set[str] = set()
        # No message within stale_s is what makes a DER stale; it makes the device stale too.
        self._health = DeviceHealth(
            device_id, clock, event_prefix="mqtt", stale_after_s=stale_s, no_data_hint=self.missing_setup
        )
        self.counters: dict[str, int] = dict.fromkeys(
            ("messages", "readings", "bad_payloads", "connects", "disconnects", "commands", "command_errors"), 0
        )

    @property
    def name(self) -> str:
        return self._id

    @property
    def health(self) -> DeviceHealth:
        return self._health

    @property
    def connected(self) -> bool:
        return self._client is not None

    def capabilities(self) -> list[DerCapabilities]:
        return [
            DerCapabilities(
                der_id=d.der_id,
                kind=d.kind,
                controllable=d.der_id in self._commands,
                model="mqtt",
                min_current_a=d.ev.min_current_a if d.ev else 0.0,
                max_current_a=d.ev.max_current_a if d.ev else 0.0,
                phases=d.ev.phases if d.ev else 1,
                voltage_v=d.ev.voltage_v if d.ev else 230.0,
            )
            for d in self._ders.values()
        ]

    # ---- the connection loop ----

    async def run(self, sink: ReadingSink) -> None:
        """Own the broker connection forever; a lost link means a backoff pause, never an exit."""
        while True:
            try:
                async with Client(
                    self._host,
                    self._port,
                    username=self._username,
                    password=self._password,
                    identifier=self._client_id,
                    timeout=self._timeout_s,
                    keepalive=self._keepalive_s,
                ) as client:
                    for topic in self._topics:
                        await client.subscribe(topic, qos=1)
                    self._client = client
                    self._link_ok()
                    hint = self.missing_setup()
                    self._health.connecting("connected to the broker, no message yet" + (f"; {hint}" if hint else ""))
                    async for message in client.messages:
                        self.handle(str(message.topic), message.payload, sink)
            except aiomqtt.MqttError as exc:
                self._link_lost(str(exc))
                self._health.failed(f"broker {self._host}:{self._port}: {exc}")
            finally:
                self._client = None
            await self._clock.sleep(self._backoff.next_delay())

    def missing_setup(self) -> str:
        """The device settings of the presets whose DERs have sent nothing yet ("" when all have)."""
        hints = {m.setup: None for m in self._mappings if m.setup and m.der_id not in self._values}
        return "; ".join(hints)

    def _link_ok(self) -> None:
        self.counters["connects"] += 1
        self._backoff.reset()
        self._link.ok(topics=len(self._topics))

    def _link_lost(self, reason: str) -> None:
        if self._link.up:
            self.counters["disconnects"] += 1
        self._link.failed(reason=reason)

    # ---- readings ----

    def handle(self, topic: str, payload: Any, sink: ReadingSink) -> None:
        """One message → at most one Reading per DER it feeds. Bad payloads are counted and dropped."""
        self.counters["messages"] += 1
        matching = [m for m in self._mappings if aiomqtt.Topic(topic).matches(m.topic)]
        if not matching:
            return
        now = self._clock.now()
        touched: set[str] = set()
        try:
            parsed = decode_json(payload) if any(m.path is not None for m in matching) else None
        except BadPayload as exc:
            self._bad_payload(topic, exc)  # not JSON: nothing in it can be attributed to a value
            return
        extracted: list[tuple[TopicMapping, float | None]] = []
        problem: BadPayload | None = None
        for m in matching:
            try:
                extracted.append((m, m.extract(payload if m.path is None else parsed)))
            except BadPayload as exc:
                # The value is there but is no number ("lots", null, true): it is unknown now, not the last one.
                problem = problem or exc
                extracted.append((m, math.nan))
        if problem is not None:
            self._bad_payload(topic, problem)
        for m, value in extracted:
            if value is None:
                continue
            self._values.setdefault(m.der_id, {})[m.key] = (value, now)
            touched.add(m.der_id)
        for der_id in sorted(touched):
            values = {
                k: v for k, (v, at) in self._values[der_id].items() if (now - at).total_seconds() <= self._stale_s
            }
            sink(Reading(der_id=der_id, kind=self._ders[der_id].kind, ts=now, values=values))
            self.counters["readings"] += 1
        if touched:
            self._health.ok()

    def _bad_payload(self, topic: str, exc: BadPayload) -> None:
        self.counters["bad_payloads"] += 1
        self._health.note_error(f"{topic}: {exc}")
        if topic not in self._bad_topics:  # once per topic: a broken publisher repeats itself
            self._bad_topics.add(topic)
            log.warning("mqtt.bad_payload", device=self._id, topic=topic, error=str(exc))

    # ---- commands ----

    async def apply(self, command: Command) -> CommandResult:
        self.counters["commands"] += 1
        target = self._commands.get(command.der_id)
        value = command.current_a if isinstance(command, EvCurrent) else command.power_w
        problem: str | None = None
        if target is None:
            problem = f"no command topic for {command.der_id!r}"
        elif not math.isfinite(value):
            problem = f"value {value} is not a number"
        elif isinstance(command, BatterySetpoint) and self._ders[command.der_id].kind is not DerKind.BATTERY:
            problem = f"{command.der_id!r} is not a battery"
        elif isinstance(command, EvCurrent) and (why := self._ev_refusal(command)) is not None:
            problem = why
        else:
            problem = await self._publish(target, value)
        if problem is None:
            return CommandResult(command=command, ok=True, detail=f"published to {target.topic if target else ''}")
        self.counters["command_errors"] += 1
        log.warning("mqtt.command_failed", device=self._id, der_id=command.der_id, error=problem)
        return CommandResult(command=command, ok=False, detail=problem)

    def _ev_refusal(self, command: EvCurrent) -> str | None:
        """The last line that keeps a current outside the charger's limits off the wire."""
        limits = self._ders[command.der_id].ev
        return None if limits is None else current_refusal(command, limits)

    async def _publish(self, target: CommandTopic, value: float) -> str | None:
        client = self._client
        if client is None:
            return "broker not connected"
        try:
            async with asyncio.timeout(self._timeout_s):
                # QoS 1: publish returns once the broker acknowledged (PUBACK).
                await client.publish(target.topic, target.render(value), qos=target.qos, retain=target.retain)
        except TimeoutError:
            return f"no PUBACK within {self._timeout_s:g} s"
        except aiomqtt.MqttError as exc:
            return str(exc)
        return None

    async def safe_mode(self) -> None:
        """Publish each command topic's safe value. Logs instead of raising: it runs on the way out."""
        for target in self._commands.values():
            if target.safe_value is None:
                continue
            problem = await self._publish(target, target.safe_value)
            if problem is not None:
                log.error("mqtt.safe_mode_failed", device=self._id, der_id=target.der_id, error=problem)
