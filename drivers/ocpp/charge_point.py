"""One configured charge point: its state across connections, its OCPP handlers, and its commands.

`ChargePointSession` outlives connections: it knows the connectors' status, meter values and
transactions, the last current zapd asked for per connector, and the charger's clock offset. Each
WebSocket connection gets a `_Link` (the `ocpp` library's ChargePoint, central-system side) that
answers the charger's calls; calls *to* the charger go through `_call`, which bounds, counts and logs
every failure once. A handler never makes a call itself: an answer arrives through the same receive
loop, so the work goes to the link's worker task instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from ocpp.exceptions import GenericError, OCPPError
from ocpp.messages import Call, CallError, CallResult, MessageType, unpack
from ocpp.routing import on
from ocpp.v16 import ChargePoint as OcppChargePoint16
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action, RegistrationStatus
from websockets.exceptions import ConnectionClosed

from drivers.api import ReadingSink
from drivers.config_structs import OcppChargePoint
from drivers.ev_command import ev_current_refusal
from drivers.ocpp.meter_values import (
    ENERGY_WH,
    MEASURANDS,
    parse_meter_value_number,
    parse_meter_values,
)
from drivers.ocpp.profiles import (
    RateUnit,
    baseline_profile,
    composite_limit,
    limit_in_unit,
    live_profile,
)
from zapd.clock import Clock
from zapd.model import (
    CHARGING,
    CONNECTED,
    POWER_W,
    SESSION_WH,
    SOC,
    Command,
    CommandResult,
    DerCapabilities,
    DerKind,
    EvCurrent,
    Quality,
    Reading,
)

log = structlog.get_logger(__name__)

# The library logs every frame at INFO and its own parse errors at ERROR; we count and log those
# ourselves (once), so only its reports of a crashing handler (a bug of ours) get through.
_LIB_LOG = logging.getLogger("drivers.ocpp.wire")
_LIB_LOG.setLevel(logging.CRITICAL)

# OCPP 1.6 §7.7 ChargePointStatus: a car is plugged in for these.
CONNECTED_STATES = frozenset({"Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing"})
KNOWN_STATES = CONNECTED_STATES | {"Available", "Unavailable", "Faulted", "Reserved"}
MAX_LOGGED_KINDS = 200
EMIT_MIN_GAP_S = 1.0  # readings per connector per second at most, whatever the charger sends
BURST_CALLS = 60  # calls from one charger answered before the rate limit starts
CALLS_PER_S = 20.0
BOOT_WAIT_S = 5.0  # a charger that reconnects without rebooting sends no BootNotification
CONFIG_KEYS = (
    "ChargingScheduleAllowedChargingRateUnit",
    "ChargeProfileMaxStackLevel",
    "MeterValuesSampledData",
    "MeterValueSampleInterval",
    "SupportedFeatureProfiles",
)


def _utc_now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _reraise_swallowed_cancel() -> None:
    """Python 3.11's wait_for (used inside the ocpp library) can return a result and drop a cancel that
    arrived at the same moment; the task would then run on after zapd asked it to stop. Cancellation
    is sacred: if one is pending, honour it here."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ChargerClock:
    """How far the charger's clock is from ours, from the timestamps it sends (time sync is not assumed).

    The median of the last few offsets: one old queued sample (a charger replaying its offline
    buffer) cannot move it. Under 30 s we call it synchronised: the validity of a profile is minutes.
    """

    def __init__(self) -> None:
        self._offsets: deque[float] = deque(maxlen=9)

    def observe(self, stamp: object) -> None:
        if not isinstance(stamp, str):
            return
        try:
            ts = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            return
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        offset = (ts - datetime.now(UTC)).total_seconds()
        if abs(offset) < 10 * 365 * 86_400:
            self._offsets.append(offset)

    @property
    def offset_s(self) -> float:
        if not self._offsets:
            return 0.0
        median = statistics.median(self._offsets)
        return median if abs(median) >= 30.0 else 0.0

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset_s)


@dataclass
class ConnectorState:
    number: int
    der_id: str
    status: str | None = None
    error_code: str = ""
    values: dict[str, float] = field(default_factory=dict)  # last meter values
    value_at: dict[str, float] = field(default_factory=dict)  # monotonic, per value: each one goes stale alone
    transaction_id: int | None = None
    meter_start_wh: float | None = None
    session_wh: float | None = None
    last_emit: float = -math.inf
    command: EvCurrent | None = None  # last current the controller asked for
    command_at: float = -math.inf  # monotonic, when the controller asked
    sent_at: float = -math.inf  # monotonic, when the live profile was last accepted


class _Bucket:
    """Token bucket on a charger's calls: a flood is answered with errors, not with our CPU."""

    def __init__(self, burst: int, per_s: float) -> None:
        self._tokens = float(burst)
        self._burst = float(burst)
        self._per_s = per_s
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._per_s)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class ChargePointSession:
    """Everything zapd knows about one configured charge point, across its connections."""

    def __init__(
        self,
        *,
        device_id: str,
        config: OcppChargePoint,
        clock: Clock,
        counters: dict[str, int],
        heartbeat_s: int,
        meter_interval_s: int,
        call_timeout_s: float,
        profile_validity_s: int,
        tx_ids: Callable[[], int],
    ) -> None:
        self.device_id = device_id
        self.config = config
        self.id = config.id
        self._clock = clock
        self.counters = counters
        self.heartbeat_s = heartbeat_s
        self.meter_interval_s = meter_interval_s
        self.call_timeout_s = call_timeout_s
        self.profile_validity_s = profile_validity_s
        self._tx_ids = tx_ids
        self.connectors = {
            n: ConnectorState(n, f"{device_id}.{config.id}.{n}") for n in range(1, config.connectors + 1)
        }
        self.boot: dict[str, str] = {}
        self.unit: RateUnit = "A"
        self.charger_clock = ChargerClock()
        self.link: _Link | None = None
        self.setup_done = False
        self.sink: ReadingSink | None = None
        self._logged: set[str] = set()
        self.left_safe: set[int] = set()  # connectors sent their safe current on the way out

    # ---- bookkeeping ----

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def log_once(self, once: str, event: str, **kw: object) -> None:
        """One line per kind of trouble per charger; the counters carry the rest."""
        if once in self._logged or len(self._logged) >= MAX_LOGGED_KINDS:
            return  # the keys carry charger-chosen values (connector ids, actions): the set stays bounded
        self._logged.add(once)
        log.warning(event, device=self.device_id, charge_point=self.id, **kw)

    @property
    def connected(self) -> bool:
        return self.link is not None

    def model_text(self) -> str:
        b = self.boot
        parts = [b.get("vendor", ""), b.get("model", "")]
        if b.get("firmware"):
            parts.append(f"fw {b['firmware']}")
        text = " ".join(p for p in parts if p)
        return f"ocpp1.6 {text}" if text else "ocpp1.6"

    def capabilities(self) -> list[DerCapabilities]:
        c = self.config
        return [
            DerCapabilities(
                der_id=conn.der_id,
                kind=DerKind.EV_CHARGER,
                controllable=True,
                model=self.model_text(),
                max_power_w=c.max_current_a * c.phases * c.voltage_v,
                min_current_a=c.min_current_a,
                max_current_a=c.max_current_a,
                phases=c.phases,
                voltage_v=c.voltage_v,
            )
            for conn in self.connectors.values()
        ]

    # ---- readings ----

    def emit(self, conn: ConnectorState, *, force: bool = False) -> None:
        """Push what is known about a connector; at most one reading a second unless something changed."""
        now_m = time.monotonic()
        if self.sink is None or (not force and now_m - conn.last_emit < EMIT_MIN_GAP_S):
            return
        if conn.status is None:
            return  # not knowing whether a car is there is "unknown" for the controller: it pauses
        values: dict[str, float] = {
            CONNECTED: 1.0 if conn.status in CONNECTED_STATES else 0.0,
            CHARGING: 1.0 if conn.status == "Charging" else 0.0,
        }
        for key, value in conn.values.items():
            if now_m - conn.value_at[key] <= 3 * self.meter_interval_s:
                values[key] = value
        if POWER_W not in values and conn.status != "Charging":
            values[POWER_W] = 0.0  # no current flows in any other state (§7.7)
        if conn.session_wh is not None and values[CONNECTED]:
            values[SESSION_WH] = conn.session_wh
        faulty = conn.status == "Faulted" or conn.error_code not in ("", "NoError")
        conn.last_emit = now_m
        self.sink(
            Reading(
                der_id=conn.der_id,
                kind=DerKind.EV_CHARGER,
                ts=self._clock.now(),
                values=values,
                quality=Quality.SUSPECT if faulty else Quality.GOOD,
            )
        )
        self.count("readings")

    def connector(self, number: object, what: str) -> ConnectorState | None:
        conn = self.connectors.get(number) if isinstance(number, int) else None
        if conn is None and number != 0:
            self.count("unknown_connector")
            self.log_once(f"connector:{number}", "ocpp.unknown_connector", connector=number, message=what)
        return conn

    def reject_value(self, problem: str) -> None:
        self.count("values_rejected")
        self.log_once(f"value:{problem.split(' ')[0]}", "ocpp.value_rejected", problem=problem)

    def id_tag_status(self, id_tag: object) -> str:
        tags = self.config.id_tags
        if tags is None or id_tag in tags:
            return "Accepted"
        self.count("id_tags_refused")
        return "Invalid"

    def new_transaction_id(self) -> int:
        return self._tx_ids()

    # ---- calls to the charger ----

    async def call_charger(self, payload: Any) -> Any | None:
        """One call, bounded by call_timeout_s; None on any failure (counted, logged once)."""
        link = self.link
        action = type(payload).__name__
        if link is None:
            return None
        self.count("calls")
        try:
            async with asyncio.timeout(self.call_timeout_s + 1.0):
                result = await link.call(payload, suppress=False)
            _reraise_swallowed_cancel()
            return result
        except TimeoutError:
            self.count("call_timeouts")
            self.log_once(f"timeout:{action}", "ocpp.call_timeout", action=action, timeout_s=self.call_timeout_s)
        except OCPPError as exc:
            self.count("call_errors")
            self.log_once(f"callerror:{action}", "ocpp.call_error", action=action, error=f"{exc.code}: {exc}")
        except ConnectionClosed:
            self.count("call_errors")
        _reraise_swallowed_cancel()
        return None

    async def setup(self) -> None:
        """After (re)connect: learn the rate unit, ask for the meter values we use, baseline then live profiles."""
        answer = await self.call_charger(call.GetConfiguration(key=list(CONFIG_KEYS)))
        config: dict[str, str] = {}
        if answer is not None and isinstance(answer.configuration_key, list):
            for item in answer.configuration_key:
                if isinstance(item, dict) and isinstance(item.get("key"), str) and isinstance(item.get("value"), str):
                    config[item["key"]] = item["value"]
        units = {u.strip() for u in config.get("ChargingScheduleAllowedChargingRateUnit", "Current").split(",")}
        self.unit = "A" if "Current" in units or not units & {"Power"} else "W"
        # A charger without ISO 15118 cannot report SoC and may refuse the whole list for it: then without.
        for key, values in (
            ("MeterValuesSampledData", (",".join(MEASURANDS), ",".join(m for m in MEASURANDS if m != "SoC"))),
            ("MeterValueSampleInterval", (str(self.meter_interval_s),)),
        ):
            if config.get(key) in values:
                continue
            for value in values:
                result = await self.call_charger(call.ChangeConfiguration(key=key, value=value))
                if result is None or result.status in ("Accepted", "RebootRequired"):
                    break
                self.log_once(f"config:{key}:{value}", "ocpp.configuration_refused", key=key, value=value,
                              status=result.status)  # fmt: skip
        await self.send_baseline()
        self.setup_done = True
        for conn in self.connectors.values():
            if self.command_live(conn):
                await self.send_live(conn)
        await self.call_charger(call.TriggerMessage(requested_message="StatusNotification"))

    async def send_baseline(self) -> bool:
        c = self.config
        limit = limit_in_unit(c.fallback_current_a, self.unit, c.phases, c.voltage_v)
        result = await self.call_charger(
            call.SetChargingProfile(connector_id=0, cs_charging_profiles=baseline_profile(limit, self.unit))
        )
        ok = result is not None and result.status == "Accepted"
        if not ok:
            self.count("baseline_refused")
            self.log_once("baseline", "ocpp.safe_profile_refused", status=getattr(result, "status", None))
        return ok

    def command_live(self, conn: ConnectorState) -> bool:
        """Only a command the controller renewed recently is kept alive: a stuck controller lets it lapse."""
        return conn.command is not None and time.monotonic() - conn.command_at < self.profile_validity_s

    async def send_live(self, conn: ConnectorState) -> str | None:
        """Send the live profile for the connector's command; None when the charger accepted it, else why not."""
        cmd = conn.command
        if cmd is None:
            return "no command"
        c = self.config
        phases = cmd.phases
        limit = limit_in_unit(cmd.current_a, self.unit, phases, c.voltage_v)
        valid_to = self.charger_clock.now() + timedelta(seconds=self.profile_validity_s)
        profile = live_profile(
            conn.number,
            limit,
            self.unit,
            valid_to=valid_to,
            transaction_id=conn.transaction_id,
            number_phases=phases if c.phase_switching else None,
        )
        request = call.SetChargingProfile(connector_id=conn.number, cs_charging_profiles=profile)
        result = await self.call_charger(request)
        if result is None:
            return "no answer to SetChargingProfile" if self.link is not None else "charger not connected"
        if result.status != "Accepted":
            self.count("profiles_refused")
            self.log_once(f"live:{result.status}", "ocpp.profile_refused", status=result.status)
            return f"SetChargingProfile {result.status}"
        conn.sent_at = time.monotonic()
        self.count("profiles_sent")
        return None

    async def verify(self, conn: ConnectorState, current_a: float) -> str:
        """Ask the charger what it applies now (GetCompositeSchedule); '' when it is at or under the command."""
        c = self.config
        result = await self.call_charger(
            call.GetCompositeSchedule(connector_id=conn.number, duration=60, charging_rate_unit=self.unit)
        )
        if result is None or result.status != "Accepted":
            return "not verified (GetCompositeSchedule unanswered)"
        applied = composite_limit(result.charging_schedule, self.unit, c.phases, c.voltage_v)
        if applied is None:
            return "not verified (empty composite schedule)"
        if applied > current_a + 0.15:
            self.count("verify_mismatch")
            self.log_once("verify", "ocpp.charger_over_limit", applied_a=round(applied, 2), commanded_a=current_a)
            return f"charger applies {applied:.1f} A, commanded {current_a:g} A"
        return f"charger applies {applied:.1f} A"

    async def keepalive(self) -> None:
        """Re-send live profiles before their validTo runs out (a third of the validity)."""
        now = time.monotonic()
        for conn in self.connectors.values():
            if self.command_live(conn) and now - conn.sent_at >= self.profile_validity_s / 3:
                self.count("keepalives")
                await self.send_live(conn)

    # ---- control ----

    def refusal(self, command: Command, conn: ConnectorState | None) -> str | None:
        c = self.config
        if not isinstance(command, EvCurrent):
            return f"{type(command).__name__} is not supported by an OCPP charger"
        if conn is None:
            return f"unknown DER {command.der_id!r}"
        return ev_current_refusal(
            command,
            c.limits,
            can_switch_phases=c.phase_switching,
            no_switch_reason=f"charge point {self.id!r} is not set up for phase switching",
        )

    async def apply(self, number: int, command: Command) -> CommandResult:
        self.count("commands")
        conn = self.connectors.get(number)
        refusal = self.refusal(command, conn)
        if refusal is not None:
            self.count("commands_refused")
            self.log_once(f"refused:{refusal[:20]}", "ocpp.command_refused", reason=refusal)
            return CommandResult(command=command, ok=False, detail=refusal)
        assert isinstance(command, EvCurrent) and conn is not None
        conn.command = command
        conn.command_at = time.monotonic()
        if self.link is None:
            return self._failed(command, "charger not connected: sent when it connects")
        if not self.setup_done:
            return self._failed(command, "charger connected, setup not finished: sent with the setup")
        problem = await self.send_live(conn)
        if problem is not None:
            return self._failed(command, problem)
        detail = await self.verify(conn, command.current_a)
        if "commanded" in detail:
            return self._failed(command, detail)
        return CommandResult(command=command, ok=True, detail=f"{command.current_a:g} A sent; {detail}")

    def _failed(self, command: EvCurrent, detail: str) -> CommandResult:
        self.count("command_errors")
        return CommandResult(command=command, ok=False, detail=detail)

    async def safe_mode(self, number: int) -> None:
        """zapd stops: the connector goes to the safe current now, and zapd stops renewing it."""
        conn = self.connectors.get(number)
        if conn is None:
            return
        c = self.config
        conn.command = EvCurrent(der_id=conn.der_id, current_a=c.fallback_current_a, phases=c.phases)
        problem = await self.send_live(conn) if self.link is not None and self.setup_done else "not connected"
        conn.command = None
        if problem is None:
            self.left_safe.add(number)
            log.info("ocpp.safe_mode", der_id=conn.der_id, current_a=c.fallback_current_a)
        elif number in self.left_safe:
            pass  # the listener already left it safe before it closed the connection
        else:
            log.warning("ocpp.safe_mode_not_sent", der_id=conn.der_id, reason=problem)


class _Link(OcppChargePoint16):  # type: ignore[misc]
    """One WebSocket connection of a charge point; the handlers are the OCPP 1.6 calls a charger makes."""

    def __init__(self, session: ChargePointSession, connection: Any) -> None:
        super().__init__(session.id, connection, response_timeout=session.call_timeout_s, logger=_LIB_LOG)
        self.session = session
        self.heard = asyncio.Event()  # boot or any other call: the charger thinks it is registered
        self.booted = asyncio.Event()
        self.work: asyncio.Queue[int] = asyncio.Queue(maxsize=64)  # connectors whose transaction started
        self._bucket = _Bucket(BURST_CALLS, CALLS_PER_S)

    async def route_message(self, raw_msg: Any) -> None:
        """The library's router with every failure counted: malformed frames, floods, schema violations."""
        s = self.session
        try:
            msg = unpack(raw_msg)
            if not isinstance(msg.unique_id, str) or (isinstance(msg, Call) and not isinstance(msg.action, str)):
                raise GenericError(details={"cause": "ids and action must be strings"})
            if not isinstance(msg.payload if not isinstance(msg, CallError) else {}, dict):
                raise GenericError(details={"cause": "payload must be an object"})
        except OCPPError as exc:
            s.count("malformed")
            s.log_once("malformed", "ocpp.malformed_message", error=str(exc)[:200])
            return
        if msg.message_type_id in (MessageType.CallResult, MessageType.CallError):
            assert isinstance(msg, CallResult | CallError)
            self._response_queue.put_nowait(msg)
            return
        if not self._bucket.take():
            s.count("rate_limited")
            s.log_once("flood", "ocpp.rate_limited", limit_per_s=CALLS_PER_S)
            await self._send(msg.create_call_error(GenericError(description="rate limit")).to_json())
            return
        if msg.action != "BootNotification":
            self.heard.set()
        try:
            await self._handle_call(msg)
        except OCPPError as exc:
            s.count("calls_refused")
            s.log_once(f"refused:{msg.action}", "ocpp.call_refused", action=msg.action, error=f"{exc.code}: {exc}")
            await self._send(msg.create_call_error(exc).to_json())

    def resend(self, conn: ConnectorState) -> None:
        """Queue the connector's live profile for the worker (a handler must not call the charger itself)."""
        if not self.session.command_live(conn):
            return
        try:
            self.work.put_nowait(conn.number)
        except asyncio.QueueFull:
            self.session.count("work_dropped")

    @on(Action.boot_notification)
    def on_boot(self, charge_point_vendor: str, charge_point_model: str, **kw: Any) -> call_result.BootNotification:
        s = self.session
        boot = {"vendor": charge_point_vendor, "model": charge_point_model}
        if isinstance(kw.get("firmware_version"), str):
            boot["firmware"] = kw["firmware_version"]
        if isinstance(kw.get("charge_point_serial_number"), str):
            boot["serial"] = kw["charge_point_serial_number"]
        if boot != s.boot:
            log.info("ocpp.boot", device=s.device_id, charge_point=s.id, **boot)
        s.boot = boot
        s.count("boots")
        self.booted.set()
        self.heard.set()
        return call_result.BootNotification(
            current_time=_utc_now_text(), interval=s.heartbeat_s, status=RegistrationStatus.accepted
        )

    @on(Action.heartbeat)
    def on_heartbeat(self, **_: Any) -> call_result.Heartbeat:
        self.session.count("heartbeats")
        return call_result.Heartbeat(current_time=_utc_now_text())

    @on(Action.status_notification)
    def on_status(self, connector_id: int, error_code: str, status: str, **kw: Any) -> call_result.StatusNotification:
        s = self.session
        s.charger_clock.observe(kw.get("timestamp"))
        conn = s.connector(connector_id, "StatusNotification")
        if conn is not None:
            changed = conn.status != status or conn.error_code != error_code
            conn.status, conn.error_code = status, error_code
            if status in ("Available", "Unavailable", "Faulted"):
                conn.session_wh = None  # unplugged: the session is over, and the car's SoC left with it
                conn.values.pop(SOC, None)
            if changed and status == "Faulted":
                log.warning("ocpp.connector_faulted", der_id=conn.der_id, error_code=error_code)
            s.emit(conn, force=changed)
        return call_result.StatusNotification()

    @on(Action.meter_values)
    def on_meter_values(self, connector_id: int, meter_value: list[Any], **kw: Any) -> call_result.MeterValues:
        s = self.session
        s.count("meter_values")
        conn = s.connector(connector_id, "MeterValues")
        if conn is None:
            return call_result.MeterValues()  # connector 0: the charge point's own main meter
        parsed = parse_meter_values(meter_value, voltage_v=s.config.voltage_v)
        for stamp in parsed.timestamps[-1:]:
            s.charger_clock.observe(stamp)
        for problem in parsed.problems:
            s.reject_value(problem)
        if parsed.values:
            conn.values.update(parsed.values)
            now_m = time.monotonic()
            conn.value_at.update(dict.fromkeys(parsed.values, now_m))
            energy = parsed.values.get(ENERGY_WH)
            if energy is not None and conn.meter_start_wh is not None and conn.transaction_id is not None:
                conn.session_wh = max(0.0, energy - conn.meter_start_wh)
        s.emit(conn)
        return call_result.MeterValues()

    @on(Action.authorize)
    def on_authorize(self, id_tag: str, **_: Any) -> call_result.Authorize:
        return call_result.Authorize(id_tag_info={"status": self.session.id_tag_status(id_tag)})

    @on(Action.start_transaction)
    def on_start(
        self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **_: Any
    ) -> call_result.StartTransaction:
        s = self.session
        s.charger_clock.observe(timestamp)
        tx = s.new_transaction_id()
        status = s.id_tag_status(id_tag)
        conn = s.connector(connector_id, "StartTransaction")
        start_wh, problem = parse_meter_value_number(meter_start, "meterStart")
        if problem:
            s.reject_value(problem)
        if conn is not None and status == "Accepted":
            conn.transaction_id = tx
            conn.meter_start_wh = start_wh
            conn.session_wh = 0.0
            s.count("transactions")
            log.info("ocpp.transaction_started", der_id=conn.der_id, transaction_id=tx)
            self.resend(conn)  # its TxProfile goes out from the worker
        return call_result.StartTransaction(transaction_id=tx, id_tag_info={"status": status})

    @on(Action.stop_transaction)
    def on_stop(self, meter_stop: int, timestamp: str, transaction_id: int, **kw: Any) -> call_result.StopTransaction:
        s = self.session
        s.charger_clock.observe(timestamp)
        conn = next((c for c in s.connectors.values() if c.transaction_id == transaction_id), None)
        stop_wh, problem = parse_meter_value_number(meter_stop, "meterStop")
        if problem:
            s.reject_value(problem)
        if conn is None:
            # A transaction zapd does not know: started before zapd did, or replayed out of order.
            s.count("unknown_transactions")
            s.log_once("unknown_tx", "ocpp.unknown_transaction", transaction_id=transaction_id)
        else:
            if stop_wh is not None and conn.meter_start_wh is not None:
                conn.session_wh = max(0.0, stop_wh - conn.meter_start_wh)
            conn.transaction_id = None
            self.resend(conn)  # the TxProfile ended with the transaction: back to the connector's default
            log.info(
                "ocpp.transaction_stopped", der_id=conn.der_id, session_wh=conn.session_wh, reason=kw.get("reason")
            )
            s.emit(conn, force=True)
        if "id_tag" in kw:
            return call_result.StopTransaction(id_tag_info={"status": s.id_tag_status(kw["id_tag"])})
        return call_result.StopTransaction()

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any) -> call_result.DataTransfer:
        return call_result.DataTransfer(status="UnknownVendorId")

    @on(Action.firmware_status_notification)
    def on_firmware_status(self, **_: Any) -> call_result.FirmwareStatusNotification:
        return call_result.FirmwareStatusNotification()

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status(self, **_: Any) -> call_result.DiagnosticsStatusNotification:
        return call_result.DiagnosticsStatusNotification()


class OcppConnector:
    """The Controllable for one connector DER: the controller's commands go to its charge point's session."""

    def __init__(self, session: ChargePointSession, number: int) -> None:
        self._session = session
        self._number = number

    @property
    def der_id(self) -> str:
        return self._session.connectors[self._number].der_id

    async def apply(self, command: Command) -> CommandResult:
        return await self._session.apply(self._number, command)

    async def safe_mode(self) -> None:
        await self._session.safe_mode(self._number)
