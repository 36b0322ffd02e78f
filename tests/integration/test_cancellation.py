"""A task cancelled just as its broker or device answers is cancelled (the rare stop hang, issue 10 item 7).

Python 3.11's `asyncio.wait_for` drops a cancellation that reaches the task in the loop iteration
where the awaited future completed; aiomqtt waits for every PUBACK and pymodbus for every
response that way. The stop hang needed a SIGTERM to land in that window; these tests put it
there on purpose: a hook on the real client's receive path cancels the task in the very callback
that completes its future (real mosquitto, real pymodbus server on loopback).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import pytest
from pymodbus.transaction.transaction import TransactionManager

from drivers.modbus.bus import close_all_buses, get_tcp_bus
from drivers.mqtt.client import Client
from drivers.sim.modbus_server import start_modbus_sim
from drivers.sim.physics import SimSite
from tests.fakes import FakeSite
from tests.integration.conftest import MosquittoBroker
from tests.waiting import wait_until
from zapd.clock import ManualClock
from zapd.config import HomeAssistantConfig, validate_config
from zapd.devices import DeviceSet
from zapd.homeassistant import HomeAssistant
from zapd.model import DerKind
from zapd.override import OperatorOverride
from zapd.state import SiteState


class _Trap:
    """Cancels `target` from inside the callback that completes its pending future, once."""

    def __init__(self) -> None:
        self.target: asyncio.Task[Any] | None = None
        self.sprung = 0

    def spring(self) -> None:
        if self.target is not None:
            self.target.cancel()
            self.target = None
            self.sprung += 1


@pytest.fixture
def puback_trap(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Trap]:
    """Every aiomqtt client (ours subclasses it) springs the trap right after a PUBACK released its publish."""
    trap = _Trap()
    original = aiomqtt.Client._on_publish

    def on_publish(self: aiomqtt.Client, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        trap.spring()

    monkeypatch.setattr(aiomqtt.Client, "_on_publish", on_publish)
    yield trap


async def test_publish_cancelled_as_its_puback_arrives_raises(mosquitto: MosquittoBroker, puback_trap: _Trap) -> None:
    async with Client(mosquitto.host, mosquitto.port, identifier="cancel-test", timeout=5) as client:

        async def publish() -> str:
            await client.publish("zapd/test/cancel", "x", qos=1)
            return "returned as if not cancelled"

        task = asyncio.create_task(publish())
        puback_trap.target = task
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await task
        assert puback_trap.sprung == 1 and task.cancelled()


async def _wait(cond: Callable[[], bool], what: str, within_s: float = 10.0) -> None:
    await wait_until(cond, within_s, what)


async def test_home_assistant_cancelled_as_a_puback_arrives_stops_and_says_offline(
    mosquitto: MosquittoBroker, puback_trap: _Trap
) -> None:
    clock = ManualClock(datetime(2026, 6, 1, 10, 30, tzinfo=UTC))
    state = SiteState()
    site = FakeSite(
        validate_config({"site": {"id": "cancel.1", "fuse_a": 25}}, "test"),
        clock,
        state,
        DeviceSet(kinds={"meter": DerKind.METER}),
        OperatorOverride(clock, state),
    )
    cfg = HomeAssistantConfig(enabled=True, host=mosquitto.host, port=mosquitto.port, state_interval_s=1.0)
    ha = HomeAssistant(site.view, site.override, cfg, tz=UTC)
    run = asyncio.create_task(ha.run())
    try:
        await _wait(lambda: ha.link_up and ha.counters["states"] > 0, "the first states")
        # The next PUBACK is a state publish of the running session: cancel as it lands.
        puback_trap.target = run
        # Before the fix the publish loop swallowed the cancel and the session never ended.
        await asyncio.wait({run}, timeout=10)
        assert puback_trap.sprung == 1 and run.cancelled()
    finally:
        run.cancel()
        await asyncio.wait({run}, timeout=2)  # bounded: before the fix this task never ended
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="cancel-watch", timeout=5) as watch:
        await watch.subscribe(ha.availability_topic, qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(watch.messages))
    assert message.payload == b"offline" and message.retain


async def test_modbus_request_cancelled_as_its_response_arrives_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    trap = _Trap()
    original = TransactionManager.callback_data

    def callback_data(self: TransactionManager, data: bytes, addr: tuple[str, int] | None = None) -> int:
        used = original(self, data, addr)
        if self.response_future.done():
            trap.spring()  # the response is in; the request's task has not woken up yet
        return used

    monkeypatch.setattr(TransactionManager, "callback_data", callback_data)
    sim = await start_modbus_sim(SimSite())
    try:
        bus = get_tcp_bus(sim.host, sim.port, timeout_s=2.0)
        assert len(await bus.read_input(1, 100, 2)) == 2  # connected, and the hook passes answers on
        task = asyncio.create_task(bus.read_input(1, 100, 2))
        trap.target = task
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await task
        assert trap.sprung == 1 and task.cancelled()
    finally:
        await close_all_buses()
        await sim.stop()
