"""A simulated OCPP 1.6J charge point: the `ocpp` library's charge-point side over a real WebSocket.

An independent peer for zapd's central system: the messages it sends are the ones OCPP 1.6 §4
prescribes (BootNotification, StatusNotification, MeterValues, Start/StopTransaction), and the
current it would apply follows the smart-charging rules of §3.13 (not zapd's code): among the
profiles still valid, a TxProfile of the running transaction beats TxDefaultProfile, the highest
stack level wins, a connector's own profile beats one on connector 0, and with no profile at all
the charger gives its hardware maximum. `validTo` is read against the charger's *own* clock,
which may be set off from the real one (`clock_offset_s`), like a real charger without NTP.

Fault knobs for the robustness tests: answer nothing (`silent`), answer CALLERROR to given
actions (`call_errors`), send raw frames (`send_raw`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as OcppChargePoint16
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

_LOG = logging.getLogger("drivers.sim.ocpp_cp")
_LOG.setLevel(logging.CRITICAL)


@dataclass
class StoredProfile:
    connector: int
    profile: dict[str, Any]
    received_at: datetime  # the charger's clock

    @property
    def purpose(self) -> str:
        return str(self.profile["chargingProfilePurpose"])

    @property
    def stack(self) -> int:
        return int(self.profile["stackLevel"])


@dataclass
class SimChargerState:
    hardware_max_a: float = 32.0
    phases: int = 3
    voltage_v: float = 230.0
    rate_units: str = "Current"  # ChargingScheduleAllowedChargingRateUnit
    clock_offset_s: float = 0.0
    profiles: list[StoredProfile] = field(default_factory=list)
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (action, payload) from the CSMS
    received_times: list[float] = field(default_factory=list)  # time.perf_counter() of each, for benches
    config: dict[str, str] = field(default_factory=dict)
    transactions: dict[int, int] = field(default_factory=dict)  # connector -> transaction id
    silent: bool = False
    measurands: frozenset[str] | None = None  # what MeterValuesSampledData may hold; None: anything
    ignore_profiles: bool = False  # accepts profiles but keeps giving its hardware maximum (a broken charger)
    call_errors: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset_s)

    def received_profiles(self) -> list[dict[str, Any]]:
        """SetChargingProfile payloads from the central system, oldest first."""
        return [p for a, p in self.received if a == "SetChargingProfile"]

    def _valid(self, p: StoredProfile, at: datetime) -> bool:
        valid_to = p.profile.get("validTo")
        if valid_to is not None and datetime.fromisoformat(str(valid_to).replace("Z", "+00:00")) <= at:
            return False
        valid_from = p.profile.get("validFrom")
        return valid_from is None or datetime.fromisoformat(str(valid_from).replace("Z", "+00:00")) <= at

    def applied_profile(self, connector: int, at: datetime | None = None) -> StoredProfile | None:
        """§3.13: TxProfile (of the running transaction) over TxDefaultProfile; highest stack; connector over 0."""
        at = at or self.now()
        tx = self.transactions.get(connector)
        valid = [p for p in self.profiles if p.connector in (0, connector) and self._valid(p, at)]
        tx_profiles = [
            p for p in valid if p.purpose == "TxProfile" and tx is not None and p.profile.get("transactionId") == tx
        ]
        pool = tx_profiles or [p for p in valid if p.purpose == "TxDefaultProfile"]
        if not pool:
            return None
        return max(pool, key=lambda p: (p.stack, p.connector != 0))

    def limit_a(self, connector: int, at: datetime | None = None) -> float:
        """The current per phase this charger would offer the car now."""
        p = self.applied_profile(connector, at)
        if p is None or self.ignore_profiles:
            return self.hardware_max_a
        schedule = p.profile["chargingSchedule"]
        limit = float(schedule["chargingSchedulePeriod"][0]["limit"])
        if schedule["chargingRateUnit"] == "W":
            phases = schedule["chargingSchedulePeriod"][0].get("numberPhases", self.phases)
            limit = limit / (phases * self.voltage_v)
        return min(limit, self.hardware_max_a)


class SimChargePoint(OcppChargePoint16):  # type: ignore[misc]
    """The charge point's handlers for what a central system asks (§5)."""

    def __init__(self, cp_id: str, connection: ClientConnection, state: SimChargerState) -> None:
        super().__init__(cp_id, connection, response_timeout=10, logger=_LOG)
        self.state = state
        self.state.config.setdefault("ChargingScheduleAllowedChargingRateUnit", state.rate_units)
        self.state.config.setdefault("MeterValueSampleInterval", "60")
        self.state.config.setdefault("MeterValuesSampledData", "Energy.Active.Import.Register")

    async def route_message(self, raw_msg: Any) -> None:
        if self.state.silent:
            return  # a charger that hangs: takes the frames, never answers
        await super().route_message(raw_msg)

    def _note(self, action: str, payload: dict[str, Any]) -> None:
        self.state.received.append((action, payload))
        self.state.received_times.append(time.perf_counter())
        self.state.changed.set()
        if action in self.state.call_errors:
            from ocpp.exceptions import NotSupportedError

            raise NotSupportedError(description=f"{action} refused by the simulator")

    @on(Action.set_charging_profile, skip_schema_validation=False)
    def on_set_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> call_result.SetChargingProfile:
        raw = _camel(cs_charging_profiles)
        self._note("SetChargingProfile", {"connectorId": connector_id, "csChargingProfiles": raw})
        purpose = raw["chargingProfilePurpose"]
        if purpose == "TxProfile" and self.state.transactions.get(connector_id) != raw.get("transactionId"):
            return call_result.SetChargingProfile(status="Rejected")  # §5.16.3: no such transaction
        self.state.profiles = [
            p
            for p in self.state.profiles
            if not (
                p.connector == connector_id and p.purpose == purpose and p.stack == raw["stackLevel"]
            )  # same purpose + stack level replaces (§5.16.2)
        ]
        self.state.profiles.append(StoredProfile(connector_id, raw, self.state.now()))
        return call_result.SetChargingProfile(status="Accepted")

    @on(Action.get_composite_schedule)
    def on_composite(self, connector_id: int, duration: int, **kw: Any) -> call_result.GetCompositeSchedule:
        self._note("GetCompositeSchedule", {"connectorId": connector_id, "duration": duration})
        unit = kw.get("charging_rate_unit") or "A"
        limit = self.state.limit_a(connector_id)
        value = limit if unit == "A" else limit * self.state.phases * self.state.voltage_v
        return call_result.GetCompositeSchedule(
            status="Accepted",
            connector_id=connector_id,
            schedule_start=self.state.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
            charging_schedule={
                "duration": duration,
                "chargingRateUnit": unit,
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": round(value, 1)}],
            },
        )

    @on(Action.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None) -> call_result.GetConfiguration:
        self._note("GetConfiguration", {"key": key})
        keys = key or list(self.state.config)
        known = [{"key": k, "readonly": False, "value": self.state.config[k]} for k in keys if k in self.state.config]
        unknown = [k for k in keys if k not in self.state.config]
        return call_result.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on(Action.change_configuration)
    def on_change_configuration(self, key: str, value: str) -> call_result.ChangeConfiguration:
        self._note("ChangeConfiguration", {"key": key, "value": value})
        allowed = self.state.measurands
        if key == "MeterValuesSampledData" and allowed is not None and not set(value.split(",")) <= allowed:
            return call_result.ChangeConfiguration(status="Rejected")  # §5.3: a value it cannot use
        self.state.config[key] = value
        return call_result.ChangeConfiguration(status="Accepted")

    @on(Action.trigger_message)
    def on_trigger(self, requested_message: str, **_: Any) -> call_result.TriggerMessage:
        self._note("TriggerMessage", {"requestedMessage": requested_message})
        return call_result.TriggerMessage(status="Accepted")

    @on(Action.clear_charging_profile)
    def on_clear(self, **kw: Any) -> call_result.ClearChargingProfile:
        self._note("ClearChargingProfile", kw)
        self.state.profiles.clear()
        return call_result.ClearChargingProfile(status="Accepted")


def _camel(d: Any) -> Any:
    """The library hands handlers snake_case keys; store profiles as they are on the wire (camelCase)."""
    if isinstance(d, Mapping):
        return {_camel_key(str(k)): _camel(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_camel(v) for v in d]
    return d


def _camel_key(k: str) -> str:
    head, *rest = k.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


class SimCharger:
    """One simulated charger: connect, say what a charger says, keep its profiles."""

    def __init__(
        self,
        url: str,
        cp_id: str,
        *,
        state: SimChargerState | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        subprotocol: str | None = "ocpp1.6",
    ) -> None:
        self.url = f"{url.rstrip('/')}/{cp_id}"
        self.cp_id = cp_id
        self.state = state or SimChargerState()
        self._password = password
        self._ssl = ssl_context
        self._subprotocol = subprotocol
        self.ws: ClientConnection | None = None
        self.cp: SimChargePoint | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> SimCharger:
        headers = {}
        if self._password is not None:
            token = base64.b64encode(f"{self.cp_id}:{self._password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self.ws = await connect(
            self.url,
            subprotocols=[Subprotocol(self._subprotocol)] if self._subprotocol else None,
            additional_headers=headers,
            ssl=self._ssl,
            open_timeout=5,
        )
        self.cp = SimChargePoint(self.cp_id, self.ws, self.state)
        self._reader = asyncio.create_task(self.cp.start())
        self._reader.add_done_callback(lambda t: t.cancelled() or t.exception())  # closed by the server: fine
        return self

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self.ws is not None:
            await self.ws.close()

    def _cp(self) -> SimChargePoint:
        assert self.cp is not None, "connect() first"
        return self.cp

    def stamp(self) -> str:
        return self.state.now().strftime("%Y-%m-%dT%H:%M:%SZ")

    async def boot(self, vendor: str = "SimVendor", model: str = "SimWallbox", firmware: str = "1.0.0") -> Any:
        return await self._cp().call(
            call.BootNotification(charge_point_vendor=vendor, charge_point_model=model, firmware_version=firmware)
        )

    async def heartbeat(self) -> Any:
        return await self._cp().call(call.Heartbeat())

    async def status(self, connector: int, status: str, error_code: str = "NoError") -> Any:
        return await self._cp().call(
            call.StatusNotification(
                connector_id=connector, error_code=error_code, status=status, timestamp=self.stamp()
            )
        )

    async def meter_values(
        self,
        connector: int,
        *,
        power_w: float | None = None,
        energy_wh: float | None = None,
        currents_a: tuple[float, ...] = (),
        soc_pct: float | None = None,
        transaction_id: int | None = None,
        raw_values: list[dict[str, Any]] | None = None,
    ) -> Any:
        sampled: list[dict[str, Any]] = list(raw_values or [])
        if power_w is not None:
            sampled.append({"value": f"{power_w:g}", "measurand": "Power.Active.Import", "unit": "W"})
        if energy_wh is not None:
            sampled.append(
                {"value": f"{energy_wh / 1000:g}", "measurand": "Energy.Active.Import.Register", "unit": "kWh"}
            )
        for phase, amps in zip(("L1", "L2", "L3"), currents_a, strict=False):
            sampled.append({"value": f"{amps:g}", "measurand": "Current.Import", "phase": phase, "unit": "A"})
        if soc_pct is not None:
            sampled.append({"value": f"{soc_pct:g}", "measurand": "SoC", "location": "EV", "unit": "Percent"})
        return await self._cp().call(
            call.MeterValues(
                connector_id=connector,
                transaction_id=transaction_id,
                meter_value=[{"timestamp": self.stamp(), "sampledValue": sampled}],
            )
        )

    async def authorize(self, id_tag: str) -> Any:
        return await self._cp().call(call.Authorize(id_tag=id_tag))

    async def start_transaction(self, connector: int, id_tag: str, meter_start_wh: int) -> Any:
        result = await self._cp().call(
            call.StartTransaction(
                connector_id=connector, id_tag=id_tag, meter_start=meter_start_wh, timestamp=self.stamp()
            )
        )
        if result.id_tag_info.get("status") == "Accepted":
            self.state.transactions[connector] = result.transaction_id
        return result

    async def stop_transaction(self, connector: int, meter_stop_wh: int, transaction_id: int | None = None) -> Any:
        tx = transaction_id if transaction_id is not None else self.state.transactions.pop(connector)
        self.state.profiles = [
            p for p in self.state.profiles if not (p.purpose == "TxProfile" and p.profile.get("transactionId") == tx)
        ]  # §3.13.4: a TxProfile ends with its transaction
        return await self._cp().call(
            call.StopTransaction(meter_stop=meter_stop_wh, timestamp=self.stamp(), transaction_id=tx, reason="Local")
        )

    async def send_raw(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send(text)

    async def wait_for(self, action: str, *, count: int = 1, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Wait until the central system sent `count` calls of `action`; their payloads."""
        async with asyncio.timeout(timeout_s):
            while True:
                got = [p for a, p in self.state.received if a == action]
                if len(got) >= count:
                    return got
                self.state.changed.clear()
                await self.state.changed.wait()
