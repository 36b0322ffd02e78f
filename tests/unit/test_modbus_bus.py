"""The bus's scheduling pieces without a socket: priority lock and backoff."""

from __future__ import annotations

import asyncio
import random

import pytest

from drivers.modbus.bus import Priority, _PriorityLock
from drivers.resilience import Backoff


async def test_control_requests_overtake_queued_polls() -> None:
    lock = _PriorityLock()
    order: list[str] = []

    async def user(name: str, priority: Priority) -> None:
        await lock.acquire(priority)
        order.append(name)
        await asyncio.sleep(0)
        lock.release()

    await lock.acquire(Priority.POLL)  # a poll is on the wire
    tasks = [asyncio.create_task(user(f"poll{i}", Priority.POLL)) for i in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(user("setpoint", Priority.CONTROL)))
    await asyncio.sleep(0)
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["setpoint", "poll0", "poll1", "poll2"]


async def test_cancelled_waiter_does_not_keep_the_lock() -> None:
    lock = _PriorityLock()
    await lock.acquire(Priority.POLL)
    waiter = asyncio.create_task(lock.acquire(Priority.CONTROL))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    lock.release()
    async with asyncio.timeout(1):
        await lock.acquire(Priority.POLL)  # free again


async def test_waiter_cancelled_right_after_being_handed_the_lock_passes_it_on() -> None:
    lock = _PriorityLock()
    await lock.acquire(Priority.POLL)
    first = asyncio.create_task(lock.acquire(Priority.CONTROL))
    second = asyncio.create_task(lock.acquire(Priority.POLL))
    await asyncio.sleep(0)
    lock.release()  # hands the lock to `first`...
    first.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(1):
        await second  # so `second` gets it instead of a deadlock
    lock.release()


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    b = Backoff(0.5, 4.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    caps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for delay, cap in zip(delays, caps, strict=True):
        assert cap / 2 <= delay <= cap
    assert len(set(delays)) == len(delays), "jittered"
    b.reset()
    assert b.next_delay() <= 0.5


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(2, 1)
