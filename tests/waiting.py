"""Tests wait on conditions, not on the wall clock: "until the counter reads N", with a timeout.

A fixed `asyncio.sleep(2)` is either too long (a slow suite) or too short on a loaded machine (a
flaky one); polling a condition returns as soon as it holds and fails with what it waited for.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 15.0
POLL_S = 0.01


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T]], timeout_s: float = ..., what: str = ..., *, every_s: float = ...
) -> T: ...
@overload
async def wait_until(
    predicate: Callable[[], T], timeout_s: float = ..., what: str = ..., *, every_s: float = ...
) -> T: ...
async def wait_until(
    predicate: Callable[[], Any],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    what: str = "",
    *,
    every_s: float = POLL_S,
) -> Any:
    """Poll `predicate` (plain or async) until it returns a truthy value, and return that value.

    AssertionError after `timeout_s` (loop time), naming `what` (or the predicate) and its last value.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            name = what or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {name} (last: {value!r})")
        await asyncio.sleep(every_s)


async def stays(predicate: Callable[[], object], for_s: float, what: str = "", *, every_s: float = POLL_S) -> None:
    """The opposite: `predicate` holds on every poll for `for_s` seconds (a thing that must NOT happen)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + for_s
    while loop.time() < end:
        if not predicate():
            raise AssertionError(f"{what or getattr(predicate, '__name__', repr(predicate))} stopped holding")
        await asyncio.sleep(every_s)


def wait_until_sync(
    predicate: Callable[[], T], timeout_s: float = DEFAULT_TIMEOUT_S, what: str = "", *, every_s: float = 0.02
) -> T:
    """`wait_until` for blocking code (a test driving a subprocess server over plain httpx or sockets).

    Exceptions from `predicate` propagate: one that means "not yet" is the predicate's to catch.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {name} (last: {value!r})")
        time.sleep(every_s)
