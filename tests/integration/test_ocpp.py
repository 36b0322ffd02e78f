"""zapd's OCPP 1.6J central system against a real charge point implementation on loopback.

The peer is drivers/sim/ocpp_cp.py: the `ocpp` library's charge-point side (an independent
implementation of the protocol, schema-validating every message both ways) over a real
WebSocket. What the tests expect comes from the OCPP 1.6 specification: the message names and
fields (§4, §5, §7), the smart-charging precedence that decides what current a charger applies
(§3.13: TxProfile over TxDefaultProfile, highest stack level, validTo), HTTP basic auth and TLS
from the OCPP 1.6 security whitepaper (profiles 1 and 2).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from websockets.exceptions import InvalidMessage, InvalidStatus

from drivers.ocpp.charge_point import EMIT_MIN_GAP_S
from drivers.ocpp.config import OcppDevice
from drivers.ocpp.profiles import limit_in_unit
from drivers.ocpp.server import OcppServer
from drivers.sim.ocpp_cp import SimCharger, SimChargerState
from tests.ports import free_port
from tests.waiting import stays, wait_until
from zapd.clock import SystemClock
from zapd.model import CHARGING, CONNECTED, POWER_W, SESSION_WH, SOC, EvCurrent, Reading

PASSWORD = "correct-horse-battery"


def _device(**over: Any) -> OcppDevice:
    cps = over.pop(
        "charge_points",
        [
            {"id": "wb1", "max_current_a": 16, "password": PASSWORD},
            {"id": "wb2", "max_current_a": 32, "connectors": 2, "id_tags": ["TAG-OK"]},
        ],
    )
    data = {
        "driver": "ocpp",
        "id": "ocpp",
        "host": "127.0.0.1",
        "port": free_port(),
        "call_timeout_s": 1.0,
        "meter_interval_s": 10,
        "charge_points": cps,
        **over,
    }
    return OcppDevice.model_validate(data)


@dataclass
class Csms:
    server: OcppServer
    readings: list[Reading] = field(default_factory=list)
    scheme: str = "ws"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.port}/ocpp"

    def last(self, der_id: str) -> Reading:
        return next(r for r in reversed(self.readings) if r.der_id == der_id)

    async def until(self, check: Callable[[], object], timeout_s: float = 5.0) -> None:
        await wait_until(check, timeout_s)

    async def may_emit(self, cp_id: str, connector: int) -> None:
        """Until the connector's next reading may go out: readings are one a second per connector at most
        (EMIT_MIN_GAP_S after the last one, which a status change forces)."""
        conn = self.server.sessions[cp_id].connectors[connector]
        await self.until(lambda: time.monotonic() - conn.last_emit >= EMIT_MIN_GAP_S)


async def _start(device: OcppDevice) -> tuple[Csms, asyncio.Task[None]]:
    csms = Csms(OcppServer(device, SystemClock()), scheme="wss" if device.tls_cert else "ws")
    task = asyncio.create_task(csms.server.run(csms.readings.append))
    async with asyncio.timeout(5):
        await csms.server.listening.wait()
    return csms, task


@pytest.fixture
async def csms() -> AsyncIterator[Csms]:
    c, task = await _start(_device())
    yield c
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _charger(csms: Csms, cp_id: str = "wb1", **kw: Any) -> SimCharger:
    password = kw.pop("password", PASSWORD if cp_id == "wb1" else None)
    return await SimCharger(csms.url, cp_id, password=password, **kw).connect()


async def _booted(csms: Csms, cp_id: str = "wb1", **kw: Any) -> SimCharger:
    sim = await _charger(csms, cp_id, **kw)
    await sim.boot()
    await sim.wait_for("SetChargingProfile")  # the baseline: setup is done
    await csms.until(lambda: csms.server.sessions[cp_id].setup_done)
    return sim


def _profiles(sim: SimCharger) -> list[dict[str, Any]]:
    return [p["csChargingProfiles"] | {"connectorId": p["connectorId"]} for p in sim.state.received_profiles()]


async def test_boot_is_accepted_and_vendor_model_firmware_reach_the_der_report(csms: Csms) -> None:
    sim = await _charger(csms)
    answer = await sim.boot(vendor="Alfen BV", model="NG910-60003", firmware="6.4.0-4206")
    assert answer.status == "Accepted" and answer.interval == 300  # §4.2: heartbeat interval in the answer
    datetime.fromisoformat(answer.current_time.replace("Z", "+00:00"))  # the charger may set its clock from it
    (cap,) = [c for c in csms.server.capabilities() if c.der_id == "ocpp.wb1.1"]
    assert "Alfen BV" in cap.model and "NG910-60003" in cap.model and "6.4.0-4206" in cap.model
    assert cap.controllable and cap.max_current_a == 16 and cap.min_current_a == 6
    assert (await sim.heartbeat()).current_time
    await sim.close()


async def test_setup_asks_for_measurands_and_interval_and_leaves_a_safe_default(csms: Csms) -> None:
    sim = await _booted(csms)
    changes = {p["key"]: p["value"] for p in await sim.wait_for("ChangeConfiguration", count=2)}
    assert set(changes["MeterValuesSampledData"].split(",")) == {
        "Power.Active.Import",
        "Energy.Active.Import.Register",
        "Current.Import",
        "SoC",
    }
    assert changes["MeterValueSampleInterval"] == "10"
    (get,) = await sim.wait_for("GetConfiguration")
    assert "ChargingScheduleAllowedChargingRateUnit" in get["key"]
    (baseline,) = _profiles(sim)
    assert baseline["connectorId"] == 0 and baseline["chargingProfilePurpose"] == "TxDefaultProfile"
    assert baseline["stackLevel"] == 0 and "validTo" not in baseline
    # With nothing else from zapd the charger now gives 6 A (min_current_a), not its 32 A hardware maximum.
    assert sim.state.limit_a(1) == 6.0
    await sim.close()


async def test_status_and_meter_values_become_readings(csms: Csms) -> None:
    sim = await _booted(csms)
    await sim.status(1, "Preparing")
    await csms.until(lambda: any(r.der_id == "ocpp.wb1.1" for r in csms.readings))
    r = csms.last("ocpp.wb1.1")
    assert r.values[CONNECTED] == 1.0 and r.values[CHARGING] == 0.0 and r.values[POWER_W] == 0.0
    await sim.status(1, "Charging")
    await csms.may_emit("wb1", 1)
    await sim.meter_values(1, power_w=7360, energy_wh=12_345, currents_a=(10.6, 10.7, 10.5), soc_pct=80)
    await csms.until(lambda: csms.last("ocpp.wb1.1").values.get(POWER_W) == 7360)
    v = csms.last("ocpp.wb1.1").values
    assert v[CHARGING] == 1.0 and v["energy_wh"] == 12_345 and v[SOC] == pytest.approx(0.8)
    assert (v["l1_a"], v["l2_a"], v["l3_a"]) == (10.6, 10.7, 10.5)
    await sim.status(1, "SuspendedEV")
    await csms.until(lambda: csms.last("ocpp.wb1.1").values[CHARGING] == 0.0)
    assert csms.last("ocpp.wb1.1").values[CONNECTED] == 1.0
    await sim.close()


async def test_values_out_of_range_or_not_numbers_are_refused_and_counted(csms: Csms) -> None:
    sim = await _booted(csms)
    await sim.status(1, "Charging")
    before = csms.server.counters["values_rejected"]
    await csms.may_emit("wb1", 1)
    await sim.meter_values(
        1,
        power_w=3000,
        raw_values=[
            {"value": "NaN", "measurand": "Energy.Active.Import.Register"},
            {"value": "abc", "measurand": "Current.Import", "phase": "L1"},
            {"value": "250", "measurand": "SoC", "location": "EV", "unit": "Percent"},
            {"value": "1e9", "measurand": "Power.Active.Import", "phase": "L2", "unit": "kW"},
        ],
    )
    await csms.until(lambda: csms.last("ocpp.wb1.1").values.get(POWER_W) == 3000)
    v = csms.last("ocpp.wb1.1").values
    assert "energy_wh" not in v and "l1_a" not in v and SOC not in v
    assert csms.server.counters["values_rejected"] - before == 4
    await sim.close()


async def test_transactions_give_session_energy_and_id_tags_are_checked(csms: Csms) -> None:
    sim = await _booted(csms, "wb2")
    refused = await sim.start_transaction(1, "STRANGER", 1000)
    assert refused.id_tag_info["status"] == "Invalid"
    assert (await sim.authorize("TAG-OK")).id_tag_info["status"] == "Accepted"
    assert (await sim.authorize("STRANGER")).id_tag_info["status"] == "Invalid"
    started = await sim.start_transaction(2, "TAG-OK", 1000)
    assert started.id_tag_info["status"] == "Accepted" and isinstance(started.transaction_id, int)
    await sim.status(2, "Charging")
    await csms.may_emit("wb2", 2)
    await sim.meter_values(2, energy_wh=5000, power_w=11_000, transaction_id=started.transaction_id)
    await csms.until(lambda: csms.last("ocpp.wb2.2").values.get(SESSION_WH) == 4000)
    await sim.stop_transaction(2, 6000)
    await csms.until(lambda: csms.last("ocpp.wb2.2").values.get(SESSION_WH) == 5000)
    assert csms.server.counters["transactions"] == 1
    await sim.close()


async def test_controller_current_arrives_as_a_profile_with_the_limit_and_expires_to_safe(csms: Csms) -> None:
    sim = await _booted(csms)
    actuator = csms.server.actuators()["ocpp.wb1.1"]
    result = await actuator.apply(EvCurrent(der_id="ocpp.wb1.1", current_a=10.0, phases=3))
    assert result.ok, result.detail
    live = _profiles(sim)[-1]
    assert live["connectorId"] == 1 and live["chargingProfilePurpose"] == "TxDefaultProfile"
    assert live["stackLevel"] == 1 and live["chargingSchedule"]["chargingRateUnit"] == "A"
    assert live["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 10.0
    assert sim.state.limit_a(1) == 10.0
    assert "charger applies 10.0 A" in result.detail  # GetCompositeSchedule read back
    # The charger's own fallback: once validTo passes without a renewal (zapd gone), the safe 6 A default rules.
    valid_to = datetime.fromisoformat(live["validTo"].replace("Z", "+00:00"))
    assert timedelta(seconds=290) <= valid_to - datetime.now(UTC) <= timedelta(seconds=301)
    assert sim.state.limit_a(1, at=valid_to + timedelta(seconds=1)) == 6.0
    # 0 A pauses (IEC 61851: the car stops drawing).
    assert (await actuator.apply(EvCurrent(der_id="ocpp.wb1.1", current_a=0.0, phases=3))).ok
    assert sim.state.limit_a(1) == 0.0
    await sim.close()


async def test_a_power_only_charger_gets_watts(csms: Csms) -> None:
    sim = await _booted(csms, "wb2", state=SimChargerState(rate_units="Power"))
    actuator = csms.server.actuators()["ocpp.wb2.1"]
    result = await actuator.apply(EvCurrent(der_id="ocpp.wb2.1", current_a=10.0, phases=3))
    assert result.ok, result.detail
    schedule = _profiles(sim)[-1]["chargingSchedule"]
    assert schedule["chargingRateUnit"] == "W" and schedule["chargingSchedulePeriod"][0]["limit"] == 6900
    assert sim.state.limit_a(1) == pytest.approx(10.0)
    await sim.close()


async def test_a_running_transaction_gets_a_tx_profile(csms: Csms) -> None:
    sim = await _booted(csms)
    actuator = csms.server.actuators()["ocpp.wb1.1"]
    assert (await actuator.apply(EvCurrent(der_id="ocpp.wb1.1", current_a=8.0, phases=3))).ok
    n = len(_profiles(sim))
    tx = (await sim.start_transaction(1, "ANY", 0)).transaction_id
    await csms.until(lambda: len(_profiles(sim)) > n)  # sent at once at StartTransaction
    tx_profile = _profiles(sim)[-1]
    assert tx_profile["chargingProfilePurpose"] == "TxProfile" and tx_profile["transactionId"] == tx
    assert sim.state.limit_a(1) == 8.0
    assert (await actuator.apply(EvCurrent(der_id="ocpp.wb1.1", current_a=14.0, phases=3))).ok
    assert _profiles(sim)[-1]["chargingProfilePurpose"] == "TxProfile" and sim.state.limit_a(1) == 14.0
    await sim.close()


async def test_reconnect_gets_the_profiles_again(csms: Csms) -> None:
    sim = await _booted(csms)
    actuator = csms.server.actuators()["ocpp.wb1.1"]
    assert (await actuator.apply(EvCurrent(der_id="ocpp.wb1.1", current_a=12.0, phases=3))).ok
    await sim.close()
    await csms.until(lambda: not csms.server.sessions["wb1"].connected)
    failed = await actuator.apply(EvCurrent(der_id="ocpp.wb1.1", current_a=11.0, phases=3))
    assert not failed.ok and "not connected" in failed.detail
    # A charger that lost its profiles (rebooted) and comes back without a BootNotification:
    again = await _charger(csms)
    await again.heartbeat()
    await again.wait_for("SetChargingProfile", count=2)
    assert again.state.limit_a(1) == 11.0  # the last command, re-sent
    assert {p["stackLevel"] for p in _profiles(again)} == {0, 1}
    await again.close()


async def test_validto_follows_the_chargers_clock_not_ours(csms: Csms) -> None:
    """Time sync is not assumed: a charger an hour ahead would ignore a validTo in our clock as already past."""
    state = SimChargerState(clock_offset_s=3600.0)
    sim = await _booted(csms, state=state)
    for _ in range(3):
        await sim.status(1, "Preparing")  # its timestamps tell zapd where its clock is
    actuator = csms.server.actuators()["ocpp.wb1.1"]
    assert (await actuator.apply(EvCurrent(der_id="ocpp.wb1.1", current_a=9.0, phases=3))).ok
    assert state.limit_a(1) == 9.0
    assert state.limit_a(1, at=state.now() + timedelta(seconds=301)) == 6.0
    await sim.close()


async def test_unknown_charge_point_is_refused_at_the_handshake_and_logged_once(csms: Csms) -> None:
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            with pytest.raises(InvalidStatus) as err:
                await SimCharger(csms.url, "intruder").connect()
            assert err.value.response.status_code == 404
    assert csms.server.counters["refused_unknown"] == 3
    assert len([e for e in logs if e["event"] == "ocpp.connection_refused"]) == 1


async def test_basic_auth_refuses_a_wrong_or_missing_password(csms: Csms) -> None:
    for password in ("wrong-password-123", None):
        with pytest.raises(InvalidStatus) as err:
            await SimCharger(csms.url, "wb1", password=password).connect()
        assert err.value.response.status_code == 401
    assert csms.server.counters["refused_auth"] == 2
    ok = await _charger(csms)  # the right one gets in
    assert (await ok.boot()).status == "Accepted"
    await ok.close()


async def test_a_client_without_the_ocpp16_subprotocol_is_refused(csms: Csms) -> None:
    with pytest.raises(InvalidStatus) as err:
        await SimCharger(csms.url, "wb2", subprotocol=None).connect()
    assert err.value.response.status_code == 400


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zapd.local")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_tls_security_profile_2(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    csms, task = await _start(_device(tls_cert=str(cert), tls_key=str(key)))
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        sim = await SimCharger(csms.url, "wb1", password=PASSWORD, ssl_context=trust).connect()
        assert (await sim.boot()).status == "Accepted"
        await sim.close()
        with pytest.raises((OSError, InvalidMessage)):  # plain ws:// to a TLS listener gets no OCPP session
            await SimCharger(csms.url.replace("wss://", "ws://"), "wb1", password=PASSWORD).connect()
        with pytest.raises(ssl.SSLCertVerificationError):  # a charger that checks the certificate
            await SimCharger(csms.url, "wb1", password=PASSWORD, ssl_context=ssl.create_default_context()).connect()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_malformed_frames_are_counted_and_the_link_stays_up(csms: Csms) -> None:
    sim = await _booted(csms)
    with structlog.testing.capture_logs() as logs:
        for frame in ("not json", "[2]", '{"a": 1}', "[7, 1, 2]", '[2, 5, "Heartbeat", {}]', '[2, "x", [], {}]'):
            await sim.send_raw(frame)
        # schema violation: a StatusNotification without its required fields gets a CALLERROR, not a crash
        await sim.send_raw('[2, "bad-status", "StatusNotification", {"connectorId": "one"}]')
        assert (await sim.heartbeat()).current_time
    assert csms.server.counters["malformed"] >= 5
    assert csms.server.counters["calls_refused"] >= 1
    assert len([e for e in logs if e["event"] == "ocpp.malformed_message"]) == 1
    assert csms.server.sessions["wb1"].connected
    await sim.close()


async def test_a_charger_that_never_answers_times_out_and_others_go_on(csms: Csms) -> None:
    sim = await _booted(csms)
    other = await _booted(csms, "wb2")
    sim.state.silent = True
    actuator = csms.server.actuators()["ocpp.wb1.1"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await actuator.apply(EvCurrent(der_id="ocpp.wb1.1", current_a=10.0, phases=3))
    assert not result.ok and "no answer" in result.detail
    assert loop.time() - started < 3.0  # call_timeout_s = 1 bounds it
    assert csms.server.counters["call_timeouts"] >= 1
    ok = await csms.server.actuators()["ocpp.wb2.1"].apply(EvCurrent(der_id="ocpp.wb2.1", current_a=20.0, phases=3))
    assert ok.ok and other.state.limit_a(1) == 20.0
    await sim.close()
    await other.close()


async def test_callerror_and_a_charger_over_its_limit_are_failures(csms: Csms) -> None:
    sim = await _booted(csms)
    actuator = csms.server.actuators()["ocpp.wb1.1"]
    sim.state.call_errors = {"SetChargingProfile"}
    result = await actuator.apply(EvCurrent(der_id="ocpp.wb1.1", current_a=10.0, phases=3))
    assert not result.ok and csms.server.counters["call_errors"] >= 1
    sim.state.call_errors = set()
    sim.state.ignore_profiles = True  # accepts, then offers its 32 A anyway: GetCompositeSchedule shows it
    result = await actuator.apply(EvCurrent(der_id="ocpp.wb1.1", current_a=10.0, phases=3))
    assert not result.ok and "32.0 A" in result.detail and csms.server.counters["verify_mismatch"] == 1
    await sim.close()


async def test_a_meter_values_flood_is_bounded(csms: Csms) -> None:
    sim = await _booted(csms)
    await sim.status(1, "Charging")
    counters = csms.server.counters
    readings_before, handled_before = len(csms.readings), counters["meter_values"]
    # A real flood does not wait for answers: 300 MeterValues.req frames back to back.
    stamp = sim.stamp()
    frames = [
        json.dumps([2, f"flood-{i}", "MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": stamp,
                    "sampledValue": [{"value": str(1000 + i), "measurand": "Power.Active.Import", "unit": "W"}]}]}])
        for i in range(300)
    ]  # fmt: skip
    loop = asyncio.get_running_loop()
    started = loop.time()
    for frame in frames:
        await sim.send_raw(frame)
    await csms.until(lambda: counters["meter_values"] - handled_before + counters["rate_limited"] >= 300, 30)
    elapsed = loop.time() - started
    # Beyond a burst of 60 and 20/s, the charger gets CALLERRORs; readings stay at one a second.
    assert counters["meter_values"] - handled_before <= 60 + 20 * elapsed + 1
    assert counters["rate_limited"] >= 300 - 60 - 20 * elapsed - 1
    assert len(csms.readings) - readings_before <= elapsed + 2
    await asyncio.sleep(0.2)  # wall-clock: the call bucket refills at 20/s: a token for the heartbeat
    assert (await sim.heartbeat()).current_time  # and the link still works
    await sim.close()


async def test_calls_out_of_order_are_answered(csms: Csms) -> None:
    sim = await _charger(csms, "wb2")
    # MeterValues and a StopTransaction for a transaction zapd never saw, before any BootNotification:
    await sim.meter_values(1, power_w=500)
    stopped = await sim.stop_transaction(1, 100, transaction_id=424242)
    assert stopped is not None
    assert csms.server.counters.get("unknown_transactions", 0) == 1
    assert (await sim.boot()).status == "Accepted"
    await sim.close()


async def test_config_refuses_inconsistent_charge_points() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unique"):
        _device(charge_points=[{"id": "a", "max_current_a": 16}, {"id": "a", "max_current_a": 16}])
    with pytest.raises(ValidationError, match="safe_current_a"):
        _device(charge_points=[{"id": "a", "max_current_a": 16, "safe_current_a": 3}])
    with pytest.raises(ValidationError, match="tls_cert and tls_key"):
        _device(tls_cert="/etc/cert.pem")


async def test_the_controller_lowers_the_chargers_current_as_the_house_load_rises(
    csms: Csms, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The EV envelope as for any charger: the fuse (25 A x 3 x 230 V) minus the house, 6 A minimum, else pause."""
    from drivers.config_structs import EvLimits
    from fallback.policy import Decision, Rung
    from zapd.controller import Controller
    from zapd.envelope import SiteLimits
    from zapd.model import DerKind, Intent
    from zapd.state import SiteState
    from zapd.store import Store

    monkeypatch.setattr("drivers.ocpp.charge_point.EMIT_MIN_GAP_S", 0.0)  # every MeterValues makes a reading
    sim = await _booted(csms)
    await sim.status(1, "Charging")
    store = await Store.open(tmp_path / "zapd.sqlite")
    state = SiteState()
    state.register("meter", DerKind.METER, 5)
    state.register("ocpp.wb1.1", DerKind.EV_CHARGER, 10)
    for r in csms.readings:
        state.update(r)
    clock = SystemClock()
    ctl = Controller(
        clock=clock,
        state=state,
        store=store,
        batteries=dict,
        actuators=dict(csms.server.actuators()),
        site=SiteLimits(fuse_limit_w=25 * 230 * 3, fuse_a=25, voltage_v=230, phases=3, max_export_w=None),
        tick_s=10,
        refresh_s=60,
        deadband_w=50,
        plan_source=lambda: None,
        plan_fresh=lambda: True,
        forced_rung=lambda: Decision(Rung.PLAN, Intent(ev_w=None), "test"),  # no EV opinion: as fast as allowed
        evs=lambda: {"ocpp.wb1.1": EvLimits(max_current_a=16)},
    )
    try:
        for house_w, expected_a in ((500.0, 16.0), (12_000.0, 7.6), (14_000.0, 0.0), (3000.0, 16.0)):
            ev_w = sim.state.limit_a(1) * 3 * 230  # the car draws what the charger offers; the meter sees it
            n = len(csms.readings)
            await sim.meter_values(1, power_w=ev_w)
            await csms.until(lambda n=n: len(csms.readings) > n)
            state.update(Reading(der_id="meter", kind=DerKind.METER, ts=clock.now(), values={POWER_W: house_w + ev_w}))
            state.update(csms.last("ocpp.wb1.1"))
            await ctl.cycle()
            assert sim.state.limit_a(1) == pytest.approx(expected_a), house_w
    finally:
        await store.close()
        await sim.close()


@given(current=st.floats(allow_nan=True, allow_infinity=True), phases=st.integers(-1, 4))
def test_no_command_gets_a_profile_above_the_chargers_limits(current: float, phases: int) -> None:
    """Whatever reaches the driver, what would go on the wire is 0 or min..max A on the wired phases."""
    device = _device(charge_points=[{"id": "x", "max_current_a": 16, "phases": 3}])
    session = OcppServer(device, SystemClock()).sessions["x"]
    cmd = EvCurrent(der_id="ocpp.x.1", current_a=current, phases=phases)
    if session.refusal(cmd, session.connectors[1]) is None:
        limit = limit_in_unit(cmd.current_a, "A", cmd.phases, 230)
        assert limit == 0.0 or 6.0 <= limit <= 16.0
        assert cmd.phases == 3
        assert limit_in_unit(cmd.current_a, "W", cmd.phases, 230) <= 16 * 3 * 230


async def test_a_second_connection_of_the_same_charger_replaces_the_first(csms: Csms) -> None:
    first = await _booted(csms)
    second = await _charger(csms)  # the charger reconnected before its old TCP connection timed out
    assert (await second.boot()).status == "Accepted"
    await csms.until(lambda: first.ws is not None and first.ws.close_code is not None)
    link = csms.server.sessions["wb1"].link
    assert link is not None and second.ws is not None
    assert link._connection.remote_address == second.ws.local_address
    assert csms.server.counters.get("replaced_connections") == 1
    await second.wait_for("SetChargingProfile")  # the new connection gets its setup
    await second.close()


async def test_a_charger_that_cannot_report_soc_gets_the_other_measurands(csms: Csms) -> None:
    state = SimChargerState(
        measurands=frozenset({"Power.Active.Import", "Energy.Active.Import.Register", "Current.Import"})
    )
    sim = await _booted(csms, state=state)
    await sim.wait_for("ChangeConfiguration", count=3)
    assert state.config["MeterValuesSampledData"] == "Power.Active.Import,Energy.Active.Import.Register,Current.Import"
    await sim.close()


async def test_phase_switching_goes_in_number_phases_only_where_configured(csms: Csms) -> None:
    device = _device(
        charge_points=[{"id": "sw", "max_current_a": 16, "phase_switching": True}, {"id": "fix", "max_current_a": 16}]
    )
    server, task = await _start(device)
    try:
        sw = await _booted(server, "sw", password=None)
        one = await server.server.actuators()["ocpp.sw.1"].apply(EvCurrent(der_id="ocpp.sw.1", current_a=10, phases=1))
        assert one.ok, one.detail
        period = _profiles(sw)[-1]["chargingSchedule"]["chargingSchedulePeriod"][0]
        assert period["numberPhases"] == 1 and period["limit"] == 10.0
        fixed = await server.server.actuators()["ocpp.fix.1"].apply(
            EvCurrent(der_id="ocpp.fix.1", current_a=10, phases=1)
        )
        assert not fixed.ok and "phase switching" in fixed.detail
        await sw.close()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_devices_scan_lists_the_charge_points_that_connect(capsys: pytest.CaptureFixture[str]) -> None:
    """`zapd devices scan`: the listener runs for the scan window; a charger that boots in it is listed with
    the vendor and model from its BootNotification, one that stays away shows "no answer"."""
    from zapd.config import validate_config
    from zapd.scan import scan

    port = free_port()
    config = validate_config(
        {
            "site": {"id": "scan", "fuse_a": 25},
            "devices": [
                {"driver": "ocpp", "id": "ocpp", "host": "127.0.0.1", "port": port, "charge_points": [
                    {"id": "here", "max_current_a": 16}, {"id": "away", "max_current_a": 16}]},
            ],
        },
        "test",
    )  # fmt: skip

    scanning = asyncio.create_task(scan(config, as_json=True, window_s=1.5))

    async def listener_up() -> SimCharger | None:
        try:
            return await SimCharger(f"ws://127.0.0.1:{port}/ocpp", "here").connect()
        except OSError:
            return None

    async def charger() -> None:
        sim = await wait_until(listener_up, 5, "the scan's listener", every_s=0.05)
        await sim.boot(vendor="ScanVendor", model="ScanModel")
        await sim.status(1, "Available")
        await wait_until(scanning.done, 5, "the end of the scan window")  # connected all through it
        await sim.close()

    rc, _ = await asyncio.gather(scanning, charger())
    out = capsys.readouterr().out  # structlog's default test output shares stdout with the report
    report = {r["der_id"]: r for r in json.loads(out[out.index("[\n") :])}
    assert rc == 1  # one charge point did not come
    assert report["ocpp.here.1"]["status"] == "ok" and "ScanVendor ScanModel" in report["ocpp.here.1"]["model"]
    assert report["ocpp.away.1"]["status"] == "no answer"


async def test_a_charger_that_reboots_while_connected_is_set_up_again_once(csms: Csms) -> None:
    sim = await _booted(csms)
    actuator = csms.server.actuators()["ocpp.wb1.1"]
    assert (await actuator.apply(EvCurrent(der_id="ocpp.wb1.1", current_a=12.0, phases=3))).ok
    setups = lambda: sum(a == "GetConfiguration" for a, _ in sim.state.received)  # noqa: E731
    await stays(lambda: setups() <= 1, 0.3, "one setup per boot")
    assert len(await sim.wait_for("GetConfiguration")) == 1  # one setup per boot, not two
    sim.state.profiles.clear()  # a reboot forgets the profiles (§3.13.4 allows it) ...
    assert (await sim.boot()).status == "Accepted"  # ... and announces itself again on the same connection
    await sim.wait_for("GetConfiguration", count=2)
    await csms.until(lambda: sim.state.limit_a(1) == 12.0)
    await sim.close()


async def test_the_live_profile_is_renewed_before_its_valid_to(csms: Csms, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("drivers.ocpp.server.MAX_WAKE_S", 0.1)
    sim = await _booted(csms)
    session = csms.server.sessions["wb1"]
    assert (await csms.server.actuators()["ocpp.wb1.1"].apply(EvCurrent(der_id="ocpp.wb1.1", current_a=9.0))).ok
    first = _profiles(sim)[-1]
    await asyncio.sleep(1.1)  # wall-clock: validTo has whole seconds: the renewed one must lie a second later
    session.connectors[1].sent_at -= session.profile_validity_s / 3  # a third of the validity has passed
    await csms.until(lambda: len(_profiles(sim)) > 2)
    renewed = _profiles(sim)[-1]
    assert renewed["chargingSchedule"] == first["chargingSchedule"] and renewed["validTo"] > first["validTo"]
    assert csms.server.counters["keepalives"] == 1
    await sim.close()


async def test_a_value_the_charger_stops_sending_goes_stale_and_soc_leaves_with_the_car() -> None:
    """Stale is unknown: after three meter intervals without it, power is not reported (not the last value)."""
    csms, task = await _start(_device(meter_interval_s=1))
    try:
        sim = await _booted(csms, "wb2")
        await sim.status(1, "Charging")
        # No wait for the one-a-second gap: with a 1 s meter interval the periodic reading carries the values
        await sim.meter_values(1, power_w=4000, soc_pct=42)
        await csms.until(lambda: csms.last("ocpp.wb2.1").values.get(POWER_W) == 4000)
        await csms.until(lambda: POWER_W not in csms.last("ocpp.wb2.1").values, timeout_s=6)
        assert csms.last("ocpp.wb2.1").values[CHARGING] == 1.0  # the status still holds: the link is alive
        await sim.meter_values(1, soc_pct=43)
        await sim.status(1, "Available")  # unplugged
        await csms.until(lambda: csms.last("ocpp.wb2.1").values[CONNECTED] == 0.0)
        assert SOC not in csms.last("ocpp.wb2.1").values and csms.last("ocpp.wb2.1").values[POWER_W] == 0.0
        await sim.close()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_port_in_use_is_retried_and_logged_once() -> None:
    import socket

    device = _device()
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", device.port))
    blocker.listen()
    server = OcppServer(device, SystemClock())
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(server.run(lambda r: None))
        try:
            await Csms(server).until(lambda: server.counters.get("listen_failures", 0) >= 2, timeout_s=10)
            blocker.close()  # the other program went away: zapd gets the port
            async with asyncio.timeout(10):
                await server.listening.wait()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            blocker.close()
    assert len([e for e in logs if e["event"] == "ocpp.listen_failed"]) == 1


async def test_the_password_can_come_from_a_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "wb1.secret"
    secret.write_text("from-the-secret-file\n")
    csms, task = await _start(_device(charge_points=[{"id": "wb1", "max_current_a": 16, "password_file": str(secret)}]))
    try:
        sim = await SimCharger(csms.url, "wb1", password="from-the-secret-file").connect()
        assert (await sim.boot()).status == "Accepted"
        await sim.close()
        secret.unlink()  # an unreadable secret refuses the charger rather than letting anyone in
        with structlog.testing.capture_logs() as logs, pytest.raises(InvalidStatus) as err:
            await SimCharger(csms.url, "wb1", password="from-the-secret-file").connect()
        assert err.value.response.status_code == 401
        assert [e["event"] for e in logs if e["event"] == "ocpp.password_file_unreadable"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
