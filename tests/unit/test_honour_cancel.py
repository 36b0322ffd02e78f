"""honour_cancel: a cancellation swallowed by the awaited code is raised again; nothing else changes."""

from __future__ import annotations

import asyncio

import pytest

from zapd.cancellation import honour_cancel


async def _swallows(gate: asyncio.Event) -> str:
    """Like 3.11's asyncio.wait_for when its future completes as the cancel lands."""
    try:
        await gate.wait()
    except asyncio.CancelledError:
        return "swallowed"
    return "done"


async def test_swallowed_cancellation_is_raised() -> None:
    gate = asyncio.Event()
    task = asyncio.create_task(honour_cancel(_swallows(gate)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_result_passes_through_and_a_timeout_stays_a_timeout() -> None:
    gate = asyncio.Event()
    gate.set()
    assert await honour_cancel(_swallows(gate)) == "done"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await honour_cancel(_swallows(asyncio.Event()))  # the timeout's own cancel, swallowed
    # Cancellation handled by a timeout leaves no trace that a later call would mistake for a cancel.
    assert await honour_cancel(asyncio.sleep(0, "later")) == "later"


async def test_cleanup_while_cancelling_is_not_cut_short() -> None:
    """A call made while handling our own cancellation (e.g. saying "offline") compares against that state."""
    out: list[str] = []

    async def stopper() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            out.append(await honour_cancel(asyncio.sleep(0, "goodbye sent")))
            raise

    task = asyncio.create_task(stopper())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert out == ["goodbye sent"]
