"""The MQTT driver against a real mosquitto on a free loopback port (fixture in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import aiomqtt
import pytest
from structlog.testing import capture_logs

from drivers.api import Controllable, Driver
from drivers.config_structs import EvLimits
from drivers.mqtt.driver import CommandTopic, MqttDer, MqttDriver
from drivers.mqtt.mapping import ENERGY_WH, TopicMapping, preset_mappings
from tests.waiting import wait_until
from zapd.clock import SystemClock
from zapd.model import EXPORT_WH, IMPORT_WH, POWER_W, DerKind, EvCurrent, Reading

if TYPE_CHECKING:
    from conftest import MosquittoBroker  # the fixture's type (tests/integration/conftest.py)

SHELLY = "shellypro3em-meter"
SHELLY_EM0 = {
    "id": 0,
    "a_current": 4.1,
    "a_voltage": 231.2,
    "a_act_power": 912.3,
    "b_current": 1.2,
    "b_act_power": 250.0,
    "c_current": 0.5,
    "c_act_power": -40.1,
    "total_current": 5.8,
    "total_act_power": 1122.2,
    "total_aprt_power": 1290.0,
}
SHELLY_EMDATA0 = {"id": 0, "total_act": 1234567.8, "total_act_ret": 45678.9}
TASMOTA_SENSOR = {
    "Time": "2026-06-01T12:00:00",
    "ENERGY": {"TotalStartTime": "2024-01-01T00:00:00", "Total": 12.345, "Today": 0.5, "Power": 87, "Voltage": 230},
}


class Collector:
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    def __call__(self, reading: Reading) -> None:
        self.readings.append(reading)

    def last(self, der_id: str) -> Reading | None:
        return next((r for r in reversed(self.readings) if r.der_id == der_id), None)


async def eventually(pred: Callable[[], bool], within_s: float = 5.0) -> None:
    """The driver's loop runs on its own schedule, so tests wait for its effects (tests/waiting.py)."""
    await wait_until(pred, within_s)


@contextlib.asynccontextmanager
async def running(driver: MqttDriver, sink: Collector) -> AsyncIterator[MqttDriver]:
    task = asyncio.create_task(driver.run(sink))
    try:
        await eventually(lambda: driver.connected)
        yield driver
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def publish(broker: MosquittoBroker, *messages: tuple[str, Any]) -> None:
    async with aiomqtt.Client(broker.host, broker.port, timeout=5) as client:
        for topic, payload in messages:
            body = payload if isinstance(payload, str | bytes) else json.dumps(payload)
            await client.publish(topic, body, qos=1)


def make_driver(broker: MosquittoBroker, mappings: list[TopicMapping], **kw: Any) -> MqttDriver:
    return MqttDriver(
        device_id="mq",
        host=broker.host,
        port=broker.port,
        mappings=mappings,
        clock=SystemClock(),
        timeout_s=2.0,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
        **kw,
    )


async def test_presets_shelly_tasmota_opendtu(mosquitto: MosquittoBroker) -> None:
    mappings = [
        *preset_mappings("shelly_em", SHELLY, "mq.grid", DerKind.METER),
        *preset_mappings("tasmota_sensor", "heatpump_plug", "mq.heatpump", DerKind.LOAD),
        *preset_mappings("opendtu", "solar/116180000001", "mq.pv", DerKind.PV),
    ]
    sink = Collector()
    driver = make_driver(mosquitto, mappings)
    assert isinstance(driver, Driver) and isinstance(driver, Controllable)
    async with running(driver, sink):
        await publish(
            mosquitto,
            (f"{SHELLY}/status/em:0", SHELLY_EM0),
            (f"{SHELLY}/status/emdata:0", SHELLY_EMDATA0),
            ("tele/heatpump_plug/SENSOR", TASMOTA_SENSOR),
            ("solar/116180000001/0/power", "1534.2"),
            ("solar/116180000001/0/yieldtotal", "4321.123"),
        )
        await eventually(lambda: len(sink.readings) >= 5)
    grid = sink.last("mq.grid")
    assert grid is not None and grid.kind is DerKind.METER
    # the emdata message merged with the earlier em:0 values into one reading
    assert grid.values == pytest.approx(
        {POWER_W: 1122.2, "l1_a": 4.1, "l2_a": 1.2, "l3_a": 0.5, IMPORT_WH: 1234567.8, EXPORT_WH: 45678.9}
    )
    heatpump = sink.last("mq.heatpump")
    assert heatpump is not None and heatpump.values == pytest.approx({POWER_W: 87.0, ENERGY_WH: 12345.0})
    pv = sink.last("mq.pv")
    assert pv is not None and pv.kind is DerKind.PV
    assert pv.values == pytest.approx({POWER_W: 1534.2, ENERGY_WH: 4321123.0})


async def test_shelly_notify_status_events_and_bad_payloads(mosquitto: MosquittoBroker) -> None:
    sink = Collector()
    driver = make_driver(mosquitto, preset_mappings("shelly_em_rpc", SHELLY, "mq.grid", DerKind.METER))
    notify = {"src": SHELLY, "dst": f"{SHELLY}/events", "method": "NotifyStatus", "params": {"ts": 1.7e9}}
    with capture_logs() as logs:
        async with running(driver, sink):
            await publish(
                mosquitto,
                (f"{SHELLY}/events/rpc", {**notify, "params": {"ts": 1.7e9, "em:0": SHELLY_EM0}}),
                (f"{SHELLY}/events/rpc", b"{not json"),
                (f"{SHELLY}/events/rpc", {**notify, "params": {"em:0": {"total_act_power": "lots"}}}),
                (f"{SHELLY}/events/rpc", {**notify, "params": {"sys": {"uptime": 5}}}),  # not ours: ignored
                (f"{SHELLY}/events/rpc", {**notify, "params": {"em:0": {**SHELLY_EM0, "total_act_power": -2500.0}}}),
            )
            await eventually(lambda: driver.counters["messages"] >= 5)
    assert driver.counters["bad_payloads"] == 2
    # "lots" is no number: the power is unknown from then on (NaN, which the drivers' guard refuses), not 1122.2.
    powers = [r.values[POWER_W] for r in sink.readings]
    assert len(powers) == 3 and powers[0] == 1122.2 and math.isnan(powers[1]) and powers[2] == -2500.0
    assert sum(1 for e in logs if e["event"] == "mqtt.bad_payload") == 1  # once per topic


async def test_broker_restart_driver_reconnects_and_readings_continue(mosquitto: MosquittoBroker) -> None:
    sink = Collector()
    driver = make_driver(mosquitto, preset_mappings("opendtu", "dtu/1161", "mq.pv", DerKind.PV))
    with capture_logs() as logs:
        async with running(driver, sink):
            await publish(mosquitto, ("dtu/1161/0/power", "100"))
            await eventually(lambda: len(sink.readings) == 1)

            await asyncio.to_thread(mosquitto.stop)
            await eventually(lambda: not driver.connected)
            failures = driver.health.errors
            await eventually(lambda: driver.health.errors >= failures + 3)  # reconnects failed with the broker gone
            await asyncio.to_thread(mosquitto.start)
            await eventually(lambda: driver.connected)

            await publish(mosquitto, ("dtu/1161/0/power", "200"))
            await eventually(lambda: len(sink.readings) == 2)
    assert [r.values[POWER_W] for r in sink.readings] == [100.0, 200.0]
    events = [e["event"] for e in logs]
    assert events.count("mqtt.link_down") == 1  # once on break, not once per retry
    assert events.count("mqtt.link_up") == 1
    assert driver.counters["connects"] == 2


async def test_command_topics_qos1_setpoint_and_relay(mosquitto: MosquittoBroker) -> None:
    commands = [
        CommandTopic(der_id="mq.wallbox", topic="wallbox/set/current", payload='{"amps": {value}}', safe_value=6),
        CommandTopic(
            der_id="mq.boiler", topic=f"{SHELLY}/command/switch:0", on_payload="on", off_payload="off", safe_value=0
        ),
    ]
    ders = [
        MqttDer("mq.wallbox", DerKind.EV_CHARGER, ev=EvLimits(max_current_a=16, min_current_a=6, phases=3)),
        MqttDer("mq.boiler", DerKind.EV_CHARGER, ev=EvLimits(max_current_a=10, min_current_a=6, phases=1)),
    ]
    mappings = [TopicMapping(topic="wallbox/power", der_id="mq.wallbox", kind=DerKind.EV_CHARGER, key=POWER_W)]
    driver = make_driver(mosquitto, mappings, commands=commands, ders=ders)
    caps = {c.der_id: c for c in driver.capabilities()}
    assert caps["mq.wallbox"].controllable and caps["mq.wallbox"].max_current_a == 16

    disconnected = await driver.apply(EvCurrent(der_id="mq.wallbox", current_a=8))
    assert not disconnected.ok and "not connected" in disconnected.detail

    got: list[tuple[str, bytes, int]] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, timeout=5) as listener:
        await listener.subscribe("wallbox/set/#", qos=1)
        await listener.subscribe(f"{SHELLY}/command/#", qos=1)

        async def listen() -> None:
            async for m in listener.messages:
                assert isinstance(m.payload, bytes)
                got.append((str(m.topic), m.payload, m.qos))

        task = asyncio.create_task(listen())
        try:
            async with running(driver, Collector()):
                assert (await driver.apply(EvCurrent(der_id="mq.wallbox", current_a=10.5))).ok
                assert (await driver.apply(EvCurrent(der_id="mq.boiler", current_a=6, phases=1))).ok
                assert (await driver.apply(EvCurrent(der_id="mq.boiler", current_a=0, phases=1))).ok
                unknown = await driver.apply(EvCurrent(der_id="mq.nothing", current_a=6))
                assert not unknown.ok
                await driver.safe_mode()
                await eventually(lambda: len(got) == 5)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert got == [
        ("wallbox/set/current", b'{"amps": 10.5}', 1),
        (f"{SHELLY}/command/switch:0", b"on", 1),
        (f"{SHELLY}/command/switch:0", b"off", 1),
        ("wallbox/set/current", b'{"amps": 6}', 1),
        (f"{SHELLY}/command/switch:0", b"off", 1),
    ]


def test_mapping_paths_units_and_errors() -> None:
    m = TopicMapping(topic="t", der_id="d", kind=DerKind.PV, key=ENERGY_WH, path="a.1.b", unit="kWh", scale=2)
    assert m.extract({"a": [{}, {"b": 1.5}]}) == 3000.0
    assert m.extract({"a": []}) is None
    with pytest.raises(ValueError, match="unit"):
        TopicMapping(topic="t", der_id="d", kind=DerKind.PV, key="x", unit="furlongs")


async def test_broker_down_at_start_does_not_block_and_driver_connects_later(mosquitto: MosquittoBroker) -> None:
    await asyncio.to_thread(mosquitto.stop)
    sink = Collector()
    driver = make_driver(mosquitto, preset_mappings("tasmota_sensor", "plug", "mq.plug", DerKind.LOAD))
    with capture_logs() as logs:
        task = asyncio.create_task(driver.run(sink))
        try:
            await eventually(lambda: driver.health.errors >= 3)  # the driver retries with backoff
            assert not driver.connected and not task.done()
            await asyncio.to_thread(mosquitto.start)
            await eventually(lambda: driver.connected)
            await publish(mosquitto, ("tele/plug/SENSOR", TASMOTA_SENSOR))
            await eventually(lambda: len(sink.readings) == 1)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    events = [e["event"] for e in logs]
    assert events.count("mqtt.link_down") == 1 and events.count("mqtt.link_up") == 1


async def test_a_silent_shelly_says_which_device_setting_it_needs(mosquitto: MosquittoBroker) -> None:
    # A Shelly Pro 3EM with "Generic status update over MQTT" off publishes nothing on status/em:0:
    # the health record names that setting (as `zapctl devices` shows it), and forgets it once data comes.
    mappings = preset_mappings("shelly_em", SHELLY, "mq.grid", DerKind.METER)
    sink = Collector()
    driver = make_driver(mosquitto, mappings, stale_s=0.3)
    async with running(driver, sink):
        assert "Generic status update over MQTT" in driver.health.view().reason  # connected, nothing yet
        await eventually(lambda: str(driver.health.view().state) == "stale")
        reason = driver.health.view().reason
        assert reason.startswith("no data for") and 'enable "Generic status update over MQTT"' in reason
        await publish(mosquitto, (f"{SHELLY}/status/em:0", SHELLY_EM0))
        await eventually(lambda: driver.health.view().ok)
        assert driver.missing_setup() == ""


def test_every_preset_names_its_device_setting_in_the_docs() -> None:
    from pathlib import Path

    from drivers.mqtt.mapping import PRESET_SETUP

    devices_md = (Path(__file__).resolve().parents[2] / "docs" / "devices.md").read_text()
    for preset, setup in PRESET_SETUP.items():
        assert f"`{preset}`" in devices_md
        for quoted in (part.split('"')[0] for part in setup.split('enable "')[1:]):
            assert quoted in devices_md, (preset, quoted)
    assert "TelePeriod" in devices_md
