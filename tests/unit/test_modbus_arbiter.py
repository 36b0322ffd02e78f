"""The bus arbiter's pacing without a socket: quiet time after a frame, and priority chosen after it."""

from __future__ import annotations

import asyncio

from drivers.modbus.bus import Priority, _PriorityLock


async def test_quiet_time_delays_the_next_owner() -> None:
    lock = _PriorityLock()
    loop = asyncio.get_running_loop()
    await lock.acquire(Priority.POLL)
    lock.release(not_before=loop.time() + 0.05)
    t0 = loop.time()
    await lock.acquire(Priority.POLL)  # free, but the line must stay quiet first
    assert loop.time() - t0 >= 0.045
    lock.release()


async def test_control_arriving_during_the_gap_still_goes_first() -> None:
    lock = _PriorityLock()
    loop = asyncio.get_running_loop()
    order: list[str] = []

    async def user(name: str, priority: Priority) -> None:
        await lock.acquire(priority)
        order.append(name)
        lock.release(not_before=loop.time() + 0.01)

    await lock.acquire(Priority.POLL)
    polls = [asyncio.create_task(user(f"poll{i}", Priority.POLL)) for i in range(3)]
    await asyncio.sleep(0)
    lock.release(not_before=loop.time() + 0.03)  # the gap after the frame on the wire
    await asyncio.sleep(0.01)  # the setpoint comes in while the line is quiet
    control = asyncio.create_task(user("setpoint", Priority.CONTROL))
    await asyncio.gather(*polls, control)
    assert order == ["setpoint", "poll0", "poll1", "poll2"]


async def test_cancelled_waiter_during_the_gap_does_not_stall_the_bus() -> None:
    lock = _PriorityLock()
    loop = asyncio.get_running_loop()
    await lock.acquire(Priority.POLL)
    lock.release(not_before=loop.time() + 0.02)
    gone = asyncio.create_task(lock.acquire(Priority.CONTROL))
    stays = asyncio.create_task(lock.acquire(Priority.POLL))
    await asyncio.sleep(0)
    gone.cancel()
    async with asyncio.timeout(1):
        await stays
    assert gone.cancelled()
    lock.release()
