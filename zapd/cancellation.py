"""Keep a cancellation that a library swallowed: the stop hang of Home Assistant, MQTT and Modbus tasks.

Python 3.11's `asyncio.wait_for` returns the inner result, and drops the cancellation, when the
awaited future completes in the same loop iteration as the cancel reaches the task (CPython
gh-86296; 3.12 rewrote `wait_for` on top of `asyncio.timeout`). Our own code uses
`asyncio.timeout`, but aiomqtt 2.5 waits for every CONNACK, SUBACK, PUBACK and DISCONNECT with
`wait_for`, and pymodbus 3.16 for every response. A task cancelled on SIGTERM just as a PUBACK or
a Modbus response came in therefore carried on as if nothing had happened: its TaskGroup waited
for it forever, and Home Assistant never heard "offline".

The cancel request is still counted (`Task.cancelling()` is only lowered by `uncancel()`), so
after each such library call we compare the count with the one before and raise the
cancellation ourselves when it went up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def honour_cancel(awaitable: Awaitable[T]) -> T:
    """Await `awaitable`; raise CancelledError if the task was cancelled meanwhile and the callee swallowed it."""
    task = asyncio.current_task()
    before = task.cancelling() if task is not None else 0
    result = await awaitable
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError("cancelled while a library call swallowed it")
    return result
