"""A crashing task is restarted with backoff and logged once per state change."""

from __future__ import annotations

import asyncio
import contextlib

from structlog.testing import capture_logs

from zapd.supervisor import Supervisor


async def test_crashing_task_restarts_and_logs_once() -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls < 5:
            raise RuntimeError("boom")
        await asyncio.sleep(3600)

    sup = Supervisor(initial_backoff_s=0.01, max_backoff_s=0.02, healthy_after_s=0.05)
    sup.add("flaky", flaky)
    with capture_logs() as logs:
        task = asyncio.create_task(sup.run())
        await asyncio.sleep(0.4)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert calls == 5
    assert sup.health["flaky"].restarts == 4
    events = [e["event"] for e in logs]
    assert events.count("supervisor.task_crashed") == 1
    assert events.count("supervisor.task_recovered") == 1
    assert not sup.health["flaky"].failing


async def test_other_tasks_keep_running_when_one_crashes() -> None:
    ticks = 0

    async def steady() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    async def broken() -> None:
        raise ValueError("always")

    sup = Supervisor(initial_backoff_s=0.01, max_backoff_s=0.01)
    sup.add("steady", steady)
    sup.add("broken", broken)
    task = asyncio.create_task(sup.run())
    await asyncio.sleep(0.2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert ticks > 5
    assert sup.health["broken"].restarts > 3
